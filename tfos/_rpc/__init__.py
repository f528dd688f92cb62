"""Control-plane wire (driver and executors): JSON messages over gRPC, authenticated.

Nothing read from the network is unpickled: requests and replies are JSON objects,
and every call carries the per-cluster secret in its metadata.
"""

from tfos._rpc._wire import METHODS, ControlClient, serve

__all__ = ["METHODS", "ControlClient", "serve"]
