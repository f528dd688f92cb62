"""Path resolution shared by NodeContext and the compat layer (executors).

Paths with a scheme are kept; others resolve against Hadoop's default filesystem:
the working directory for ``file://``, the user's home directory otherwise.
"""

from __future__ import annotations

import getpass
import os
import re

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
