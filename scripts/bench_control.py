"""Control-plane load: N in-process nodes register concurrently and wait for the cluster spec.

Prints, for 8, 64 and 256 nodes, the time from the first registration until every node
holds the full cluster spec, over real gRPC on localhost (the issue's target: 64 nodes
in under 2 s). Also times a healthy cluster's shutdown signal path: posting "stop" until
every polling node has seen it.

    python scripts/bench_control.py [--nodes 8 64 256]
"""

from __future__ import annotations

import argparse
import threading
import time

from tfos._protocol import Event, Method
from tfos._roles import cluster_template
from tfos._rpc import ControlClient
from tfos._security import Credential
from tfos.driver._server import ControlServer

CRED = Credential.make()


def register_concurrently(n: int) -> tuple[float, float]:
    """(seconds until all n nodes hold the spec, seconds until all n saw a posted stop)."""
    server = ControlServer(cluster_template(n, 0, "chief", False), CRED)
    server.start("127.0.0.1")
    clients = [ControlClient(f"127.0.0.1:{server.port}", CRED) for _ in range(n)]
    got_spec, got_stop = [], []
    go = threading.Barrier(n + 1)

    def node(eid: int) -> None:
        job, index = server.template[eid]
        client = clients[eid]
        go.wait()
        client.call(Method.REGISTER, {"executor_id": eid, "job_name": job, "task_index": index, "host": "127.0.0.1",
                                 "port": 10000 + eid, "hostname": f"h{eid}", "workdir": "/w", "pid": eid})
        while not client.call(Method.AWAIT_SPEC, {"executor_id": eid})["ready"]:
            pass
        got_spec.append(time.perf_counter())
        seq = 0
        while True:
            reply = client.call(Method.POLL, {"executor_id": eid, "seq": seq})
            seq = reply["seq"]
            if any(e["type"] == Event.STOP for e in reply["events"]):
                got_stop.append(time.perf_counter())
                return

    threads = [threading.Thread(target=node, args=(eid,)) for eid in range(n)]
    for t in threads:
        t.start()
    go.wait()
    started = time.perf_counter()
    while len(got_spec) < n:
        time.sleep(0.001)
    spec_secs = max(got_spec) - started
    time.sleep(0.2)  # every node is now holding a long-poll
    posted = time.perf_counter()
    server.post({"type": Event.STOP})
    for t in threads:
        t.join()
    stop_secs = max(got_stop) - posted
    for c in clients:
        c.close()
    server.stop()
    return spec_secs, stop_secs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[8, 64, 256])
    opts = parser.parse_args()
    for n in opts.nodes:
        spec_secs, stop_secs = register_concurrently(n)
        print(f"{n:4d} nodes: all registered and holding the spec in {spec_secs:.2f}s; "
              f"all saw 'stop' {stop_secs * 1000:.0f} ms after it was posted")


if __name__ == "__main__":
    main()
