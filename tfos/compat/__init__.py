"""TensorFlowOnSpark-compatible modules (driver and executors).

A TensorFlowOnSpark 2.x program ports by changing its imports::

    from tensorflowonspark import TFCluster, TFNode   # before
    from tfos.compat import TFCluster, TFNode          # after

Each module keeps TFoS's public names and semantics and is a thin layer over tfos's
native API (``tfos.run``, ``Cluster``, ``NodeContext``, ``DataFeed``).
"""
