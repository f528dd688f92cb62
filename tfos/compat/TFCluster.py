"""TensorFlowOnSpark's ``TFCluster`` module (driver), over :func:`tfos.run`."""

from __future__ import annotations

import logging
from typing import Any

from tfos.compat._unsupported import module_getattr
from tfos.config import InputMode
from tfos.driver._cluster import Cluster
from tfos.driver._cluster import run as _run
from tfos.errors import TFOSConfigError

__all__ = ["InputMode", "TFCluster", "logger", "run"]

log = logging.getLogger(__name__)
logger = log  # TensorFlowOnSpark's name

__getattr__, __dir__ = module_getattr(__name__, {
    "tf_status": "TFoS's reservation thread recorded start-up errors there; tfos raises them from TFCluster.run "
                 "(tfos.ReservationTimeoutError, tfos.NodeError) and from train / inference / shutdown.",
})

#: TensorFlowOnSpark's train() feeds 10 epochs when num_epochs is 0.
DEFAULT_EPOCHS = 10


class TFCluster:
    """A running cluster with TensorFlowOnSpark's methods; ``cluster`` is the native :class:`tfos.Cluster`."""

    def __init__(self, cluster: Cluster, queues: list[str]) -> None:
        self.cluster = cluster
        self.sc = cluster.sc
        self.input_mode = cluster.config.input_mode
        self.queues = list(queues)
        self.num_executors = cluster.config.num_executors

    @property
    def cluster_info(self) -> list[dict[str, Any]]:
        return self.cluster.cluster_info

    def train(self, dataRDD: Any, num_epochs: int = 0, feed_timeout: float = 600, qname: str = "input") -> None:  # noqa: N803
        """Feeds ``dataRDD`` to the nodes ``num_epochs`` times (0 means 10, as in TensorFlowOnSpark).

        A DStream (Spark Streaming) is fed as it arrives, each RDD once, as TensorFlowOnSpark did;
        ``shutdown(ssc)`` then waits for the StreamingContext to end.
        """
        self._check_queue(qname)
        from pyspark.streaming import DStream

        if isinstance(dataRDD, DStream):
            dataRDD.foreachRDD(lambda rdd: None if rdd.isEmpty() else self.cluster.train(
                rdd, num_epochs=1, feed_timeout=feed_timeout, qname=qname, balance=False))
            return
        if isinstance(num_epochs, int) and num_epochs == 0:
            num_epochs = DEFAULT_EPOCHS
        # TensorFlowOnSpark feeds every row each epoch, wherever its partition ran
        self.cluster.train(dataRDD, num_epochs=num_epochs, feed_timeout=feed_timeout, qname=qname, balance=False)

    def inference(self, dataRDD: Any, feed_timeout: float = 600, qname: str = "input") -> Any:  # noqa: N803
        """Feeds ``dataRDD`` for inference; returns the RDD of results (one per row, in order)."""
        self._check_queue(qname)
        return self.cluster.inference(dataRDD, feed_timeout=feed_timeout, qname=qname)

    def shutdown(self, ssc: Any = None, grace_secs: float = 0, timeout: float = 259200) -> None:
        """Stops the cluster (after ``ssc.awaitTermination()`` when a StreamingContext is given)."""
        if ssc is not None:
            ssc.awaitTermination()
        self.cluster.shutdown(grace_secs=grace_secs, timeout=timeout)

    def tensorboard_url(self) -> str | None:
        return self.cluster.tensorboard_url

    def _check_queue(self, qname: str) -> None:
        if qname not in self.queues:
            raise TFOSConfigError(f"unknown queue {qname!r}; this cluster was started with queues={self.queues}")


def run(sc: Any, map_fun: Any, tf_args: Any, num_executors: int, num_ps: int, tensorboard: bool = False,
        input_mode: InputMode = InputMode.TENSORFLOW, log_dir: str | None = None, driver_ps_nodes: bool = False,
        master_node: str | None = None, reservation_timeout: float = 600,
        queues: list[str] = ["input", "output", "error"],  # noqa: B006 - TensorFlowOnSpark's signature
        eval_node: bool = False, release_port: bool = True) -> TFCluster:
    """Starts the cluster and runs ``map_fun(tf_args, ctx)`` on every node, as TensorFlowOnSpark did.

    ``ctx`` is a :class:`tfos.compat.TFNode.TFNodeContext` (``mgr``, ``defaultFS``,
    ``absolute_path``, ``get_data_feed``, ...). ``driver_ps_nodes`` is not supported:
    parameter servers run on executors.
    """
    if driver_ps_nodes:
        raise TFOSConfigError("driver_ps_nodes=True is not supported: tfos runs parameter servers on executors. "
                              "Add num_ps executors to the application instead.")
    if eval_node and InputMode(input_mode) != InputMode.TENSORFLOW:
        raise TFOSConfigError("eval_node=True needs input_mode=InputMode.TENSORFLOW, as in TensorFlowOnSpark")
    from tfos.compat.TFNode import with_tfnode_context

    cluster = _run(sc, with_tfnode_context(map_fun), tf_args, num_executors, num_ps=num_ps,
                   tensorboard=tensorboard, input_mode=input_mode, log_dir=log_dir, master_node=master_node,
                   eval_node=eval_node, reservation_timeout=reservation_timeout, release_port=release_port)
    return TFCluster(cluster, queues)
