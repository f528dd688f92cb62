"""The node's feed server and buffers (node process).

``FeedHub`` accepts connections from feeding Spark tasks on the node's Unix socket and
TCP port (TLS), runs the handshake of :mod:`tfos._protocol` (each side proves it holds
the generation's key against the other's fresh nonce), and puts each chunk of rows into
the queue it names. A peer that has not proven itself gets a bounded hello read by an
absolute deadline, at most ``MAX_PENDING`` such peers are served at once (more are
closed at accept), and whatever it sends ends in one rate-limited log line, never a
traceback. A ``FeedQueue`` holds chunks in arrival order, bounded in bytes: when it is
full the connection thread stops reading, so the feeding task blocks in ``send`` (back-
pressure). Chunks carry their epoch; an epoch ends when a chunk of the next epoch
arrives or when the driver says so (``feed_end`` event), whichever comes first.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import os
import select
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tfos import _constants as C
from tfos._paths import cache_dir
from tfos._protocol import Event, FeedOp
from tfos._security import check_proof, feed_keys, feed_token, is_key_share, new_key_share, new_nonce, prove
from tfos.errors import AuthError, ProtocolError, TFOSError
from tfos.feed._cache import CacheError, EpochCache
from tfos.feed._columns import Column, add_fingerprints, fingerprint
from tfos.feed._protocol import SealedStream, recv_frame, recv_hello, send_frame, widen_buffers

log = logging.getLogger(__name__)

#: Results of ``FeedQueue.take``.
EPOCH_END, CLOSED = "epoch_end", "closed"
#: Connections that have not proven themselves served at once; more are closed at accept.
MAX_PENDING = 64
#: Seconds between two log lines about refused peers (the ones between are counted).
REJECT_LOG_INTERVAL = 5.0
MAX_QNAME = 256


@dataclass
class FeedConnection:
    """One feeding task's connection; inference results go back through it."""

    sock: socket.socket
    inference: bool
    received: int = 0
    answered: int = 0
    input_done: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    gone: bool = False  # the reader went away (take(n), a cancelled or killed task): results are dropped

    def send_results(self, columns: list[Column], count: int, qname_out: str = "output") -> None:
        with self.send_lock:
            self.answered += count
            if self.gone:
                return
            try:
                send_frame(self.sock, {"op": FeedOp.RESULTS, "rows": count}, columns)
                if self.input_done and self.answered >= self.received:
                    send_frame(self.sock, {"op": FeedOp.DONE})
                    self.done.set()
            except OSError as exc:  # not main_fun's problem: Spark stopped reading this partition's results
                log.info("an inference reader went away (%s); dropping the results of its remaining rows", exc)
                self.gone = True
                self.done.set()


@dataclass
class Chunk:
    epoch: int | None
    columns: list[Column]  # numpy arrays and VarColumns; nbytes counts only the bytes sent
    nrows: int
    nbytes: int
    conn: FeedConnection
    pos: int = 0


@dataclass
class Delivery:
    """What this node holds of one partition's rows in one training epoch of a queue, across the Spark task
    attempts that fed them: a retried attempt skips ``rows`` (after showing they match ``fingerprint``), and
    only the latest attempt's rows are taken."""

    attempt: int = -1
    rows: int = 0
    fingerprint: list[int] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


#: The "connection" of chunks served from the epoch cache.
REPLAYED = FeedConnection(sock=None, inference=False)  # type: ignore[arg-type]


class FeedQueue:
    """Chunks of one named queue, in arrival order, bounded in bytes."""

    def __init__(self, name: str, capacity: int, closed: bool = False) -> None:
        self.name = name
        self.capacity = capacity
        self.cond = threading.Condition()
        self.chunks: collections.deque[Chunk] = collections.deque()
        self.bytes = 0
        self.epoch = 0
        self.ended_upto = -1
        self.closed = closed
        self.terminated = False
        self.consumed = 0
        self.schema: dict[str, Any] | None = None
        self.epoch_rows: int | None = None  # rows this node gets each epoch, when the driver balances them
        self.cache: EpochCache | None = None  # the first epoch of a cached train(), served again for the rest
        self.cache_plan: dict[str, Any] = {}
        self.cache_lock = threading.Lock()
        self.replays: collections.deque[int] = collections.deque()  # cached epochs still to serve
        self._scheduled = False  # the cached epochs were scheduled (the driver fed the cached one)
        self._replay: tuple[int, Iterator[list[Column]]] | None = None
        self.error: TFOSError | None = None  # raised to the reader
        self.pending: collections.deque[list[Any]] = collections.deque()  # [conn, rows] awaiting results

    def put(self, chunk: Chunk) -> bool:
        """Adds ``chunk``, waiting for room; False when the queue no longer takes data.

        A chunk of the epoch being cached is kept in the cache too; the cached epochs
        that follow are scheduled when the driver says it fed that epoch (``end_epoch``).
        """
        self.keep(chunk)
        with self.cond:
            self.cond.wait_for(lambda: self.bytes + chunk.nbytes <= self.capacity or not self.chunks
                               or self.terminated)
            if self.terminated:
                return False
            self.chunks.append(chunk)
            self.bytes += chunk.nbytes
            self.cond.notify_all()
            return True

    def set_schema(self, schema: dict[str, Any] | None, epoch_rows: int | None = None,
                   cache: EpochCache | None = None, cache_plan: dict[str, Any] | None = None) -> None:
        """Sets the columns (the first announcement wins), the rows of each coming epoch (None: unknown)
        and, for a cached train(), the cache and its plan (first epoch, epochs, shuffle, seed)."""
        with self.cond:
            if self.schema is None and schema is not None:
                self.schema = schema
            self.epoch_rows = epoch_rows
            if cache is not None and (not self.cache_plan or self.cache_plan.get("first") != cache_plan["first"]):
                self._drop_cache()
                self.cache, self.cache_plan = cache, dict(cache_plan)
            self.cond.notify_all()

    def keep(self, chunk: Chunk) -> None:
        """Adds ``chunk`` to the cache if it belongs to the epoch being cached."""
        with self.cache_lock:
            cache = self.cache
            if cache is None or self.error is not None or chunk.epoch != self.cache_plan["first"]:
                return
            try:
                cache.add(chunk.columns)
            except CacheError as exc:
                self._fail_cache(exc)

    def _fail_cache(self, exc: CacheError) -> None:
        with self.cond:
            self.error = exc
            self._drop_cache()
            self.cond.notify_all()

    def _next_replayed(self) -> Chunk | None:
        """The next chunk of the cached epochs (under the lock), or None when none is left."""
        while self.cache is not None and (self._replay is not None or self.replays):
            if self._replay is None:
                epoch = self.replays.popleft()
                plan, cache = self.cache_plan, self.cache
                order = cache.order(self.epoch_rows or cache.rows, epoch - plan["first"], plan.get("shuffle"),
                                    plan.get("seed"))
                row_bytes = max(1, (cache.memory_bytes + cache.disk_bytes) // max(1, cache.rows))
                rows = max(1, C.get_int(C.FEED_CHUNK_BYTES) // row_bytes)
                self._replay = (epoch, cache.pieces(rows, order))
            epoch, pieces = self._replay
            columns = next(pieces, None)
            if columns is not None:
                return Chunk(epoch, columns, len(columns[0]), 0, REPLAYED)
            self._replay = None
        if self.cache is not None and self._scheduled:
            self._drop_cache()  # every cached epoch was served
        return None

    def _replay_first(self) -> bool:
        """Whether the pending cached epoch comes before the head chunk (a later train's data)."""
        head = self.chunks[0]
        if head.conn is REPLAYED or head.epoch is None:
            return False
        pending = self._replay[0] if self._replay is not None else self.replays[0]
        return pending < head.epoch

    def _drop_cache(self) -> None:
        if self.cache is not None:
            self.cache.close()
        self.cache, self._replay, self._scheduled = None, None, False
        self.replays.clear()

    def replaying(self) -> bool:
        """Whether cached epochs are still to be served (under the lock)."""
        return self._replay is not None or bool(self.replays)

    def wait_schema(self) -> dict[str, Any] | None:
        with self.cond:
            self.cond.wait_for(lambda: self.schema is not None or self.closed or self.terminated)
            return self.schema

    def end_epoch(self, epoch: int) -> None:
        """The driver fed all of ``epoch``; after the epoch being cached, the cached epochs follow it."""
        with self.cond:
            self.ended_upto = max(self.ended_upto, epoch)
            cache = self.cache if self.cache is not None and epoch == self.cache_plan["first"] else None
            if cache is not None and not self._scheduled:
                self.replays.extend(range(epoch + 1, epoch + self.cache_plan["epochs"]))
                self._scheduled = True
            self.cond.notify_all()
        if cache is not None:
            try:
                cache.seal()  # now, not at the first replay: a full disk shows while the cached epoch is read
            except CacheError as exc:
                self._fail_cache(exc)

    def finish_epoch(self) -> None:
        """Moves on to the next epoch once a reader took all ``epoch_rows`` rows of this one."""
        with self.cond:
            self.epoch += 1
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def terminate(self) -> None:
        with self.cond:
            self.terminated = True
            self.bytes = 0
            self.chunks.clear()
            self._drop_cache()
            self.cond.notify_all()

    def take(self, n: int, within_epoch: bool) -> tuple[list[tuple[Chunk, int, int]], str | None]:
        """Up to ``n`` rows as (chunk, start, stop) pieces, plus why fewer came (or None).

        With ``within_epoch`` the rows stop at the end of the current epoch: a short
        (possibly empty) list with EPOCH_END, after which the next epoch begins.
        """
        pieces: list[tuple[Chunk, int, int]] = []
        got = 0
        with self.cond:
            if self.error is not None:
                raise self.error
            while got < n:
                if self.replaying() and not self.terminated and (not self.chunks or self._replay_first()):
                    replayed = self._next_replayed()
                    if replayed is not None:
                        self.chunks.appendleft(replayed)
                head = self.chunks[0] if self.chunks else None
                if head is not None and head.nrows == 0:  # end of an inference partition
                    self.chunks.popleft()
                    if got:
                        break  # its last rows make a short batch, so their results can go back
                    continue
                if head is not None and (not within_epoch or head.epoch is None or head.epoch <= self.epoch):
                    if head.epoch is not None:
                        self.epoch = max(self.epoch, head.epoch)
                    stop = min(head.nrows, head.pos + n - got)
                    pieces.append((head, head.pos, stop))
                    got += stop - head.pos
                    self.consumed += stop - head.pos  # counted when taken: a take may wait for more rows
                    head.pos = stop
                    if head.conn.inference:
                        if self.pending and self.pending[-1][0] is head.conn:
                            self.pending[-1][1] += stop - pieces[-1][1]
                        else:
                            self.pending.append([head.conn, stop - pieces[-1][1]])
                    if head.pos == head.nrows:
                        self.chunks.popleft()
                        self.bytes -= head.nbytes
                        self.cond.notify_all()
                    continue
                if head is None and self.closed and not self.replaying():
                    return pieces, CLOSED  # also within an epoch: no epoch follows a closed feed
                epoch_over = head is not None or self.ended_upto >= self.epoch
                if within_epoch and epoch_over and not self.terminated:
                    if got == 0:
                        self.epoch += 1
                    return pieces, EPOCH_END
                if head is None and (self.closed or self.terminated):
                    return pieces, CLOSED
                self.cond.wait()
            return pieces, None

    def answer(self, results: list[Column], count: int, qname_out: str = "output") -> None:
        """Routes ``count`` result rows back to the connections their inputs came from.

        ``qname_out`` only matters to hand-fed queues (``tfos.compat.TFManager``): a
        feeding task's results go back over its own socket.
        """
        start = 0
        while start < count:
            with self.cond:
                if not self.pending:
                    raise TFOSError(f"batch_results got {count} results but only {start} input rows await results "
                                    f"on queue {self.name!r}")
                entry = self.pending[0]
                take = min(entry[1], count - start)
                entry[1] -= take
                if entry[1] == 0:
                    self.pending.popleft()
            entry[0].send_results([r[start:start + take] for r in results], take, qname_out)
            start += take


class FeedHub:
    """Serves the feed sockets of one node; see the module docstring."""

    def __init__(self, node: Any, listeners: list[socket.socket]) -> None:
        self.node = node
        self.token = feed_token(node.p.credential)
        self.tls = node.p.credential.ssl_context(server=True) if node.p.feed_tls else None
        self.listeners = listeners
        self.queues: dict[str, FeedQueue] = {}
        self.lock = threading.Lock()
        self.closed = False
        self.capacity = C.get_int(C.FEED_BUFFER_BYTES)
        self.deliveries: dict[tuple[str, int, int, int], Delivery] = {}
        self._pending = 0
        self._refused = 0
        self._next_refusal_log = 0.0
        self._listening = True

    def start(self) -> None:
        for listener in self.listeners:
            threading.Thread(target=self._accept_loop, args=(listener,), name="tfos-feed-accept", daemon=True).start()

    def queue(self, name: str) -> FeedQueue:
        with self.lock:
            if name not in self.queues:
                self.queues[name] = FeedQueue(name, self.capacity, closed=self.closed)
            return self.queues[name]

    def data_feed(self, qname_in: str, qname_out: str, train_mode: bool, input_mapping: Any) -> Any:
        from tfos.feed._datafeed import DataFeed

        return DataFeed(self, self.queue(qname_in), qname_out, train_mode, input_mapping)

    def handle(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == Event.FEED_BEGIN:
            self._announce(self.queue(event["qname"]), event["schema"], event.get("epoch_rows"), event.get("cache"))
        elif kind == Event.FEED_END:
            self.queue(event["qname"]).end_epoch(int(event["epoch"]))
        elif kind == Event.FEED_CLOSE:
            with self.lock:
                self.closed = True
                queues = list(self.queues.values())
            for q in queues:
                q.close()

    def _announce(self, queue: FeedQueue, schema: dict[str, Any] | None, epoch_rows: int | None,
                  plan: dict[str, Any] | None) -> None:
        """What the driver tells of a train(): by event, and again in each feeding task's hello, so that
        neither the poll thread nor a feeding task can get ahead of the other."""
        cache = None
        if plan and queue.cache_plan.get("first") != plan["first"]:
            p = self.node.p
            name = "".join(ch if ch.isalnum() else "_" for ch in queue.name)[:40]
            unique = hashlib.sha1(queue.name.encode()).hexdigest()[:8]  # "a.b" and "a_b" apart
            base = os.path.realpath(cache_dir(p.cluster_id, p.executor_id))
            path = os.path.realpath(os.path.join(base, f"{name}-{unique}-{int(plan['first'])}"))
            if os.path.dirname(path) != base:  # never write or delete outside the node's cache directory
                raise ProtocolError(f"cache plan {plan!r} names a directory outside {base}")
            cache = EpochCache(path, C.get_int(C.FEED_CACHE_BYTES))
        queue.set_schema(schema, epoch_rows, cache, plan)

    def delivery(self, qname: str, epoch: int, batch: int | None, partition: int) -> Delivery:
        """The record of ``partition``'s rows in ``epoch`` (a stream's micro-``batch``) of ``qname``; records
        of older epochs and batches but the one before are dropped."""
        key = (qname, epoch, -1 if batch is None else batch, partition)
        with self.lock:
            if key not in self.deliveries:
                def recent(k: tuple[str, int, int, int]) -> bool:
                    if k[0] != qname:
                        return True
                    return k[1] >= epoch - 1 if batch is None else k[1] > epoch or (k[1] == epoch and k[2] >= batch - 1)

                self.deliveries = {k: d for k, d in self.deliveries.items() if recent(k)}
                self.deliveries[key] = Delivery()
            return self.deliveries[key]

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"consumed": {name: q.consumed for name, q in self.queues.items()}}

    def close(self) -> None:
        """Closes the sockets and deletes every epoch cache (at the node's exit)."""
        self._listening = False
        for listener in self.listeners:
            try:
                listener.close()
            except OSError:
                pass
        with self.lock:
            queues = list(self.queues.values())
        for queue in queues:
            with queue.cond:
                queue._drop_cache()
        p = self.node.p
        shutil.rmtree(cache_dir(p.cluster_id, p.executor_id), ignore_errors=True)

    def terminate(self, queue: FeedQueue) -> None:
        queue.terminate()
        try:
            self.node.client.terminate(self.node.p.executor_id, queue.name)
        except TFOSError:
            log.warning("could not tell the driver that queue %r was terminated", queue.name, exc_info=True)

    # ---- serving connections -----------------------------------------------------------------
    def _accept_loop(self, listener: socket.socket) -> None:
        """Accepts until the listener closes; no single connection, however it fails, ends the loop."""
        tls = self.tls if listener.family != socket.AF_UNIX else None
        while True:
            try:
                sock, peer = listener.accept()
            except OSError as exc:
                if not self._listening or listener.fileno() < 0:
                    return  # listener closed at exit
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.1)  # out of descriptors or memory for now: the peer's connect waits
                continue
            if not self._admit():
                sock.close()
                self._refuse(peer, f"more than {MAX_PENDING} connections are still in their handshake")
                continue
            try:
                widen_buffers(sock)
                threading.Thread(target=self._serve, args=(sock, peer, tls), name="tfos-feed-conn",
                                 daemon=True).start()
            except Exception as exc:  # noqa: BLE001 - e.g. "can't start new thread": drop this peer only
                self._admitted()
                sock.close()
                self._refuse(peer, f"{type(exc).__name__}: {exc}")

    def _admit(self) -> bool:
        with self.lock:
            if self._pending >= MAX_PENDING:
                return False
            self._pending += 1
            return True

    def _admitted(self) -> None:
        with self.lock:
            self._pending -= 1

    def _refuse(self, peer: Any, reason: str) -> None:
        """One log line every REJECT_LOG_INTERVAL seconds at most, counting the refusals between."""
        now = time.monotonic()
        with self.lock:
            self._refused += 1
            if now < self._next_refusal_log:
                return
            self._next_refusal_log = now + REJECT_LOG_INTERVAL
            count, self._refused = self._refused, 0
        more = f" ({count - 1} more refused since the last such line)" if count > 1 else ""
        log.warning("feed: refused a connection from %s: %s%s", _peer_name(peer), reason[:200], more)

    def _serve(self, sock: socket.socket, peer: Any, tls: ssl.SSLContext | None) -> None:
        deadline = time.monotonic() + C.get_float(C.FEED_HELLO_TIMEOUT_SECS)
        try:
            try:
                sock, hello, keys = self._handshake(sock, tls, deadline)
            except Exception as exc:  # noqa: BLE001 - whatever an unproven peer sends ends here, in one line
                self._refuse(peer, f"{type(exc).__name__}: {exc}")
                return
            finally:
                self._admitted()
            if hello is not None:
                self._serve_feeder(sock, hello, keys)
        except (ConnectionError, ProtocolError, OSError) as exc:
            log.warning("feed connection from %s dropped: %s", _peer_name(peer), exc)
        except Exception:  # noqa: BLE001 - a bug must not end the node; the driver sees the feeder fail
            log.exception("feed connection from %s failed", _peer_name(peer))
        finally:
            sock.close()

    def _handshake(self, sock: socket.socket, tls: ssl.SSLContext | None, deadline: float
                   ) -> tuple[socket.socket, dict[str, Any] | None, tuple[bytes, bytes] | None]:
        """TLS (on TCP), then the hello and both proofs, all by ``deadline``; returns the checked hello and,
        over TLS, the keys of the sealed records that follow ``ready`` (feeder to node, node to feeder)."""
        if tls is not None:
            sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.do_handshake()
        hello = recv_hello(sock, deadline)
        if hello is None:
            return sock, None, None
        their_nonce = hello.get("nonce")
        if hello.get("op") != FeedOp.HELLO or not _is_nonce(their_nonce) or (
                tls is not None and not is_key_share(hello.get("key"))):
            raise ProtocolError("the first frame is not a feed hello")
        nonce = new_nonce()
        share = new_key_share() if tls is not None else None
        send_frame(sock, {"op": FeedOp.CHALLENGE, "nonce": nonce, "proof": prove(self.token, their_nonce, "node"),
                          **({"key": share} if share else {})})
        reply = recv_hello(sock, deadline)
        if reply is None or reply.get("op") != FeedOp.AUTH or not check_proof(self.token, nonce, "feeder",
                                                                             reply.get("proof")):
            send_frame(sock, {"op": FeedOp.ERROR, "message": "the feeder did not prove it holds this cluster's key"})
            raise AuthError("no proof of the cluster's key")
        try:
            if hello.get("to") != self.node.p.executor_id:  # only a proven feeder learns which node this is
                raise ProtocolError(f"this feed is node {self.node.name} (executor {self.node.p.executor_id}), not "
                                    f"executor {str(hello.get('to'))[:20]}: a stale address or a redirected connection")
            return sock, _checked_hello(hello), feed_keys(hello["key"], share) if share else None
        except ProtocolError as exc:  # a peer with the key: tell it what is wrong
            send_frame(sock, {"op": FeedOp.ERROR, "message": str(exc)})
            raise

    def _serve_feeder(self, sock: socket.socket, hello: dict[str, Any], keys: tuple[bytes, bytes] | None) -> None:
        sock.settimeout(None)  # a feeding task may wait on back-pressure for as long as the node reads
        queue = self.queue(hello["qname"])
        if not hello["inference"]:
            self._announce(queue, None, hello["epoch_rows"], hello["cache"])
        conn = FeedConnection(sock, inference=hello["inference"])
        epoch, partition, attempt = hello["epoch"], hello["partition"], hello["attempt"]
        delivery = None  # training: the rows of this partition this node already holds, across attempts
        ready: dict[str, Any] = {"op": FeedOp.READY, "node": self.node.name}
        if not conn.inference and epoch is not None and partition is not None:
            delivery = self.delivery(queue.name, epoch, hello["batch"], partition)
            with delivery.lock:
                if attempt < delivery.attempt:
                    send_frame(sock, {"op": FeedOp.SUPERSEDED, "attempt": delivery.attempt})
                    return
                delivery.attempt = attempt  # an older attempt still sending is superseded: its rows are dropped
                ready.update(skip=delivery.rows, fingerprint=delivery.fingerprint)
        send_frame(sock, ready)
        if keys is not None:  # the feeder leaves TLS after ``ready`` too: the rows come in sealed records
            sock.settimeout(C.get_float(C.FEED_HELLO_TIMEOUT_SECS))
            sock = conn.sock = SealedStream.after_tls(sock, keys[1], keys[0])
            sock.settimeout(None)
        dropping = False  # after terminate(): read and drop the rest of the partition
        while True:
            frame = recv_frame(sock)
            if frame is None:
                return
            header, columns = frame
            if header.get("op") == FeedOp.END:
                break
            if dropping:
                continue
            if header.get("op") != FeedOp.DATA or not columns:
                raise ProtocolError(f"unexpected feed frame {header.get('op')!r}")
            if queue.schema is None and header.get("schema"):
                queue.set_schema(header["schema"], queue.epoch_rows)
            nrows = len(columns[0])
            conn.received += nrows
            chunk = Chunk(epoch, columns, nrows, sum(c.nbytes for c in columns), conn)
            if delivery is None:
                taken = self._take(queue, chunk, bool(header.get("cache_only")))
            else:
                sums = fingerprint(columns)
                with delivery.lock:  # counted and queued as one step: a newer attempt sees both or neither
                    if delivery.attempt != attempt:
                        log.warning("partition %s of queue %r epoch %s: attempt %s superseded by attempt %s; "
                                    "dropping the rest of its rows", partition, queue.name, epoch, attempt,
                                    delivery.attempt)
                        send_frame(sock, {"op": FeedOp.SUPERSEDED, "attempt": delivery.attempt})
                        return
                    taken = self._take(queue, chunk, bool(header.get("cache_only")))
                    if taken:
                        delivery.rows += nrows
                        delivery.fingerprint = add_fingerprints(delivery.fingerprint, sums)
            if not taken:
                with conn.send_lock:  # batch_results may be sending on this socket too
                    send_frame(sock, {"op": FeedOp.TERMINATED})  # the feeder stops sending when it sees this
                dropping = True
        if dropping:
            return
        if conn.inference:
            queue.put(Chunk(None, [], 0, 0, conn))
        with conn.send_lock:
            conn.input_done = True
            finished = conn.answered >= conn.received
        if not conn.inference:
            send_frame(sock, {"op": FeedOp.ACK, "rows": conn.received if delivery is None else delivery.rows})
        elif finished:
            with conn.send_lock:
                send_frame(sock, {"op": FeedOp.DONE})
        else:
            # Results flow back from batch_results on the node's thread; a reader that leaves says nothing
            # more, so the socket turning readable means it closed.
            while not conn.done.wait(1.0):
                if select.select([sock], [], [], 0)[0]:
                    with conn.send_lock:
                        conn.gone = True
                    return


    @staticmethod
    def _take(queue: FeedQueue, chunk: Chunk, cache_only: bool) -> bool:
        """Queues ``chunk`` (a left-over row of a balanced epoch goes to the cache only, served in later
        epochs); False when the queue was terminated."""
        if cache_only:
            queue.keep(chunk)
            return True
        return queue.put(chunk)


def _peer_name(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "a local process"


def _is_nonce(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 32 and all(ch in "0123456789abcdef" for ch in value)


def _checked_hello(hello: dict[str, Any]) -> dict[str, Any]:
    """The hello's fields, each checked for type and range (ProtocolError naming the first bad one)."""
    def field(name: str, ok: Any, what: str, default: Any = None) -> Any:
        value = hello.get(name, default)
        if not ok(value):
            raise ProtocolError(f"feed hello field {name!r} must be {what}; got {str(value)[:40]!r}")
        return value

    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 62

    def plan(value: Any) -> bool:
        return value is None or (isinstance(value, dict) and count(value.get("first"))
                                 and count(value.get("epochs")) and isinstance(value.get("shuffle", False), bool)
                                 and (value.get("seed") is None or count(value.get("seed"))))

    return {
        "qname": field("qname", lambda v: isinstance(v, str) and 0 < len(v) <= MAX_QNAME,
                       f"a queue name of 1-{MAX_QNAME} characters"),
        "inference": field("inference", lambda v: isinstance(v, bool), "true or false", False),
        "epoch": field("epoch", lambda v: v is None or count(v), "null or an epoch number"),
        "partition": field("partition", lambda v: v is None or count(v), "null or a partition number"),
        "attempt": field("attempt", count, "a Spark task attempt number", 0),
        "batch": field("batch", lambda v: v is None or count(v), "null or a micro-batch id"),
        "epoch_rows": field("epoch_rows", lambda v: v is None or count(v), "null or a row count"),
        "cache": field("cache", plan, "null or a cache plan {first, epochs, shuffle, seed}"),
    }
