"""Feeding orchestration (driver): epochs, queue schemas and the Spark jobs that feed nodes.

``Feeding`` runs ``Cluster.train`` and ``Cluster.inference``: it announces each queue's
columns to the nodes, runs one feeding job per epoch (labelled "tfos feed 'input' epoch
2/5" in the Spark UI) and turns a feeding failure into the error that explains it: the
node's own failure when a node broke the feed, else the feed error a task reported.

A Structured Streaming DataFrame is fed as one long epoch, one feeding job per
micro-batch (``foreachBatch``), until the stream ends, ``shutdown()`` is called or a node
terminates the queue. The last micro-batch fed is recorded beside the query's checkpoint,
so a query restarted from it never feeds a micro-batch twice.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tfos import _constants as C
from tfos._protocol import NODE_GONE, Event, FeedErrorKind
from tfos._roles import FEEDING_JOBS
from tfos.driver import _spark
from tfos.driver._supervisor import ClusterState, Supervisor, role
from tfos.errors import AuthError, FeedDataError, FeedTimeoutError, ProtocolError, TFOSConfigError, TFOSError
from tfos.feed._balance import EpochPlan, StickyRoutes
from tfos.feed._feeder import Consumer, Feeder

log = logging.getLogger(__name__)

class Feeding:
    """Feeds RDDs and DataFrames to a supervised cluster's chief and workers."""

    def __init__(self, spark: _spark.Spark, supervisor: Supervisor, feed_tls: bool = True) -> None:
        self.spark = spark
        self.supervisor = supervisor
        self.feed_tls = feed_tls
        self._epochs: dict[str, int] = {}
        self._schemas: dict[str, dict[str, Any]] = {}
        self._queries: list[Any] = []
        supervisor.on_teardown(self.stop_streams)

    def consumer_ids(self) -> list[int]:
        return [eid for eid, (job, _) in sorted(self.supervisor.template.items()) if job in FEEDING_JOBS]

    def train(self, data: Any, num_epochs: int, feed_timeout: float, qname: str,
              checkpoint_location: str | None = None, balance: bool = True, cache: bool | None = None,
              shuffle: bool = False, seed: int | None = None) -> None:
        self._require_running("train", feed_timeout)
        cache = num_epochs > 1 and balance if cache is None else bool(cache)
        if cache and not balance:
            raise TFOSConfigError("cache=True needs balanced epochs: leave balance=True, or pass cache=False")
        if shuffle and not cache:
            raise TFOSConfigError("shuffle=True shuffles the cached epochs: it needs cache=True (and balance=True)")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise TFOSConfigError(f"seed must be None or an int >= 0; got {seed!r}")
        if _spark.is_streaming(data):
            if num_epochs != 1:
                raise TFOSConfigError("a streaming DataFrame is fed once, as it arrives: leave num_epochs at 1")
            self._train_stream(data, feed_timeout, qname, checkpoint_location)
            return
        data = self.spark.check_data(data)
        counts = None
        if balance:
            counts = self.spark.partition_counts(data, f"tfos feed {qname!r}: counting rows per partition")
            if sum(counts):
                EpochPlan(counts, self.consumer_ids(), 0)  # fails early when there are fewer rows than nodes
        epoch_rows = sum(counts) // len(self.consumer_ids()) if counts else None  # each node's rows an epoch
        first = self._epochs.get(qname, 0)
        plan = {"first": first, "epochs": num_epochs, "shuffle": bool(shuffle), "seed": seed} if cache else None
        if (counts is not None and not sum(counts)) or not self._announce(qname, data, epoch_rows, plan):
            log.warning("nothing to feed to queue %r: the data is empty", qname)
            return
        before = self.consumed_rows(qname)
        for n in range(1 if cache else num_epochs):
            if self.supervisor.server.terminated(qname):
                log.info("queue %r was terminated by a node; not feeding further epochs", qname)
                break
            epoch = self._epochs.get(qname, 0)
            self._epochs[qname] = epoch + 1
            epoch_plan = None
            if counts is not None:
                epoch_plan = EpochPlan(counts, self.consumer_ids(), epoch, cache)
                self.supervisor.server.set_plan(qname, epoch, epoch_plan)
            else:
                self.supervisor.server.set_plan(qname, epoch, StickyRoutes(self.consumer_ids()))
            feeder = self._feeder(qname, epoch, feed_timeout, balanced=counts is not None, epoch_rows=epoch_rows,
                                  cache_plan=plan)
            acked = self._run_job(lambda f=feeder: self.spark.feed_job(data, f), qname,
                                  f"tfos feed {qname!r} epoch {n + 1}/{num_epochs}")
            if epoch_plan is not None and acked is not None and not self.supervisor.server.terminated(qname):
                _check_acked(qname, epoch, epoch_plan, acked)
            self.supervisor.server.post({"type": Event.FEED_END, "qname": qname, "epoch": epoch}, self.consumer_ids())
        if cache:
            self._epochs[qname] = first + num_epochs
            self._await_cached_epochs(
                qname, {node: count + num_epochs * (epoch_rows or 0) for node, count in before.items()}, feed_timeout)

    def _await_cached_epochs(self, qname: str, targets: dict[str, int], feed_timeout: float) -> None:
        """Returns once every node has read its cached epochs (so a later ``train`` on the queue never meets
        them); raises a node's failure, or FeedTimeoutError for a node that stopped reading."""
        sup, server = self.supervisor, self.supervisor.server
        progress: dict[str, tuple[int, float]] = {}
        while True:
            if sup.failure is not None:
                sup.mark_failure_raised()
                raise sup.failure
            if sup.state is ClusterState.RESTARTING or sup.server is not server:
                raise TFOSError(f"a node restarted while the nodes served cached epochs of queue {qname!r}: the "
                                "restarted node's cache is gone. Call train() again for the epochs left (it "
                                "streams them from Spark), or pass cache=False to stream every epoch.")
            if server.terminated(qname) or sup.state is not ClusterState.RUNNING:
                return
            now, counts = time.monotonic(), self.consumed_rows(qname)
            behind = {node: count for node, count in counts.items() if count < targets.get(node, 0)}
            if not behind:
                return
            for node, count in behind.items():
                last, since = progress.get(node, (-1, now))
                if count != last:
                    progress[node] = (count, now)
                elif now - since > feed_timeout:
                    raise FeedTimeoutError(
                        f"node {node} read no rows of queue {qname!r} from its epoch cache for "
                        f"feed_timeout={feed_timeout}s (it read {count:,} of {targets[node]:,}). Its main_fun "
                        "stopped reading the feed (finished early, stuck, or reads another queue); raise "
                        "feed_timeout if it is just slow.", node=node)
            server.wait(lambda: sup.failure is not None, timeout=C.get_float(C.POLL_HOLD_SECS))

    def inference(self, data: Any, feed_timeout: float, qname: str, schema: Any = None) -> Any:
        self._require_running("inference", feed_timeout)
        data = self.spark.check_data(data)
        self._announce(qname, data)
        return self.spark.inference(data, self._feeder(qname, None, feed_timeout), schema)

    def _train_stream(self, df: Any, feed_timeout: float, qname: str, checkpoint: str | None) -> None:
        """Feeds each micro-batch of a streaming DataFrame once; see the module docstring."""
        import tempfile

        if self.spark.remote:
            self._train_remote_stream(df, feed_timeout, qname, checkpoint)
            return
        sup = self.supervisor
        checkpoint = checkpoint or tempfile.mkdtemp(prefix="tfos-stream-")
        marker, last_fed, epoch = self._begin_stream(qname, checkpoint)
        assert marker is not None
        errors: list[BaseException] = []
        idle = threading.Event()  # no micro-batch is being fed
        idle.set()
        stopping = False

        def feed(batch: Any, batch_id: int) -> None:
            nonlocal last_fed
            if batch_id <= last_fed or errors or stopping or sup.server.terminated(qname):
                return  # fed before the query restarted, or the feed is over
            idle.clear()
            try:
                data = self.spark.check_data(batch)
                if self._announce(qname, data):
                    feeder = self._feeder(qname, epoch, feed_timeout, batch=batch_id)
                    self._run_job(lambda: self.spark.feed_job(data, feeder), qname,
                                  f"tfos feed {qname!r} stream batch {batch_id}")
                self.spark.write_text(marker, str(batch_id))
                last_fed = batch_id
            except BaseException as exc:
                if not stopping:  # stopping the query interrupts its thread: not the batch's fault
                    errors.append(exc)
                raise
            finally:
                idle.set()

        query = _spark.start_stream(df, feed, checkpoint, f"tfos feed {qname!r}")
        self._queries.append(query)
        try:
            while query.isActive and not errors and not sup.server.terminated(qname) and sup.failure is None \
                    and sup.state is ClusterState.RUNNING:
                query.awaitTermination(0.5)
            if sup.server.terminated(qname) and not errors and sup.failure is None:
                idle.wait(feed_timeout)  # a node ended the feed: the batch in flight ends soon; let it record itself
        finally:
            stopping = True
            query.stop()
        if errors:
            raise errors[0]
        if sup.failure is not None:
            sup.mark_failure_raised()
            raise sup.failure
        _spark.raise_stream_error(query)
        sup.server.post({"type": Event.FEED_END, "qname": qname, "epoch": epoch}, self.consumer_ids())

    def _begin_stream(self, qname: str, checkpoint: str | None) -> tuple[str | None, int, int]:
        """(marker of the last micro-batch fed, beside the checkpoint; that batch's id or -1; the stream's
        epoch) for a stream starting on ``qname``, whose rows go to the nodes by sticky routes."""
        marker = None if checkpoint is None else f"{checkpoint.rstrip('/')}/tfos-fed-{qname}"
        last_fed = int((self.spark.read_text(marker) if marker else None) or -1)
        epoch = self._epochs.get(qname, 0)
        self._epochs[qname] = epoch + 1
        self.supervisor.server.set_plan(qname, epoch, StickyRoutes(self.consumer_ids()))
        return marker, last_fed, epoch

    def _train_remote_stream(self, df: Any, feed_timeout: float, qname: str, checkpoint: str | None) -> None:
        """Spark Connect runs ``foreachBatch`` functions in a Python process beside its server, not here:
        that process feeds each micro-batch (:class:`_RemoteBatches`) and this one watches the query."""
        sup = self.supervisor
        marker, last_fed, epoch = self._begin_stream(qname, checkpoint)
        errors_before = len(sup.server.feed_errors())
        # The nodes learn the columns from the first rows they get: no driver-side peek at a stream.
        query = _spark.start_stream(df, _RemoteBatches(self._feeder(qname, epoch, feed_timeout), marker, last_fed),
                                    checkpoint, f"tfos feed {qname!r}")
        self._queries.append(query)
        try:
            while query.isActive and not sup.server.terminated(qname) and sup.failure is None \
                    and sup.state is ClusterState.RUNNING:
                query.awaitTermination(0.5)
            if sup.server.terminated(qname) and sup.failure is None:
                _spark.await_trigger(query, feed_timeout)  # a node ended the feed: the batch in flight records itself
        finally:
            query.stop()
        if sup.failure is not None:
            sup.mark_failure_raised()
            raise sup.failure
        reports = [r for r in sup.server.feed_errors()[errors_before:] if r["kind"] not in NODE_GONE]
        if reports and not sup.server.terminated(qname):
            raise _feed_error(reports[0])
        if not sup.server.terminated(qname):
            _spark.raise_stream_error(query)
        sup.server.post({"type": Event.FEED_END, "qname": qname, "epoch": epoch}, self.consumer_ids())

    def stop_streams(self) -> None:
        """Stops every streaming query still feeding the cluster (at teardown)."""
        for query in self._queries:
            try:
                query.stop()
            except Exception:  # noqa: BLE001 - teardown goes on
                log.debug("stopping a streaming query failed", exc_info=True)

    def close(self) -> None:
        """Tells every fed node that no more data comes, so ``should_stop()`` turns true."""
        self.supervisor.server.post({"type": Event.FEED_CLOSE}, self.consumer_ids())

    def consumed_rows(self, qname: str) -> dict[str, int]:
        counts = {}
        for node in self.supervisor.server.nodes().values():
            if node.info["job_name"] in FEEDING_JOBS:
                counts[role(node)] = int(node.stats.get("consumed", {}).get(qname, 0))
        return counts

    # ---- internals -------------------------------------------------------------------------
    def _require_running(self, method: str, feed_timeout: float) -> None:
        sup = self.supervisor
        if sup.failure is not None:
            sup.mark_failure_raised()
            raise sup.failure
        if sup.state != ClusterState.RUNNING:
            raise TFOSError(f"{method}() on a cluster that is {sup.state.value}")
        if not isinstance(feed_timeout, (int, float)) or feed_timeout <= 0:
            raise TFOSConfigError(f"feed_timeout must be a positive number of seconds; got {feed_timeout!r}")

    def _feeder(self, qname: str, epoch: int | None, feed_timeout: float, balanced: bool = False,
                epoch_rows: int | None = None, cache_plan: dict[str, Any] | None = None,
                batch: int | None = None) -> Feeder:
        gen = self.supervisor.generation
        nodes = gen.server.nodes()
        consumers = tuple(Consumer(eid, role(nodes[eid]), nodes[eid].info["host"], nodes[eid].info["feed_port"])
                          for eid in self.consumer_ids())
        return Feeder(cluster_id=gen.cluster_id, credential=gen.credential, server_address=gen.address,
                      qname=qname, epoch=epoch, consumers=consumers, feed_timeout=float(feed_timeout),
                      local_mode=gen.server.local_mode, balanced=balanced, epoch_rows=epoch_rows,
                      cache_plan=cache_plan, tls=self.feed_tls, batch=batch)

    def _announce(self, qname: str, data: Any, epoch_rows: int | None = None,
                  cache: dict[str, Any] | None = None) -> bool:
        """Tells the nodes the columns of ``qname`` (from the first row) and, for balanced epochs,
        the rows each node gets an epoch and the cache plan; False if there are no rows."""
        if qname not in self._schemas:
            with self.spark.described(None, f"tfos feed {qname!r}: first row for the schema"):
                first = self.spark.first_rows(data)
            if not first:
                return False
            _, self._schemas[qname] = next(self._feeder(qname, 0, 1.0)._chunks(-1, iter(first)))
        self.supervisor.server.post({"type": Event.FEED_BEGIN, "qname": qname, "schema": self._schemas[qname],
                                     "epoch_rows": epoch_rows, "cache": cache}, self.consumer_ids())
        return True

    def _run_job(self, action: Callable[[], Any], qname: str, description: str) -> Any:
        """Runs a feeding job and returns what ``action`` returned; on a node or feed failure cancels
        it and raises the cause.

        Once a node terminated ``qname``, nodes may have finished: feeding errors then
        end the feed quietly instead (and None is returned).
        """
        sup = self.supervisor
        group = f"{sup.generation.job_group}-feed"
        server = sup.server
        errors_before = len(server.feed_errors())
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def body() -> None:
            try:
                outcome["result"] = action()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                outcome["error"] = exc
            finally:
                done.set()
                server.wake()

        thread = self.spark.job_thread(group, description, body)
        failure: BaseException | None = None
        seen = errors_before
        try:
            while failure is None and not done.is_set():
                server.wait(lambda s=seen: done.is_set() or sup.failure is not None or len(server.feed_errors()) > s,
                            timeout=None)
                failure = sup.failure
                reports = server.feed_errors()
                for report in reports[seen:] if failure is None else ():
                    if report["kind"] not in NODE_GONE:
                        failure = _feed_error(report)
                        break
                    # A broken connection: a dead node breaks the feed at once, so give the monitor the time to
                    # say which and why. If every node is fine, the link broke: Spark retries the task (which then
                    # resumes where the node's rows end) or fails the job.
                    server.wait(lambda: sup.failure is not None, timeout=C.get_float(C.HEARTBEAT_TIMEOUT_SECS) + 2)
                    failure = sup.failure
                    if failure is None:
                        log.warning("a feeding task lost its link to a node that is still up: %s", report["message"])
                seen = len(reports)
        except BaseException:  # Ctrl-C / SIGTERM while the epoch feeds: stop its job before re-raising
            self.spark.cancel(group)
            raise
        if failure is None and "error" in outcome:
            failure = TFOSError(f"feeding job failed: {_spark.short_error(outcome['error'])}")
        if failure is not None:
            self.spark.cancel(group)
            thread.join(timeout=30)
            if failure is sup.failure:
                sup.mark_failure_raised()
            elif server.terminated(qname):
                log.info("%s stopped after a node terminated the queue (%s)", description, failure)
                return None
            raise failure
        return outcome.get("result")


@dataclass(frozen=True)
class _RemoteBatches:
    """A ``foreachBatch`` function for Spark Connect, run by the Python process beside the Connect server:
    feeds each micro-batch newer than ``last_fed`` with one feeding job, then records it in ``marker``
    (beside the query's checkpoint) so a query restarted from the checkpoint feeds no batch twice."""

    feeder: Feeder
    marker: str | None
    last_fed: int

    def __call__(self, batch: Any, batch_id: int) -> None:
        if batch_id <= self.last_fed:
            return
        spark = _spark.backend(batch.sparkSession)
        spark.feed_job(spark.check_data(batch), dataclasses.replace(self.feeder, batch=batch_id))
        if self.marker is not None:
            spark.write_text(self.marker, str(batch_id))


def _check_acked(qname: str, epoch: int, plan: EpochPlan, acked: list[Any]) -> None:
    """Every row the plan routed to a node was taken exactly once, whatever Spark retried."""
    for partition, rows in enumerate(acked):
        expected = plan.routed_rows(partition)
        if rows != expected:
            raise FeedDataError(f"partition {partition} of queue {qname!r} epoch {epoch}: the nodes acknowledged "
                                f"{rows} rows where the plan routed {expected}", partition=partition)


def _feed_error(report: dict[str, Any]) -> TFOSError:
    """The error a feeder reported, rebuilt by its kind (FeedErrorKind)."""
    kinds = {FeedErrorKind.TIMEOUT: FeedTimeoutError, FeedErrorKind.BAD_ROW: FeedDataError,
             FeedErrorKind.AUTH: AuthError, FeedErrorKind.PROTOCOL: ProtocolError}
    return kinds.get(report["kind"], TFOSError)(report["message"], partition=report.get("partition"),
                                               kind=report["kind"])
