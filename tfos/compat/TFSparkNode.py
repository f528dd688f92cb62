"""TensorFlowOnSpark's ``TFSparkNode`` module (executors): the node context and TFCluster's task functions.

In TFoS this module held the Spark task functions behind ``TFCluster`` (``run``,
``train``, ``inference``, ``shutdown``: mapPartitions functions around a
multiprocessing manager that each executor kept in ``TFSparkNode.mgr``). tfos's
cluster works differently (a node process per executor, fed over an authenticated
socket), so those functions raise :class:`~tfos.compat._unsupported.UnsupportedNameError`
naming the ``TFCluster`` call that does the same. :class:`TFNodeContext` is TFoS's
node context, built from plain values as TFoS built it.
"""

from __future__ import annotations

import logging
from typing import Any

from tfos.compat import TFNode
from tfos.compat._unsupported import tensorflow_version, unsupported
from tfos.executor._context import NodeContext

__all__ = ["TFNodeContext", "TFSparkNode", "TF_VERSION", "inference", "logger", "run", "shutdown", "train"]

logger = logging.getLogger(__name__)

#: The installed TensorFlow's version (read from package metadata; TensorFlow is not imported).
TF_VERSION = tensorflow_version()


class TFNodeContext(TFNode.TFNodeContext):
    """TensorFlowOnSpark's ``TFNodeContext(executor_id, job_name, task_index, cluster_spec, defaultFS, ...)``.

    The context ``TFCluster.run`` hands to ``map_fun`` is built by tfos; this constructor
    is for code that builds one itself, e.g. to call a ``map_fun`` in a unit test or to
    drive a ``DataFeed`` from a :func:`tfos.compat.TFManager.start` manager by hand.

    Args:
        executor_id: the node's index in the cluster (also ``worker_num``).
        job_name: ``'chief'``, ``'worker'``, ``'ps'``, ``'evaluator'``, ...
        task_index: the node's index within its job.
        cluster_spec: ``{job: ["host:port", ...]}``.
        defaultFS: Hadoop's default filesystem, e.g. ``file://`` or ``hdfs://namenode:8020``.
        working_dir: the directory relative ``file://`` paths resolve against.
        mgr: a :class:`tfos.compat.TFManager.TFManager` for :meth:`get_data_feed`, or None.
        tmp_socket: a socket holding the node's port until :meth:`release_port`.
    """

    def __init__(self, executor_id: int = 0, job_name: str = "", task_index: int = 0,
                 cluster_spec: dict[str, list[str]] | None = None, defaultFS: str = "file://",  # noqa: N803
                 working_dir: str = ".", mgr: Any = None, tmp_socket: Any = None) -> None:
        super().__init__(NodeContext(executor_id=executor_id, job_name=job_name, task_index=task_index,
                                     cluster_spec=dict(cluster_spec or {}), cluster_info=[], default_fs=defaultFS,
                                     working_dir=working_dir, port_socket=tmp_socket))
        self.mgr = mgr

    def get_data_feed(self, train_mode: bool = True, qname_in: str = "input", qname_out: str = "output",
                      input_mapping: dict[str, str] | None = None) -> TFNode.DataFeed:
        """``TFNode.DataFeed(self.mgr, ...)``: the rows put into ``mgr``'s queue ``qname_in``."""
        return TFNode.DataFeed(self.mgr, train_mode, qname_in, qname_out, input_mapping)

    def start_cluster_server(self, num_gpus: int = 1, rdma: bool = False) -> Any:
        """TF1's server start: raises, see :func:`tfos.compat._unsupported.start_cluster_server`."""
        from tfos.compat._unsupported import start_cluster_server

        return start_cluster_server(self, num_gpus, rdma)

    def export_saved_model(self, sess: Any, export_dir: str, tag_set: Any, signatures: Any) -> None:
        """TF1's session export: raises, see :func:`tfos.compat._unsupported.export_saved_model`."""
        from tfos.compat._unsupported import export_saved_model

        export_saved_model(sess, export_dir, tag_set, signatures)


class _NoExecutorManager(type):
    """TFoS kept each executor's manager and cluster id on the class; tfos has no such state."""

    @property
    def mgr(cls) -> Any:
        raise unsupported("TFSparkNode.mgr", "tfos keeps no manager per executor: inside map_fun use ctx.mgr (or "
                          "ctx.get_data_feed()); from the driver feed nodes with TFCluster.train / inference.")

    @property
    def cluster_id(cls) -> Any:
        raise unsupported("TFSparkNode.cluster_id", "The cluster a node belongs to is the TFCluster that "
                          "TFCluster.run returned (its .cluster.cluster_id on the driver).")


class TFSparkNode(metaclass=_NoExecutorManager):
    """TensorFlowOnSpark's holder of per-executor state (``mgr``, ``cluster_id``), which tfos does not have.

    Reading ``TFSparkNode.mgr`` or ``TFSparkNode.cluster_id`` raises an error that names
    what to use instead.
    """


def run(fn: Any, tf_args: Any, cluster_meta: Any, tensorboard: bool, log_dir: str | None, queues: Any,
        background: bool) -> Any:
    """TFoS's node-starting mapPartitions function: raises; ``TFCluster.run`` starts the nodes."""
    raise unsupported("TFSparkNode.run", "Start the cluster with tfos.compat.TFCluster.run(sc, map_fun, tf_args, "
                      "num_executors, num_ps, ...) or tfos.run(...); it runs map_fun on every node.")


def train(cluster_info: Any, cluster_meta: Any, feed_timeout: float = 600, qname: str = "input") -> Any:
    """TFoS's feeding mapPartitions function: raises; use ``TFCluster.train``."""
    raise unsupported("TFSparkNode.train", "Feed an RDD or DataFrame with cluster.train(data, num_epochs, "
                      "feed_timeout, qname) on the TFCluster that TFCluster.run returned.")


def inference(cluster_info: Any, feed_timeout: float = 600, qname: str = "input") -> Any:
    """TFoS's inference mapPartitions function: raises; use ``TFCluster.inference``."""
    raise unsupported("TFSparkNode.inference", "Use cluster.inference(data, feed_timeout, qname) on the TFCluster "
                      "that TFCluster.run returned; it returns the RDD of results.")


def shutdown(cluster_info: Any, grace_secs: float = 0, queues: Any = ("input",)) -> Any:
    """TFoS's node-stopping mapPartitions function: raises; use ``TFCluster.shutdown``."""
    raise unsupported("TFSparkNode.shutdown", "Use cluster.shutdown(grace_secs=...) on the TFCluster that "
                      "TFCluster.run returned.")
