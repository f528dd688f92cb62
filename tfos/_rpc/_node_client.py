"""Typed control calls of a cluster's own processes (executors: node tasks, node processes, agents, feeders).

One method per message, as Horovod's ``DriverClient`` has; each sends a
:class:`~tfos._protocol.Method` with the fields :mod:`tfos.driver._server` reads. ``Poll``
and ``AgentPoll`` return a mailbox: ``{"events": [...], "seq": n}``, each event a dict whose
``type`` is an :class:`~tfos._protocol.Event`, ``seq`` the position to ask from next.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from tfos._protocol import FeedErrorReport, Method, NodeState, Registration
from tfos._rpc._wire import ControlClient
from tfos._security import Credential


class Transport(Protocol):
    """What :class:`NodeClient` sends through: a :class:`~tfos._rpc.ControlClient` or a test's fake."""

    def call(self, method: str, message: Any, timeout: float) -> dict[str, Any]: ...

    def close(self) -> None: ...


class NodeClient:
    """The calls a node task, node process, held node's agent or feeding task makes to the driver."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @classmethod
    def connect(cls, address: str, credential: Credential) -> NodeClient:
        """A client over TLS to the control server at ``address``, with the generation's credential."""
        return cls(ControlClient(address, credential))

    def close(self) -> None:
        self.transport.close()

    def call(self, method: str, message: Mapping[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Sends ``method`` untyped, as :meth:`ControlClient.call`; prefer the typed methods below."""
        return self.transport.call(method, message, timeout=timeout)

    # ---- a node task ------------------------------------------------------------------------
    def register(self, registration: Registration) -> dict[str, Any]:
        """``{"ok": True}``, or ``{"ok": False, "reason": ...}`` when the driver refuses the node."""
        return self.transport.call(Method.REGISTER, registration, timeout=30.0)

    def await_spec(self, executor_id: int) -> dict[str, Any]:
        """``{"ready": True, "cluster_spec", "cluster_info"}`` once every node registered, else
        ``{"ready": False}`` (ask again) or ``{"ready": False, "aborted": reason}``."""
        return self.transport.call(Method.AWAIT_SPEC, {"executor_id": executor_id}, timeout=30.0)

    def report(self, executor_id: int, state: NodeState, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """The node's state, with ``stats``, ``message``, ``traceback``, ``lost`` or ``exited`` as fields."""
        return self.transport.call(Method.REPORT, {"executor_id": executor_id, "state": state, **fields},
                                   timeout=timeout)

    # ---- a node process ---------------------------------------------------------------------
    def poll(self, executor_id: int, seq: int, stats: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Long-polls the node's mailbox for the events after ``seq``."""
        return self.transport.call(Method.POLL, {"executor_id": executor_id, "seq": seq, "stats": stats},
                                   timeout=timeout)

    def metrics(self, executor_id: int, stats: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        return self.transport.call(Method.METRICS, {"executor_id": executor_id, "stats": stats}, timeout=timeout)

    def log(self, executor_id: int, lines: list[str], timeout: float) -> dict[str, Any]:
        return self.transport.call(Method.LOG, {"executor_id": executor_id, "lines": lines}, timeout=timeout)

    def terminate(self, executor_id: int, qname: str, timeout: float = 30.0) -> dict[str, Any]:
        """The node's ``main_fun`` stopped reading queue ``qname``."""
        return self.transport.call(Method.TERMINATE, {"executor_id": executor_id, "qname": qname}, timeout=timeout)

    # ---- a held node's agent (tfos reserve) --------------------------------------------------
    def agent_poll(self, executor_id: int, seq: int, timeout: float, hold: float | None = None) -> dict[str, Any]:
        """Long-polls the agent's mailbox (``hold``: seconds the driver may hold the call, default its own)."""
        message: dict[str, Any] = {"executor_id": executor_id, "seq": seq}
        if hold is not None:
            message["hold"] = hold
        return self.transport.call(Method.AGENT_POLL, message, timeout=timeout)

    def agent_done(self, executor_id: int, code: int, message: str) -> dict[str, Any]:
        """The run's node process exited with ``code``."""
        return self.transport.call(Method.AGENT_DONE, {"executor_id": executor_id, "code": code, "message": message},
                                   timeout=30.0)

    # ---- a feeding task ---------------------------------------------------------------------
    def feed_plan(self, qname: str, epoch: int, partition: int, executor_id: int | None,
                  timeout: float) -> dict[str, Any]:
        """``{"segments": [[start, stop, executor_id, served], ...]}`` for a balanced epoch's partition."""
        return self.transport.call(Method.FEED_PLAN, {"qname": qname, "epoch": epoch, "partition": partition,
                                                      "executor_id": executor_id}, timeout=timeout)

    def feed_error(self, report: FeedErrorReport, timeout: float = 10.0) -> dict[str, Any]:
        return self.transport.call(Method.FEED_ERROR, report, timeout=timeout)
