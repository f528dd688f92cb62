"""The supervisor's state machine with fake nodes (threads speaking the real control protocol).

No Spark, no TensorFlow: a ``NodeJobs`` fake starts one thread per node that registers,
reports and polls over gRPC like a node process, so that boots, failures, restarts and
the restart/shutdown race run in well under a second each.
"""

from __future__ import annotations

import threading
import time

import pytest

from tfos._roles import cluster_template
from tfos._rpc import ControlClient
from tfos.driver._supervisor import JOB_END_GRACE, TRANSITIONS, ClusterState, Generation, Supervisor, describe
from tfos.errors import AuthError, NodeError, NodeFailedError, ReservationTimeoutError, TFOSError

S = ClusterState


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setenv("TFOS_POLL_HOLD_SECS", "0.1")


class FakeJobs:
    """Starts a thread per node; ``behaviour(generation_number, executor_id)`` says what it does."""

    def __init__(self, behaviour=lambda gen, eid: "run", gates=None, stop_gate=None):
        self.behaviour = behaviour
        self.gates = gates or {}  # generation number -> Event the nodes wait for before registering
        self.stop_gate = stop_gate  # (generation number, Event) held while stopping that generation
        self.started: list[Generation] = []
        self.threads: list[threading.Thread] = []
        self.graces: list[float] = []  # what each stop() was given

    def start(self, gen: Generation) -> None:
        self.started.append(gen)
        for eid, (job, index) in gen.server.template.items():
            t = threading.Thread(target=self._node, args=(gen, eid, job, index), daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self, gen: Generation, grace: float) -> None:
        self.graces.append(grace)
        if self.stop_gate and self.stop_gate[0] == gen.number:
            self.stop_gate[1].wait(10)

    def executors(self) -> int:
        return 1

    def _node(self, gen: Generation, eid: int, job: str, index: int) -> None:
        gate = self.gates.get(gen.number)
        if gate is not None:
            gate.wait(10)
        what = self.behaviour(gen.number, eid)
        if what == "absent":
            return
        client = ControlClient(gen.address, gen.credential)
        try:
            if what == "launch_error":
                client.call("Report", {"executor_id": eid, "state": "failed", "exited": True,
                                       "message": "RuntimeError: no GPU", "traceback": "tb"})
                return
            reply = client.call("Register", {"executor_id": eid, "job_name": job, "task_index": index,
                                             "host": "127.0.0.1", "port": 1000 + eid, "hostname": f"h{eid}",
                                             "workdir": "/w", "pid": 1})
            if not reply["ok"]:
                return
            while True:
                spec = client.call("AwaitSpec", {"executor_id": eid})
                if spec.get("aborted"):
                    return
                if spec.get("ready"):
                    break
            if what == "silent":  # registered, then nothing: a stopped or cut-off node
                threading.Event().wait(30)
                return
            if what == "fail":
                client.call("Report", {"executor_id": eid, "state": "failed", "message": "ValueError: boom",
                                       "traceback": "Traceback: boom"})
            elif what == "finish":
                client.call("Report", {"executor_id": eid, "state": "finished"})
            else:
                client.call("Report", {"executor_id": eid, "state": "running"})
            seq = 0
            while True:
                reply = client.call("Poll", {"executor_id": eid, "seq": seq})
                seq = reply["seq"]
                if any(e["type"] == "stop" for e in reply["events"]):
                    client.call("Report", {"executor_id": eid, "state": "exited"})
                    return
        except TFOSError:
            return  # the server went away: the node gives up, as a real one does
        finally:
            client.close()

    def alive(self) -> list[threading.Thread]:
        return [t for t in self.threads if t.is_alive()]


def supervisor(jobs: FakeJobs, max_restarts: int = 0, timeout: float = 10) -> Supervisor:
    return Supervisor(cluster_template(2, 0, "chief", False), jobs, local_mode=True,
                      hosts=("127.0.0.1", "127.0.0.1"), reservation_timeout=timeout, max_restarts=max_restarts)


def wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_transitions_follow_the_table():
    assert TRANSITIONS[S.STOPPED] == TRANSITIONS[S.FAILED] == frozenset()
    sup = supervisor(FakeJobs())
    assert not sup.transition(S.RESTARTING)  # nothing runs yet
    assert sup.transition(S.RUNNING) and sup.transition(S.RESTARTING) and sup.transition(S.RUNNING)
    assert sup.transition(S.STOPPING) and not sup.transition(S.RUNNING)
    assert sup.transition(S.RESTARTING) and sup.transition(S.STOPPING)  # a restart while shutdown() waits
    assert sup.transition(S.STOPPED) and not sup.transition(S.FAILED)
    assert sup.state is S.STOPPED


def test_boot_then_teardown_stops_every_node():
    jobs = FakeJobs()
    sup = supervisor(jobs)
    sup.start()
    assert sup.state is S.RUNNING and sup.server.registered() == 2
    assert sup.begin_stop()
    sup.teardown("done")
    assert sup.state is S.STOPPED
    wait_for(lambda: not jobs.alive())
    assert all(n.exited for n in sup.server.nodes().values())


def test_node_failure_restarts_every_node_in_a_new_generation():
    jobs = FakeJobs(behaviour=lambda gen, eid: "fail" if gen == 1 and eid == 1 else "run")
    sup = supervisor(jobs, max_restarts=1)
    sup.start()
    wait_for(lambda: sup.generation.number == 2 and sup.state is S.RUNNING)
    assert sup.restarts == 1 and sup.failure is None and jobs.started[0].stopped
    # each generation has its own key: a node of the failed one cannot reach the new control server
    first, second = jobs.started
    assert first.credential != second.credential
    stale = ControlClient(second.address, first.credential)
    with pytest.raises(AuthError):
        stale.call("Poll", {"executor_id": 0, "seq": 0}, timeout=5)
    stale.close()
    sup.begin_stop()
    sup.teardown("done")
    assert sup.state is S.STOPPED
    wait_for(lambda: not jobs.alive())


def test_a_silent_nodes_job_is_cancelled_at_once_and_a_stopped_clusters_job_gets_its_grace(monkeypatch):
    monkeypatch.setenv("TFOS_HEARTBEAT_TIMEOUT_SECS", "1")
    monkeypatch.setenv("TFOS_POLL_HOLD_SECS", "0.2")
    jobs = FakeJobs(behaviour=lambda gen, eid: "silent" if eid == 1 else "run")
    sup = supervisor(jobs)
    sup.start()
    wait_for(lambda: sup.state is S.FAILED)
    with pytest.raises(NodeFailedError, match="worker:0 .*sent no heartbeat"):
        sup.raise_failure_once()
    assert jobs.graces == [0.0]  # its task would never end by itself: waiting only delays the error

    jobs = FakeJobs()
    sup = supervisor(jobs)
    sup.start()
    sup.begin_stop()
    sup.teardown("done")
    assert jobs.graces == [JOB_END_GRACE] and JOB_END_GRACE > 0


def test_without_restarts_a_failure_fails_the_cluster_and_is_raised_once():
    jobs = FakeJobs(behaviour=lambda gen, eid: "fail" if eid == 0 else "run")
    sup = supervisor(jobs)
    sup.start()
    wait_for(lambda: sup.state is S.FAILED)
    with pytest.raises(NodeError, match="main_fun failed on chief:0.*ValueError: boom"):
        sup.raise_failure_once()
    sup.raise_failure_once()  # only once
    wait_for(lambda: not jobs.alive())


def test_shutdown_waits_across_a_restart_and_returns_to_stopping():
    gate = threading.Event()
    jobs = FakeJobs(behaviour=lambda gen, eid: "fail" if gen == 1 and eid == 1 else "finish", gates={2: gate})
    sup = supervisor(jobs, max_restarts=1)
    sup.start()
    wait_for(lambda: len(jobs.started) == 2)  # generation 2 launched; its nodes wait at the gate
    assert sup.state is S.RESTARTING and sup.begin_stop()
    gate.set()
    assert sup.await_finished([0, 1], time.monotonic() + 10)
    assert sup.state is S.STOPPING and sup.failure is None and sup.generation.number == 2
    sup.teardown("shut down")
    assert sup.state is S.STOPPED
    wait_for(lambda: not jobs.alive())


def test_teardown_while_the_new_generation_boots_leaves_no_node_behind():
    gate = threading.Event()
    jobs = FakeJobs(behaviour=lambda gen, eid: "fail" if gen == 1 and eid == 1 else "run", gates={2: gate})
    sup = supervisor(jobs, max_restarts=3)
    sup.start()
    wait_for(lambda: len(jobs.started) == 2)  # generation 2 launched; its nodes wait at the gate
    assert sup.begin_stop()
    assert not sup.await_finished([0, 1], time.monotonic() + 0.3)  # shutdown(timeout=0.3) runs out
    sup.teardown("shut down")
    gate.set()  # generation 2's nodes come up only now, after teardown
    wait_for(lambda: not jobs.alive())
    wait_for(lambda: sup.failure is not None, timeout=5)  # the abandoned boot ends at once (reservation: 10 s)
    assert len(jobs.started) == 2 and all(g.stopped for g in jobs.started)
    assert sup.state in (S.STOPPED, S.FAILED) and sup.server.registered() == 0
    with pytest.raises(NodeError, match="worker:0"):
        sup.raise_failure_once()


def test_teardown_while_the_old_generation_stops_boots_no_new_one():
    stopping = threading.Event()
    jobs = FakeJobs(behaviour=lambda gen, eid: "fail" if gen == 1 and eid == 0 else "run",
                    stop_gate=(1, stopping))
    sup = supervisor(jobs, max_restarts=3)
    sup.start()
    wait_for(lambda: sup.state is S.RESTARTING)
    teardown = threading.Thread(target=sup.teardown, args=("driver exiting",))
    teardown.start()
    wait_for(lambda: sup._torn_down)
    stopping.set()
    teardown.join(10)
    wait_for(lambda: sup.failure is not None)
    assert len(jobs.started) == 1 and sup.generation.number == 1
    assert sup.state in (S.STOPPED, S.FAILED) and isinstance(sup.failure, NodeError)
    wait_for(lambda: not jobs.alive())


def test_a_restart_that_cannot_boot_fails_the_cluster_with_both_errors():
    jobs = FakeJobs(behaviour=lambda gen, eid: ("fail" if eid == 1 else "run") if gen == 1 else "launch_error")
    sup = supervisor(jobs, max_restarts=1)
    sup.start()
    wait_for(lambda: sup.state is S.FAILED)
    message = str(sup.failure)
    assert "restart 1 of 1 failed" in message and "no GPU" in message and "ValueError: boom" in message
    wait_for(lambda: not jobs.alive())


def test_reservation_timeout_names_missing_nodes():
    jobs = FakeJobs(behaviour=lambda gen, eid: "absent" if eid == 1 else "run")
    sup = supervisor(jobs, timeout=0.5)
    with pytest.raises(ReservationTimeoutError, match=r"only 1 of 2 .*missing: worker:0.*1 executor") as info:
        sup.start()
    assert info.value.registered == 1 and info.value.expected == 2
    assert jobs.started[0].stopped
    wait_for(lambda: not jobs.alive())


def test_describe_names_roles_as_the_spark_ui_shows_them():
    assert describe(cluster_template(3, 0, "chief", False).values()) == "chief + 2 workers"
    assert describe(cluster_template(4, 1, "chief", True).values()) == "chief + 1 worker + 1 ps + evaluator"
    assert describe(cluster_template(2, 0, None, False).values()) == "2 workers"


def test_a_stalled_driver_does_not_blame_the_nodes_for_its_own_silence(monkeypatch):
    import sys

    monkeypatch.setenv("TFOS_HEARTBEAT_TIMEOUT_SECS", "1.5")
    jobs = FakeJobs()
    sup = supervisor(jobs)
    sup.start()
    try:
        wait_for(lambda: all(n.state == "running" for n in sup.server.nodes().values()))
        interval = sys.getswitchinterval()
        sys.setswitchinterval(30)  # this thread keeps the GIL: every other driver thread stalls, as in a long C call
        try:
            end = time.monotonic() + 4
            while time.monotonic() < end:
                pass
        finally:
            sys.setswitchinterval(interval)
        time.sleep(2)  # the monitor looks again, more than once
        assert sup.failure is None and sup.state is S.RUNNING
    finally:
        sup.begin_stop()
        sup.teardown("done")
