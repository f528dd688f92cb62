"""Paths both sides agree on (executors and node processes), and path resolution.

The node's Unix feed socket, the marker naming the node an executor hosts, node logs
and epoch-cache directories live here, where the node task, the node process and
feeding tasks all find them. Paths with a scheme are kept; others resolve against
Hadoop's default filesystem: the working directory for ``file://``, the user's home
directory otherwise.
"""

from __future__ import annotations

import getpass
import os
import re
import tempfile

from tfos import _constants as C

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def absolute_path(path: str, default_fs: str, working_dir: str) -> str:
    """Returns ``path`` as a fully qualified URI, TensorFlowOnSpark's ``hdfs_path``."""
    if _SCHEME.match(path):
        return path
    default_fs = (default_fs or "file:///").rstrip("/")
    if default_fs.startswith("file:"):
        return "file://" + (path if os.path.isabs(path) else os.path.join(working_dir, path))
    if path.startswith("/"):
        return default_fs + path
    return f"{default_fs}/user/{getpass.getuser()}/{path}"


def local_path(uri: str) -> str:
    """Strips ``file://`` so that local tools (TensorBoard, open()) accept the path."""
    return uri[len("file://"):] if uri.startswith("file://") else uri


def unix_socket_path(cluster_id: str, executor_id: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"tfos-{cluster_id[:12]}-{executor_id}.sock")


def local_marker_path(cluster_id: str) -> str:
    """File in the executor's working directory naming the node that this executor hosts."""
    return os.path.join(os.getcwd(), f"tfos-{cluster_id}.node")


def log_path(job_name: str, task_index: int) -> str:
    return os.path.join(os.getcwd(), f"tfos-{job_name}-{task_index}.log")


def cache_dir(cluster_id: str, executor_id: int) -> str:
    """Where a node's epoch cache spills; the executor's task deletes it after the node exits."""
    base = C.get_str(C.FEED_CACHE_DIR) or os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(base, f"tfos-cache-{cluster_id}-{executor_id}")
