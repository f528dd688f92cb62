"""tfos.compat.TFManager (hand-driven DataFeed) and tfos.compat.reservation, in process."""

from __future__ import annotations

import pickle
import threading

import pytest

from tfos.compat import TFManager, TFNode, reservation
from tfos.errors import AuthError, FeedDataError, ReservationTimeoutError, TFOSConfigError, TFOSError
from tfos.feed._columns import pack


def test_datafeed_driven_by_hand_reads_every_row_and_returns_results_in_order():
    mgr = TFManager.start(b"key", ["input", "output", "error"])
    feed = TFNode.DataFeed(mgr, train_mode=False)
    queue = mgr.get_queue("input")

    def produce():
        for i in range(1000):
            queue.put((i, [float(i)] * 3))
        queue.put(None)  # end of the feed, as in TensorFlowOnSpark

    producer = threading.Thread(target=produce)
    producer.start()
    seen = []
    while not feed.should_stop():
        batch = feed.next_batch(64)
        if batch:
            seen.extend(int(x) for x, _ in batch)
            feed.batch_results([10 * int(x) for x, _ in batch])
    producer.join()
    assert seen == list(range(1000))
    out = mgr.get_queue("output")
    assert [out.get(timeout=5) for _ in range(1000)] == [10 * i for i in range(1000)]
    assert out.empty()
    assert feed.done_feeding


def test_results_go_to_the_named_output_queue_and_join_waits_for_readers():
    mgr = TFManager.start(b"key", ["input", "scores"])
    queue = mgr.get_queue("input")
    for i in range(5):
        queue.put(float(i))
    feed = TFNode.DataFeed(mgr, train_mode=False, qname_out="scores")
    reader = threading.Thread(target=lambda: feed.batch_results(feed.next_batch(5)))
    reader.start()
    queue.join()  # returns once the rows were read
    reader.join()
    assert [mgr.get_queue("scores").get(timeout=5) for _ in range(5)] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_terminate_marks_the_manager_state_and_drops_buffered_rows():
    mgr = TFManager.start(b"key", ["input"])
    for i in range(10):
        mgr.get_queue("input").put((i,))
    assert mgr.get("state") == "running"
    feed = TFNode.DataFeed(mgr)
    assert len(feed.next_batch(3)) == 3
    feed.terminate()
    assert mgr.get("state") == "terminating"
    assert feed.should_stop() and feed.next_batch(3) == []
    assert mgr.get_queue("input").qsize() == 0


def test_a_put_row_that_does_not_fit_names_the_item():
    queue = TFManager.start(b"key", ["input"]).get_queue("input")
    queue.put((1, 2.0))
    with pytest.raises(FeedDataError, match=r"item 1 put into queue 'input': has 3 fields, earlier rows have 2"):
        queue.put((1, 2.0, 3))
    with pytest.raises(FeedDataError, match=r"item 1 put into queue 'input': is a int"):
        queue.put(5)


def test_remote_managers_are_refused_clearly():
    with pytest.raises(TFOSConfigError, match="only 'local' managers"):
        TFManager.start(b"key", ["input"], mode="remote")
    with pytest.raises(TFOSConfigError, match="never exposes a node's queues"):
        TFManager.connect(("host", 1), b"key")


@pytest.mark.parametrize("rows, message", [
    ([5, (1, 2)], "row 10: is a int, not a tuple or list of fields"),
    ([(1, 2), (1, 2, 3)], "row 11: has 3 fields, the batch has 2"),
])
def test_pack_names_rows_of_the_wrong_kind(rows, message):
    with pytest.raises(FeedDataError, match=message):
        pack(rows, 3, 10, True)


def test_pack_rejects_a_chunk_wider_than_earlier_chunks():
    first = pack([(1, 2.0)], 0, 0, True)
    from tfos.feed._protocol import column_spec

    with pytest.raises(FeedDataError, match="partition 0 row 1: has 3 fields, earlier rows have 2"):
        pack([(1, 2.0, 3)], 0, 1, True, [column_spec(c) for c in first])


def test_reservations_reach_the_server_and_every_client():
    server = reservation.Server(8)
    addr = server.start()
    addr = pickle.loads(pickle.dumps(addr))  # as when Spark ships it in a closure
    seen = []

    def node(i):
        client = reservation.Client(addr)
        client.register({"executor_id": i, "host": "h", "authkey": bytes([i, 0]), "addr": ("h", 1000 + i)})
        seen.append(len(client.await_reservations(timeout=30)))
        client.close()

    threads = [threading.Thread(target=node, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    metas = server.await_reservations(timeout=30)
    for t in threads:
        t.join()
    server.stop()
    assert sorted(m["executor_id"] for m in metas) == list(range(8))
    by_id = {m["executor_id"]: m for m in metas}
    assert by_id[3]["authkey"] == b"\x03\x00" and by_id[3]["addr"] == ["h", 1003]
    assert seen == [8] * 8
    assert server.reservations.done() and server.reservations.remaining() == 0


def test_reservation_calls_need_the_servers_key_and_json_values():
    from tfos._security import Credential

    server = reservation.Server(1)
    addr = server.start()
    try:
        assert "PRIVATE" not in repr(addr) and addr.credential.key_pem.decode() not in repr(addr)
        with pytest.raises(AuthError, match="carries no key"):
            reservation.Client((addr[0], addr[1]))
        with pytest.raises(AuthError, match="refused the TLS handshake"):
            reservation.Client((addr[0], addr[1]), credential=Credential.make()).register({"x": 1})
        with pytest.raises(TFOSConfigError, match="JSON-serializable or bytes"):
            reservation.Client(addr).register({"x": object()})
        assert server.reservations.get() == []
    finally:
        server.stop()


def test_reservation_timeouts_and_stop_requests():
    server = reservation.Server(2)
    addr = server.start()
    client = reservation.Client(addr)
    client.register({"executor_id": 0})
    with pytest.raises(ReservationTimeoutError, match="only 1 of 2 nodes registered within timeout=0.5s"):
        server.await_reservations(timeout=0.5)
    with pytest.raises(TFOSError, match="the Spark job died"):
        server.await_reservations(status={"error": "the Spark job died"}, timeout=5)
    client.request_stop()
    with pytest.raises(TFOSError, match="stopped before every node registered"):
        client.await_reservations(timeout=5)
    client.close()
    server.stop()
    server.stop()  # idempotent


def test_reservation_ports_follow_tfos_server_port(monkeypatch):
    import socket

    with socket.socket() as probe:
        probe.bind(("", 0))
        free = probe.getsockname()[1]
    monkeypatch.setenv("TFOS_SERVER_HOST", "127.0.0.1")
    monkeypatch.setenv("TFOS_SERVER_PORT", f"{free}-{free}")
    server = reservation.Server(1)
    try:
        assert tuple(server.start()) == ("127.0.0.1", free)
    finally:
        server.stop()


def test_server_address_helpers_honour_tfos_server_host_and_port(monkeypatch):
    """TFoS's Server.get_server_ip / get_server_ports / start_listening_socket, and start() built on them."""
    import socket

    from tfos.compat import util
    from tfos.compat._unsupported import UnsupportedNameError

    server = reservation.Server(1)
    monkeypatch.delenv("TFOS_SERVER_HOST", raising=False)
    monkeypatch.delenv("TFOS_SERVER_PORT", raising=False)
    assert server.get_server_ip() == util.get_ip_address()
    assert server.get_server_ports() == [0]
    monkeypatch.setenv("TFOS_SERVER_PORT", "9997-9999")
    assert server.get_server_ports() == [9997, 9998, 9999]
    monkeypatch.setenv("TFOS_SERVER_PORT", "8888")
    assert server.get_server_ports() == [8888]
    monkeypatch.setenv("TFOS_SERVER_PORT", "88-x")
    with pytest.raises(TFOSConfigError, match="TFOS_SERVER_PORT='88-x'"):
        server.get_server_ports()

    # A busy first port is skipped, by the plain socket and by the server itself.
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    first = busy.getsockname()[1]
    monkeypatch.setenv("TFOS_SERVER_HOST", "127.0.0.1")
    assert server.get_server_ip() == "127.0.0.1"
    try:
        for second in range(first + 1, first + 50):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", second))
                    break
                except OSError:
                    continue
        monkeypatch.setenv("TFOS_SERVER_PORT", f"{first}-{second}")
        sock = server.start_listening_socket()
        try:
            assert sock.getsockname() == ("127.0.0.1", second)
        finally:
            sock.close()
        try:
            assert tuple(server.start()) == ("127.0.0.1", second)
        finally:
            server.stop()
        monkeypatch.setenv("TFOS_SERVER_PORT", f"{first}")
        with pytest.raises(TFOSError, match=f"none of ports \\[{first}\\].*TFOS_SERVER_PORT"):
            reservation.Server(1).start_listening_socket()
        with pytest.raises(TFOSError, match="TFOS_SERVER_PORT"):
            reservation.Server(1).start()
    finally:
        busy.close()
    with pytest.raises(UnsupportedNameError, match="Client.register"):
        server.send(None, {"type": "REG"})
