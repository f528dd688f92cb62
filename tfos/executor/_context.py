"""NodeContext (node process): what ``main_fun(args, ctx)`` knows about its node."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from tfos._paths import absolute_path


class NodeContext:
    """The node's view of the cluster, passed to ``main_fun(args, ctx)``.

    Attributes:
        job_name: ``'chief'``, ``'worker'``, ``'ps'`` or ``'evaluator'``.
        task_index: index of this node within its job.
        executor_id: index of this node in the cluster (0..num_executors-1).
        worker_num: same as executor_id (TensorFlowOnSpark's name).
        num_workers: number of chief and worker nodes (those that train).
        cluster_spec: ``{job: ["host:port", ...]}`` of the whole cluster.
        cluster_info: one dict per node (role, host, ports); no secrets.
        default_fs: Hadoop's default filesystem, e.g. ``file:///`` or ``hdfs://nn:8020``.
        working_dir: the executor's working directory.
        export_dir: where the chief saves the trained model for tfos to log to MLflow
            (``tfos.run(..., export_dir=...)``; a local path when on the local filesystem), e.g.
            ``model.save(os.path.join(ctx.export_dir, "model.keras"))``; None when not set.
    """

    def __init__(self, *, executor_id: int, job_name: str, task_index: int, cluster_spec: dict[str, list[str]],
                 cluster_info: list[dict[str, Any]], default_fs: str, working_dir: str,
                 port_socket: socket.socket | None = None, feeds: Any = None,
                 on_serving: Callable[[], None] | None = None,
                 on_report: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.executor_id = executor_id
        self.worker_num = executor_id
        self.job_name = job_name
        self.task_index = task_index
        self.cluster_spec = cluster_spec
        self.cluster_info = cluster_info
        self.num_workers = sum(len(cluster_spec.get(job, [])) for job in ("chief", "master", "worker"))
        self.default_fs = default_fs
        self.working_dir = working_dir
        self.export_dir: str | None = None
        self._port_socket = port_socket
        self._feeds = feeds
        self._on_serving = on_serving
        self._on_report = on_report

    def absolute_path(self, path: str) -> str:
        """Resolves ``path`` against ``default_fs`` (relative paths: working dir or HDFS home)."""
        return absolute_path(path, self.default_fs, self.working_dir)

    def release_port(self) -> None:
        """Frees this node's reserved TensorFlow port so a server can bind it.

        Only needed with ``tfos.run(..., release_port=False)``; otherwise tfos releases
        the port before ``main_fun`` starts. Calling it twice is harmless.
        """
        if self._port_socket is not None:
            self._port_socket.close()
            self._port_socket = None

    def serve(self) -> None:
        """Runs this node's TensorFlow server until the cluster shuts down; never returns.

        For nodes that only serve, e.g. the workers and parameter servers of a
        ``ParameterServerStrategy`` cluster, whose chief coordinates the training:
        ``shutdown()`` waits for the chief and treats serving workers as done.
        """
        import tensorflow as tf

        self.release_port()
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        tf.distribute.Server(resolver.cluster_spec(), job_name=self.job_name, task_index=self.task_index,
                             protocol="grpc", start=True)
        if self._on_serving is not None:
            self._on_serving()
        threading.Event().wait()  # the node process exits when the driver stops the cluster

    def report(self, **metrics: Any) -> None:
        """Reports this node's latest metrics (``ctx.report(step=100, loss=0.31)``) to the driver.

        The driver's progress view, ``Cluster.metrics()``, ``tfos status`` and the Prometheus
        endpoint show the last value of each. Values are numbers (Python, numpy or TensorFlow
        scalars) or short strings. Cheap enough to call every step: at most two reports a
        second go out at once, and the node's next heartbeat carries the rest.
        """
        if self._on_report is None:
            from tfos.errors import TFOSConfigError

            raise TFOSConfigError("ctx.report() works in main_fun on a tfos node only")
        self._on_report(metrics)

    def get_data_feed(self, train_mode: bool = True, qname_in: str = "input", qname_out: str = "output",
                      input_mapping: dict[str, str] | list[str] | None = None) -> Any:
        """Returns the :class:`tfos.DataFeed` for queue ``qname_in`` (InputMode.SPARK only)."""
        if self._feeds is None:
            from tfos.errors import TFOSConfigError

            raise TFOSConfigError(
                f"{self.job_name}:{self.task_index} has no data feed: only chief and worker nodes of a cluster "
                "started with input_mode=tfos.InputMode.SPARK are fed"
            )
        return self._feeds.data_feed(qname_in, qname_out, train_mode=train_mode, input_mapping=input_mapping)

    def __repr__(self) -> str:
        return f"NodeContext({self.job_name}:{self.task_index}, executor_id={self.executor_id})"


def run_with_export_dir(main_fun: Callable[[Any, Any], Any], export_dir: str, args: Any, ctx: NodeContext) -> Any:
    """Runs ``main_fun(args, ctx)`` with ``ctx.export_dir`` set; ``tfos.run(export_dir=...)`` wraps main_fun in it."""
    if "://" not in export_dir:  # Keras saves into an existing directory only
        is_file = export_dir.endswith((".keras", ".h5"))  # TFEstimator's export_dir may name a model file
        os.makedirs(os.path.dirname(export_dir) if is_file else export_dir, exist_ok=True)
    ctx.export_dir = export_dir
    return main_fun(args, ctx)
