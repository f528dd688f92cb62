"""TensorFlowOnSpark's ``TFNode`` module (node process): paths, the node context and DataFeed."""

from __future__ import annotations

import getpass
import logging
from dataclasses import dataclass
from typing import Any

from tfos.compat._unsupported import export_saved_model, start_cluster_server, tensorflow_version
from tfos.compat.TFManager import TFManager
from tfos.errors import TFOSConfigError
from tfos.executor._context import NodeContext
from tfos.feed._datafeed import DataFeed as _NativeDataFeed

__all__ = ["DataFeed", "TFNodeContext", "TF_VERSION", "batch_results", "export_saved_model", "hdfs_path", "logger",
           "next_batch", "release_port", "start_cluster_server", "terminate"]

log = logging.getLogger(__name__)
logger = log  # TensorFlowOnSpark's name

#: The installed TensorFlow's version (read from package metadata; TensorFlow is not imported).
TF_VERSION = tensorflow_version()

#: Filesystem schemes returned unchanged by hdfs_path (Hadoop 3's, as TensorFlowOnSpark lists them).
HADOOP_SCHEMES = ("adl://", "file://", "hdfs://", "oss://", "s3://", "s3a://", "s3n://", "swift://", "viewfs://",
                  "wasb://")


def hdfs_path(ctx: Any, path: str) -> str:
    """An absolute path with a filesystem scheme, as TensorFlowOnSpark's ``hdfs_path``.

    Paths with a known scheme are returned as they are; ``/abs`` gets ``ctx.defaultFS``
    in front; relative paths go under the user's HDFS home (hdfs, viewfs) or the
    node's working directory (file).
    """
    if path.startswith(HADOOP_SCHEMES):
        return path
    if path.startswith("/"):
        return ctx.defaultFS + path
    if ctx.defaultFS.startswith(("hdfs://", "viewfs://")):
        return f"{ctx.defaultFS}/user/{getpass.getuser()}/{path}"
    if ctx.defaultFS.startswith("file://"):
        return f"{ctx.defaultFS}/{ctx.working_dir[1:]}/{path}"
    log.warning("unknown scheme %s with relative path: %s", ctx.defaultFS, path)
    return f"{ctx.defaultFS}/{path}"


class TFNodeContext:
    """TensorFlowOnSpark's node context: the native :class:`tfos.NodeContext` plus TFoS's names."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        from tfos.compat.TFParallel import _strip_root

        self.defaultFS = _strip_root(ctx.default_fs)  # noqa: N815 - TensorFlowOnSpark's name and form
        self.mgr = TFManager(ctx._feeds) if ctx._feeds is not None else None
        self.tmp_socket = ctx._port_socket

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def absolute_path(self, path: str) -> str:
        """``hdfs_path(self, path)``, as TFoS's ``ctx.absolute_path``."""
        return hdfs_path(self, path)

    def release_port(self) -> None:
        """Frees the port this node holds for TensorFlow's server (TFoS's ``ctx.release_port()``)."""
        self._ctx.release_port()
        self.tmp_socket = None

    def __repr__(self) -> str:
        return f"TFNodeContext({self._ctx.job_name}:{self._ctx.task_index})"


@dataclass(frozen=True)
class with_tfnode_context:  # noqa: N801 - used like a function
    """Wraps a TFoS ``map_fun(args, ctx)`` so that it receives a :class:`TFNodeContext`."""

    map_fun: Any

    def __call__(self, args: Any, ctx: NodeContext) -> Any:
        return self.map_fun(args, TFNodeContext(ctx))


class DataFeed(_NativeDataFeed):
    """TensorFlowOnSpark's ``DataFeed(mgr, ...)``: the native DataFeed, built from ``ctx.mgr``."""

    def __init__(self, mgr: TFManager | None, train_mode: bool = True, qname_in: str = "input",
                 qname_out: str = "output", input_mapping: dict[str, str] | None = None) -> None:
        if mgr is None:
            raise TFOSConfigError("DataFeed needs ctx.mgr, which only chief and worker nodes of a cluster started "
                                  "with input_mode=InputMode.SPARK have")
        super().__init__(mgr.hub, mgr.hub.queue(qname_in), qname_out, train_mode, input_mapping)
        self.mgr = mgr
        self.qname_in = qname_in

    @property
    def done_feeding(self) -> bool:
        """True once the end of the feed was reached (or ``terminate()`` was called)."""
        return self.should_stop()


def next_batch(mgr: TFManager, batch_size: int, qname: str = "input") -> list[Any]:
    """TensorFlowOnSpark's module-level ``next_batch``: up to ``batch_size`` rows of queue ``qname``."""
    return DataFeed(mgr, qname_in=qname).next_batch(batch_size)


def batch_results(mgr: TFManager, results: Any, qname: str = "output") -> None:
    """TensorFlowOnSpark's module-level ``batch_results`` for the default input queue."""
    DataFeed(mgr, train_mode=False, qname_out=qname).batch_results(results)


def terminate(mgr: TFManager, qname: str = "input") -> None:
    """TensorFlowOnSpark's module-level ``terminate``: stops feeding queue ``qname``."""
    DataFeed(mgr, qname_in=qname).terminate()


def release_port(ctx: Any) -> None:
    """TensorFlowOnSpark's ``release_port(ctx)``."""
    ctx.release_port()
