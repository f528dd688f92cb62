"""A node's feed server against hostile clients, on a real TCP socket (a fake node through the hub's seam)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

from tfos.feed._hub import FeedHub
from tfos.feed._protocol import recv_frame, send_frame

SECRET = "s3cret"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setenv("TFOS_FEED_HELLO_TIMEOUT_SECS", "0.5")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    node = SimpleNamespace(p=SimpleNamespace(secret=SECRET, cluster_id="c0ffee", executor_id=0), name="worker:0")
    hub = FeedHub(node, [listener])
    hub.start()
    yield hub, listener.getsockname()
    hub.close()


def connect(address):
    return socket.create_connection(address, timeout=5)


def closed_by_peer(sock) -> bool:
    try:
        return sock.recv(1 << 16) == b"" or closed_by_peer(sock)
    except ConnectionResetError:
        return True


def test_hostile_clients_are_dropped_before_any_allocation_and_the_node_keeps_feeding(hub):
    hub, address = hub
    tracemalloc.start()
    attacks = [
        struct.pack(">Q", 1 << 40),  # a header "of a terabyte"
        b"\xff" * 64,  # garbage
        # a hello declaring a 1 GiB column, without the secret
        (lambda raw: struct.pack(">Q", len(raw)) + raw)(json.dumps(
            {"op": "hello", "qname": "input", "cols": [{"dtype": "<f8", "shape": [1 << 20, 128]}]}).encode()),
        # the same after a correct-looking but wrong secret
        (lambda raw: struct.pack(">Q", len(raw)) + raw)(json.dumps(
            {"op": "hello", "secret": "guess", "qname": "input",
             "cols": [{"dtype": "binary", "shape": [10], "nbytes": 1 << 40}]}).encode()),
    ]
    for payload in attacks:
        with connect(address) as sock:
            sock.sendall(payload)
            assert closed_by_peer(sock)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 << 20, f"{peak:,} bytes allocated for hostile clients"
    # slow-loris: half a length prefix, then silence: dropped after TFOS_FEED_HELLO_TIMEOUT_SECS
    with connect(address) as sock:
        sock.sendall(b"\x00\x00\x00")
        started = time.monotonic()
        assert closed_by_peer(sock)
        assert time.monotonic() - started < 4
    # the node still takes a real feed
    queue = hub.queue("input")
    with connect(address) as sock:
        send_frame(sock, {"op": "hello", "secret": SECRET, "qname": "input", "epoch": 0, "inference": False})
        assert recv_frame(sock)[0]["op"] == "ready"
        send_frame(sock, {"op": "data", "schema": {"multi": False, "names": None, "cols": []}},
                   [np.arange(10, dtype=np.int64)])
        send_frame(sock, {"op": "end"})
        assert recv_frame(sock)[0] == {"op": "ack", "rows": 10}
    pieces, _ = queue.take(10, within_epoch=False)
    assert [int(i) for chunk, a, b in pieces for i in chunk.columns[0][a:b]] == list(range(10))


def test_many_silent_connections_do_not_pile_up(hub):
    hub, address = hub
    before = threading.active_count()
    socks = [connect(address) for _ in range(20)]
    try:
        deadline = time.monotonic() + 10
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert threading.active_count() <= before, "connection threads outlive the hello timeout"
    finally:
        for sock in socks:
            sock.close()
