"""Every Spark call the driver makes (driver): preflight, hosts, job groups, jobs, cancellation.

The rest of the driver talks to Spark only through this module, so that a Spark Connect
backend (``is_remote()``, barrier ``mapInArrow`` launches) can sit beside it later.
Jobs tfos starts carry a job group (for cancellation) and a description a person can
read in the Spark UI, e.g. "tfos nodes: chief + 2 workers".
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from tfos import _constants as C
from tfos.errors import TFOSConfigError

if TYPE_CHECKING:
    from pyspark import SparkContext

log = logging.getLogger(__name__)

_LOCAL_CLUSTER = re.compile(r"local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]")
#: Spark's thread-local properties behind setJobGroup / setJobDescription.
_GROUP, _DESCRIPTION, _INTERRUPT = "spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel"


def preflight(sc: SparkContext, num_executors: int) -> bool:
    """Rejects Spark settings that break reservation; returns True in local (single-JVM) mode."""
    conf = sc.getConf()
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        raise TFOSConfigError("spark.dynamicAllocation.enabled=true: executors come and go, so tfos nodes cannot "
                              "be pinned to them. Set spark.dynamicAllocation.enabled=false.")
    if conf.get("spark.speculation", "false").lower() == "true":
        raise TFOSConfigError("spark.speculation=true: Spark would run a second copy of a slow feeding task beside "
                              "the first, and each node takes a partition's rows from one attempt at a time. Set "
                              "spark.speculation=false (tfos already survives retried tasks).")
    master = sc.master or ""
    local_cluster = _LOCAL_CLUSTER.match(master)
    task_cpus = int(conf.get("spark.task.cpus", "1"))
    cores = int(local_cluster.group(2)) if local_cluster else int(conf.get("spark.executor.cores", "0"))
    if cores and cores // task_cpus > 1:
        raise TFOSConfigError(f"executors have {cores // task_cpus} task slots ({cores} cores, spark.task.cpus="
                              f"{task_cpus}), so two tfos nodes could share one. Set spark.task.cpus={cores}.")
    executors = int(local_cluster.group(1)) if local_cluster else int(conf.get("spark.executor.instances", "0"))
    if executors and executors < num_executors:
        raise TFOSConfigError(f"num_executors={num_executors} but the Spark application has only "
                              f"{executors} executors; lower num_executors or add executors.")
    user_python = conf.get("spark.pyspark.python", None) or os.environ.get("PYSPARK_PYTHON")
    if not user_python and sc.pythonExec != sys.executable:
        log.info("PYSPARK_PYTHON not set: executors will run %s like the driver", sys.executable)
        sc.pythonExec = sys.executable
    return master.startswith("local") and not local_cluster


def server_hosts(sc: SparkContext) -> tuple[str, str]:
    """(address the control server binds, address nodes use to reach it)."""
    override = C.get_str(C.SERVER_HOST)
    if override:
        return override, override
    conf = sc.getConf()
    advertised = conf.get("spark.driver.host", None) or socket.gethostbyname(socket.gethostname())
    return conf.get("spark.driver.bindAddress", None) or "0.0.0.0", advertised


def default_fs(sc: SparkContext) -> str:
    """Hadoop's default filesystem, e.g. ``file:///`` or ``hdfs://nn:8020``."""
    return sc._jsc.hadoopConfiguration().get("fs.defaultFS") or "file:///"


def live_executors(sc: SparkContext) -> int:
    """Executors registered with the application now (-1 when Spark cannot say)."""
    try:
        return max(0, sc._jsc.sc().getExecutorMemoryStatus().size() - 1)
    except Exception:  # noqa: BLE001 - diagnostics only
        return -1


@contextlib.contextmanager
def described(sc: SparkContext, group: str | None, description: str) -> Iterator[None]:
    """Runs the Spark jobs of the ``with`` body under ``group`` and ``description``.

    The calling thread's own job group and description are restored afterwards, so a
    user's later jobs are not labelled as tfos's.
    """
    saved = {key: sc.getLocalProperty(key) for key in (_GROUP, _DESCRIPTION, _INTERRUPT)}
    if group is not None:
        sc.setJobGroup(group, description, interruptOnCancel=True)
    else:
        sc.setJobDescription(description)
    try:
        yield
    finally:
        for key, value in saved.items():
            sc.setLocalProperty(key, value)  # None clears it


def job_thread(sc: SparkContext, group: str, description: str, target: Callable[..., None],
               *args: Any) -> threading.Thread:
    """Runs ``target(*args)`` in a daemon thread whose Spark jobs carry ``group`` and ``description``."""
    from pyspark import InheritableThread

    def body() -> None:
        sc.setJobGroup(group, description, interruptOnCancel=True)
        target(*args)

    thread = InheritableThread(target=body, name=f"{group}-{description}", daemon=True)
    thread.start()
    return thread


def cancel(sc: SparkContext, group: str) -> None:
    """Cancels every running job of ``group`` (interrupting its tasks)."""
    sc.cancelJobGroup(group)


def run_on_executors(sc: SparkContext, num_tasks: int, task: Callable[[Iterator[Any]], Iterator[Any]]) -> list[Any]:
    """Runs ``task`` as ``num_tasks`` tasks, one per partition, and collects what they yield."""
    return sc.parallelize(range(num_tasks), num_tasks).mapPartitions(task).collect()


def as_rdd(data: Any) -> tuple[Any, bool]:
    """(RDD to feed, whether its elements are Arrow IPC streams of a DataFrame)."""
    from pyspark import RDD
    from pyspark.sql import DataFrame

    from tfos.feed._feeder import dataframe_to_arrow_rdd

    if isinstance(data, DataFrame):
        return dataframe_to_arrow_rdd(data), True
    if isinstance(data, RDD):
        return data, False
    raise TFOSConfigError(f"data must be a pyspark RDD or DataFrame; got {type(data).__name__}")


def partition_counts(sc: SparkContext, rdd: Any, arrow: bool, description: str) -> list[int]:
    """Rows in each partition of ``rdd`` (of Arrow IPC streams when ``arrow``), by one Spark job."""

    def count(blobs: Iterator[Any]) -> Iterator[int]:
        if not arrow:
            yield sum(1 for _ in blobs)
            return
        import pyarrow as pa

        yield sum(batch.num_rows for blob in blobs for batch in pa.ipc.open_stream(blob))

    with described(sc, None, description):
        return rdd.mapPartitions(count).collect()


def is_streaming(data: Any) -> bool:
    """True for a Structured Streaming DataFrame."""
    from pyspark.sql import DataFrame

    return isinstance(data, DataFrame) and data.isStreaming


def start_stream(df: Any, on_batch: Callable[[Any, int], None], checkpoint: str, name: str) -> Any:
    """Starts a streaming query that calls ``on_batch(batch_df, batch_id)`` for each micro-batch."""
    return df.writeStream.foreachBatch(on_batch).option("checkpointLocation", checkpoint).queryName(
        re.sub(r"\W+", "_", name)).start()


def raise_stream_error(query: Any) -> None:
    """Raises a stopped query's failure as a TFOSError, if it failed."""
    from tfos.errors import TFOSError

    error = query.exception()
    if error is not None:
        raise TFOSError(f"the streaming query feeding the cluster failed: {short_error(error)}")


def read_text(sc: SparkContext, path: str) -> str | None:
    """A small file's text on any Hadoop filesystem (None if missing)."""
    jvm = sc._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(sc._jsc.hadoopConfiguration())
    if not fs.exists(hpath):
        return None
    stream = fs.open(hpath)
    try:
        return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def write_text(sc: SparkContext, path: str, text: str) -> None:
    """Replaces a small file on any Hadoop filesystem (write then rename)."""
    jvm = sc._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    tmp = jvm.org.apache.hadoop.fs.Path(path + ".tmp")
    fs = hpath.getFileSystem(sc._jsc.hadoopConfiguration())
    out = fs.create(tmp, True)
    try:
        out.write(bytearray(text.encode()))
    finally:
        out.close()
    fs.delete(hpath, False)
    fs.rename(tmp, hpath)


def short_error(exc: BaseException) -> str:
    """The Python error inside a Py4J / Spark failure, without the JVM stack."""
    text = str(exc)
    python_errors = re.findall(r"^\s*((?:[\w.]+\.)?\w*(?:Error|Exception): .*)$", text, flags=re.MULTILINE)
    python_errors = [line for line in python_errors if not line.startswith(("org.", "java.", "scala."))]
    return (python_errors[-1] if python_errors else text.splitlines()[0] if text else type(exc).__name__)[:2000]
