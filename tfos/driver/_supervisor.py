"""Cluster supervisor (driver): states, boot, failure monitor, restart policy, teardown.

A cluster moves through these states, and only through :meth:`Supervisor.transition`,
which changes it under the supervisor's lock::

    STARTING ──> RUNNING <──> RESTARTING <──> STOPPING ──> STOPPED
        └───────────┴──────────────┴──────────────┴───────> FAILED (or STOPPED by a teardown)

STOPPING means ``shutdown()`` waits for the chief and workers to finish: a node failing
then is still restarted (training must complete), and the restart returns to STOPPING.
Each boot of every node is a :class:`Generation`: its own cluster id, control server
and node job. How a generation's nodes are launched is a seam (:class:`NodeJobs`): a
Spark job in production, threads in unit tests. Teardown marks the supervisor torn down
under the lock before it stops the current generation, and a restart checks that mark
under the same lock before it creates a generation and before it launches one, so no
node boots after teardown, whenever ``shutdown()`` or a failure lands.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tfos import _constants as C
from tfos._protocol import Event, NodeState
from tfos._roles import Role
from tfos._security import Credential
from tfos.driver._server import ControlServer, NodeStatus
from tfos.errors import NodeError, NodeFailedError, ReservationTimeoutError, TFOSError

log = logging.getLogger(__name__)

#: Seconds between two looks of the failure monitor.
MONITOR_TICK = 0.5
#: Seconds a stopping generation's node job gets to end by itself (its tasks report and clean up) before it is
#: cancelled.
JOB_END_GRACE = 5.0


class ClusterState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


_S = ClusterState
#: The transitions the state machine allows; anything else is refused.
TRANSITIONS: dict[ClusterState, frozenset[ClusterState]] = {
    _S.STARTING: frozenset({_S.RUNNING, _S.STOPPING, _S.STOPPED, _S.FAILED}),
    _S.RUNNING: frozenset({_S.RESTARTING, _S.STOPPING, _S.STOPPED, _S.FAILED}),
    _S.RESTARTING: frozenset({_S.RUNNING, _S.STOPPING, _S.STOPPED, _S.FAILED}),
    _S.STOPPING: frozenset({_S.RESTARTING, _S.STOPPED, _S.FAILED}),
    _S.STOPPED: frozenset(),
    _S.FAILED: frozenset(),
}


@dataclass(eq=False)
class Generation:
    """One boot of every node: identity, control server, node job."""

    number: int
    cluster_id: str
    server: ControlServer
    address: str = ""
    job: threading.Thread | None = None
    job_error: BaseException | None = None
    stopped: bool = False

    @property
    def credential(self) -> Credential:
        """This generation's TLS key and certificate, for its node tasks and feeders."""
        return self.server.credential

    @property
    def job_group(self) -> str:
        return f"tfos-{self.cluster_id[:12]}"


class NodeJobs(Protocol):
    """Launches and ends the job hosting a generation's nodes (the seam for tests)."""

    def start(self, generation: Generation) -> None:
        """Starts the job without blocking; on failure sets ``generation.job_error`` and wakes its server."""

    def stop(self, generation: Generation, grace: float) -> None:
        """Ends the job: waits up to ``grace`` seconds for it to end by itself, then cancels it; bounded."""

    def executors(self) -> int:
        """Executors available now, for error messages (-1 if unknown)."""


class Supervisor:
    """Owns a cluster's state and its nodes' lifecycle; see the module docstring."""

    def __init__(self, template: dict[int, Role], jobs: NodeJobs, *, local_mode: bool,
                 hosts: tuple[str, str], reservation_timeout: float, max_restarts: int,
                 handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
                 large: tuple[str, ...] = (),
                 on_failure: Callable[[TFOSError], bool] | None = None) -> None:
        self.template = template
        self.handlers = handlers or {}
        self.large = large
        #: Called first with each failure; returning True means handled (a reservation fails the run only).
        self.on_failure = on_failure
        self.jobs = jobs
        self.local_mode = local_mode
        self.bind_host, self.advertised_host = hosts
        self.reservation_timeout = reservation_timeout
        self.max_restarts = max_restarts
        self.state = ClusterState.STARTING
        self.restarts = 0
        self.failure: TFOSError | None = None
        self._failure_raised = False
        self._lock = threading.RLock()
        self._monitor: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        self._torn_down = False
        self._stop_requested = False
        self._teardown_hooks: list[Callable[[], None]] = []
        self.generation = self._new_generation(1)

    def _new_generation(self, number: int) -> Generation:
        # Each generation has its own key: a node of a failed generation cannot reach the next one.
        server = ControlServer(self.template, Credential.make(), local_mode=self.local_mode, handlers=self.handlers,
                               large=self.large)
        return Generation(number, uuid.uuid4().hex, server)

    @property
    def server(self) -> ControlServer:
        """The control server of the current generation (replaced by a restart)."""
        return self.generation.server

    # ---- the state machine ---------------------------------------------------------------
    def transition(self, new: ClusterState) -> bool:
        """Moves to ``new`` if the state machine allows it from the current state; False if not."""
        with self._lock:
            old = self.state
            if new not in TRANSITIONS[old]:
                return False
            self.state = new
        log.debug("tfos cluster %s -> %s", old.value, new.value)
        self.server.wake()  # waiters re-check their predicates, which may look at the state
        return True

    def on_teardown(self, hook: Callable[[], None]) -> None:
        """Calls ``hook`` once the nodes are stopped (metrics server, progress view)."""
        self._teardown_hooks.append(hook)

    # ---- boot --------------------------------------------------------------------------
    def start(self) -> None:
        """Boots the current generation and enters RUNNING; raises if it cannot."""
        self._boot(self.generation)
        if not self.transition(ClusterState.RUNNING):
            raise TFOSError(f"tfos cluster became {self.state.value} while starting")
        self._watch()

    def _boot(self, gen: Generation) -> None:
        started = time.monotonic()
        gen.address = f"{self.advertised_host}:{gen.server.start(self.bind_host)}"
        with self._lock:
            if self._torn_down:
                gen.server.stop()
                raise TFOSError("not starting tfos nodes: the cluster was torn down")
            self.jobs.start(gen)
        n, server = len(self.template), gen.server
        server.wait(lambda: server.registered() == n or bool(server.launch_errors()) or gen.job_error is not None
                    or gen.stopped, timeout=self.reservation_timeout)
        if server.registered() == n and not server.launch_errors() and not gen.stopped:
            server.touch()  # heartbeats count from now on
            log.info("tfos cluster of %d nodes registered in %.2fs: %s", n, time.monotonic() - started,
                     server.cluster_spec())
            return
        error = self._boot_error(gen)  # before stopping: refused late registrations are not the cause
        self.stop_generation(gen, "reservation failed")
        raise error

    def _boot_error(self, gen: Generation) -> TFOSError:
        server = gen.server
        errors = server.launch_errors()
        if errors:
            eid, err = sorted(errors.items())[0]
            job, index = self.template[eid]
            return NodeError(f"node {job}:{index} (executor_id {eid}) failed to start: {err['message']}\n"
                             f"--- remote traceback ---\n{err['traceback']}", job_name=job, task_index=index,
                             executor_id=eid, host=None, remote_traceback=err["traceback"])
        if gen.job_error is not None:
            error = TFOSError(f"the Spark job hosting the nodes failed: {gen.job_error}")
            error.__cause__ = gen.job_error
            return error
        if gen.stopped:
            return TFOSError("tfos cluster torn down while its nodes were starting")
        n, got = len(self.template), server.registered()
        missing = [f"{job}:{i}" for eid, (job, i) in sorted(self.template.items()) if eid not in server.nodes()]
        return ReservationTimeoutError(
            f"only {got} of {n} tfos nodes registered within reservation_timeout={self.reservation_timeout}s "
            f"(missing: {', '.join(missing)}); Spark has {self.jobs.executors()} executor(s). Usual causes: fewer "
            f"executors than num_executors={n} (set spark.executor.instances / spark.cores.max), executors "
            "running more than one task at a time (set spark.task.cpus equal to spark.executor.cores), dynamic "
            "allocation on (set spark.dynamicAllocation.enabled=false), or other jobs holding the executors. "
            "Raise reservation_timeout if executors start slowly.", registered=got, expected=n)

    def stop_generation(self, gen: Generation, reason: str) -> None:
        """Stops a generation's nodes, control server and node job. Bounded, idempotent."""
        with self._lock:
            if gen.stopped:
                return
            gen.stopped = True
        server = gen.server
        nodes = server.nodes()
        if len(nodes) == len(self.template):  # else no node got the spec, so none started a process
            server.post({"type": Event.STOP, "reason": reason})
            server.wait(lambda: all(n.exited or n.idle_agent for n in nodes.values()), timeout=15)
        server.abort(reason)
        # Node tasks end by themselves once their nodes exited; one whose node was given up (silent, stopped,
        # cut off) or never exited would not, so the job is cancelled at once rather than waited for.
        stuck = any(n.given_up or not (n.exited or n.idle_agent) for n in nodes.values())
        self.jobs.stop(gen, grace=0.0 if stuck else JOB_END_GRACE)
        server.stop()

    # ---- failures and restarts ---------------------------------------------------------
    def _watch(self) -> None:
        """Starts the monitor that turns node failures into errors (or restarts) within seconds."""
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._monitor_loop, daemon=True,
                                             name=f"{self.generation.job_group}-monitor")
            self._monitor.start()

    def _monitor_loop(self) -> None:
        heartbeat = C.get_float(C.HEARTBEAT_TIMEOUT_SECS)
        tick = time.monotonic()
        while not self._monitor_stop.is_set():
            server = self.server
            server.wait(lambda s=server: self._monitor_stop.is_set() or failed_node(s) is not None,
                        timeout=MONITOR_TICK)
            if self._monitor_stop.is_set():
                return
            # A monitor that wakes late was stalled with the rest of the driver (the GIL held by a long C
            # call, a paused process): the nodes' polls waited in its queue, so their silence is its own.
            late = time.monotonic() - tick - MONITOR_TICK
            if late > MONITOR_TICK:
                log.warning("the tfos driver was stalled for %.1fs; not counting that against the nodes", late)
                server.credit(late)
            failure = detect_failure(server, heartbeat)
            if failure is not None:
                self.handle_failure(failure)
            tick = time.monotonic()

    def handle_failure(self, failure: TFOSError) -> None:
        """Restarts every node if restarts are left, else fails the cluster and tears it down."""
        if self.on_failure is not None and self.on_failure(failure):
            return
        if self.restarts < self.max_restarts and self.transition(ClusterState.RESTARTING):
            failure = self._restart(failure)
            if failure is None:
                return
        self.fail(failure)

    def _restart(self, failure: TFOSError) -> TFOSError | None:
        """Boots a new generation; None on success (or after a teardown), else the error to fail with."""
        self.restarts += 1
        log.warning("%s\nrestarting every tfos node (restart %d of %d)", failure, self.restarts, self.max_restarts)
        self.stop_generation(self.generation, f"restarting after a failure: {str(failure).splitlines()[0]}")
        with self._lock:
            if self._torn_down:  # teardown came in meanwhile: boot nothing
                self.failure = self.failure or failure
                return None
            self.generation = self._new_generation(self.generation.number + 1)
        try:
            self._boot(self.generation)
        except TFOSError as exc:
            if self._torn_down:
                self.failure = self.failure or failure
                return None
            error = TFOSError(f"restart {self.restarts} of {self.max_restarts} failed: {exc}\n"
                              f"--- the failure that caused it ---\n{failure}")
            error.__cause__ = exc
            return error
        with self._lock:
            if not self._torn_down:
                self.transition(ClusterState.STOPPING if self._stop_requested else ClusterState.RUNNING)
        return None

    def fail(self, failure: TFOSError) -> None:
        """Records ``failure``, enters FAILED and stops every node."""
        log.error("tfos cluster failed, stopping every node: %s", failure)
        with self._lock:
            self.failure = self.failure or failure
            self.transition(ClusterState.FAILED)
        self.server.wake()
        self.teardown(f"stopped after a failure: {str(failure).splitlines()[0]}")

    def raise_failure_once(self) -> None:
        """Raises the recorded failure the first time this is called (or the failure was raised)."""
        with self._lock:
            if self.failure is None or self._failure_raised:
                return
            self._failure_raised = True
        raise self.failure

    def mark_failure_raised(self) -> None:
        self._failure_raised = True

    # ---- stopping ------------------------------------------------------------------------
    def begin_stop(self) -> bool:
        """Enters STOPPING (a restart under way returns to it); False when already stopped or failed."""
        with self._lock:
            if self.state in (ClusterState.STOPPED, ClusterState.FAILED) or self._torn_down:
                return False
            self._stop_requested = True
            if self.state is not ClusterState.RESTARTING:
                self.transition(ClusterState.STOPPING)
            return True

    def await_finished(self, executor_ids: list[int], deadline: float) -> bool:
        """Waits until those nodes finished main_fun, across restarts; False on timeout."""
        while self.failure is None:
            server = self.server
            remaining = deadline - time.monotonic()
            done = server.wait(lambda s=server: finished(s, executor_ids) or self.failure is not None
                               or s is not self.server, timeout=min(1.0, max(0.0, remaining)))
            if done and finished(server, executor_ids) and server is self.server:
                return True
            if remaining <= 0:
                return False
        return True

    def teardown(self, reason: str) -> None:
        """Stops every node and the server, ends the monitor. Bounded, idempotent.

        A second caller returns once the first one's teardown has finished.
        """
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
            self._monitor_stop.set()
            self.stop_generation(self.generation, reason)
            self.transition(ClusterState.FAILED if self.failure is not None else ClusterState.STOPPED)
            for hook in self._teardown_hooks:
                try:
                    hook()
                except Exception:  # noqa: BLE001 - teardown goes on
                    log.exception("a tfos teardown hook failed")
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=5)


# ---- reading node state -------------------------------------------------------------------
def role(node: NodeStatus) -> str:
    return f"{node.info['job_name']}:{node.info['task_index']}"


def finished(server: ControlServer, executor_ids: list[int]) -> bool:
    nodes = server.nodes()
    done = (NodeState.FINISHED, NodeState.SERVING)
    return all(nodes.get(e) is not None and nodes[e].state in done for e in executor_ids)


def failed_node(server: ControlServer) -> NodeStatus | None:
    for _, node in sorted(server.nodes().items()):
        if node.state == NodeState.FAILED and node.error is not None:
            return node
    return None


def detect_failure(server: ControlServer, heartbeat: float) -> TFOSError | None:
    """The first node failure: main_fun raised, the node died, or it went silent."""
    node = failed_node(server)
    if node is not None:
        return node_error(node)
    for node in server.silent_agents(heartbeat):
        error = node_failed(node, f"has an agent that sent no heartbeat for {heartbeat:.0f}s: the Spark executor "
                                  "holding the node was lost. Set TFOS_HEARTBEAT_TIMEOUT_SECS to wait longer")
        error.agent_lost = True
        return error
    for node in server.silent_nodes(heartbeat):
        server.give_up(node, "silent")
        return node_failed(node, f"sent no heartbeat for {heartbeat:.0f}s: its process was killed, its Spark "
                                 "executor was lost, or it is stuck holding the GIL. Set "
                                 "TFOS_HEARTBEAT_TIMEOUT_SECS to wait longer")
    return None


def node_error(node: NodeStatus) -> TFOSError:
    info, err = node.info, node.error or {}
    if node.lost:
        return node_failed(node, err.get("message", "died"))
    return NodeError(
        f"main_fun failed on {role(node)} (host {info['host']}, executor_id {info['executor_id']}): "
        f"{err['message']}\n--- remote traceback ---\n{err['traceback']}",
        job_name=info["job_name"], task_index=info["task_index"], host=info["host"],
        executor_id=info["executor_id"], remote_traceback=err["traceback"])


def node_failed(node: NodeStatus, what: str) -> NodeFailedError:
    info = node.info
    tail = "\n".join(node.log_tail) or "(no output received from the node)"
    return NodeFailedError(
        f"node {role(node)} (host {info['host']}, executor_id {info['executor_id']}, pid {info['pid']}) {what}\n"
        f"--- last lines of its log ---\n{tail}",
        job_name=info["job_name"], task_index=info["task_index"], host=info["host"],
        executor_id=info["executor_id"], log_tail=tail)


def describe(roles: Any) -> str:
    """``chief + 2 workers + 1 ps`` for a template's roles, as the Spark UI shows the node job."""
    counts: dict[str, int] = {}
    for job, _ in roles:
        counts[job] = counts.get(job, 0) + 1
    parts = []
    for job in sorted(counts, key=lambda j: _JOB_ORDER.index(j) if j in _JOB_ORDER else len(_JOB_ORDER)):
        n = counts[job]
        if n == 1 and job in ("chief", "master", "evaluator"):
            parts.append(job)
        else:
            parts.append(f"{n} {job if n == 1 or job == 'ps' else job + 's'}")
    return " + ".join(parts)


_JOB_ORDER = ["chief", "master", "worker", "ps", "evaluator"]
