"""tfos: TensorFlow distributed training and inference inside Apache Spark.

The public surface is re-exported here; every other module is private. Importing
tfos does not import TensorFlow: nodes import it inside ``main_fun``.
"""

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
