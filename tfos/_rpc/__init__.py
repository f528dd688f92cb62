"""Control-plane wire (driver and executors): JSON messages over gRPC with mutual TLS.

Nothing read from the network is unpickled: requests and replies are JSON objects, and
only peers holding the cluster generation's key complete the TLS handshake.
"""

from tfos._rpc._node_client import NodeClient
from tfos._rpc._wire import ControlClient, serve

__all__ = ["ControlClient", "NodeClient", "serve"]
