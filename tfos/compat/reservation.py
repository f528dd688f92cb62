"""TensorFlowOnSpark's ``reservation`` module (driver server, executor clients).

Nodes ``register`` a dict of metadata with a ``Server`` on the driver and wait until
``count`` have done so, as in TFoS, but over tfos's control plane: JSON over gRPC
over mutual TLS with a per-server key, never pickle from a socket. The address that
``Server.start()`` returns carries the key, so TFoS code that pickles it into its
Spark closures and builds ``Client(addr)`` on the executors works unchanged.
``TFOS_SERVER_HOST`` and ``TFOS_SERVER_PORT`` (a port or a range like ``9000-9100``)
choose the address, as in TFoS, through ``Server.get_server_ip()`` and
``get_server_ports()`` (a subclass may override them). ``start_listening_socket()``
returns a plain TCP socket bound as TFoS bound its own, for code that wants one;
tfos's server is gRPC and does not use it. TFoS's pickled ``receive`` / ``send`` are
refused with an error naming the calls to use.

Metadata travels as JSON: strings, numbers, booleans, None, lists, dicts with string
keys, and bytes (kept as bytes). Tuples come back as lists.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import threading
import time
from typing import Any

from tfos import _constants as C
from tfos._rpc import ControlClient, serve
from tfos._security import Credential
from tfos.compat._unsupported import module_getattr, refused_method
from tfos.errors import AuthError, ProtocolError, ReservationTimeoutError, TFOSConfigError, TFOSError

__all__ = ["Client", "Reservations", "Server", "ServerAddress", "TFOS_SERVER_HOST", "TFOS_SERVER_PORT", "logger"]

log = logging.getLogger(__name__)
logger = log  # TensorFlowOnSpark's name

#: The environment variables that choose the server's host and port (or port range), as in TFoS.
TFOS_SERVER_HOST = C.SERVER_HOST[0]
TFOS_SERVER_PORT = C.SERVER_PORT[0]

__getattr__, __dir__ = module_getattr(__name__, {
    "BUFSIZE": "It sized reads from TFoS's pickle-over-TCP socket; tfos's reservation calls are authenticated "
               "gRPC messages, with no buffer to tune.",
    "MAX_RETRIES": "It bounded TFoS's socket reconnects; tfos's Client calls are bounded by "
                   "await_reservations(timeout) and the server's reservation_timeout.",
    "MessageSocket": "It sent pickled messages over raw sockets, which tfos never unpickles: use "
                     "reservation.Client / Server, whose calls are authenticated JSON.",
})

#: Seconds the server holds a client's ``await_reservations`` call before it asks again.
_HOLD_SECS = 2.0
#: This module's own control methods, which its Server serves (the core's are tfos._protocol.Method).
_RESERVE, _RESERVATIONS, _REQUEST_STOP = "Reserve", "Reservations", "RequestStop"
_BYTES = "__bytes_b64__"
_NO_PICKLE = ("It read or wrote a pickled message on a raw socket, which tfos never does: use Client.register / "
              "get_reservations / await_reservations / request_stop, which are authenticated JSON calls.")


class Reservations:
    """Thread-safe store of node reservations; ``done()`` once ``required`` have arrived."""

    def __init__(self, required: int) -> None:
        self.required = required
        self.lock = threading.RLock()
        self.reservations: list[dict[str, Any]] = []

    def add(self, meta: dict[str, Any]) -> None:
        with self.lock:
            self.reservations.append(meta)

    def done(self) -> bool:
        with self.lock:
            return len(self.reservations) >= self.required

    def get(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.reservations)

    def remaining(self) -> int:
        with self.lock:
            return self.required - len(self.reservations)


class ServerAddress(tuple):
    """``(host, port)`` of a reservation server, carrying its TLS credential to the clients.

    TFoS code pickles the address into its Spark closures, so the credential reaches the
    executors through Spark's own channel, never over the reservation server's socket.
    """

    credential: Credential

    def __new__(cls, host: str, port: int, credential: Credential) -> ServerAddress:
        address = super().__new__(cls, (host, port))
        address.credential = credential
        return address

    def __getnewargs__(self) -> tuple[str, int, Credential]:
        return self[0], self[1], self.credential

    def __repr__(self) -> str:  # the key stays out of logs
        return f"ServerAddress({self[0]!r}, {self[1]})"


class Server:
    """Collects ``count`` reservations from the executors (driver side)."""

    def __init__(self, count: int) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise TFOSConfigError(f"count must be an integer >= 1; got {count!r}")
        self.reservations = Reservations(count)
        self.done = False
        self._credential = Credential.make()
        self._cond = threading.Condition()
        self._server: Any = None

    def start(self) -> ServerAddress:
        """Starts serving; returns the address (with its TLS credential) to hand to ``Client``.

        The address is :meth:`get_server_ip` and the first free port of :meth:`get_server_ports`.

        Raises:
            TFOSError: no port of ``TFOS_SERVER_PORT`` was free.
        """
        host = self.get_server_ip()
        ports = self.get_server_ports()
        handlers = {_RESERVE: self._reserve, _RESERVATIONS: self._list, _REQUEST_STOP: self._request_stop}
        workers = 2 * self.reservations.required + 8
        # An explicit TFOS_SERVER_HOST is also the interface served on; otherwise every interface, as TFoS did.
        bind = C.get_str(C.SERVER_HOST) or "0.0.0.0"
        for candidate in ports:
            try:
                self._server, port = serve(handlers, self._credential, bind, range(candidate, candidate + 1), workers)
                break
            except TFOSError:
                continue
        else:
            raise TFOSError(f"the reservation server could bind none of ports {_shown(ports)} on {bind}; "
                            f"widen {TFOS_SERVER_PORT} or set it to 0 (any free port)")
        log.info("reservation server listening on %s:%d for %d nodes", host, port, self.reservations.required)
        return ServerAddress(host, port, self._credential)

    def get_server_ip(self) -> str:
        """``TFOS_SERVER_HOST`` if set, else this host's outward address (:func:`tfos.compat.util.get_ip_address`)."""
        from tfos.compat import util

        return os.environ.get(TFOS_SERVER_HOST) or util.get_ip_address()

    def get_server_ports(self) -> list[int]:
        """The ports ``TFOS_SERVER_PORT`` allows, e.g. ``[8888]`` for ``8888`` or ``[9997, 9998, 9999]`` for
        ``9997-9999``; ``[0]`` (any free port) when it is unset.

        Raises:
            TFOSConfigError: the value is not a port or a range of ports.
        """
        return list(C.port_range(C.SERVER_PORT))

    def start_listening_socket(self) -> socket.socket:
        """A listening TCP socket bound to the first free port of :meth:`get_server_ports`, as TFoS's.

        The caller owns (and closes) the socket. On ``TFOS_SERVER_HOST``'s interface when
        that is set, else on every interface. :meth:`start` does not use it: tfos's server
        speaks authenticated gRPC, which binds its own port from the same list.

        Raises:
            TFOSError: no port of the list was free.
        """
        ports = self.get_server_ports()
        bind = os.environ.get(TFOS_SERVER_HOST) or ""
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((bind, port))
                sock.listen(10)
            except OSError as exc:
                sock.close()
                log.warning("reservation server: cannot bind port %d: %s", port, exc)
                continue
            log.info("reservation server socket bound to port %d", sock.getsockname()[1])
            return sock
        raise TFOSError(f"the reservation server could bind none of ports {_shown(ports)}; widen "
                        f"{TFOS_SERVER_PORT} or set it to 0 (any free port)")

    receive = refused_method("reservation.Server.receive", _NO_PICKLE)
    send = refused_method("reservation.Server.send", _NO_PICKLE)

    def await_reservations(self, sc: Any = None, status: dict[str, Any] | None = None,
                           timeout: float = 600) -> list[dict[str, Any]]:
        """Waits until every node registered; returns their metadata in arrival order.

        Raises:
            TFOSError: ``status`` got an ``'error'`` entry (e.g. the Spark job hosting the nodes failed).
            ReservationTimeoutError: fewer than ``count`` nodes registered within ``timeout`` seconds.
        """
        status = status if status is not None else {}
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.reservations.done():
                if "error" in status:
                    raise TFOSError(f"reservation failed: {status['error']}")
                left = deadline - time.monotonic()
                if left <= 0:
                    required, remaining = self.reservations.required, self.reservations.remaining()
                    raise ReservationTimeoutError(
                        f"only {required - remaining} of {required} nodes registered within timeout={timeout}s; "
                        "check that the Spark application has enough executors, or raise the timeout",
                        registered=required - remaining, expected=required)
                self._cond.wait(min(1.0, left))
        return self.reservations.get()

    def stop(self) -> None:
        """Stops serving; idempotent."""
        with self._cond:
            self.done = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.stop(grace=0.5).wait(2)
            self._server = None

    # ---- RPC handlers --------------------------------------------------------------------
    def _reserve(self, msg: dict[str, Any]) -> dict[str, Any]:
        meta = msg["meta"]
        if not isinstance(meta, dict):
            raise ProtocolError("field 'meta' must be an object")
        with self._cond:
            self.reservations.add(_decode(meta))
            self._cond.notify_all()
        return {"ok": True}

    def _list(self, msg: dict[str, Any]) -> dict[str, Any]:
        wait = msg.get("wait", 0)
        if isinstance(wait, bool) or not isinstance(wait, (int, float)):
            raise ProtocolError("field 'wait' must be a number")
        with self._cond:
            self._cond.wait_for(lambda: self.reservations.done() or self.done, timeout=min(max(wait, 0), _HOLD_SECS))
            return {"done": self.reservations.done(), "stopped": self.done,
                    "reservations": [_encode(m) for m in self.reservations.get()]}

    def _request_stop(self, msg: dict[str, Any]) -> dict[str, Any]:
        with self._cond:
            self.done = True
            self._cond.notify_all()
        return {"ok": True}


class Client:
    """Registers a node with a reservation :class:`Server` (executor side)."""

    def __init__(self, server_addr: Any, credential: Credential | None = None) -> None:
        credential = credential or getattr(server_addr, "credential", None)
        if credential is None:
            raise AuthError("this reservation server address carries no key: pass the address returned by "
                            "Server.start() (it carries the server's TLS credential), or Client(addr, credential=...)")
        host, port = server_addr
        self.server_addr = (host, port)
        self._client = ControlClient(f"{host}:{port}", credential)

    def register(self, reservation: dict[str, Any]) -> str:
        """Adds this node's metadata (a dict of JSON-able values and bytes)."""
        if not isinstance(reservation, dict):
            raise TFOSConfigError(f"a reservation must be a dict; got {type(reservation).__name__}")
        try:
            self._client.call(_RESERVE, {"meta": _encode(reservation)})
        except TypeError as exc:
            raise TFOSConfigError(f"reservation values must be JSON-serializable or bytes: {exc}") from None
        return "OK"

    def get_reservations(self) -> list[dict[str, Any]]:
        """The reservations so far."""
        return [_decode(m) for m in self._client.call(_RESERVATIONS, {})["reservations"]]

    def await_reservations(self, timeout: float = 600) -> list[dict[str, Any]]:
        """Waits until every node registered; returns their metadata.

        Raises ReservationTimeoutError after ``timeout`` seconds, TFOSError if the server
        was stopped first.
        """
        deadline = time.monotonic() + timeout
        while True:
            reply = self._client.call(_RESERVATIONS, {"wait": _HOLD_SECS}, timeout=_HOLD_SECS + 30)
            if reply["done"]:
                return [_decode(m) for m in reply["reservations"]]
            if reply["stopped"]:
                raise TFOSError("the reservation server was stopped before every node registered")
            if time.monotonic() > deadline:
                raise ReservationTimeoutError(f"reservations incomplete after {timeout}s "
                                              f"({len(reply['reservations'])} registered)")

    def request_stop(self) -> None:
        """Asks the server to stop waiting (``Server.done`` turns true)."""
        self._client.call(_REQUEST_STOP, {})

    def close(self) -> None:
        """Closes the connection to the server."""
        self._client.close()

    receive = refused_method("reservation.Client.receive", _NO_PICKLE)
    send = refused_method("reservation.Client.send", _NO_PICKLE)


def _shown(ports: list[int]) -> str:
    return f"{ports[0]}-{ports[-1]}" if len(ports) > 2 and ports == list(range(ports[0], ports[-1] + 1)) else str(ports)


def _encode(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {_BYTES: base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_BYTES} and isinstance(value[_BYTES], str):
            try:
                return base64.b64decode(value[_BYTES], validate=True)
            except ValueError:
                raise ProtocolError("malformed bytes value in a reservation") from None
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value
