"""The tfos protocol, written down once (driver, executors and node processes).

Two channels connect a cluster's processes; both run over mutually authenticated TLS
1.3 with the generation's key (:mod:`tfos._security`) wherever they cross TCP.

**Control plane** (:mod:`tfos._rpc`): unary gRPC calls ``/tfos.Control/<Method>`` whose
request and reply are JSON objects. A node task calls ``Register`` then ``AwaitSpec``
until every node registered; the node process long-polls ``Poll`` for its mailbox
(:class:`Event`) and sends ``Report`` (its :class:`NodeState`), ``Metrics`` and ``Log``.
Feeding tasks call ``FeedPlan`` (where a balanced epoch's rows go) and ``FeedError``
(a :class:`FeedErrorKind` from the side that knows). A held node's agent calls
``AgentPoll`` / ``AgentDone``; a reservation's clients call ``Status``, ``Submit``,
``RunState``, ``Logs`` and ``Release``. ``tfos.compat.reservation`` serves methods of
its own. Every server serves only the methods it is given.

**Feed** (:mod:`tfos.feed._protocol`): frames of a JSON header plus raw column
buffers, on a node's Unix socket (local, mode 0600) or TCP port (TLS). The handshake::

    feeder -> node   {"op": "hello", "nonce": Nf, "to": executor_id, "qname", "epoch", "inference",
                      "partition", "epoch_rows", "cache", "key": Kf}
    node -> feeder   {"op": "challenge", "nonce": Nn, "proof": prove(token, Nf, "node"), "key": Kn}
    feeder -> node   {"op": "auth", "proof": prove(token, Nn, "feeder")}
    node -> feeder   {"op": "ready", "node": "worker:0"}         or {"op": "error", ...}

On TCP with TLS, ``key`` is each end's fresh random share; after ``ready`` both ends leave
TLS (close_notify) and every further frame travels in AES-256-GCM records keyed from both
shares (:class:`tfos.feed._protocol.SealedStream`, whose docstring says why). After the
handshake the feeder sends ``data`` frames and ``end``; the node answers ``ack``
(rows taken) in training, or ``results`` frames and ``done`` in inference, and may send
``terminated`` at any time (its ``main_fun`` stopped reading). Both sides prove they
hold the generation's key against the other's fresh nonce, so a recorded session
cannot be replayed and neither a fake node nor a fake feeder learns anything. Every node
holds the same key, so the hello names the node it is meant for (``to``) and ``ready``
names the node that answered: a connection redirected to another node of the cluster is
refused by both ends.

Exactly once: in training, ``ready`` also carries ``skip`` and ``fingerprint``, the rows
of this epoch's partition (a stream's micro-``batch``) the node already holds from an
earlier attempt of the Spark task. A retry skips them after showing by the fingerprint
that they are the same rows; an older attempt still sending gets ``superseded``.
"""

from __future__ import annotations

import enum
from typing import Any, TypedDict


class _Str(str, enum.Enum):
    """A string enum whose members are their values on the wire and in messages."""

    def __str__(self) -> str:
        return self.value


class Method(_Str):
    """Control-plane methods served by the driver's control server."""

    REGISTER = "Register"
    AWAIT_SPEC = "AwaitSpec"
    POLL = "Poll"
    REPORT = "Report"
    FEED_ERROR = "FeedError"
    FEED_PLAN = "FeedPlan"
    TERMINATE = "Terminate"
    LOG = "Log"
    METRICS = "Metrics"
    AGENT_POLL = "AgentPoll"  # held nodes' agents (tfos reserve)
    AGENT_DONE = "AgentDone"
    STATUS = "Status"  # clients of a reservation (tfos.attach, the CLI)
    SUBMIT = "Submit"
    RUN_STATE = "RunState"
    LOGS = "Logs"
    RELEASE = "Release"


class NodeState(_Str):
    """What the driver knows of a node, in lifecycle order."""

    REGISTERED = "registered"  # its task registered; the process is not up yet
    LAUNCHING = "launching"  # a reservation's run is starting its node process
    RUNNING = "running"  # main_fun runs
    SERVING = "serving"  # ctx.serve(): a ps or evaluator waiting for the end
    FINISHED = "finished"
    FAILED = "failed"
    EXITED = "exited"  # reported by a node whose process is about to exit (not a state it keeps)
    IDLE = "idle"  # a held node between runs (shown by tfos status)


#: States after which a node sends nothing more.
FINAL_STATES = (NodeState.FINISHED, NodeState.FAILED)


class Event(_Str):
    """Mailbox events the driver posts to nodes (``Poll``) and held nodes' agents (``AgentPoll``)."""

    FEED_BEGIN = "feed_begin"
    FEED_END = "feed_end"
    FEED_CLOSE = "feed_close"
    STOP = "stop"
    LAUNCH = "launch"  # agents: start a run's node
    KILL = "kill"  # agents: the run's node did not stop when told
    RELEASE = "release"  # agents: the reservation ends


class FeedOp(_Str):
    """The ``op`` of a feed frame."""

    HELLO = "hello"
    CHALLENGE = "challenge"
    AUTH = "auth"
    READY = "ready"
    ERROR = "error"
    DATA = "data"
    END = "end"
    ACK = "ack"
    RESULTS = "results"
    DONE = "done"
    TERMINATED = "terminated"
    SUPERSEDED = "superseded"  # a newer attempt of this Spark task feeds the partition now


class FeedErrorKind(_Str):
    """Why a feeding task failed, as the feeder reports it (``FeedError``)."""

    UNREACHABLE = "unreachable"  # the node's feed socket refused or never answered: the node is gone
    CLOSED = "closed"  # the node closed the connection mid-feed: the node is gone
    TIMEOUT = "timeout"  # the node took no data within feed_timeout
    BAD_ROW = "bad_row"  # a row that does not fit its batch, or data that changed between jobs
    AUTH = "auth"  # the peer did not prove it holds the cluster's key
    PROTOCOL = "protocol"  # a malformed frame
    OTHER = "other"


#: Kinds that mean the node is gone: the driver's monitor names the node and its error.
NODE_GONE = frozenset({FeedErrorKind.UNREACHABLE, FeedErrorKind.CLOSED})


class Registration(TypedDict, total=False):
    """``Register``: a node task's place in the cluster (all of it public, in cluster_info)."""

    executor_id: int
    job_name: str
    task_index: int
    host: str
    port: int
    hostname: str
    workdir: str
    pid: int
    tb_port: int | None
    feed_port: int | None
    executor_pid: int | None


class FeedHello(TypedDict, total=False):
    """The first frame of a feed connection."""

    op: str
    nonce: str
    to: int  # the executor_id of the node this feeder means to feed
    qname: str
    epoch: int | None
    inference: bool
    partition: int
    epoch_rows: int | None
    cache: dict[str, Any] | None
    key: str  # TCP with TLS: the feeder's share of the record keys


class FeedErrorReport(TypedDict):
    """``FeedError``: a feeding task's failure, reported by the feeder."""

    kind: str
    message: str
    qname: str
    partition: int | None
