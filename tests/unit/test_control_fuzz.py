"""The control server under hostile input: 10,000 random, malformed and unauthenticated calls."""

import json
import random

import grpc

from tfos._protocol import Method
from tfos._roles import cluster_template
from tfos._rpc import ControlClient
from tfos._rpc._wire import _CLIENT_OPTIONS, SERVICE
from tfos._security import Credential
from tfos.driver._server import ControlServer

CRED = Credential.make()
CALLS = 10_000
METHODS = [m.value for m in Method]


def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return rng.randint(-2**70, 2**70)
    if kind == 1:
        return rng.random() * 10 ** rng.randint(-5, 30)
    if kind == 2:
        return "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 40)))
    if kind == 3:
        return rng.choice([None, True, False])
    if kind == 4:
        return rng.choice(["ps", "chief", "worker", "evaluator", "", "running", "failed", "exited", "stop"])
    if kind == 5:
        return rng.randint(-3, 10)
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {rng.choice(FIELDS): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 6))}


FIELDS = ["executor_id", "job_name", "task_index", "host", "port", "hostname", "workdir", "pid", "seq", "state",
          "stats", "message", "traceback", "kind", "qname", "exited", "tb_port", "feed_port", "lines", "x"]


def _random_body(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 300))  # not JSON, maybe not UTF-8
    if kind == 1:
        return json.dumps(_random_value(rng)).encode()  # JSON, rarely an object
    if kind == 2:
        return json.dumps({f: _random_value(rng) for f in rng.sample(FIELDS, rng.randint(0, 8))}).encode()
    if kind == 3:
        good = {"executor_id": rng.randint(0, 3), "job_name": "worker", "task_index": 0, "seq": 0, "state": "x"}
        return json.dumps(good)[: rng.randint(0, 40)].encode()  # truncated
    return rng.choice([b"[", b'{"a":']) * rng.randint(1, 100_000)  # nesting deep enough to break a parser


def test_ten_thousand_hostile_calls_are_rejected_and_the_server_keeps_serving(monkeypatch):
    monkeypatch.setenv("TFOS_POLL_HOLD_SECS", "0.05")
    server = ControlServer(cluster_template(2, 0, "chief", False), CRED)
    server.start("127.0.0.1")
    address = f"127.0.0.1:{server.port}"
    client = ControlClient(address, CRED)
    try:
        for eid, job in ((0, "chief"), (1, "worker")):
            assert client.call("Register", {"executor_id": eid, "job_name": job, "task_index": 0,
                                            "host": "127.0.0.1", "port": 7000 + eid, "hostname": "h",
                                            "workdir": f"/w/{eid}", "pid": 1})["ok"]
        spec_before = server.cluster_spec()
        rng = random.Random(20261122)
        outcomes: dict[str, int] = {}
        channels = {
            "key": grpc.secure_channel(address, CRED.grpc_channel(), options=_CLIENT_OPTIONS),
            "other key": grpc.secure_channel(address, Credential.make().grpc_channel(), options=_CLIENT_OPTIONS),
            "no certificate": grpc.secure_channel(address, grpc.ssl_channel_credentials(CRED.cert_pem),
                                                  options=_CLIENT_OPTIONS),
            "plain": grpc.insecure_channel(address),
        }
        try:
            for i in range(CALLS):
                method = rng.choice(METHODS)
                who = rng.choice(["key", "key", "other key", "no certificate", "plain"])
                stub = channels[who].unary_unary(f"/{SERVICE}/{'Exec' if i % 97 == 0 else method}")
                try:
                    reply = stub(_random_body(rng), timeout=10)
                except grpc.RpcError as exc:
                    outcomes[exc.code().name] = outcomes.get(exc.code().name, 0) + 1
                    if who != "key":  # refused at the TLS handshake: no handler ran
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE, (who, exc)
                    continue
                # Only an authenticated, well-formed request can succeed, and then with a JSON object.
                assert who == "key", f"call {i} to {method} succeeded with {who}"
                assert isinstance(json.loads(reply), dict)
                outcomes["OK"] = outcomes.get("OK", 0) + 1
        finally:
            for channel in channels.values():
                channel.close()
        assert sum(outcomes.values()) == CALLS
        assert outcomes.get("UNAVAILABLE", 0) > CALLS // 3
        assert outcomes.get("INVALID_ARGUMENT", 0) > CALLS // 10
        assert "UNKNOWN" not in outcomes and "INTERNAL" not in outcomes, outcomes
        # The server still answers, and the registered nodes are untouched.
        assert server.registered() == 2
        assert server.cluster_spec() == spec_before
        assert client.call("AwaitSpec", {"executor_id": 1})["ready"]
        assert client.call("Poll", {"executor_id": 0, "seq": 0})["seq"] == 0
    finally:
        client.close()
        server.stop()
