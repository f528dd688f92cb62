"""The driver's control server (driver): reservation, node status, node mailboxes.

Nodes register (host, ports, role), long-poll until every node has registered and
then receive the cluster spec. After that each node long-polls its mailbox for
events (end of an epoch's feed, stop) and reports its state. All state lives here,
guarded by one condition variable; the Cluster reads it through the methods below.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tfos import _constants as C
from tfos._protocol import FINAL_STATES, Event, Method, NodeState
from tfos._roles import Role, cluster_spec
from tfos._rpc import serve
from tfos._security import Credential
from tfos.errors import FeedDataError, ProtocolError
from tfos.feed._balance import EpochPlan, StickyRoutes

log = logging.getLogger(__name__)

#: States a node reports (``exited``: its process is about to exit; not a state it keeps).
_REPORTED = frozenset({NodeState.RUNNING, NodeState.SERVING, NodeState.FINISHED, NodeState.FAILED, NodeState.EXITED})
#: Fields a node registers; all become public in cluster_info.
_REGISTER_FIELDS = {"executor_id": int, "job_name": str, "task_index": int, "host": str, "port": int,
                    "hostname": str, "workdir": str, "pid": int}
_OPTIONAL_PORTS = ("tb_port", "feed_port", "executor_pid")
#: Lines of each node's output the driver keeps for error messages.
LOG_TAIL_LINES = 30
LOG_KEEP_LINES = 5000
_MAX_LOG_LINES, _MAX_LOG_LINE = 1000, 4000
node_log = logging.getLogger("tfos.node")


@dataclass
class NodeStatus:
    info: dict[str, Any]
    state: NodeState = NodeState.REGISTERED
    error: dict[str, Any] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    last_seen: float = field(default_factory=time.monotonic)
    #: Polls of the node's process (or agent) the driver is holding now: the node is heard from while it waits.
    holding: int = 0
    agent_holding: int = 0
    exited: bool = False
    #: Set when the node process died or its executor was lost (not a main_fun exception).
    lost: str | None = None
    #: Set when the driver stopped waiting for a silent node (:meth:`ControlServer.give_up`): its process
    #: may still be there, stopped or cut off, and its task will not end by itself.
    given_up: bool = False
    log_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=LOG_TAIL_LINES))
    #: Every line the node printed, up to LOG_KEEP_LINES (``tfos logs``); log_count counts all ever received.
    log_lines: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=LOG_KEEP_LINES))
    log_count: int = 0
    #: A held node's agent (``tfos reserve``): its mailbox, last poll, and whether a run's node is up.
    agent_events: list[dict[str, Any]] = field(default_factory=list)
    agent_seen: float | None = None
    agent_busy: bool = False

    @property
    def idle_agent(self) -> bool:
        """A held node (``tfos reserve``) waiting for its next run."""
        return self.agent_seen is not None and not self.agent_busy

    @property
    def role(self) -> str:
        return f"{self.info['job_name']}:{self.info['task_index']}"


class ControlServer:
    """Serves the control plane for one cluster; see the module docstring."""

    def __init__(self, template: dict[int, Role], credential: Credential, *, local_mode: bool = False,
                 handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
                 large: tuple[str, ...] = ()) -> None:
        self.template = template
        self._extra_handlers = dict(handlers or {})
        self._large = large
        self.credential = credential
        self.local_mode = local_mode
        self._cond = threading.Condition()
        self._nodes: dict[int, NodeStatus] = {}
        self._abort_reason: str | None = None
        self._feed_errors: list[dict[str, Any]] = []
        self._launch_errors: dict[int, dict[str, str]] = {}
        self._terminated: set[str] = set()
        self._plans: dict[tuple[str, int], EpochPlan | StickyRoutes] = {}
        self._listeners: list[Callable[[], None]] = []
        self._server = None
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------
    def start(self, host: str) -> int:
        handlers = {Method.REGISTER: self._register, Method.AWAIT_SPEC: self._await_spec, Method.POLL: self._poll,
                    Method.REPORT: self._report, Method.FEED_ERROR: self._feed_error,
                    Method.FEED_PLAN: self._feed_plan, Method.TERMINATE: self._terminate, Method.LOG: self._log,
                    Method.METRICS: self._metrics, Method.AGENT_POLL: self._agent_poll,
                    Method.AGENT_DONE: self._agent_done, **self._extra_handlers}
        # Every node holds one long-poll at a time; leave room for reports and feeders.
        workers = 2 * len(self.template) + 16
        self._server, self.port = serve(handlers, self.credential, host, C.port_range(C.SERVER_PORT), workers,
                                        large=self._large)
        return self.port

    def stop(self) -> None:
        with self._cond:
            self._abort_reason = self._abort_reason or "cluster stopped"
            self._cond.notify_all()
        if self._server is not None:
            self._server.stop(grace=0.5).wait(2)
            self._server = None

    def abort(self, reason: str) -> None:
        """Wakes every waiting node with ``reason``; registration stops succeeding."""
        with self._cond:
            self._abort_reason = reason
            self._cond.notify_all()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Calls ``listener`` (under no lock) after every node report or feed error."""
        self._listeners.append(listener)

    # ---- RPC handlers (run on gRPC threads) ------------------------------------------
    def _register(self, msg: dict[str, Any]) -> dict[str, Any]:
        info = {name: _field(msg, name, kind) for name, kind in _REGISTER_FIELDS.items()}
        info.update({name: _field(msg, name, int) for name in _OPTIONAL_PORTS if msg.get(name) is not None})
        eid = info["executor_id"]
        expected = self.template.get(eid)
        if expected is None:
            raise ProtocolError(f"executor_id {eid} is not part of this cluster")
        if (info["job_name"], info["task_index"]) != expected:
            raise ProtocolError(f"executor_id {eid} must register as {expected[0]}:{expected[1]}")
        with self._cond:
            if self._abort_reason:
                return {"ok": False, "reason": self._abort_reason}
            known = self._nodes.get(eid)
            if known is not None:
                # A node registers once per generation: a second Register (a replay, or a peer that
                # wants to move a node's address) would redirect its feed or erase a recorded failure.
                if known.info == info:
                    return {"ok": True}
                return {"ok": False, "reason": f"executor_id {eid} already registered in this generation "
                                               f"as {known.role} at {known.info['host']}:{known.info['port']}"}
            for other_id, other in self._nodes.items():
                same_place = (other.info["hostname"], other.info["workdir"]) == (info["hostname"], info["workdir"])
                if other_id != eid and same_place and not self.local_mode:
                    return {"ok": False, "reason": (
                        f"executor_id {eid} landed on the same Spark executor as executor_id {other_id} "
                        f"({info['hostname']}:{info['workdir']}): executors run more than one task at a time. "
                        "Set spark.task.cpus equal to spark.executor.cores (one task slot per executor).")}
            self._nodes[eid] = NodeStatus(info)
            self._cond.notify_all()
        log.debug("registered %s:%s at %s:%s", info["job_name"], info["task_index"], info["host"], info["port"])
        return {"ok": True}

    def _await_spec(self, msg: dict[str, Any]) -> dict[str, Any]:
        eid = _field(msg, "executor_id", int)
        with self._cond:
            node = self._nodes.get(eid)
            if node is None:
                self._cond.wait_for(self._ready_or_aborted, timeout=C.get_float(C.POLL_HOLD_SECS))
            else:
                self._hold(node, self._ready_or_aborted)
            if self._abort_reason:
                return {"ready": False, "aborted": self._abort_reason}
            if not self._all_registered():
                return {"ready": False}
            return {"ready": True, "cluster_spec": self.cluster_spec(), "cluster_info": self.cluster_info()}

    def _poll(self, msg: dict[str, Any]) -> dict[str, Any]:
        node = self._node(msg)
        seq = _field(msg, "seq", int)
        with self._cond:
            if isinstance(msg.get("stats"), dict) and not _final(node):
                node.stats = msg["stats"]
            self._hold(node, lambda: len(node.events) > seq or self._abort_reason is not None)
            events = node.events[seq:]
            if self._abort_reason and not any(e["type"] == Event.STOP for e in node.events):
                events.append({"type": Event.STOP, "reason": self._abort_reason})
            return {"events": events, "seq": seq + len(events)}

    def _hold(self, node: NodeStatus, predicate: Callable[[], bool]) -> None:
        """Holds a node's poll (under the lock) until ``predicate()`` or TFOS_POLL_HOLD_SECS. A held node is not
        silent, however long the hold; silence counts from its end, so the node gets the whole heartbeat
        timeout to poll again (a node importing TensorFlow may hold the GIL for seconds)."""
        node.last_seen = time.monotonic()
        node.holding += 1
        try:
            self._cond.wait_for(predicate, timeout=C.get_float(C.POLL_HOLD_SECS))
        finally:
            node.holding -= 1
            node.last_seen = time.monotonic()

    def _report(self, msg: dict[str, Any]) -> dict[str, Any]:
        state = _field(msg, "state", str)
        if state not in _REPORTED:
            raise ProtocolError(f"unknown state {state!r}")
        state = NodeState(state)
        eid = _field(msg, "executor_id", int)
        if eid not in self._nodes and eid in self.template and state == NodeState.FAILED:
            # The node task failed before it could register.
            with self._cond:
                self._launch_errors[eid] = {"message": str(msg.get("message", ""))[:4000],
                                            "traceback": str(msg.get("traceback", ""))[-20000:]}
                self._cond.notify_all()
            self._notify()
            return {"ok": True}
        node = self._node(msg)
        with self._cond:
            node.last_seen = time.monotonic()
            if state == NodeState.EXITED or msg.get("exited") is True:
                node.exited = True
            if state != NodeState.EXITED and node.state != NodeState.FAILED:
                node.state = state
            if isinstance(msg.get("stats"), dict):
                node.stats = msg["stats"]
            if state == NodeState.FAILED and node.error is None:
                node.error = {"message": str(msg.get("message", ""))[:4000],
                              "traceback": str(msg.get("traceback", ""))[-20000:]}
                if msg.get("lost") is True:
                    node.lost = node.error["message"]
            self._cond.notify_all()
        self._notify()
        return {"ok": True}

    def _metrics(self, msg: dict[str, Any]) -> dict[str, Any]:
        node = self._node(msg)
        stats = msg["stats"]
        if not isinstance(stats, dict):
            raise ProtocolError("field 'stats' must be an object")
        with self._cond:
            node.last_seen = time.monotonic()
            if not _final(node):
                node.stats = stats
            self._cond.notify_all()
        return {"ok": True}

    def _feed_error(self, msg: dict[str, Any]) -> dict[str, Any]:
        error = {"kind": _field(msg, "kind", str), "message": str(_field(msg, "message", str))[:8000],
                 "qname": str(msg.get("qname", "")), "partition": msg.get("partition")}
        with self._cond:
            self._feed_errors.append(error)
            self._cond.notify_all()
        self._notify()
        return {"ok": True}

    def _feed_plan(self, msg: dict[str, Any]) -> dict[str, Any]:
        key = (_field(msg, "qname", str), _field(msg, "epoch", int))
        executor_id = msg.get("executor_id") if isinstance(msg.get("executor_id"), int) else None
        with self._cond:
            plan = self._plans.get(key)
        if plan is None:
            raise ProtocolError(f"no routing plan for queue {key[0]!r} epoch {key[1]}")
        try:
            segments = plan.segments(_field(msg, "partition", int), executor_id)
        except FeedDataError as exc:
            raise ProtocolError(str(exc)) from None
        return {"segments": segments}

    def set_plan(self, qname: str, epoch: int, plan: EpochPlan | StickyRoutes) -> None:
        """Routes the feeding tasks of ``qname``'s ``epoch`` by ``plan`` (older epochs' plans are dropped)."""
        with self._cond:
            self._plans = {key: p for key, p in self._plans.items() if key[0] != qname}
            self._plans[(qname, epoch)] = plan

    def _terminate(self, msg: dict[str, Any]) -> dict[str, Any]:
        self._node(msg)
        with self._cond:
            self._terminated.add(_field(msg, "qname", str))
            self._cond.notify_all()
        return {"ok": True}

    def _log(self, msg: dict[str, Any]) -> dict[str, Any]:
        node = self._node(msg)
        lines = msg["lines"]
        if not isinstance(lines, list) or len(lines) > _MAX_LOG_LINES or not all(isinstance(x, str) for x in lines):
            raise ProtocolError(f"field 'lines' must be a list of at most {_MAX_LOG_LINES} strings")
        role = node.role
        for line in lines:
            line = line[:_MAX_LOG_LINE]
            with self._cond:
                node.log_tail.append(line)
                node.log_lines.append(line)
                node.log_count += 1
            node_log.info("[%s] %s", role, line)
        return {"ok": True}

    def _agent_poll(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A held node's agent waits for its next command (launch a run's node, release)."""
        node = self._node(msg)
        seq = _field(msg, "seq", int)
        hold = min(float(msg.get("hold", C.get_float(C.POLL_HOLD_SECS))), C.get_float(C.POLL_HOLD_SECS))
        with self._cond:
            node.agent_seen = time.monotonic()
            node.agent_holding += 1
            try:
                self._cond.wait_for(lambda: len(node.agent_events) > seq or self._abort_reason is not None,
                                    timeout=max(0.0, hold))
            finally:
                node.agent_holding -= 1
                node.agent_seen = time.monotonic()
            events = node.agent_events[seq:]
            if self._abort_reason and not any(e["type"] == Event.RELEASE for e in node.agent_events):
                events.append({"type": Event.RELEASE, "reason": self._abort_reason})
            return {"events": events, "seq": seq + len(events)}

    def _agent_done(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A held node's agent saw its run's node process exit (``code``) and waits for the next run."""
        node = self._node(msg)
        code = _field(msg, "code", int)
        with self._cond:
            node.agent_busy = False
            if not node.exited:  # killed before it could say so itself
                node.exited = True
                if node.state != NodeState.FAILED and code != 0:
                    node.state = NodeState.FAILED
                    node.error = {"message": str(msg.get("message", f"node process exited with code {code}")),
                                  "traceback": ""}
                    node.lost = node.error["message"] if code < 0 else None
            self._cond.notify_all()
        self._notify()
        return {"ok": True}

    # ---- driver-side API ---------------------------------------------------------------
    def post(self, event: dict[str, Any], executor_ids: list[int] | None = None) -> None:
        """Queues ``event`` in the mailbox of the given nodes (default: all registered)."""
        with self._cond:
            for eid in executor_ids if executor_ids is not None else list(self._nodes):
                self._nodes[eid].events.append(event)
            self._cond.notify_all()

    def begin_run(self, launch: dict[str, Any]) -> None:
        """Resets every node's run state and posts ``launch`` to every agent (``tfos run``)."""
        with self._cond:
            for node in self._nodes.values():
                node.state, node.error, node.lost, node.exited = NodeState.LAUNCHING, None, None, False
                node.events, node.stats, node.agent_busy = [], {}, True
                node.last_seen = time.monotonic()
                node.agent_events.append(launch)
            self._cond.notify_all()

    def post_agents(self, event: dict[str, Any]) -> None:
        """Queues ``event`` for every held node's agent."""
        with self._cond:
            for node in self._nodes.values():
                node.agent_events.append(event)
            self._cond.notify_all()

    def silent_agents(self, timeout: float) -> list[NodeStatus]:
        """Held nodes whose agent's last poll ended over ``timeout`` seconds ago, with none held now (its
        executor is gone)."""
        now = time.monotonic()
        with self._cond:
            return [n for _, n in sorted(self._nodes.items())
                    if n.agent_seen is not None and not n.agent_holding and now - n.agent_seen > timeout]

    def wait(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Waits until ``predicate()`` (called under the lock) holds; returns it."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout=timeout)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def nodes(self) -> dict[int, NodeStatus]:
        """The registered nodes; call under :meth:`wait` or treat as a snapshot."""
        return self._nodes

    def registered(self) -> int:
        return len(self._nodes)

    def cluster_spec(self) -> dict[str, list[str]]:
        return cluster_spec(n.info for n in self._nodes.values())

    def cluster_info(self) -> list[dict[str, Any]]:
        return [dict(self._nodes[eid].info) for eid in sorted(self._nodes)]

    def touch(self) -> None:
        """Counts every node as just heard from (heartbeats are judged from now on)."""
        with self._cond:
            now = time.monotonic()
            for node in self._nodes.values():
                node.last_seen = now

    def credit(self, seconds: float) -> None:
        """Moves every heartbeat ``seconds`` later: the driver itself was stalled that long (a long call
        holding the GIL, a paused process), and nodes' polls waited in its queue meanwhile."""
        with self._cond:
            now = time.monotonic()
            for node in self._nodes.values():
                node.last_seen = min(now, node.last_seen + seconds)
                if node.agent_seen is not None:
                    node.agent_seen = min(now, node.agent_seen + seconds)

    def silent_nodes(self, timeout: float) -> list[NodeStatus]:
        """Nodes still running whose last poll ended over ``timeout`` seconds ago, with none held now.

        A held node between runs has no node process to poll: its agent's heartbeat
        counts instead (:meth:`silent_agents`).
        """
        now = time.monotonic()
        with self._cond:
            return [n for _, n in sorted(self._nodes.items())
                    if not n.exited and not n.idle_agent and not n.holding and now - n.last_seen > timeout]

    def give_up(self, node: NodeStatus, reason: str) -> None:
        """Stops waiting for ``node``: it is lost and will never report again."""
        with self._cond:
            node.lost = reason
            node.exited = node.given_up = True
            self._cond.notify_all()

    def launch_errors(self) -> dict[int, dict[str, str]]:
        return dict(self._launch_errors)

    def feed_errors(self) -> list[dict[str, Any]]:
        return list(self._feed_errors)

    def terminated(self, qname: str) -> bool:
        return qname in self._terminated

    def _all_registered(self) -> bool:
        return len(self._nodes) == len(self.template)

    def _ready_or_aborted(self) -> bool:
        return self._all_registered() or self._abort_reason is not None

    def _node(self, msg: dict[str, Any]) -> NodeStatus:
        eid = _field(msg, "executor_id", int)
        node = self._nodes.get(eid)
        if node is None:
            raise ProtocolError(f"executor_id {eid} has not registered")
        return node

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()


def _final(node: NodeStatus) -> bool:
    """Whether ``node`` sent its last stats: a poll or metrics call sent before that may arrive after it."""
    return node.exited or node.state in FINAL_STATES


def _field(msg: dict[str, Any], name: str, kind: type) -> Any:
    value = msg[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ProtocolError(f"field {name!r} must be an integer")
    if kind is str and not isinstance(value, str):
        raise ProtocolError(f"field {name!r} must be a string")
    return value
