"""Feed wire format (executors and node processes): frames of a JSON header plus raw column buffers.

A frame is an 8-byte big-endian header length, the JSON header, then the buffers of
each column listed in ``header["cols"]`` in order. A numpy column (``dtype`` string and
``shape``) is one buffer; a variable-length column (``dtype`` ``"binary"`` or
``"string"``, ``shape`` and ``nbytes``, see :class:`~tfos.feed._columns.VarColumn`) is
two: ``prod(shape) + 1`` little-endian int64 offsets starting at 0, then ``nbytes``
bytes of values, Arrow's layout without padding. Buffers go out with one ``sendmsg``
(``sendall`` per buffer on TLS sockets) straight from the numpy arrays and come in with
``recv_into`` straight into new arrays: no pickle, no per-row work. The handshake that
comes first is described in :mod:`tfos._protocol`. Only plain numeric, bool, fixed-width string and these
variable-length columns are accepted.
"""

from __future__ import annotations

import json
import math
import socket
import ssl
import struct
import time
from typing import Any

import numpy as np

from tfos.errors import ProtocolError
from tfos.feed._columns import VAR_KINDS, Column, VarColumn, check_dtype, column_spec

__all__ = ["MAX_FRAME_BYTES", "MAX_HEADER_BYTES", "MAX_HELLO_BYTES", "check_dtype", "column_spec", "recv_frame",
           "recv_hello", "send_frame", "widen_buffers"]

_LEN = struct.Struct(">Q")
MAX_HELLO_BYTES = 64 << 10
MAX_HEADER_BYTES = 1 << 20
MAX_FRAME_BYTES = 1 << 31
SOCKET_BUFFER_BYTES = 4 << 20
_OFFSETS = np.dtype("<i8")


def widen_buffers(sock: socket.socket, nbytes: int = SOCKET_BUFFER_BYTES) -> None:
    """Asks for large kernel socket buffers: a chunk then moves in a few system calls
    instead of hundreds of 200 KiB hand-offs between feeder and node. The kernel caps
    the size (net.core.wmem_max / rmem_max); smaller buffers still work, just slower."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, nbytes)
        except OSError:
            pass


def send_frame(sock: socket.socket, header: dict[str, Any], arrays: list[Column] = ()) -> None:
    specs, payload = [], []
    for a in arrays:
        if isinstance(a, VarColumn):
            a = a.compact()
            specs.append({**column_spec(a), "nbytes": len(a.data)})
            payload.append(a.offsets.astype(_OFFSETS, copy=False))
            payload.append(a.data)
        else:
            a = np.ascontiguousarray(a)
            specs.append(column_spec(a))
            payload.append(a)
    if specs:
        header = {**header, "cols": specs}
    raw = json.dumps(header, separators=(",", ":")).encode()
    buffers = [memoryview(_LEN.pack(len(raw)) + raw)] + [memoryview(a).cast("B") for a in payload if a.nbytes]
    if isinstance(sock, ssl.SSLSocket):  # no sendmsg on TLS: each buffer is encrypted from where it lies
        for buffer in buffers:
            sock.sendall(buffer)
        return
    while buffers:
        sent = sock.sendmsg(buffers)
        while buffers and sent >= len(buffers[0]):
            sent -= len(buffers[0])
            buffers.pop(0)
        if buffers and sent:
            buffers[0] = buffers[0][sent:]


def recv_hello(sock: socket.socket, deadline: float) -> dict[str, Any] | None:
    """Reads a frame of the handshake, before the peer has proven anything: a JSON object of at most
    MAX_HELLO_BYTES and no column buffers, all of it by ``deadline`` (``time.monotonic()``), however
    the peer trickles its bytes. Nothing is allocated from the peer's numbers."""
    hello = _recv_header(sock, MAX_HELLO_BYTES, "hello", deadline)
    if hello is not None and "cols" in hello:
        raise ProtocolError("feed hello must be a JSON object without columns")
    return hello


def _recv_header(sock: socket.socket, limit: int, what: str, deadline: float | None = None) -> dict[str, Any] | None:
    """A frame's JSON header of at most ``limit`` bytes; None when the peer closed the connection cleanly."""
    prefix = _recv_exact(sock, _LEN.size, allow_eof=True, deadline=deadline)
    if prefix is None:
        return None
    (length,) = _LEN.unpack(prefix)
    if length > limit:
        raise ProtocolError(f"feed {what} of {length} bytes exceeds {limit}")
    try:
        header = json.loads(_recv_exact(sock, length, deadline=deadline))
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested past the parser's depth
        raise ProtocolError(f"feed {what} is not JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"feed {what} must be a JSON object")
    return header


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], list[Column]] | None:
    """Reads one frame; returns None when the peer closed the connection cleanly."""
    header = _recv_header(sock, MAX_HEADER_BYTES, "header")
    if header is None:
        return None
    arrays: list[Column] = []
    total = 0
    for col in header.get("cols", []):
        try:
            kind = col["dtype"] if col["dtype"] in VAR_KINDS else None
            dtype = _OFFSETS if kind else np.dtype(col["dtype"])
            shape = tuple(int(d) for d in col["shape"])
            nbytes = int(col["nbytes"]) if kind else 0
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad column spec {col!r}: {exc}") from None
        check_dtype(dtype)
        if any(d < 0 for d in shape) or nbytes < 0 or (kind and not shape):
            raise ProtocolError(f"bad column spec {col!r}")
        count = math.prod(shape)
        total += dtype.itemsize * (count + (1 if kind else 0)) + nbytes
        if total > MAX_FRAME_BYTES:  # before allocating: a bad header must not exhaust memory
            raise ProtocolError(f"feed frame exceeds {MAX_FRAME_BYTES} bytes")
        if kind:
            offsets = _recv_array(sock, np.empty(count + 1, _OFFSETS))
            data = _recv_array(sock, np.empty(nbytes, np.uint8))
            if offsets[0] != 0 or offsets[-1] != nbytes or (count and (offsets[1:] < offsets[:-1]).any()):
                raise ProtocolError(f"bad offsets in {kind} column {col!r}")
            arrays.append(VarColumn(kind, offsets, data, shape))
        else:
            arrays.append(_recv_array(sock, np.empty(shape, dtype)))
    return header, arrays


def _recv_array(sock: socket.socket, array: np.ndarray) -> np.ndarray:
    if array.nbytes:
        view = memoryview(array).cast("B")
        got = 0
        while got < array.nbytes:
            # MSG_WAITALL: one system call (and one GIL hand-off) per buffer on blocking sockets;
            # TLS sockets take no flags and return a record (16 KiB) at a time
            n = sock.recv_into(view[got:], 0, 0 if isinstance(sock, ssl.SSLSocket) else socket.MSG_WAITALL)
            if n == 0:
                raise ConnectionError("feed peer closed the connection mid-frame")
            got += n
    return array


def _recv_exact(sock: socket.socket, n: int, allow_eof: bool = False, deadline: float | None = None) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("feed peer did not finish its handshake in time")
            sock.settimeout(left)
        chunk = sock.recv(n - len(data))
        if not chunk:
            if allow_eof and not data:
                return None
            raise ConnectionError("feed peer closed the connection mid-frame")
        data += chunk
    return bytes(data)
