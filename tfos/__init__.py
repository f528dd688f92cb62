"""tfos: TensorFlow distributed training and inference inside Apache Spark.

The public surface is re-exported here; every other module is private. Importing
tfos does not import TensorFlow: nodes import it inside ``main_fun``.
"""

import os

# gRPC Python documents fork support as off by default, but its C core runs fork handlers unless this says
# otherwise: a process with live channels that forks to exec (Popen with a preexec_fn, as PySpark launches
# its JVM) can then lose the child before the exec (grpc/grpc#43055). tfos never carries gRPC across a fork;
# the processes tfos starts inherit the setting.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from tfos._version import __version__
from tfos.config import ClusterConfig, InputMode
from tfos.driver._attach import AttachedCluster, attach
from tfos.driver._cluster import Cluster, ClusterState, run
from tfos.errors import (
    AuthError,
    FeedDataError,
    FeedTimeoutError,
    NodeError,
    NodeFailedError,
    ProtocolError,
    ReservationGoneError,
    ReservationTimeoutError,
    TFOSConfigError,
    TFOSError,
)
from tfos.executor._context import NodeContext
from tfos.feed import DataFeed

__all__ = [
    "AttachedCluster",
    "AuthError",
    "Cluster",
    "ClusterConfig",
    "ClusterState",
    "DataFeed",
    "FeedDataError",
    "FeedTimeoutError",
    "InputMode",
    "NodeContext",
    "NodeError",
    "NodeFailedError",
    "ProtocolError",
    "ReservationGoneError",
    "ReservationTimeoutError",
    "TFOSConfigError",
    "TFOSError",
    "__version__",
    "attach",
    "run",
]
