"""TensorFlowOnSpark's ``util`` module (executors, or any single-node process): host and environment helpers.

``single_node_env`` prepares a process to run TensorFlow alone (Hadoop classpath, GPU
choice), ``get_ip_address`` finds this host's outward address, and
``write_executor_id`` / ``read_executor_id`` keep an executor's index in a file of its
working directory. ``read_executor_id`` also finds the index of a node that tfos itself
started on this executor.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Literal

from tfos.compat import gpu_info
from tfos.errors import TFOSError

__all__ = ["find_in_path", "get_ip_address", "logger", "read_executor_id", "single_node_env", "write_executor_id"]

logger = logging.getLogger(__name__)

#: The file, in the current working directory, that write_executor_id writes (TensorFlowOnSpark's name).
EXECUTOR_ID_FILE = "executor_id"
#: Set once single_node_env has added Hadoop's jars to CLASSPATH, so it does so once per process tree.
CLASSPATH_UPDATED = "TFOS_CLASSPATH_UPDATED"


def single_node_env(num_gpus: int = 1, worker_index: int = -1, nodes: Sequence[str] = ()) -> None:
    """Prepares this process to run TensorFlow on its own, as TensorFlowOnSpark's ``single_node_env``.

    Adds Hadoop's jars to ``CLASSPATH`` (for TensorFlow's HDFS access through JNI) when
    ``HADOOP_PREFIX`` or ``HADOOP_HOME`` is set, and sets ``CUDA_VISIBLE_DEVICES``:
    to the GPUs Spark assigned to the running task when Spark schedules GPUs, else to
    ``num_gpus`` free GPUs of this host (see :func:`tfos.compat.gpu_info.get_gpus`),
    else to ``""`` (CPU only, also when ``num_gpus`` is 0).

    Args:
        num_gpus: GPUs this process should use.
        worker_index: this process's index in ``nodes`` (or among the processes of the
            host when ``nodes`` is empty), so that processes on one host take different GPUs.
        nodes: ``"host:port"`` of every process, e.g. a flattened cluster spec.

    Raises:
        TFOSError: ``hadoop classpath`` failed, or too few GPUs are free.
    """
    _add_hadoop_classpath()
    spark_gpus = _spark_task_gpus()
    if spark_gpus is not None and num_gpus > 0:
        visible = ",".join(spark_gpus[:num_gpus])
    elif num_gpus > 0 and gpu_info.is_gpu_available():
        index = worker_index
        if worker_index >= 0 and nodes:
            # count only the processes on this host, so that each of them takes other GPUs
            mine = nodes[worker_index]
            host = mine.rsplit(":", 1)[0]
            index = [n for n in nodes if n.rsplit(":", 1)[0] == host].index(mine)
        visible = str(gpu_info.get_gpus(num_gpus, index))
    else:
        visible = ""
    logger.info("CUDA_VISIBLE_DEVICES=%r", visible)
    os.environ["CUDA_VISIBLE_DEVICES"] = visible


def _add_hadoop_classpath() -> None:
    home = os.environ.get("HADOOP_PREFIX") or os.environ.get("HADOOP_HOME")
    if not home or CLASSPATH_UPDATED in os.environ:
        return
    hadoop = os.path.join(home, "bin", "hadoop")
    try:
        jars = subprocess.run([hadoop, "classpath", "--glob"], capture_output=True, text=True, check=True,
                              timeout=120).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise TFOSError(f"'{hadoop} classpath --glob' failed ({exc}); fix HADOOP_PREFIX / HADOOP_HOME or unset "
                        "them if this process needs no HDFS access") from exc
    classpath = os.environ.get("CLASSPATH", "")
    os.environ["CLASSPATH"] = classpath + os.pathsep + jars if classpath else jars
    os.environ[CLASSPATH_UPDATED] = "1"


def _spark_task_gpus() -> list[str] | None:
    """The GPUs Spark gave the running task, or None outside a Spark task or without GPU scheduling."""
    if "pyspark" not in sys.modules:  # not in a Spark Python worker: do not import Spark just to ask
        return None
    from tfos.executor._gpus import spark_assigned_gpus

    return spark_assigned_gpus()


def get_ip_address() -> str:
    """This host's address on the interface that routes to the internet (no packet is sent).

    Falls back to the address the host name resolves to when there is no such route.
    """
    from tfos.executor._bootstrap import _local_ip

    return _local_ip("8.8.8.8")


def find_in_path(path: str, file: str) -> str | Literal[False]:
    """The first ``<dir>/<file>`` that is a file, for ``dir`` in ``path`` (``os.pathsep``-separated), else False."""
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory, file)
        if os.path.isfile(candidate):
            return candidate
    return False


def write_executor_id(num: int) -> None:
    """Writes ``num`` to the file ``executor_id`` in the current working directory."""
    with open(EXECUTOR_ID_FILE, "w") as f:
        f.write(str(num))


def read_executor_id() -> int:
    """The executor's index: from the file :func:`write_executor_id` wrote in the working directory.

    Without that file, the index of the tfos node this executor hosts (a Spark-fed node
    of a running ``TFCluster`` leaves a marker in the executor's working directory).

    Raises:
        TFOSError: neither is there, or markers of several running clusters are.
    """
    if os.path.isfile(EXECUTOR_ID_FILE):
        with open(EXECUTOR_ID_FILE) as f:
            return int(f.read())
    from tfos._paths import local_marker_path

    pattern = os.path.join(glob.escape(os.getcwd()), os.path.basename(local_marker_path("*")))
    markers = sorted(glob.glob(pattern))
    if len(markers) == 1:
        with open(markers[0]) as f:
            return int(json.load(f)["executor_id"])
    found = f"markers of {len(markers)} running tfos clusters ({markers})" if markers else "no tfos node marker"
    raise TFOSError(f"no executor_id file in {os.getcwd()} and {found}. Call util.write_executor_id(n) in this "
                    "executor first, or read ctx.executor_id in map_fun. For a TFCluster, check that Spark runs one "
                    "task per executor (spark.task.cpus = spark.executor.cores), that dynamic allocation is off "
                    "(spark.dynamicAllocation.enabled=false), that num_executors matches the executors the "
                    "application has, and that no other node failed first.")
