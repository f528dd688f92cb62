"""Feed wire format (executors and node processes): frames of a JSON header plus raw column buffers.

A frame is an 8-byte big-endian header length, the JSON header, then the buffers of
each column listed in ``header["cols"]`` in order. A numpy column (``dtype`` string and
``shape``) is one buffer; a variable-length column (``dtype`` ``"binary"`` or
``"string"``, ``shape`` and ``nbytes``, see :class:`~tfos.feed._columns.VarColumn`) is
two: ``prod(shape) + 1`` little-endian int64 offsets starting at 0, then ``nbytes``
bytes of values, Arrow's layout without padding. Buffers go out with one ``sendmsg``
straight from the numpy arrays and come in with ``recv_into`` straight into new arrays:
no pickle, no per-row work. The handshake that comes first is described in
:mod:`tfos._protocol`; on TCP with TLS, the frames after it travel in
:class:`SealedStream` records. Only plain numeric, bool, fixed-width string and these
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

__all__ = ["MAX_FRAME_BYTES", "MAX_HEADER_BYTES", "MAX_HELLO_BYTES", "SealedStream", "check_dtype", "column_spec",
           "recv_frame", "recv_hello", "send_frame", "widen_buffers"]

_LEN = struct.Struct(">Q")
MAX_HELLO_BYTES = 64 << 10
MAX_HEADER_BYTES = 1 << 20
MAX_FRAME_BYTES = 1 << 31
SOCKET_BUFFER_BYTES = 4 << 20
_OFFSETS = np.dtype("<i8")
#: The most plaintext one SealedStream record carries.
SEALED_RECORD_BYTES = 1 << 20
_RECORD = struct.Struct(">I")
_TAG_BYTES = 16


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
    if isinstance(sock, SealedStream):
        sock.send_buffers(buffers)
        return
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
            # TLS sockets take no flags and return a record (16 KiB) at a time, sealed streams one of theirs
            flags = 0 if isinstance(sock, (ssl.SSLSocket, SealedStream)) else socket.MSG_WAITALL
            n = sock.recv_into(view[got:], 0, flags)
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


class SealedStream:
    """The frames of a TCP feed after its TLS handshake: AES-256-GCM records on the socket itself.

    TLS through Python's ``ssl`` costs a feed more CPU than it can spare on a busy executor: the
    system OpenSSL (3.0) encrypts at about 0.27 ms a MiB, and a system call per 16 KiB record
    (two per record read) doubles that. So TLS 1.3 authenticates both ends and carries the
    handshake, in which each end sends a fresh random key share (:func:`tfos._security.feed_keys`);
    then both leave TLS (close_notify both ways, so no record is left half read) and the rows go
    in records of up to SEALED_RECORD_BYTES sealed with ``cryptography``'s AES-GCM (its own
    OpenSSL: 0.11 ms a MiB), one system call a record. Loopback, both ends' CPU together, in one
    run: plain 0.47 ms a MiB, sealed 0.71, TLS 1.68.

    A record is its plaintext length (4 bytes, big-endian, authenticated as associated data), the
    ciphertext and a 16-byte tag. Each direction has its own key, used for this connection only,
    and numbers its records from 0: the record's number is its nonce, so a record replayed, dropped,
    reordered or moved from another connection fails its tag. Keys never cross the network outside
    TLS. A stream is read by one thread and written by one thread (at a time) at once.
    """

    def __init__(self, sock: socket.socket, send_key: bytes, recv_key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.sock = sock
        self.family = sock.family
        self._seal, self._open = AESGCM(send_key), AESGCM(recv_key)
        self._sent = self._received = 0  # records so far: the next record's nonce
        self._out = bytearray(_RECORD.size + SEALED_RECORD_BYTES + _TAG_BYTES)
        self._in = bytearray(SEALED_RECORD_BYTES + _TAG_BYTES)
        self._plain = bytearray()  # a record's plaintext the reader has not taken yet (a frame's header)
        self._start = self._stop = 0

    @classmethod
    def after_tls(cls, sock: ssl.SSLSocket, send_key: bytes, recv_key: bytes) -> SealedStream:
        """Ends TLS on ``sock`` (the peer does too, at the same point of the conversation) and seals from there."""
        return cls(sock.unwrap(), send_key, recv_key)

    # ---- what the feed uses of a socket --------------------------------------------------------
    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SealedStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def sendall(self, data: Any) -> None:
        self.send_buffers([memoryview(data).cast("B")])

    def send_buffers(self, buffers: list[memoryview]) -> None:
        out = memoryview(self._out)
        for buffer in buffers:
            for start in range(0, len(buffer), SEALED_RECORD_BYTES):
                piece = buffer[start:start + SEALED_RECORD_BYTES]
                end = _RECORD.size + len(piece) + _TAG_BYTES
                _RECORD.pack_into(out, 0, len(piece))
                self._seal.encrypt_into(self._nonce(self._sent), piece, out[:_RECORD.size], out[_RECORD.size:end])
                self._sent += 1
                self.sock.sendall(out[:end])

    def recv(self, n: int) -> bytes:
        data = bytearray(n)
        return bytes(data[:self.recv_into(data, n)])

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Plaintext into ``buffer``: at least one byte, or 0 at the end of the stream (between records)."""
        view = memoryview(buffer).cast("B")
        want = min(nbytes or len(view), len(view))
        if want == 0:
            return 0
        if self._stop == self._start:
            header = bytearray(_RECORD.size)
            got = self._fill(memoryview(header))
            if got == 0:
                return 0
            if got < _RECORD.size:
                raise ConnectionError("feed peer closed the connection mid-record")
            (length,) = _RECORD.unpack(header)
            if not 0 < length <= SEALED_RECORD_BYTES:
                raise ProtocolError(f"feed record of {length} bytes (at most {SEALED_RECORD_BYTES})")
            sealed = memoryview(self._in)[:length + _TAG_BYTES]
            if self._fill(sealed) < len(sealed):
                raise ConnectionError("feed peer closed the connection mid-record")
            direct = length <= want  # a record that fits goes straight where it is wanted; the rest waits in _plain
            if not direct:
                self._plain = bytearray(length)
            into = view[:length] if direct else memoryview(self._plain)
            try:
                self._open.decrypt_into(self._nonce(self._received), sealed, bytes(header), into)
            except Exception as exc:  # cryptography's InvalidTag: tampered, replayed, reordered or truncated
                raise ProtocolError(f"a feed record failed its integrity check ({type(exc).__name__}): "
                                    "the connection was tampered with") from None
            self._received += 1
            if direct:
                return length
            self._start, self._stop = 0, length
        n = min(want, self._stop - self._start)
        view[:n] = memoryview(self._plain)[self._start:self._start + n]
        self._start += n
        return n

    def _fill(self, view: memoryview) -> int:
        """Reads until ``view`` is full or the stream ends; returns the bytes read."""
        got = 0
        while got < len(view):
            n = self.sock.recv_into(view[got:], 0, socket.MSG_WAITALL)
            if n == 0:
                break
            got += n
        return got

    @staticmethod
    def _nonce(number: int) -> bytes:
        return number.to_bytes(12, "big")
