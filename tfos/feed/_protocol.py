"""Feed wire format (executors): frames of a JSON header plus raw column buffers.

A frame is an 8-byte big-endian header length, the JSON header, then the bytes of
each column listed in ``header["cols"]`` (dtype string and shape) in order. Column
buffers go out with one ``sendmsg`` straight from the numpy arrays and come in with
``recv_into`` straight into new arrays: no pickle, no per-row work. Only plain
numeric, bool and fixed-width string dtypes are accepted.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import numpy as np

from tfos.errors import ProtocolError

_LEN = struct.Struct(">Q")
MAX_HEADER_BYTES = 1 << 20
MAX_FRAME_BYTES = 1 << 31
_KINDS = set("biufcSUb?")
SOCKET_BUFFER_BYTES = 4 << 20


def widen_buffers(sock: socket.socket, nbytes: int = SOCKET_BUFFER_BYTES) -> None:
    """Asks for large kernel socket buffers: a chunk then moves in a few system calls
    instead of hundreds of 200 KiB hand-offs between feeder and node. The kernel caps
    the size (net.core.wmem_max / rmem_max); smaller buffers still work, just slower."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, nbytes)
        except OSError:
            pass


def column_spec(array: np.ndarray) -> dict[str, Any]:
    return {"dtype": array.dtype.str, "shape": list(array.shape)}


def check_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in _KINDS or dtype.fields is not None or dtype.hasobject:
        raise ProtocolError(f"dtype {dtype} cannot be fed: use numbers, bools or fixed-width strings")


def send_frame(sock: socket.socket, header: dict[str, Any], arrays: list[np.ndarray] = ()) -> None:
    arrays = [np.ascontiguousarray(a) for a in arrays]
    if arrays:
        header = {**header, "cols": [column_spec(a) for a in arrays]}
    raw = json.dumps(header, separators=(",", ":")).encode()
    buffers = [memoryview(_LEN.pack(len(raw)) + raw)] + [memoryview(a).cast("B") for a in arrays if a.nbytes]
    while buffers:
        sent = sock.sendmsg(buffers)
        while buffers and sent >= len(buffers[0]):
            sent -= len(buffers[0])
            buffers.pop(0)
        if buffers and sent:
            buffers[0] = buffers[0][sent:]


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], list[np.ndarray]] | None:
    """Reads one frame; returns None when the peer closed the connection cleanly."""
    prefix = _recv_exact(sock, _LEN.size, allow_eof=True)
    if prefix is None:
        return None
    (length,) = _LEN.unpack(prefix)
    if length > MAX_HEADER_BYTES:
        raise ProtocolError(f"feed header of {length} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(_recv_exact(sock, length))
    except ValueError as exc:
        raise ProtocolError(f"feed header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("feed header must be a JSON object")
    arrays = []
    total = 0
    for col in header.get("cols", []):
        try:
            dtype, shape = np.dtype(col["dtype"]), tuple(int(d) for d in col["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad column spec {col!r}: {exc}") from None
        check_dtype(dtype)
        if any(d < 0 for d in shape):
            raise ProtocolError(f"bad column shape {shape}")
        array = np.empty(shape, dtype)
        total += array.nbytes
        if total > MAX_FRAME_BYTES:
            raise ProtocolError(f"feed frame exceeds {MAX_FRAME_BYTES} bytes")
        if array.nbytes:
            view = memoryview(array).cast("B")
            got = 0
            while got < array.nbytes:
                # MSG_WAITALL: one system call (and one GIL hand-off) per column on blocking sockets
                n = sock.recv_into(view[got:], 0, socket.MSG_WAITALL)
                if n == 0:
                    raise ConnectionError("feed peer closed the connection mid-frame")
                got += n
        arrays.append(array)
    return header, arrays


def _recv_exact(sock: socket.socket, n: int, allow_eof: bool = False) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            if allow_eof and not data:
                return None
            raise ConnectionError("feed peer closed the connection mid-frame")
        data += chunk
    return bytes(data)
