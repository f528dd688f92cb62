"""A held TensorFlow cluster (driver, the ``tfos reserve`` process): many runs, one reservation.

``Reservation`` boots one held node per executor through the same
:class:`~tfos.driver._supervisor.Supervisor` as ``tfos.run``: each Spark task keeps its
executor and runs an agent (``NodeLauncher(hold=True)``). A run (``tfos run``,
``tfos.attach(handle).run``) sends a signed ``main_fun`` pickle; every agent starts a
fresh node process for it on the cluster's ports, so the second run pays neither Spark
application start-up nor reservation. A failing run fails alone (its nodes are
stopped, the reservation holds on); a lost executor fails the reservation.

Clients speak to the control server with the cluster's TLS credential (from the handle
file): ``Status``, ``Submit``, ``RunState``, ``Logs`` and ``Release``, all JSON. A run's
``main_fun`` is signed with the reservation's Ed25519 key, which only this process and
the handle file hold; the server and the agents check it with the public key and accept
each run id once.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from tfos import _constants as C
from tfos._protocol import Event, Method, NodeState
from tfos._roles import FEEDING_JOBS, cluster_template
from tfos._security import Credential, RunSigner, verify_run
from tfos.config import InputMode
from tfos.driver import _spark
from tfos.driver._cluster import SparkNodeJobs
from tfos.driver._progress import Rates, node_rows
from tfos.driver._supervisor import ClusterState, Supervisor, describe, finished, role
from tfos.errors import AuthError, ProtocolError, TFOSConfigError, TFOSError
from tfos.executor._bootstrap import NodeLauncher

log = logging.getLogger(__name__)

#: Seconds a run's nodes get to exit after the run ended before their agents kill them.
STOP_GRACE_SECS = 15.0


@dataclass
class Run:
    """One ``main_fun`` run on the reservation."""

    id: str
    started: float
    done: bool = False
    #: Set once its chief and workers are done (or it failed): failures while its nodes stop are not its own.
    stopping: bool = False
    error: dict[str, Any] | None = None


class Reservation:
    """See the module docstring."""

    def __init__(self, sc: Any, num_executors: int, *, num_ps: int = 0, eval_node: bool = False,
                 master_node: str | None = "chief", num_gpus: int = 0, tensorboard: bool = False,
                 log_dir: str | None = None, reservation_timeout: float = 600, name: str = "tfos") -> None:
        if isinstance(num_executors, bool) or not isinstance(num_executors, int) or num_executors < 1:
            raise TFOSConfigError(f"num_executors must be an integer >= 1; got {num_executors!r}")
        if num_executors - num_ps - bool(eval_node) < 1:
            raise TFOSConfigError(f"num_executors={num_executors} leaves no chief or worker after num_ps={num_ps} "
                                  f"and eval_node={bool(eval_node)}; raise num_executors or lower num_ps")
        self.sc = sc
        spark = _spark.backend(sc)
        self.name = name
        self.template = cluster_template(num_executors, num_ps, master_node, eval_node)
        #: Signs runs; stays in this process and the handle file (see tfos._security).
        self.signer = RunSigner.make()
        run_key = self.signer.public
        default_fs = spark.default_fs()
        jobs = SparkNodeJobs(spark, f"tfos reservation {name!r}: {describe(self.template.values())}",
                             lambda gen: NodeLauncher(
                                 cluster_id=gen.cluster_id, server_address=gen.address, credential=gen.credential,
                                 template=self.template, input_mode=int(InputMode.TENSORFLOW),
                                 tensorboard=tensorboard, log_dir=log_dir, release_port=True,
                                 reservation_timeout=float(reservation_timeout), default_fs=default_fs, main=b"",
                                 num_gpus=num_gpus, hold=True, run_key=run_key))
        handlers = {Method.STATUS: self._status, Method.SUBMIT: self._submit, Method.RUN_STATE: self._run_state,
                    Method.LOGS: self._logs, Method.RELEASE: self._release}
        self._supervisor = Supervisor(self.template, jobs, local_mode=spark.preflight(num_executors),
                                      hosts=spark.server_hosts(), reservation_timeout=reservation_timeout,
                                      max_restarts=0, handlers=handlers, large=(Method.SUBMIT,),
                                      on_failure=self._on_failure)
        self._run_key = run_key
        self._lock = threading.Lock()
        self._runs: dict[str, Run] = {}
        self._current: Run | None = None
        self._rates = Rates()
        #: Set when a client asked for release; the reserve command then tears the cluster down.
        self.release_requested = threading.Event()

    # ---- driver-side API -------------------------------------------------------------------
    def start(self) -> Reservation:
        """Holds the executors: returns once every node's agent registered."""
        self._supervisor.start()
        return self

    @property
    def state(self) -> ClusterState:
        return self._supervisor.state

    @property
    def address(self) -> str:
        """``host:port`` of the control server clients attach to."""
        return self._supervisor.generation.address

    @property
    def credential(self) -> Credential:
        """The TLS key and certificate clients use (written to the handle file)."""
        return self._supervisor.generation.credential

    @property
    def cluster_spec(self) -> dict[str, list[str]]:
        return self._supervisor.server.cluster_spec()

    def wait(self, timeout: float) -> bool:
        """Waits until a release was asked for or the reservation failed; True if so."""
        sup = self._supervisor
        return sup.server.wait(lambda: self.release_requested.is_set() or sup.state is ClusterState.FAILED,
                               timeout=timeout)

    def release(self, reason: str = "reservation released") -> None:
        """Stops every node and agent, ending the Spark job that holds the executors. Idempotent."""
        self.release_requested.set()
        self._supervisor.begin_stop()
        self._supervisor.teardown(reason)

    @property
    def failure(self) -> TFOSError | None:
        return self._supervisor.failure

    # ---- failures ----------------------------------------------------------------------------
    def _on_failure(self, failure: TFOSError) -> bool:
        """A node failure fails the run under way alone; only a lost agent fails the reservation."""
        if getattr(failure, "agent_lost", False):
            return False
        with self._lock:
            run = self._current
            if run is not None and not run.stopping and run.error is None:
                run.error = _error_fields(failure)
                log.error("run %s failed: %s", run.id, failure)
            elif run is None or run.stopping:  # e.g. a ps killed while its run was being stopped
                log.warning("a node failed outside a run: %s", str(failure).splitlines()[0])
        server = self._supervisor.server
        with server._cond:  # the failure is the run's now: the monitor need not see it again
            for node in server.nodes().values():
                node.error = None
        server.wake()
        return True

    # ---- runs ------------------------------------------------------------------------------
    def _drive(self, run: Run) -> None:
        """Waits for the run's chief and workers, then stops its nodes (ps and evaluator serve on)."""
        sup = self._supervisor
        server = sup.server
        workers = [eid for eid, (job, _) in self.template.items() if job in FEEDING_JOBS]
        server.wait(lambda: finished(server, workers) or run.error is not None
                    or sup.state is not ClusterState.RUNNING, timeout=None)
        with self._lock:
            run.stopping = True
        server.post({"type": Event.STOP, "reason": "run failed" if run.error else "run finished"})
        idle = server.wait(lambda: not any(n.agent_busy for n in server.nodes().values()), timeout=STOP_GRACE_SECS)
        if not idle:
            server.post_agents({"type": Event.KILL})
            server.wait(lambda: not any(n.agent_busy for n in server.nodes().values()), timeout=STOP_GRACE_SECS)
        with self._lock:
            run.done = True
        log.info("run %s %s in %.2fs", run.id, "failed" if run.error else "finished", time.monotonic() - run.started)
        server.wake()

    # ---- RPC handlers (gRPC threads) ---------------------------------------------------------
    def _submit(self, msg: dict[str, Any]) -> dict[str, Any]:
        data, run_id, sig = str(msg["main"]), str(msg["run"]), str(msg["sig"])
        try:
            blob = base64.b64decode(data, validate=True)
        except ValueError:
            raise ProtocolError("Submit: field 'main' is not base64") from None
        verify_run(self._run_key, run_id, blob, sig)
        with self._lock:
            if run_id in self._runs:
                raise AuthError(f"Submit: run {run_id} was submitted before; refusing a replayed run")
            if self._supervisor.state is not ClusterState.RUNNING or self.release_requested.is_set():
                return {"ok": False, "reason": f"the reservation is {self._supervisor.state.value}"}
            if self._current is not None and not self._current.done:
                return {"ok": False, "reason": f"run {self._current.id} is still running on this reservation; "
                                               "wait for it to end (tfos status HANDLE) or release the reservation"}
            run = Run(run_id, time.monotonic())
            self._runs[run.id] = run
            self._current = run
        keras = msg.get("keras")
        self._supervisor.server.begin_run({"type": Event.LAUNCH, "run": run.id, "main": data, "sig": sig,
                                           "keras": keras if keras in (2, 3) else None})
        threading.Thread(target=self._drive, args=(run,), name=f"tfos-run-{run.id}", daemon=True).start()
        log.info("run %s submitted", run.id)
        return {"ok": True, "run": run.id}

    def _run_state(self, msg: dict[str, Any]) -> dict[str, Any]:
        run = self._runs.get(str(msg["run"]))
        if run is None:
            return {"known": False}
        wait = min(float(msg.get("wait", 0)), C.get_float(C.POLL_HOLD_SECS))
        self._supervisor.server.wait(lambda: run.done, timeout=max(0.0, wait))
        nodes = {role(n): n.state for n in self._supervisor.server.nodes().values()}
        return {"known": True, "done": run.done, "error": run.error, "nodes": nodes}

    def _status(self, msg: dict[str, Any]) -> dict[str, Any]:
        server = self._supervisor.server
        rows = node_rows(server, self._rates)
        nodes = server.nodes()
        for row in rows:
            if not nodes[row["executor_id"]].agent_busy:
                row["state"] = NodeState.IDLE.value
        current = self._current
        return {"name": self.name, "state": self._supervisor.state.value, "cluster_spec": server.cluster_spec(),
                "run": None if current is None else {"id": current.id, "done": current.done,
                                                      "failed": current.error is not None},
                "nodes": rows}

    def _logs(self, msg: dict[str, Any]) -> dict[str, Any]:
        wanted = msg.get("role")
        since = msg.get("since") or {}
        lines, positions = {}, {}
        server = self._supervisor.server
        with server._cond:
            nodes = {role(n): n for n in server.nodes().values()}
            if wanted is not None and wanted not in nodes:
                raise TFOSConfigError(f"no node {wanted!r}; nodes: {', '.join(sorted(nodes))}")
            for name, node in nodes.items():
                if wanted is not None and name != wanted:
                    continue
                first = node.log_count - len(node.log_lines)  # index of the oldest line still kept
                start = max(int(since.get(name, 0)), first)
                lines[name] = list(node.log_lines)[start - first:]
                positions[name] = node.log_count
        return {"lines": lines, "next": positions}

    def _release(self, msg: dict[str, Any]) -> dict[str, Any]:
        log.info("release requested by a client")
        self.release_requested.set()
        self._supervisor.server.wake()
        return {"ok": True}


def _error_fields(error: TFOSError) -> dict[str, Any]:
    """A node failure as plain data for the client, which raises the same class with the same fields."""
    fields = {k: v for k, v in error.__dict__.items() if isinstance(v, (str, int, float, type(None)))}
    return {"kind": type(error).__name__, "message": str(error), "fields": fields}
