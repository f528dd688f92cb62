"""The control server against an attacker on the network: a recording relay, replays, peers without the key
holding streams open or sending large bodies, and a re-Register. Real gRPC, real TLS, loopback only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import grpc
import psutil
import pytest

from tests.unit.relay import Relay, key_material
from tfos._roles import cluster_template
from tfos._rpc import ControlClient
from tfos._rpc._wire import _CLIENT_OPTIONS, SERVICE
from tfos._security import Credential
from tfos.driver._server import ControlServer
from tfos.errors import ProtocolError

CRED = Credential.make()


def registration(eid, job, index, **extra):
    return {"executor_id": eid, "job_name": job, "task_index": index, "host": "127.0.0.1", "port": 5000 + eid,
            "hostname": "h", "workdir": f"/work/{eid}", "pid": 100 + eid, **extra}


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("TFOS_POLL_HOLD_SECS", "0.2")
    srv = ControlServer(cluster_template(2, 0, "chief", False), CRED)
    srv.start("127.0.0.1")
    yield srv
    srv.stop()


def test_a_recording_relay_sees_no_key_and_replayed_bytes_are_not_accepted(server):
    client = ControlClient(f"127.0.0.1:{server.port}", CRED)
    client.call("Register", registration(0, "chief", 0))
    client.close()
    relay = Relay(("127.0.0.1", server.port))
    through = ControlClient(f"127.0.0.1:{relay.port}", CRED)
    line = "a line only the relayed call carries"
    through.call("Log", {"executor_id": 0, "lines": [line]})
    through.close()
    time.sleep(0.2)
    recorded = bytes(relay.upstream) + bytes(relay.downstream)
    assert len(relay.upstream) > 200
    for secret in key_material(CRED):
        assert secret not in recorded
    assert line.encode() not in recorded  # the request itself is encrypted
    assert list(server.nodes()[0].log_tail) == [line]
    for _ in range(3):  # replay the client's bytes, as captured, to the server
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            try:
                sock.sendall(bytes(relay.upstream))
                sock.settimeout(2)
                while sock.recv(1 << 16):
                    pass
            except OSError:
                pass
    time.sleep(0.3)
    assert list(server.nodes()[0].log_tail) == [line], "a replayed Log call was accepted"


def test_a_re_register_is_refused_unless_identical(server):
    client = ControlClient(f"127.0.0.1:{server.port}", CRED)
    try:
        assert client.call("Register", registration(1, "worker", 0))["ok"]
        assert client.call("Register", registration(1, "worker", 0))["ok"]  # the same again: harmless
        moved = client.call("Register", registration(1, "worker", 0, host="203.0.113.9"))
        assert not moved["ok"] and "already registered" in moved["reason"]
        assert server.nodes()[1].info["host"] == "127.0.0.1"
        client.call("Report", {"executor_id": 1, "state": "failed", "message": "boom", "traceback": ""})
        assert client.call("Register", registration(1, "worker", 0))["ok"]
        assert server.nodes()[1].state == "failed" and server.nodes()[1].error["message"] == "boom"
    finally:
        client.close()


def _h2_headers_only() -> bytes:
    """An HTTP/2 preface, SETTINGS and a HEADERS frame that never gets its body (plaintext)."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = (0).to_bytes(3, "big") + b"\x04\x00" + (0).to_bytes(4, "big")
    block = b"\x83\x86\x44\x0f/tfos.Control/Poll"  # POST, http, :path literal
    headers = len(block).to_bytes(3, "big") + b"\x01\x04" + (1).to_bytes(4, "big") + block
    return preface + settings + headers


def test_peers_without_the_key_holding_streams_open_never_delay_a_nodes_heartbeat(server):
    client = ControlClient(f"127.0.0.1:{server.port}", CRED)
    client.call("Register", registration(0, "chief", 0))
    stop = threading.Event()
    gaps: list[float] = []

    def node() -> None:
        last = time.monotonic()
        while not stop.is_set():
            client.call("Poll", {"executor_id": 0, "seq": 0}, timeout=20)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    poller = threading.Thread(target=node)
    poller.start()
    attackers: list[socket.socket] = []
    anonymous = []
    try:
        for i in range(120):  # plaintext HTTP/2 streams that send headers and never a body, and silent sockets
            sock = socket.create_connection(("127.0.0.1", server.port))
            if i % 2:
                sock.sendall(_h2_headers_only() * 24)
            attackers.append(sock)
        no_cert = grpc.ssl_channel_credentials(root_certificates=CRED.cert_pem)  # TLS, but no client certificate
        for _ in range(8):
            channel = grpc.secure_channel(f"127.0.0.1:{server.port}", no_cert, options=_CLIENT_OPTIONS)
            anonymous.append(channel)
            for _ in range(24):
                channel.unary_unary(f"/{SERVICE}/Poll").future(b"{", timeout=8)
        time.sleep(4)
    finally:
        stop.set()
        poller.join(30)
        for sock in attackers:
            sock.close()
        for channel in anonymous:
            channel.close()
        client.close()
    assert len(gaps) >= 10
    assert max(gaps) < 3.0, f"a node's poll waited {max(gaps):.1f}s behind unauthenticated peers"


_SERVER = """
import sys, time
from tfos._roles import cluster_template
from tfos._security import Credential
from tfos.driver._server import ControlServer
server = ControlServer(cluster_template(2, 0, "chief", False), Credential.make())
print(server.start("127.0.0.1"), flush=True)
sys.stdin.read()
"""


def test_many_concurrent_large_calls_without_the_key_leave_the_drivers_memory_alone():
    proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "TFOS_POLL_HOLD_SECS": "0.2"})
    try:
        port = int(proc.stdout.readline())
        driver = psutil.Process(proc.pid)
        before = driver.memory_info().rss
        body = json.dumps({"executor_id": 0, "lines": ["x" * 4000] * 1000}).encode()[: (4 << 20) - 100]
        results: list[grpc.StatusCode] = []
        other = Credential.make()

        def attack(creds) -> None:
            with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=_CLIENT_OPTIONS) as channel:
                try:
                    channel.unary_unary(f"/{SERVICE}/Log")(body, timeout=20)
                    results.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    results.append(exc.code())

        threads = [threading.Thread(target=attack, args=(other.grpc_channel() if i % 2 else
                                                        grpc.ssl_channel_credentials(CRED.cert_pem),))
                   for i in range(128)]
        peak = before
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, driver.memory_info().rss)
            time.sleep(0.05)
        assert len(results) == 128 and grpc.StatusCode.OK not in results
        assert set(results) == {grpc.StatusCode.UNAVAILABLE}
        assert peak - before < 64 << 20, f"the driver grew by {(peak - before) >> 20} MiB"
    finally:
        proc.stdin.close()
        proc.wait(10)


def test_authenticated_calls_are_bounded_too(server):
    client = ControlClient(f"127.0.0.1:{server.port}", CRED)
    try:
        client.call("Register", registration(0, "chief", 0))
        with pytest.raises(Exception, match="RESOURCE_EXHAUSTED|exceeds"):
            client.call("Log", {"executor_id": 0, "lines": ["x" * 3000] * 1000})  # 3 MB: only Submit may
        with pytest.raises(ProtocolError, match="list of at most"):
            client.call("Log", {"executor_id": 0, "lines": ["x"] * 1001})
    finally:
        client.close()


_AT_EXIT = """
import atexit
from tfos._roles import cluster_template
from tfos._rpc import ControlClient
from tfos._security import Credential
from tfos.driver._server import ControlServer

credential = Credential.make()
server = ControlServer(cluster_template(1, 0, "chief", False), credential)
client = ControlClient(f"127.0.0.1:{server.start('127.0.0.1')}", credential)

def at_exit():  # what a driver's atexit teardown does: the control server must still answer
    try:
        client.call("Register", {"executor_id": 0, "job_name": "chief", "task_index": 0, "host": "127.0.0.1",
                                 "port": 1, "hostname": "h", "workdir": "/w", "pid": 1}, timeout=10)
        print("SERVED", flush=True)
    except Exception as exc:
        print("FAILED", exc, flush=True)

atexit.register(at_exit)
"""


def test_the_control_server_still_answers_during_interpreter_exit():
    ran = subprocess.run([sys.executable, "-c", _AT_EXIT], capture_output=True, text=True, timeout=60)
    assert "SERVED" in ran.stdout, ran.stdout + ran.stderr[-2000:]
