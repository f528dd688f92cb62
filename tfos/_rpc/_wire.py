"""Control-plane wire format and transport (driver and executors).

Each call is a unary gRPC method ``/tfos.Control/<Method>`` whose request and reply
are JSON objects encoded as UTF-8, over mutually authenticated TLS 1.3 with the
cluster generation's :class:`~tfos._security.Credential`: a peer without the key fails
the handshake in gRPC's own I/O threads, before it can open a stream, so it costs no
worker thread and no buffered body. Authenticated peers are bounded too: at most
``max_workers`` calls run at once (more are refused with RESOURCE_EXHAUSTED rather
than queued), each connection opens at most ``MAX_STREAMS`` streams, and a request
larger than ``MAX_CALL_BYTES`` is refused for every method but the few that carry code
(``large``). A server serves the methods it is given (``serve``); a client calls any.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Collection, Mapping
from concurrent import futures
from typing import Any

import grpc

from tfos._security import TLS_NAME, Credential
from tfos.errors import AuthError, ProtocolError, TFOSError

log = logging.getLogger(__name__)

SERVICE = "tfos.Control"
#: The largest request of a method that carries code (a reservation's Submit).
MAX_MESSAGE_BYTES = 4 << 20
#: The largest request of every other method (a node's Log batch reads at most 256 KiB).
MAX_CALL_BYTES = 1 << 20
#: Concurrent streams one HTTP/2 connection may open.
MAX_STREAMS = 16
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]
_CLIENT_OPTIONS = [*_OPTIONS, ("grpc.ssl_target_name_override", TLS_NAME)]

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


def _guarded(name: str, handler: Handler, limit: int) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    def call(request: bytes, context: grpc.ServicerContext) -> bytes:
        if len(request) > limit:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{name} request of {len(request)} bytes exceeds {limit}")
        try:
            return encode(handler(decode(request)))
        except AuthError as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc)[:500])
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {detail}"[:500])
        raise AssertionError("unreachable")  # context.abort always raises

    return call


class _Pool:
    """The handlers' threads. Not a ``concurrent.futures.ThreadPoolExecutor``: CPython shuts those down at
    interpreter exit *before* atexit hooks run, and the control server must keep answering until the
    atexit teardown has told every node to stop."""

    def __init__(self, workers: int) -> None:
        self._work: queue.SimpleQueue[tuple[futures.Future, Callable[..., Any], tuple, dict] | None] = \
            queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"tfos-rpc-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> futures.Future:
        future: futures.Future = futures.Future()
        self._work.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, **_: Any) -> None:
        for _thread in self._threads:
            self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join(5)

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                    future.set_exception(exc)
            # gRPC releases a call's HTTP/2 stream when its objects are freed: hold nothing while idle
            del item, future, fn, args, kwargs


class Served:
    """A running control server: gRPC's server and the threads its handlers run on."""

    def __init__(self, server: grpc.Server, pool: _Pool) -> None:
        self._server, self._pool = server, pool

    def stop(self, grace: float | None = None) -> threading.Event:
        """Stops serving (calls still running get ``grace`` seconds), then ends the handler threads."""
        stopped = self._server.stop(grace)
        stopped.wait((grace or 0) + 2)
        self._pool.shutdown(wait=False)
        return stopped


def serve(handlers: Mapping[str, Handler], credential: Credential, host: str, ports: range, max_workers: int,
          large: Collection[str] = ()) -> tuple[Served, int]:
    """Starts a TLS gRPC server for ``handlers`` on the first free port of ``ports``.

    ``large`` names the methods whose requests may reach MAX_MESSAGE_BYTES. Returns the
    server and the bound port. Raises TFOSError when no port is free.
    """
    pool = _Pool(max_workers)
    server = grpc.server(pool,
                         options=[*_OPTIONS, ("grpc.max_concurrent_streams", MAX_STREAMS)],
                         maximum_concurrent_rpcs=max_workers)
    rpc_handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _guarded(name, fn, MAX_MESSAGE_BYTES if name in large else MAX_CALL_BYTES))
        for name, fn in handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, rpc_handlers),))
    tls = credential.grpc_server()
    for port in ports:
        try:
            bound = server.add_secure_port(f"{_bracket(host)}:{port}", tls)
        except RuntimeError:
            continue
        if bound:
            server.start()
            return Served(server, pool), bound
    pool.shutdown(wait=False)
    raise TFOSError(
        f"no free port for the tfos control server on {host or '*'} in {ports.start}-{ports.stop - 1}; "
        "widen TFOS_SERVER_PORT or set it to 0"
    )


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else (host or "0.0.0.0")


class ControlClient:
    """Calls a control server over TLS with the cluster's credential."""

    def __init__(self, address: str, credential: Credential) -> None:
        self.address = address
        self._channel = grpc.secure_channel(address, credential.grpc_channel(), options=_CLIENT_OPTIONS)
        self._stubs: dict[str, Any] = {}

    def call(self, method: str, message: Mapping[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Sends ``message`` and returns the decoded reply.

        Raises AuthError when the TLS handshake fails (the peer holds another cluster's
        key, or is not a tfos server), ProtocolError on a rejected message and TFOSError
        (with the gRPC status as ``code``) when the server cannot be reached.
        """
        stub = self._stubs.get(method)
        if stub is None:
            stub = self._stubs[method] = self._channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            reply = stub(encode(message), timeout=timeout)
        except grpc.RpcError as exc:
            raise _translate(exc, method, self.address) from None
        return decode(reply)

    def close(self) -> None:
        self._channel.close()


def _translate(exc: grpc.RpcError, method: str, address: str) -> TFOSError:
    """The one place where gRPC's failures become tfos errors, by status code."""
    code, detail = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and "handshake" in detail.lower():
        return AuthError(f"{address} refused the TLS handshake for {method}: it holds another cluster's key "
                         "(a stale handle or address) or is not a tfos server", handshake=True)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return AuthError(f"{address} rejected {method}: {detail}", handshake=False)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ProtocolError(f"{address} rejected {method}: {detail}")
    return TFOSError(f"control call {method} to {address} failed: {code.name}: {detail}", code=code.name)
