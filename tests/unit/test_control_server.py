"""The driver's control server and the executors' client, in process over real gRPC."""

import threading
import time

import grpc
import pytest

from tfos import AuthError, ProtocolError
from tfos._roles import cluster_template
from tfos._rpc._wire import _CLIENT_OPTIONS, SERVICE
from tfos._security import Credential
from tfos.driver._server import ControlServer

CRED = Credential.make()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("TFOS_POLL_HOLD_SECS", "0.5")
    srv = ControlServer(cluster_template(3, 1, "chief", False), CRED)
    srv.start("127.0.0.1")
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    from tfos._rpc import ControlClient

    c = ControlClient(f"127.0.0.1:{server.port}", CRED)
    yield c
    c.close()


def registration(eid, job, index, **extra):
    return {"executor_id": eid, "job_name": job, "task_index": index, "host": "127.0.0.1", "port": 5000 + eid,
            "hostname": "h", "workdir": f"/work/{eid}", "pid": 100 + eid, **extra}


def register_all(client):
    for eid, (job, index) in {0: ("ps", 0), 1: ("chief", 0), 2: ("worker", 0)}.items():
        assert client.call("Register", registration(eid, job, index))["ok"]


def test_nodes_get_the_spec_once_all_registered(server, client):
    assert client.call("AwaitSpec", {"executor_id": 0}) == {"ready": False}
    register_all(client)
    reply = client.call("AwaitSpec", {"executor_id": 0})
    assert reply["ready"]
    assert reply["cluster_spec"] == {"chief": ["127.0.0.1:5001"], "ps": ["127.0.0.1:5000"],
                                     "worker": ["127.0.0.1:5002"]}
    assert [n["job_name"] for n in reply["cluster_info"]] == ["ps", "chief", "worker"]


def test_waiting_node_is_released_as_soon_as_the_last_registers(server, client, monkeypatch):
    monkeypatch.setenv("TFOS_POLL_HOLD_SECS", "30")
    client.call("Register", registration(0, "ps", 0))
    client.call("Register", registration(1, "chief", 0))
    replies = []
    waiter = threading.Thread(target=lambda: replies.append(client.call("AwaitSpec", {"executor_id": 0})))
    waiter.start()
    client.call("Register", registration(2, "worker", 0))
    waiter.join(timeout=10)
    assert replies and replies[0]["ready"]


def test_another_clusters_key_is_rejected_and_server_keeps_serving(server, client):
    from tfos._rpc import ControlClient

    intruder = ControlClient(f"127.0.0.1:{server.port}", Credential.make())
    with pytest.raises(AuthError, match="refused the TLS handshake"):
        intruder.call("Register", registration(0, "ps", 0))
    intruder.close()
    assert server.registered() == 0
    register_all(client)
    assert server.registered() == 3


def test_call_without_tls_or_without_a_client_certificate_is_rejected(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = channel.unary_unary(f"/{SERVICE}/Register")
        with pytest.raises(grpc.RpcError) as info:
            stub(b'{"executor_id": 0}', timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # TLS that trusts the server's certificate but shows none of its own: refused at the handshake
    anonymous = grpc.ssl_channel_credentials(root_certificates=CRED.cert_pem)
    with grpc.secure_channel(f"127.0.0.1:{server.port}", anonymous, options=_CLIENT_OPTIONS) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(f"/{SERVICE}/Register")(b'{"executor_id": 0}', timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.registered() == 0


@pytest.mark.parametrize("body, detail", [
    (b"\x80not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"executor_id": 0}', "missing field"),
    (b'{"executor_id": "0", "job_name": "ps", "task_index": 0, "host": "h", "port": 1, "hostname": "h", '
     b'"workdir": "w", "pid": 1}', "must be an integer"),
])
def test_malformed_requests_are_rejected(server, body, detail):
    with grpc.secure_channel(f"127.0.0.1:{server.port}", CRED.grpc_channel(), options=_CLIENT_OPTIONS) as channel:
        stub = channel.unary_unary(f"/{SERVICE}/Register")
        with pytest.raises(grpc.RpcError) as info:
            stub(body, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in info.value.details()


def test_wrong_role_or_unknown_executor_is_rejected(client):
    with pytest.raises(ProtocolError, match="must register as ps:0"):
        client.call("Register", registration(0, "worker", 0))
    with pytest.raises(ProtocolError, match="not part of this cluster"):
        client.call("Register", registration(9, "worker", 3))


def test_two_nodes_on_one_executor_are_refused_with_the_fix(client):
    client.call("Register", registration(0, "ps", 0))
    reply = client.call("Register", registration(1, "chief", 0, workdir="/work/0"))
    assert not reply["ok"]
    assert "spark.task.cpus" in reply["reason"]


def test_mailbox_delivers_events_in_order_without_loss(server, client):
    register_all(client)
    server.post({"type": "feed_end", "qname": "input", "epoch": 0}, [2])
    server.post({"type": "stop"})
    first = client.call("Poll", {"executor_id": 2, "seq": 0})
    assert [e["type"] for e in first["events"]] == ["feed_end", "stop"]
    again = client.call("Poll", {"executor_id": 2, "seq": first["seq"]})
    assert again["events"] == []
    assert [e["type"] for e in client.call("Poll", {"executor_id": 0, "seq": 0})["events"]] == ["stop"]


def test_poll_returns_as_soon_as_an_event_is_posted(server, client, monkeypatch):
    monkeypatch.setenv("TFOS_POLL_HOLD_SECS", "30")
    register_all(client)
    timer = threading.Timer(0.2, server.post, args=({"type": "stop"},))
    timer.start()
    started = time.monotonic()
    reply = client.call("Poll", {"executor_id": 1, "seq": 0})
    assert reply["events"][0]["type"] == "stop"
    assert time.monotonic() - started < 10


def test_failure_report_is_kept_and_secret_never_in_cluster_info(server, client):
    register_all(client)
    client.call("Report", {"executor_id": 2, "state": "failed", "message": "ValueError: boom",
                           "traceback": "Traceback: ..."})
    node = server.nodes()[2]
    assert node.state == "failed" and node.error["message"] == "ValueError: boom"
    assert CRED.key_pem.decode() not in repr(server.cluster_info())


@pytest.mark.parametrize("n", [64, 256])
def test_concurrent_registration(monkeypatch, n):
    from tfos._rpc import ControlClient

    monkeypatch.setenv("TFOS_POLL_HOLD_SECS", "5")
    srv = ControlServer(cluster_template(n, 0, "chief", False), CRED)
    srv.start("127.0.0.1")
    specs = []

    def node(eid):
        job, index = srv.template[eid]
        c = ControlClient(f"127.0.0.1:{srv.port}", CRED)
        c.call("Register", registration(eid, job, index))
        while not (reply := c.call("AwaitSpec", {"executor_id": eid}))["ready"]:
            pass
        specs.append(reply["cluster_spec"])
        c.close()

    threads = [threading.Thread(target=node, args=(eid,)) for eid in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        srv.stop()
    assert len(specs) == n
    assert all(spec == specs[0] for spec in specs)
    assert len(specs[0]["worker"]) == n - 1


def test_node_output_is_logged_with_its_role_and_kept_for_errors(server, client, caplog):
    import logging

    register_all(client)
    caplog.set_level(logging.INFO, logger="tfos.node")
    client.call("Log", {"executor_id": 2, "lines": ["epoch 1/2", "loss: 0.5"]})
    assert [r.getMessage() for r in caplog.records if r.name == "tfos.node"] == ["[worker:0] epoch 1/2",
                                                                                  "[worker:0] loss: 0.5"]
    assert list(server.nodes()[2].log_tail) == ["epoch 1/2", "loss: 0.5"]
    with pytest.raises(ProtocolError, match="list of at most"):
        client.call("Log", {"executor_id": 2, "lines": "not a list"})


def test_silent_nodes_are_found_and_given_up(server, client, monkeypatch):
    register_all(client)
    server.touch()
    assert server.silent_nodes(timeout=60) == []
    client.call("Poll", {"executor_id": 0, "seq": 0})
    silent = server.silent_nodes(timeout=0.0)
    assert {n.role for n in silent} == {"ps:0", "chief:0", "worker:0"}
    server.give_up(silent[0], "silent")
    assert silent[0].exited and silent[0] not in server.silent_nodes(timeout=0.0)


def test_silence_counts_from_the_end_of_a_held_poll(server, client):
    register_all(client)
    client.call("Poll", {"executor_id": 0, "seq": 0})  # held for the whole TFOS_POLL_HOLD_SECS (0.5 s)
    time.sleep(0.2)
    # 0.7 s since the poll came, 0.2 s since its answer: the node has the whole timeout to poll again
    assert "ps:0" not in {n.role for n in server.silent_nodes(timeout=0.45)}


def test_a_node_whose_poll_is_held_longer_than_the_heartbeat_timeout_is_not_silent(server, client):
    register_all(client)
    node, agent = server.nodes()[0], server.nodes()[1]
    agent.agent_seen = time.monotonic()  # chief:0 is a held node between runs, judged by its agent's polls
    polls = [threading.Thread(target=client.call, args=(method, {"executor_id": eid, "seq": 0}))
             for method, eid in (("Poll", 0), ("AgentPoll", 1))]
    for poll in polls:
        poll.start()
    time.sleep(0.35)  # both polls are held for TFOS_POLL_HOLD_SECS (0.5 s), longer than the 0.1 s timeout
    assert node not in server.silent_nodes(timeout=0.1) and agent not in server.silent_agents(timeout=0.1)
    for poll in polls:
        poll.join()
    time.sleep(0.2)  # neither polled again since: now both are silent
    assert node in server.silent_nodes(timeout=0.1) and agent in server.silent_agents(timeout=0.1)


def test_a_held_node_between_runs_is_judged_by_its_agent_heartbeat(monkeypatch):
    monkeypatch.setenv("TFOS_POLL_HOLD_SECS", "0.05")
    server = ControlServer(cluster_template(1, 0, "chief", False), CRED)
    server._register({"executor_id": 0, "job_name": "chief", "task_index": 0, "host": "h", "port": 1,
                      "hostname": "h", "workdir": "/w", "pid": 1})
    node = server.nodes()[0]
    server._agent_poll({"executor_id": 0, "seq": 0})
    node.last_seen -= 100  # no node process has polled for long: none runs between runs
    assert server.silent_nodes(6) == [] and server.silent_agents(6) == []
    server.begin_run({"type": "launch"})  # a run's node process must poll from now on
    node.last_seen -= 100
    assert server.silent_nodes(6) == [node]
    node.agent_seen -= 100
    assert server.silent_agents(6) == [node]


def test_node_client_speaks_every_node_message_the_server_reads(server):
    from tfos._protocol import Event, FeedErrorKind, NodeState
    from tfos._rpc import NodeClient

    client = NodeClient.connect(f"127.0.0.1:{server.port}", CRED)
    try:
        for eid, (job, index) in {0: ("ps", 0), 1: ("chief", 0), 2: ("worker", 0)}.items():
            assert client.register(registration(eid, job, index)) == {"ok": True}
        assert client.await_spec(2)["ready"]
        server.post({"type": Event.STOP, "reason": "done"}, [2])
        assert client.poll(2, 0, {"rss": 1}, timeout=10) == {"events": [{"type": "stop", "reason": "done"}], "seq": 1}
        client.report(2, NodeState.RUNNING, stats={"rss": 2})
        client.metrics(2, {"metrics": {"loss": 0.5}})
        client.log(2, ["hello"], timeout=10)
        client.terminate(2, "input")
        client.feed_error({"kind": FeedErrorKind.CLOSED, "message": "gone", "qname": "input", "partition": 3})
        with pytest.raises(ProtocolError, match="plan for queue 'input' epoch 0"):
            client.feed_plan("input", 0, 3, None, timeout=10)
        assert client.agent_poll(2, 0, timeout=10, hold=0.1) == {"events": [], "seq": 0}
        client.agent_done(2, 0, "")
        client.report(2, NodeState.FAILED, message="ValueError: boom", traceback="")
    finally:
        client.close()
    node = server.nodes()[2]
    assert node.state == NodeState.FAILED and node.error["message"] == "ValueError: boom"
    assert node.stats == {"metrics": {"loss": 0.5}} and list(node.log_tail) == ["hello"]
    assert server.terminated("input")
    assert server.feed_errors() == [{"kind": "closed", "message": "gone", "qname": "input", "partition": 3}]


def test_a_stopped_control_server_leaves_no_thread_behind(monkeypatch):
    monkeypatch.setenv("TFOS_POLL_HOLD_SECS", "0.05")
    before = threading.active_count()
    for _ in range(5):
        srv = ControlServer(cluster_template(2, 0, "chief", False), CRED)
        srv.start("127.0.0.1")
        srv.stop()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before, "a stopped control server's handler threads live on"
