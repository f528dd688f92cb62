"""Control-plane wire format and transport (driver and executors).

Each call is a unary gRPC method ``/tfos.Control/<Method>`` whose request and reply
are JSON objects encoded as UTF-8. The per-cluster secret travels in the
``tfos-secret`` metadata entry and is compared in constant time before the request
is even decoded.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Mapping
from concurrent import futures
from typing import Any

import grpc

from tfos.errors import AuthError, ProtocolError, TFOSError

log = logging.getLogger(__name__)

SERVICE = "tfos.Control"
METHODS = ("Register", "AwaitSpec", "Poll", "Report", "FeedError", "FeedPlan", "Terminate", "Log", "Metrics",
           "AgentPoll", "AgentDone",  # held nodes' agents (tfos reserve)
           "Status", "Submit", "RunState", "Logs", "Release",  # clients of a reservation (tfos.attach, the CLI)
           "Reserve", "Reservations", "RequestStop")  # tfos.compat.reservation
SECRET_KEY = "tfos-secret"
MAX_MESSAGE_BYTES = 4 << 20
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"request is not valid JSON: {type(exc).__name__}: {exc}"[:300]) from None
    if not isinstance(message, dict):
        raise ProtocolError(f"request must be a JSON object, got {type(message).__name__}")
    return message


def _guarded(handler: Handler, secret: bytes) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    def call(request: bytes, context: grpc.ServicerContext) -> bytes:
        given = dict(context.invocation_metadata()).get(SECRET_KEY, "")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), secret):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong tfos cluster secret")
        try:
            return encode(handler(decode(request)))
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {detail}"[:500])
        raise AssertionError("unreachable")  # context.abort always raises

    return call


def serve(
    handlers: Mapping[str, Handler], secret: str, host: str, ports: range, max_workers: int
) -> tuple[grpc.Server, int]:
    """Starts a gRPC server for ``handlers`` on the first free port of ``ports``.

    Returns the server and the bound port. Raises TFOSError when no port is free.
    """
    unknown = set(handlers) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown control methods {sorted(unknown)}")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tfos-rpc"),
                         options=_OPTIONS)
    rpc_handlers = {
        name: grpc.unary_unary_rpc_method_handler(_guarded(fn, secret.encode())) for name, fn in handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, rpc_handlers),))
    for port in ports:
        try:
            bound = server.add_insecure_port(f"{_bracket(host)}:{port}")
        except RuntimeError:
            continue
        if bound:
            server.start()
            return server, bound
    raise TFOSError(
        f"no free port for the tfos control server on {host or '*'} in {ports.start}-{ports.stop - 1}; "
        "widen TFOS_SERVER_PORT or set it to 0"
    )


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else (host or "0.0.0.0")


class ControlClient:
    """Calls the driver's control server with the cluster secret attached."""

    def __init__(self, address: str, secret: str) -> None:
        self.address = address
        self._metadata = ((SECRET_KEY, secret),)
        self._channel = grpc.insecure_channel(address, options=_OPTIONS)
        self._stubs = {name: self._channel.unary_unary(f"/{SERVICE}/{name}") for name in METHODS}

    def call(self, method: str, message: Mapping[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Sends ``message`` and returns the decoded reply.

        Raises AuthError on a rejected secret, ProtocolError on a rejected message and
        TFOSError (with the gRPC status) when the driver cannot be reached.
        """
        try:
            reply = self._stubs[method](encode(message), metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as exc:
            code, detail = exc.code(), exc.details()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise AuthError(f"{self.address} rejected the call: {detail}") from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise ProtocolError(f"{self.address} rejected {method}: {detail}") from None
            raise TFOSError(f"control call {method} to {self.address} failed: {code.name}: {detail}",
                            code=code.name) from None
        return decode(reply)

    def close(self) -> None:
        self._channel.close()
