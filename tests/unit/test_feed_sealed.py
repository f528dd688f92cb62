"""The sealed records a TCP feed uses after its TLS handshake (executors and node processes): frames arrive
whole, and a record tampered with, replayed, reordered or taken from another connection is refused."""

from __future__ import annotations

import socket
import ssl
import struct
import threading

import numpy as np
import pytest

from tfos._security import TLS_NAME, Credential, feed_keys, is_key_share, new_key_share
from tfos.errors import ProtocolError
from tfos.feed._columns import VarColumn
from tfos.feed._protocol import SEALED_RECORD_BYTES, SealedStream, recv_frame, send_frame

CRED = Credential.make()
KEYS = feed_keys(new_key_share(), new_key_share())


def sealed_pair(keys: tuple[bytes, bytes] = KEYS) -> tuple[SealedStream, SealedStream]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.settimeout(10)
    return SealedStream(a, keys[0], keys[1]), SealedStream(b, keys[1], keys[0])


def records(raw: bytes) -> list[bytes]:
    """``raw`` cut into its sealed records (length, ciphertext and tag each)."""
    out = []
    while raw:
        (n,) = struct.unpack(">I", raw[:4])
        out.append(raw[:4 + n + 16])
        raw = raw[4 + n + 16:]
    return out


def sent_bytes(frames: list[tuple[dict, list]]) -> bytes:
    """What a SealedStream puts on the wire for ``frames``, captured from a plain socket."""
    a, b = socket.socketpair()
    with a, b:
        stream = SealedStream(a, *KEYS)
        for header, columns in frames:
            send_frame(stream, header, columns)
        a.shutdown(socket.SHUT_WR)
        raw = bytearray()
        while chunk := b.recv(1 << 20):
            raw += chunk
    return bytes(raw)


def test_frames_of_every_size_arrive_whole_and_in_order():
    feeder, node = sealed_pair()
    big = np.arange(3 * SEALED_RECORD_BYTES // 4 + 7, dtype=np.float32).reshape(-1, 1)  # several records, a partial
    var = VarColumn("binary", np.array([0, 3, 3, 9], np.int64), np.frombuffer(b"abcdefghi", np.uint8))
    frames = [({"op": "data", "i": 0}, [big, np.arange(len(big))]), ({"op": "data", "i": 1}, [var]),
              ({"op": "end"}, [])]
    sender = threading.Thread(target=lambda: [send_frame(feeder, h, c) for h, c in frames])
    sender.start()
    got = [recv_frame(node) for _ in frames]
    sender.join()
    assert got[0][0]["i"] == 0 and np.array_equal(got[0][1][0], big)
    assert np.array_equal(got[0][1][1], np.arange(len(big)))
    assert got[1][1][0].rows() == [b"abc", b"", b"defghi"]
    assert got[2] == ({"op": "end"}, [])
    feeder.close()
    assert recv_frame(node) is None  # the end of the stream between frames is a clean close
    node.close()


def test_the_wire_carries_no_plaintext():
    rows = np.arange(10_000, dtype=np.int64)
    raw = sent_bytes([({"op": "data", "schema": {"names": ["secret-column"]}}, [rows])])
    assert rows.tobytes()[8:64] not in raw and b"secret-column" not in raw


@pytest.mark.parametrize("attack", ["flip", "drop", "reorder", "replay", "other-keys", "oversized"])
def test_a_tampered_stream_is_refused(attack):
    frames = [({"op": "data", "i": i}, [np.full(1000, i, np.int64)]) for i in range(3)]
    recs = records(sent_bytes(frames))
    assert len(recs) == 6  # a header record and a column record a frame
    keys = KEYS
    if attack == "flip":
        recs[3] = recs[3][:30] + bytes([recs[3][30] ^ 1]) + recs[3][31:]
    elif attack == "drop":
        del recs[2]
    elif attack == "reorder":
        recs[2], recs[4] = recs[4], recs[2]
    elif attack == "replay":
        recs.insert(2, recs[0])
    elif attack == "other-keys":  # records of one connection fed into another
        keys = feed_keys(new_key_share(), new_key_share())
    else:
        recs[2] = struct.pack(">I", SEALED_RECORD_BYTES + 1) + recs[2][4:]
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"".join(recs))
        a.shutdown(socket.SHUT_WR)
        node = SealedStream(b, keys[1], keys[0])
        with pytest.raises(ProtocolError):
            for _ in range(3):
                recv_frame(node)


def test_a_stream_cut_mid_record_is_an_error_not_an_end():
    raw = sent_bytes([({"op": "data"}, [np.arange(1000)])])
    a, b = socket.socketpair()
    with a, b:
        a.sendall(raw[:-5])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionError):
            recv_frame(SealedStream(b, KEYS[1], KEYS[0]))


def test_one_thread_writes_while_another_reads():
    """Inference: results come back on a connection the feeder is still sending on."""
    feeder, node = sealed_pair()
    chunk = np.arange(100_000, dtype=np.int64)

    def echo():
        while (frame := recv_frame(node)) is not None and frame[0]["op"] != "end":
            send_frame(node, {"op": "results"}, frame[1])
        send_frame(node, {"op": "done"})

    threading.Thread(target=echo, daemon=True).start()
    sender = threading.Thread(target=lambda: [send_frame(feeder, {"op": "data"}, [chunk + i]) for i in range(40)]
                              + [send_frame(feeder, {"op": "end"})])
    sender.start()
    got = []
    while (frame := recv_frame(feeder))[0]["op"] != "done":
        got.append(int(frame[1][0][0]))
    sender.join()
    assert got == list(range(40))
    feeder.close()
    node.close()


def test_tls_then_sealed_records_on_one_tcp_connection():
    """Both ends leave TLS at the same point; nothing sent on either side of that point is lost."""
    listener = socket.create_server(("127.0.0.1", 0))
    result = {}

    def node():
        conn, _ = listener.accept()
        with CRED.ssl_context(server=True).wrap_socket(conn, server_side=True) as tls:
            send_frame(tls, {"op": "ready"})
            stream = SealedStream.after_tls(tls, KEYS[1], KEYS[0])
            result["frame"] = recv_frame(stream)

    thread = threading.Thread(target=node)
    thread.start()
    raw = socket.create_connection(listener.getsockname(), timeout=10)
    with CRED.ssl_context(server=False).wrap_socket(raw, server_hostname=TLS_NAME) as tls:
        assert recv_frame(tls)[0] == {"op": "ready"}
        stream = SealedStream.after_tls(tls, *KEYS)
        send_frame(stream, {"op": "data"}, [np.arange(5)])
        thread.join(10)
    listener.close()
    assert result["frame"][0] == {"op": "data", "cols": [{"dtype": "<i8", "shape": [5]}]}
    assert list(result["frame"][1][0]) == list(range(5))
    assert not isinstance(stream.sock, ssl.SSLSocket) or stream.sock._sslobj is None


def test_a_tls_hello_without_a_key_share_is_refused(monkeypatch, tmp_path):
    from tests.unit.test_feed_hostile import connect, framed, make_hub

    hub, address = make_hub(monkeypatch, tmp_path, tls=True)
    try:
        with connect(address, tls=True) as sock:  # holds the cluster's certificate, sends no key share
            sock.sendall(framed({"op": "hello", "nonce": "ab" * 16, "qname": "input", "epoch": 0}))
            try:
                first = sock.recv(1 << 16)
            except (ConnectionResetError, ssl.SSLError):
                first = b""
            assert first == b"", "the node answered a hello without a key share with a challenge"
    finally:
        hub.close()


def test_keys_differ_by_direction_and_by_share():
    f, n = new_key_share(), new_key_share()
    to_node, to_feeder = feed_keys(f, n)
    assert len(to_node) == len(to_feeder) == 32 and to_node != to_feeder
    assert feed_keys(f, new_key_share())[0] != to_node
    assert is_key_share(f) and not is_key_share(f.upper()) and not is_key_share(f[:-1]) and not is_key_share(None)
