"""A node's feed server against hostile peers, on real TCP sockets and real TLS (a fake node through the hub's
seam; the real Feeder on the other side)."""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import struct
import threading
import time
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

from tests.unit.relay import Relay, key_material
from tfos._paths import cache_dir
from tfos._security import TLS_NAME, Credential
from tfos.errors import AuthError, TFOSError
from tfos.feed import _hub
from tfos.feed._feeder import Consumer, Feeder, NodeGone, Superseded
from tfos.feed._hub import FeedHub
from tfos.feed._protocol import recv_frame, send_frame

CRED = Credential.make()
CLUSTER = "c0ffee" * 6


def make_hub(monkeypatch, tmp_path, tls: bool, credential: Credential = CRED):
    monkeypatch.setenv("TFOS_FEED_HELLO_TIMEOUT_SECS", "0.5")
    monkeypatch.setenv("TFOS_FEED_CACHE_DIR", str(tmp_path / "cache"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    node = SimpleNamespace(p=SimpleNamespace(credential=credential, feed_tls=tls, cluster_id=CLUSTER, executor_id=0),
                           name="worker:0")
    hub = FeedHub(node, [listener])
    hub.start()
    return hub, listener.getsockname()


@pytest.fixture(params=[True, False], ids=["tls", "plain"])
def hub(request, monkeypatch, tmp_path):
    hub, address = make_hub(monkeypatch, tmp_path, request.param)
    yield hub, address, request.param
    hub.close()


def feeder(address, tls: bool, credential: Credential = CRED, **fields) -> Feeder:
    consumer = Consumer(executor_id=0, role="worker:0", host=address[0], feed_port=address[1])
    return Feeder(cluster_id=CLUSTER, credential=credential, server_address="127.0.0.1:1", qname="input",
                  epoch=fields.pop("epoch", 0), consumers=(consumer,), feed_timeout=5.0, local_mode=True,
                  tls=tls, **fields)


def feed(address, tls: bool, rows, **fields) -> int:
    f = feeder(address, tls, **fields)
    consumer, sock, resume = f._connect(3)
    with sock:
        return f._train(sock, consumer, 3, iter(rows), resume)


def taken(hub, qname="input") -> list[int]:
    """The rows queued for the node so far, taken out of the queue."""
    queue = hub.queue(qname)
    with queue.cond:
        chunks = list(queue.chunks)
        queue.chunks.clear()
        queue.bytes = 0
        queue.cond.notify_all()
    return [int(i) for chunk in chunks for i in chunk.columns[0]]


def connect(address, tls: bool):
    sock = socket.create_connection(address, timeout=5)
    if tls:
        sock = CRED.ssl_context(server=False).wrap_socket(sock, server_hostname=TLS_NAME)
    return sock


def closed_by_peer(sock) -> bool:
    try:
        return sock.recv(1 << 16) == b"" or closed_by_peer(sock)
    except (ConnectionResetError, ssl.SSLError):
        return True


def framed(obj) -> bytes:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack(">Q", len(raw)) + raw


def test_a_real_feeder_feeds_and_the_rows_arrive_once(hub):
    hub, address, tls = hub
    assert feed(address, tls, list(range(1000))) == 1000
    assert taken(hub) == list(range(1000))


def test_hostile_clients_are_dropped_before_any_allocation_and_the_node_keeps_feeding(hub):
    hub, address, tls = hub
    tracemalloc.start()
    attacks = [
        struct.pack(">Q", 1 << 40),  # a header "of a terabyte"
        b"\xff" * 64,  # garbage
        framed({"op": "hello", "nonce": "0" * 32, "qname": "input",  # a hello declaring a 1 GiB column
                "cols": [{"dtype": "<f8", "shape": [1 << 20, 128]}]}),
        framed(b"[" * 65_000),  # nested past the JSON parser's depth
        framed({"op": "hello", "nonce": "\ud800" * 32}),  # a nonce that is no string of hex
        framed({"op": "hello", "nonce": "ab" * 16}) + framed({"op": "auth", "proof": "\ud800" * 64}),
        framed({"op": "hello", "nonce": "ab" * 16}) + framed({"op": "auth", "proof": "0" * 64}),  # a wrong proof
        framed({"op": "data", "cols": []}),  # data before any handshake
    ]
    for payload in attacks:
        with connect(address, tls) as sock:
            sock.sendall(payload)
            assert closed_by_peer(sock)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 << 20, f"{peak:,} bytes allocated for hostile clients"
    assert taken(hub) == []
    assert feed(address, tls, list(range(10))) == 10  # the node still takes a real feed
    assert taken(hub) == list(range(10))


def test_a_trickled_hello_is_dropped_at_the_deadline_not_held_by_each_byte(hub):
    hub, address, tls = hub  # TFOS_FEED_HELLO_TIMEOUT_SECS=0.5: one byte every 0.3 s never reaches it per recv
    with connect(address, tls) as sock:
        hello = framed({"op": "hello", "nonce": "ab" * 16, "qname": "input", "pad": "x" * 100})
        started = time.monotonic()
        with pytest.raises(OSError):
            for byte in hello:
                sock.sendall(bytes([byte]))
                time.sleep(0.3)
            if closed_by_peer(sock):
                raise ConnectionResetError
        assert time.monotonic() - started < 3


def test_many_silent_connections_do_not_pile_up_and_excess_ones_are_closed_at_once(hub, monkeypatch):
    hub, address, tls = hub
    monkeypatch.setattr(_hub, "MAX_PENDING", 4)
    before = threading.active_count()
    socks = [socket.create_connection(address, timeout=5) for _ in range(12)]
    try:
        time.sleep(0.2)
        assert threading.active_count() <= before + 4, "more handshake threads than MAX_PENDING"
        deadline = time.monotonic() + 10
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert threading.active_count() <= before, "connection threads outlive the hello deadline"
    finally:
        for sock in socks:
            sock.close()
    assert feed(address, tls, [1, 2, 3]) == 3


def test_the_accept_loop_survives_a_thread_that_cannot_start(hub, monkeypatch, caplog):
    hub, address, tls = hub
    real_start = threading.Thread.start
    failures = {"left": 3}

    def flaky_start(self):
        if self.name == "tfos-feed-conn" and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", flaky_start)
    with caplog.at_level(logging.WARNING, logger="tfos.feed._hub"):
        for _ in range(3):
            with socket.create_connection(address, timeout=5) as sock:
                assert closed_by_peer(sock)
        assert feed(address, tls, [7, 8]) == 2
    assert taken(hub) == [7, 8]
    assert any("can't start new thread" in r.getMessage() for r in caplog.records)


def test_malformed_hellos_give_one_log_line_and_no_traceback(hub, caplog):
    hub, address, tls = hub
    with caplog.at_level(logging.DEBUG, logger="tfos"):
        for payload in (framed(b"[" * 65_000), framed({"op": "hello", "nonce": "\ud800"}), b"\x00" * 8):
            with connect(address, tls) as sock:
                sock.sendall(payload)
                assert closed_by_peer(sock)
        time.sleep(0.3)
    lines = [r for r in caplog.records if r.name.startswith("tfos")]
    assert len(lines) == 1, [r.getMessage() for r in lines]  # rate-limited: the others are counted
    assert "refused a connection from 127.0.0.1" in lines[0].getMessage()
    assert all(r.exc_info is None for r in lines)


@pytest.mark.parametrize("plan, field", [
    ({"first": "/../../../x", "epochs": 2, "shuffle": False, "seed": None}, "cache"),
    ({"first": -1, "epochs": 2, "shuffle": False, "seed": None}, "cache"),
    ({"first": 0, "epochs": 2, "shuffle": "yes", "seed": None}, "cache"),
])
def test_a_cache_plan_that_leaves_the_cache_directory_is_refused_and_nothing_is_written(hub, tmp_path, plan, field):
    hub, address, tls = hub
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    with pytest.raises(TFOSError, match=f"field {field!r}"):
        feed(address, tls, list(range(100)), cache_plan=plan, epoch_rows=100)
    hub.close()
    assert (outside / "keep").read_text() == "mine" and os.listdir(outside) == ["keep"]
    assert taken(hub) == []


def test_cache_directories_and_spill_files_are_the_owners_only(monkeypatch, tmp_path):
    monkeypatch.setenv("TFOS_FEED_CACHE_BYTES", "1")  # everything spills to disk
    hub, address = make_hub(monkeypatch, tmp_path, tls=True)
    try:
        plan = {"first": 0, "epochs": 2, "shuffle": False, "seed": None}
        assert feed(address, True, list(range(100)), cache_plan=plan, epoch_rows=100) == 100
        hub.queue("input").cache.seal()  # the epoch is all here: its rows go to a block, on disk
        root = cache_dir(CLUSTER, 0)
        modes = {}
        for where, _dirs, files in os.walk(root):
            modes[where] = os.stat(where).st_mode & 0o777
            for name in files:
                modes[os.path.join(where, name)] = os.stat(os.path.join(where, name)).st_mode & 0o777
        assert any(path.endswith(".npy") for path in modes), modes
        assert {mode for path, mode in modes.items() if path.endswith(".npy")} == {0o600}
        assert {mode for path, mode in modes.items() if not path.endswith(".npy")} == {0o700}
    finally:
        hub.close()


def test_a_feeder_with_another_clusters_key_gets_nowhere_and_a_fake_node_gets_no_rows(hub, monkeypatch, tmp_path):
    hub, address, tls = hub
    with pytest.raises((AuthError, NodeGone)):
        f = feeder(address, tls, credential=Credential.make())
        f._connect(0)
    assert taken(hub) == []
    # A fake node on another port: it answers the hello with a made-up proof; the feeder sends no data.
    fake, fake_address = make_hub(monkeypatch, tmp_path / "fake", tls, credential=Credential.make())
    try:
        with pytest.raises((AuthError, NodeGone)):
            feed(fake_address, tls, list(range(10)))
        assert taken(fake) == []
    finally:
        fake.close()


def test_a_recording_relay_sees_no_key_and_a_replayed_session_adds_no_rows(hub):
    hub, address, tls = hub
    relay = Relay(address)
    assert feed(relay.address, tls, list(range(500))) == 500
    assert taken(hub) == list(range(500))
    time.sleep(0.2)
    recorded = bytes(relay.upstream) + bytes(relay.downstream)
    assert len(relay.upstream) > 500 * 8
    for secret in key_material(CRED):
        assert secret not in recorded
    if tls:  # the rows themselves are encrypted
        assert np.arange(500, dtype=np.int64).tobytes()[8:64] not in recorded
    for _ in range(2):  # replay what the feeder sent, byte for byte
        with socket.create_connection(address, timeout=5) as sock:
            try:
                sock.sendall(bytes(relay.upstream))
                closed_by_peer(sock)
            except OSError:
                pass
    time.sleep(0.3)
    assert taken(hub) == [], "a replayed feed session delivered rows"


# ---- exactly once across Spark task attempts -------------------------------------------------------------------
def feed_attempt(monkeypatch, address, tls, rows, attempt, fail_after=None):
    """One attempt of a feeding task for partition 3; ``fail_after`` rows in, it dies as a failed task does."""
    from tfos.feed import _feeder

    monkeypatch.setattr(_feeder, "_attempt", lambda: attempt)

    def source():
        for i, row in enumerate(rows):
            if i == fail_after:
                raise RuntimeError("the task failed")
            yield row

    return feed(address, tls, source())


def test_a_retried_feeding_task_delivers_every_row_exactly_once(hub, monkeypatch):
    hub, address, tls = hub
    monkeypatch.setenv("TFOS_FEED_CHUNK_BYTES", str(8 * 500))  # 500 rows a chunk: the failure comes mid-partition
    rows = list(range(10_000))
    with pytest.raises(RuntimeError, match="the task failed"):
        feed_attempt(monkeypatch, address, tls, rows, attempt=0, fail_after=5_000)
    assert feed_attempt(monkeypatch, address, tls, rows, attempt=1) == 10_000  # the node's count, across attempts
    time.sleep(0.2)
    assert taken(hub) == rows
    with pytest.raises(Superseded, match="attempt 1 of this Spark task feeds node worker:0"):  # a straggler
        feed_attempt(monkeypatch, address, tls, rows, attempt=0)
    assert taken(hub) == []


def test_a_retry_that_yields_other_rows_is_a_feed_data_error_naming_the_partition(hub, monkeypatch):
    from tfos.errors import FeedDataError

    hub, address, tls = hub
    monkeypatch.setenv("TFOS_FEED_CHUNK_BYTES", str(8 * 500))
    with pytest.raises(RuntimeError):
        feed_attempt(monkeypatch, address, tls, list(range(10_000)), attempt=0, fail_after=5_000)
    changed = [i + 1 if i == 1234 else i for i in range(10_000)]  # a non-deterministic source
    with pytest.raises(FeedDataError, match="partition 3 of queue 'input' yielded other rows .* retried"):
        feed_attempt(monkeypatch, address, tls, changed, attempt=1)
    with pytest.raises(FeedDataError, match="partition 3 .* only 3000 rows"):
        feed_attempt(monkeypatch, address, tls, list(range(3000)), attempt=2)
    assert taken(hub) == list(range(5_000))  # only the first attempt's rows, once


def test_a_newer_attempt_supersedes_one_still_sending(hub, monkeypatch):
    from tfos.feed import _feeder

    hub, address, tls = hub
    monkeypatch.setenv("TFOS_FEED_CHUNK_BYTES", str(8 * 500))
    monkeypatch.setattr(_feeder, "_attempt", lambda: 0)
    old = feeder(address, tls)
    consumer, sock, _ = old._connect(3)
    with sock:
        for columns, schema in old._chunks(3, iter(range(2_000))):
            send_frame(sock, {"op": "data", "schema": schema}, columns)
        time.sleep(0.3)
        assert feed_attempt(monkeypatch, address, tls, list(range(10_000)), attempt=1) == 10_000
        columns, schema = next(old._chunks(3, iter(range(2_000, 2_500))))  # the old attempt goes on: dropped
        send_frame(sock, {"op": "data", "schema": schema}, columns)
        assert recv_frame(sock)[0] == {"op": "superseded", "attempt": 1}
    time.sleep(0.2)
    assert taken(hub) == list(range(10_000))
