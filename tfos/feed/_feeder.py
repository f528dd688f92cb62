"""Feeding tasks (executors, inside Spark tasks): send a partition to a node in chunks.

``Feeder`` is the ``mapPartitionsWithIndex`` function of a feeding job. It connects to
the node on its own executor through a Unix socket (or, when that executor hosts no
fed node, to a chief/worker over TCP), packs rows into column chunks of about
``TFOS_FEED_CHUNK_BYTES`` and streams them. In training it yields the number of rows
the node acknowledged; in inference it yields the node's results, one per row, while
a second thread keeps sending.

Chunks are cut by the bytes they carry: a fixed-width row costs what its first row
does, a row with bytes / str values (RDD rows, or a DataFrame's binary and string
columns, sent as offsets + data without padding) what its values take, so a chunk of
PNG files is bounded by its files' sizes. A DataFrame's column types are checked on
the driver (:func:`check_dataframe_schema`) before any node sees data.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import operator
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfos import _constants as C
from tfos._paths import local_marker_path, unix_socket_path
from tfos._protocol import FeedErrorKind, FeedOp
from tfos._security import (
    TLS_NAME,
    Credential,
    check_proof,
    feed_keys,
    feed_token,
    is_key_share,
    new_key_share,
    new_nonce,
    prove,
)
from tfos.errors import AuthError, FeedDataError, FeedTimeoutError, ProtocolError, TFOSError
from tfos.feed._columns import (
    BINARY,
    STRING,
    Column,
    VarColumn,
    add_fingerprints,
    check_dtype,
    fingerprint,
    is_multi_field,
    pack,
    value_bytes,
    var_kind,
)
from tfos.feed._protocol import SealedStream, column_spec, recv_frame, send_frame, widen_buffers

log = logging.getLogger(__name__)

MAX_CHUNK_ROWS = 1 << 16
#: Rows with bytes / str values read ahead at most, to measure them before they join a chunk.
READ_AHEAD_ROWS = 256


@dataclass(frozen=True)
class Consumer:
    executor_id: int
    role: str
    host: str
    feed_port: int


@dataclass(frozen=True)
class Feeder:
    """See the module docstring. Holds only plain data: Spark pickles it to every task."""

    cluster_id: str
    credential: Credential
    server_address: str
    qname: str
    epoch: int | None
    consumers: tuple[Consumer, ...]
    feed_timeout: float
    local_mode: bool
    balanced: bool = False  # route a training epoch by the driver's EpochPlan
    epoch_rows: int | None = None  # rows each node gets an epoch (balanced), told again in every hello
    cache_plan: dict[str, Any] | None = None  # the epoch cache's plan, likewise
    tls: bool = True  # TLS on TCP feed connections (TFOS_FEED_TLS on the driver)
    batch: int | None = None  # a streaming micro-batch's id: its partitions are apart from the last batch's

    @property
    def inference(self) -> bool:
        return self.epoch is None

    def __call__(self, partition: int, rows: Iterator[Any]) -> Iterator[Any]:
        target: list[Consumer] = []  # the consumer being fed, named by a timeout
        try:
            if self.inference:
                consumer, sock, _ = self._connect(partition)
                target.append(consumer)
                with sock:
                    yield from self._infer(sock, consumer, partition, rows)
            elif self.balanced:
                yield self._train_routed(partition, rows, target)
            else:
                by_id = {c.executor_id: c for c in self.consumers}
                consumer, sock, resume = self._connect(partition, by_id[self._segments(partition)[0][2]])
                target.append(consumer)
                with sock:
                    yield self._train(sock, consumer, partition, rows, resume)
        except TimeoutError:
            consumer = target[-1]
            error = FeedTimeoutError(
                f"node {consumer.role} (executor_id {consumer.executor_id}, host {consumer.host}) took no data "
                f"from partition {partition} of queue {self.qname!r} for feed_timeout={self.feed_timeout}s. "
                "Its main_fun stopped reading the feed (finished early, stuck, or reads another queue); "
                "raise feed_timeout if it is just slow.", node=consumer.role, partition=partition)
            self._report(FeedErrorKind.TIMEOUT, str(error), partition)
            raise error from None
        except Superseded:
            raise  # a newer attempt feeds the partition: Spark has given up on this one, nothing to report
        except NodeGone as error:  # a node that exited: the driver's monitor names it and its error
            self._report(error.kind, str(error), partition)
            raise
        except TFOSError as error:
            self._report(_kind(error), str(error), partition)
            raise
        except OSError as exc:  # the connection broke mid-feed: the node is gone
            consumer = target[-1] if target else None
            error = NodeGone(f"the feed of node {consumer.role if consumer else '?'} broke: {exc}",
                             kind=FeedErrorKind.CLOSED)
            self._report(error.kind, str(error), partition)
            raise error from exc

    # ---- connection ----------------------------------------------------------------------
    def _connect(self, partition: int,
                 consumer: Consumer | None = None) -> tuple[Consumer, socket.socket, _Resume]:
        """A connection to ``consumer``, by default the node on this executor or else one by partition."""
        local = None if self.local_mode else _local_executor(self.cluster_id)
        if consumer is None:
            by_id = {c.executor_id: c for c in self.consumers}
            consumer = by_id.get(local) or self.consumers[partition % len(self.consumers)]  # type: ignore[arg-type]
        if consumer.executor_id == local:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = unix_socket_path(self.cluster_id, consumer.executor_id)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            address = (consumer.host, consumer.feed_port)
        sock.settimeout(self.feed_timeout)
        widen_buffers(sock)
        try:
            sock.connect(address)
            if sock.family != socket.AF_UNIX and self.tls:
                sock = _tls_context(self.credential).wrap_socket(sock, server_hostname=TLS_NAME)
            sock, ready = self._handshake(sock, consumer, partition)
        except OSError as exc:
            sock.close()
            raise NodeGone(f"cannot reach the feed of node {consumer.role} at {address}: {exc}. The node has "
                           "exited (see the driver's error) or the cluster was shut down.",
                           kind=FeedErrorKind.UNREACHABLE) from exc
        except BaseException:
            sock.close()
            raise
        return consumer, sock, _Resume(ready, partition, self.qname, consumer)

    def _handshake(self, sock: socket.socket, consumer: Consumer,
                   partition: int) -> tuple[socket.socket | SealedStream, dict[str, Any]]:
        """The hello, the node's proof against our nonce, ours against its nonce, then ``ready``; over TLS,
        the connection then leaves TLS for sealed records keyed by both ends' key shares."""
        token = feed_token(self.credential)
        nonce = new_nonce()
        share = new_key_share() if isinstance(sock, ssl.SSLSocket) else None
        send_frame(sock, {"op": FeedOp.HELLO, "nonce": nonce, "to": consumer.executor_id, "qname": self.qname,
                          "epoch": self.epoch,
                          "inference": self.inference, "partition": partition, "attempt": _attempt(),
                          "batch": self.batch,
                          "epoch_rows": self.epoch_rows, "cache": self.cache_plan,
                          **({"key": share} if share else {})})
        challenge = _expect(recv_frame(sock), consumer)
        if challenge.get("op") != FeedOp.CHALLENGE or not check_proof(token, nonce, "node", challenge.get("proof")):
            raise AuthError(f"the feed of node {consumer.role} did not prove it holds this cluster's key: refusing "
                            "to send it data (a stale address, or another process on its port)")
        send_frame(sock, {"op": FeedOp.AUTH, "proof": prove(token, str(challenge.get("nonce")), "feeder")})
        reply = _expect(recv_frame(sock), consumer)
        if reply.get("op") != FeedOp.READY:
            raise AuthError(f"node {consumer.role} refused the feed: {reply}")
        if reply.get("node") != consumer.role:
            answered = str(reply.get("node"))[:40]
            raise AuthError(f"the feed at {consumer.host}:{consumer.feed_port} is node {answered!r}, not "
                            f"{consumer.role}: refusing to send it data (a stale address, or a redirected connection)")
        if share is None:
            return sock, reply
        if not is_key_share(challenge.get("key")):
            raise ProtocolError(f"the feed of node {consumer.role} sent no record key share")
        to_node, to_feeder = feed_keys(share, challenge["key"])
        return SealedStream.after_tls(sock, to_node, to_feeder), reply

    # ---- training ---------------------------------------------------------------------------
    def _train(self, sock: socket.socket, consumer: Consumer, partition: int, rows: Iterator[Any],
               resume: _Resume) -> int:
        reply = None
        for columns, schema in self._chunks(partition, rows):
            if select.select([sock], [], [], 0)[0]:  # the node only speaks early to refuse data
                reply = _expect(recv_frame(sock), consumer)
                break
            fresh = resume.fresh(columns)
            if fresh is not None:
                send_frame(sock, {"op": FeedOp.DATA, "schema": schema}, fresh)
        if reply is None:
            resume.finish()
        send_frame(sock, {"op": FeedOp.END})
        reply = reply or _expect(recv_frame(sock), consumer)
        return 0 if reply["op"] == FeedOp.TERMINATED else resume.acked(reply["rows"])

    def _train_routed(self, partition: int, rows: Iterator[Any], target: list[Consumer]) -> int:
        """Feeds a balanced epoch: runs of the partition's rows go where the driver's plan says.

        The node on this executor takes what it still needs; the rest goes to other nodes
        over TCP, and the plan's left-out rows are read and dropped, or sent to a node's
        epoch cache only (see feed/_balance.py).
        """
        segments = self._segments(partition)
        counted = segments[-1][1] if segments else 0
        by_id = {c.executor_id: c for c in self.consumers}
        links: dict[int, tuple[Consumer, socket.socket, _Resume]] = {}
        replies: dict[int, dict[str, Any]] = {}  # nodes that spoke early: they refuse further data
        done = 0  # rows of the partition already routed
        index = 0
        try:
            for columns, schema in self._chunks(partition, rows):
                n, pos = len(columns[0]), 0
                while pos < n:
                    if index == len(segments):
                        raise self._recount(partition, counted, done + n)
                    start, stop, eid, served = segments[index]
                    take = min(n - pos, stop - done - pos)
                    if eid is not None and eid not in replies:
                        if eid not in links:
                            links[eid] = self._connect(partition, by_id[eid])
                        consumer, sock, resume = links[eid]
                        target.append(consumer)
                        if select.select([sock], [], [], 0)[0]:
                            replies[eid] = _expect(recv_frame(sock), consumer)
                        else:
                            fresh = resume.fresh([c[pos:pos + take] for c in columns])
                            if fresh is not None:
                                header = {"op": FeedOp.DATA, "schema": schema,
                                          **({} if served else {"cache_only": True})}
                                send_frame(sock, header, fresh)
                    pos += take
                    if done + pos == stop:
                        index += 1
                done += n
            if done != counted:
                raise self._recount(partition, counted, done)
            acked = 0
            for eid, (consumer, sock, resume) in links.items():
                target.append(consumer)
                if eid not in replies:
                    resume.finish()
                send_frame(sock, {"op": FeedOp.END})
                reply = replies.get(eid) or _expect(recv_frame(sock), consumer)
                acked += 0 if reply["op"] == FeedOp.TERMINATED else resume.acked(reply["rows"])
            return acked
        finally:
            for _, sock, _ in links.values():
                sock.close()

    def _segments(self, partition: int) -> list[tuple[int, int, int | None, bool]]:
        from tfos._rpc import NodeClient

        local = None if self.local_mode else _local_executor(self.cluster_id)
        client = NodeClient.connect(self.server_address, self.credential)
        try:
            reply = client.feed_plan(self.qname, self.epoch, partition, local, timeout=self.feed_timeout)
        except ProtocolError as exc:
            raise FeedDataError(f"partition {partition} of queue {self.qname!r}: {exc}", partition=partition) from None
        finally:
            client.close()
        return [(int(a), int(b), None if eid is None else int(eid), bool(served))
                for a, b, eid, served in reply["segments"]]

    @staticmethod
    def _recount(partition: int, counted: int, fed: int) -> FeedDataError:
        more = "at least " if fed > counted else ""
        return FeedDataError(f"partition {partition} had {counted} rows when counted before the epoch and {more}{fed} "
                             "when fed: the data changes between Spark jobs (a non-deterministic source or "
                             "transformation). Cache it (rdd.cache(), df.cache()) or make it deterministic.",
                             partition=partition)

    # ---- inference --------------------------------------------------------------------------
    def _infer(self, sock: socket.socket, consumer: Consumer, partition: int, rows: Iterator[Any]) -> Iterator[Any]:
        failure: list[BaseException] = []

        def send_all() -> None:
            try:
                for columns, schema in self._chunks(partition, rows):
                    send_frame(sock, {"op": FeedOp.DATA, "schema": schema}, columns)
                send_frame(sock, {"op": FeedOp.END})
            except BaseException as exc:  # noqa: BLE001 - re-raised by the reading side
                failure.append(exc)
                sock.shutdown(socket.SHUT_RDWR)

        sender = threading.Thread(target=send_all, name="tfos-feed-send", daemon=True)
        sender.start()
        while True:
            try:
                frame = recv_frame(sock)
            except OSError:
                if failure:
                    raise failure[0] from None
                raise
            if failure:
                raise failure[0]
            header = _expect(frame, consumer)
            if header["op"] == FeedOp.DONE:
                break
            if header["op"] == FeedOp.TERMINATED:
                raise TFOSError(f"node {consumer.role} terminated queue {self.qname!r} during inference; "
                                f"partition {partition} got only some of its results")
            yield from result_rows(frame[1])
        sender.join()

    # ---- shared ------------------------------------------------------------------------------
    def _chunks(self, partition: int, rows: Iterator[Any]) -> Iterator[tuple[list[Column], dict[str, Any]]]:
        """Column chunks of a partition's rows, or of its Arrow record batches (a DataFrame's)."""
        rows = iter(rows)
        first = next(rows, None)
        if first is None:
            return
        if _is_record_batch(first):
            yield from _arrow_chunks(partition, itertools.chain([first], rows))
            return
        multi = is_multi_field(first)
        offset, expected, schema = 0, None, None
        for batch in _row_batches(first, rows, multi, C.get_int(C.FEED_CHUNK_BYTES)):
            columns = pack(batch, partition, offset, multi, expected)
            if schema is None:
                expected = [column_spec(c) for c in columns]
                schema = {"multi": multi, "names": None, "cols": expected}
            yield columns, schema
            offset += len(batch)

    def _report(self, kind: FeedErrorKind, message: str, partition: int) -> None:
        from tfos._rpc import NodeClient

        client = NodeClient.connect(self.server_address, self.credential)
        try:
            client.feed_error({"kind": kind, "message": message, "qname": self.qname, "partition": partition})
        except TFOSError:
            log.warning("could not report a feed error to the driver", exc_info=True)
        finally:
            client.close()


class _Resume:
    """The rows of this partition a node already holds from an earlier attempt of this task (its ``ready``
    said how many, and their fingerprint): they are skipped, once shown to be the same rows."""

    def __init__(self, ready: dict[str, Any], partition: int, qname: str, consumer: Consumer) -> None:
        self.skip = int(ready.get("skip") or 0)
        self.expected = ready.get("fingerprint")
        self.partition, self.qname, self.consumer = partition, qname, consumer
        self.seen = 0  # rows routed to this node so far, skipped ones included
        self.sums: list[int] | None = None

    def fresh(self, columns: list[Column]) -> list[Column] | None:
        """The part of ``columns`` (the next rows routed to this node) that the node does not hold yet."""
        n = len(columns[0])
        if self.seen >= self.skip:
            self.seen += n
            return columns
        take = min(n, self.skip - self.seen)
        self.sums = add_fingerprints(self.sums, fingerprint([c[:take] for c in columns]))
        self.seen += n
        if self.seen >= self.skip and self.sums != self.expected:
            raise self._changed("other rows than the attempt before it")
        return [c[take:] for c in columns] if take < n else None

    def finish(self) -> None:
        if self.seen < self.skip:
            raise self._changed(f"only {self.seen} rows for node {self.consumer.role}, which holds {self.skip} "
                                "from the attempt before it")

    def acked(self, rows: Any) -> int:
        """The node's count of this partition's rows: every row routed to it, once."""
        if int(rows) != self.seen:
            raise FeedDataError(f"node {self.consumer.role} holds {int(rows)} rows of partition {self.partition} of "
                                f"queue {self.qname!r}, but {self.seen} were routed to it", partition=self.partition)
        return int(rows)

    def _changed(self, what: str) -> FeedDataError:
        return FeedDataError(
            f"partition {self.partition} of queue {self.qname!r} yielded {what} when Spark retried its feeding task: "
            "the data changes between attempts (a non-deterministic source or transformation). Cache it "
            "(rdd.cache(), df.cache()) or make it deterministic.", partition=self.partition)


class Superseded(TFOSError):
    """A newer attempt of this feeding task feeds the node now (this one failed, as far as Spark knows)."""


def _attempt() -> int:
    """This Spark task's attempt number (0 outside a Spark task)."""
    try:
        from pyspark import TaskContext
    except ImportError:
        return 0
    task = TaskContext.get()
    return task.attemptNumber() if task is not None else 0


class NodeGone(TFOSError):
    """The node's feed refused the connection or closed it mid-feed (``kind``): the node has exited."""

    kind: FeedErrorKind


def _kind(error: TFOSError) -> FeedErrorKind:
    """The structured kind of a feeding task's failure, from the error's type."""
    for cls, kind in ((FeedDataError, FeedErrorKind.BAD_ROW), (AuthError, FeedErrorKind.AUTH),
                      (ProtocolError, FeedErrorKind.PROTOCOL)):
        if isinstance(error, cls):
            return kind
    return FeedErrorKind.OTHER


@functools.lru_cache(maxsize=4)
def _tls_context(credential: Credential) -> ssl.SSLContext:
    """One client context per credential and Python worker: a feeding task pays only its handshake."""
    return credential.ssl_context(server=False)


def _local_executor(cluster_id: str) -> int | None:
    try:
        with open(local_marker_path(cluster_id)) as f:
            return int(json.load(f)["executor_id"])
    except (OSError, ValueError, KeyError):
        return None


def _expect(frame: tuple[dict[str, Any], list[np.ndarray]] | None, consumer: Consumer) -> dict[str, Any]:
    if frame is None:
        raise NodeGone(f"node {consumer.role} (executor_id {consumer.executor_id}) closed the feed: its main_fun "
                       "failed or the node exited; the driver reports the node's error", kind=FeedErrorKind.CLOSED)
    header = frame[0]
    if header.get("op") == FeedOp.SUPERSEDED:
        raise Superseded(f"attempt {header.get('attempt')} of this Spark task feeds node {consumer.role} now")
    if header.get("op") == FeedOp.ERROR:
        raise TFOSError(f"node {consumer.role}: {header.get('message')}")
    return header


def _row_batches(first: Any, rows: Iterator[Any], multi: bool, budget: int) -> Iterator[list[Any]]:
    """``first`` and ``rows`` in lists of about ``budget`` bytes (at most MAX_CHUNK_ROWS rows)."""
    fields = first if multi else [first]
    var = [j for j, value in enumerate(fields) if var_kind(value) is not None]
    fixed = sum(np.asarray(value).nbytes for j, value in enumerate(fields) if j not in var)
    if not var:  # the hot path: every row costs what the first does
        per_chunk = max(1, min(MAX_CHUNK_ROWS, budget // (fixed or 1)))
        batch = [first, *itertools.islice(rows, per_chunk - 1)]
        while batch:
            yield batch
            batch = list(itertools.islice(rows, per_chunk))
        return
    # bytes / str values differ in size from row to row (think PNG files): a chunk takes the rows that fit,
    # measured a block at a time in C (len) and read ahead no further than the rows expected to fill it
    measure = _row_costs(var, multi, fixed, all(isinstance(fields[j], (bytes, bytearray, str)) for j in var))
    batch: list[Any] = []
    size, average = 0, 0.0
    pending = [first]
    while True:
        if not pending:
            want = 1 + int((budget - size) // average) if average else 1
            pending = list(itertools.islice(rows, min(READ_AHEAD_ROWS, want)))
            if not pending:
                break
        ends = np.cumsum(measure(pending))
        average = float(ends[-1]) / len(pending)
        fit = min(int(np.searchsorted(ends, budget - size, side="right")), MAX_CHUNK_ROWS - len(batch))
        if fit == 0 and not batch:
            fit = 1  # a value bigger than a chunk travels alone
        if fit:
            batch += pending[:fit]
            size += int(ends[fit - 1])
            pending = pending[fit:]
        if pending or len(batch) >= MAX_CHUNK_ROWS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _row_costs(var: list[int], multi: bool, fixed: int, scalar: bool) -> Any:
    """A function: rows -> int64 array of the bytes each row takes in its chunk."""
    length = len if scalar else value_bytes
    getters = [operator.itemgetter(j) for j in var]

    def measure(block: list[Any]) -> np.ndarray:
        costs = np.full(len(block), fixed + (8 * len(var) if scalar else 0), np.int64)
        try:
            for get in getters:
                costs += np.fromiter(map(length, map(get, block) if multi else block), np.int64, len(block))
        except (IndexError, TypeError):  # a malformed row: pack() names it; a row's size is just a guess here
            return np.full(len(block), fixed + 8 * len(var), np.int64)
        return costs

    return measure


def _chunk_bounds(columns: list[Column], budget: int) -> list[tuple[int, int]]:
    """Row ranges of ``columns`` of about ``budget`` bytes each (at least one row)."""
    n = len(columns[0])
    fixed = sum(c[:1].nbytes for c in columns if not isinstance(c, VarColumn))
    var = [c for c in columns if isinstance(c, VarColumn)]
    if not var:
        step = max(1, budget // max(1, fixed))
        return [(start, min(n, start + step)) for start in range(0, n, step)]
    ends = np.cumsum(sum(c.row_bytes() for c in var) + fixed)
    bounds, start = [], 0
    while start < n:
        base = int(ends[start - 1]) if start else 0
        stop = min(n, max(start + 1, int(np.searchsorted(ends, base + budget, side="right"))))
        bounds.append((start, stop))
        start = stop
    return bounds


def result_rows(columns: list[Column]) -> Iterator[Any]:
    """Inference results as rows: values for one column, tuples for several; binary results come back as bytes."""
    values = [c.rows() if isinstance(c, VarColumn) else c.tolist() if c.ndim == 1 else list(c) for c in columns]
    if len(values) == 1:
        return iter(values[0])
    return zip(*values)


def _arrow_chunks(partition: int, batches: Iterator[Any]) -> Iterator[tuple[list[Column], dict[str, Any]]]:
    """Column chunks from Arrow record batches (a DataFrame partition's)."""
    budget = C.get_int(C.FEED_CHUNK_BYTES)
    offset = 0
    first: list[dict[str, Any]] | None = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        names = batch.schema.names
        columns = [_arrow_column(batch.column(i), names[i], partition, offset) for i in range(len(names))]
        schema = {"multi": True, "names": names, "cols": [column_spec(c) for c in columns]}
        first = first or schema["cols"]
        for name, spec, want in zip(names, schema["cols"], first):
            if spec["shape"][1:] != want["shape"][1:]:  # arrays whose length changes between batches
                raise FeedDataError(
                    f"partition {partition} row {offset}: column {name!r} holds arrays of shape "
                    f"{tuple(spec['shape'][1:])}, earlier rows have {tuple(want['shape'][1:])}; every "
                    "row must have the same array lengths", partition=partition, row=offset)
        for start, stop in _chunk_bounds(columns, budget):
            yield [c[start:stop] for c in columns], schema
        offset += batch.num_rows


def _is_record_batch(item: Any) -> bool:
    """True for a pyarrow RecordBatch (without importing pyarrow for RDDs of plain rows)."""
    kind = type(item)
    return kind.__name__ == "RecordBatch" and kind.__module__.startswith("pyarrow")


def _arrow_column(column: Any, name: str, partition: int, offset: int) -> Column:
    import pyarrow as pa

    if column.null_count:
        row = offset + column.is_null().to_pylist().index(True)
        raise FeedDataError(f"partition {partition} row {row}: column {name!r} is null; fill or drop nulls first",
                            partition=partition, row=row)
    kind = column.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        lengths = np.asarray(column.value_lengths())
        if len(lengths) and (lengths != lengths[0]).any():
            bad = int(np.argmax(lengths != lengths[0]))
            raise FeedDataError(f"partition {partition} row {offset + bad}: column {name!r} has {lengths[bad]} "
                                f"values, the batch has {lengths[0]}", partition=partition, row=offset + bad)
        flat = _arrow_column(column.flatten(), name, partition, offset)
        width = int(lengths[0]) if len(lengths) else 0
        return flat.reshape((len(column), width) + flat.shape[1:])
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _arrow_var_column(column, STRING)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return _arrow_var_column(column, BINARY)
    array = column.to_numpy(zero_copy_only=False)
    try:
        check_dtype(array.dtype)
    except ProtocolError:
        raise FeedDataError(f"partition {partition}: column {name!r} has Arrow type {kind}, which cannot be fed; "
                            "cast it to a number, string or binary column first", partition=partition,
                            column=name) from None
    return array


def _arrow_var_column(column: Any, kind: str) -> VarColumn:
    """A VarColumn over the Arrow array's own buffers: no per-value work, no copy of the values."""
    import pyarrow as pa

    n = len(column)
    _, offsets_buf, data_buf = column.buffers()
    if n == 0 or offsets_buf is None:
        return VarColumn(kind, np.zeros(n + 1, np.int64), np.empty(0, np.uint8))
    large = pa.types.is_large_string(column.type) or pa.types.is_large_binary(column.type)
    width = np.dtype(np.int64 if large else np.int32)
    offsets = np.frombuffer(offsets_buf, width, count=n + 1, offset=column.offset * width.itemsize)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None and data_buf.size else np.empty(0, np.uint8)
    return VarColumn(kind, offsets.astype(np.int64), data)


def vectors_as_arrays(df: Any) -> Any:
    """``df`` with its Spark ML vector columns turned into float64 arrays, which Arrow carries."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT

    vectors = {f.name for f in df.schema.fields if isinstance(f.dataType, VectorUDT)}
    if not vectors:
        return df
    return df.select([vector_to_array(df[c]).alias(c) if c in vectors else df[c] for c in df.columns])


def check_dataframe_schema(df: Any) -> None:
    """Raises FeedDataError naming the first column of ``df`` whose type cannot be fed.

    Runs on the driver and reads only the schema (no Spark job). Feedable: booleans,
    integers, floats, strings, binary, arrays of these (equal lengths per row are checked
    as rows are fed) and Spark ML vectors. Timestamps, dates, decimals, maps, structs,
    intervals and other user-defined types are refused with the cast that fixes them.
    """
    from pyspark.ml.linalg import VectorUDT

    for field in df.schema.fields:
        if isinstance(field.dataType, VectorUDT):
            continue
        bad = _unfeedable(field.dataType)
        if bad is None:
            continue
        inner = "" if bad is field.dataType else f" ({bad.simpleString()} inside it)"
        raise FeedDataError(f"DataFrame column {field.name!r} has type {field.dataType.simpleString()}{inner}, which "
                            f"cannot be fed: {_fix_for(bad)}. Feedable columns hold numbers, booleans, strings, "
                            "binary, arrays of these or Spark ML vectors.", column=field.name,
                            column_type=field.dataType.simpleString())


def _unfeedable(data_type: Any) -> Any:
    """The (innermost) type in ``data_type`` the feed cannot carry, or None."""
    from pyspark.sql import types as T

    plain = (T.BooleanType, T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType,
             T.StringType, T.CharType, T.VarcharType, T.BinaryType)
    if isinstance(data_type, plain):
        return None
    if isinstance(data_type, T.ArrayType):
        return _unfeedable(data_type.elementType)
    return data_type


def _fix_for(data_type: Any) -> str:
    from pyspark.sql import types as T

    if isinstance(data_type, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        return ("cast it to a number (e.g. unix_timestamp(col) or unix_date(col)) or to a string, "
                "e.g. df.withColumn(name, F.unix_timestamp(name))")
    if isinstance(data_type, T.DecimalType):
        return "cast it to double (or to long for whole numbers), e.g. df.withColumn(name, F.col(name).cast('double'))"
    if isinstance(data_type, T.MapType):
        return "turn it into array columns (map_keys(col), map_values(col)) or select the values you need"
    if isinstance(data_type, T.StructType):
        return "select its fields as columns of their own, e.g. df.select('col.*')"
    if isinstance(data_type, T.NullType):
        return "it holds only nulls: drop it, or give it a type and values"
    return "cast it to a number, string or binary column, or drop it"
