"""Cluster lifecycle (driver): ``tfos.run`` and the ``Cluster`` it returns.

``run`` validates its arguments, starts the control server, and launches one Spark
job with one task per executor (``NodeLauncher``) in a background thread under a job
group of its own; it returns once every node has registered. ``shutdown`` closes the
feeds, waits for the chief and workers, stops the remaining nodes and the server,
and cancels whatever is left of the cluster's Spark jobs.
"""

from __future__ import annotations

import atexit
import enum
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tfos import _constants as C
from tfos.config import ClusterConfig, InputMode
from tfos.driver._server import FAILED, FINISHED, SERVING, ControlServer, NodeStatus
from tfos.driver._template import cluster_template
from tfos.errors import (
    AuthError,
    FeedDataError,
    FeedTimeoutError,
    NodeError,
    NodeFailedError,
    ReservationTimeoutError,
    TFOSConfigError,
    TFOSError,
)
from tfos.executor._bootstrap import FEEDING_JOBS, NodeLauncher
from tfos.feed._feeder import Consumer, Feeder, dataframe_to_arrow_rdd

if TYPE_CHECKING:
    from pyspark import SparkContext

log = logging.getLogger(__name__)

_NODE_GONE = re.compile(r"closed the feed|cannot reach the feed|Broken pipe|Connection reset|Connection refused")
_LOCAL_CLUSTER = re.compile(r"local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]")


class ClusterState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


def run(sc: SparkContext, main_fun: Callable[[Any, Any], Any], tf_args: Any, num_executors: int, num_ps: int = 0,
        tensorboard: bool = False, input_mode: InputMode = InputMode.TENSORFLOW, log_dir: str | None = None,
        master_node: str | None = "chief", eval_node: bool = False, reservation_timeout: float = 600,
        release_port: bool = True, max_restarts: int = 0, num_gpus: int = 0) -> Cluster:
    """Starts a TensorFlow cluster with one node per Spark executor.

    Args:
        sc: the SparkContext; its executors host the nodes (one task slot each).
        main_fun: ``main_fun(args, ctx)``, run on every node with ``ctx`` a NodeContext.
        tf_args: passed to main_fun as ``args`` (anything picklable: argparse Namespace, dict, list).
        num_executors: number of nodes, one per executor.
        num_ps: number of parameter-server nodes (the first executors).
        tensorboard: start TensorBoard on the chief, serving ``log_dir``.
        input_mode: InputMode.TENSORFLOW (nodes read their own data) or InputMode.SPARK (fed by
            ``Cluster.train`` / ``Cluster.inference``).
        log_dir: TensorBoard log directory, resolved like ``ctx.absolute_path``.
        master_node: ``'chief'`` (default), ``'master'``, or None for workers only.
        eval_node: make one executor an ``'evaluator'`` node.
        reservation_timeout: seconds to wait for every node to register.
        release_port: release the node's reserved TF port before main_fun (else call
            ``ctx.release_port()``).
        max_restarts: how many times to restart every node after a node fails
            (InputMode.TENSORFLOW). main_fun runs again from the start, so it should
            resume from its checkpoints (Keras ``BackupAndRestore``, ``tf.train.CheckpointManager``).
        num_gpus: GPUs per node (not ps) when Spark does not schedule GPUs: tfos picks free
            ones with nvidia-smi and locks them per host. With Spark GPU scheduling each
            node uses exactly the GPUs Spark assigned to its task, whatever this says.

    Returns:
        The running Cluster; also a context manager that shuts it down on exit.

    Raises:
        TFOSConfigError: bad arguments or Spark settings, before any Spark job starts.
        ReservationTimeoutError: not all nodes registered within reservation_timeout.
        NodeError: a node task failed while starting.
    """
    config = ClusterConfig(main_fun=main_fun, num_executors=num_executors, num_ps=num_ps, tensorboard=tensorboard,
                           input_mode=input_mode, log_dir=log_dir, master_node=master_node, eval_node=eval_node,
                           reservation_timeout=reservation_timeout, release_port=release_port,
                           max_restarts=max_restarts, num_gpus=num_gpus)
    cluster = Cluster(sc, config, tf_args)
    _exit_on_sigterm()
    cluster._start()
    cluster._watch()
    return cluster


class Cluster:
    """A running TensorFlow cluster on Spark executors, returned by :func:`tfos.run`."""

    def __init__(self, sc: SparkContext, config: ClusterConfig, tf_args: Any) -> None:
        self.sc = sc
        self.config = config
        self.state = ClusterState.STARTING
        self.template = cluster_template(config.num_executors, config.num_ps, config.master_node, config.eval_node)
        self._local_mode = _preflight(sc, config)
        self._main = _pickle_main(config.main_fun, tf_args)
        self._secret = secrets.token_hex(16)
        self._new_generation()
        self.restarts = 0
        self._failure: TFOSError | None = None
        self._failure_raised = False
        self._monitor: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        self._torn_down = False
        self._feed_epochs: dict[str, int] = {}
        self._schemas: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()
        self._atexit = None

    def _new_generation(self) -> None:
        """A fresh identity and control server for (re)starting every node."""
        self.cluster_id = uuid.uuid4().hex
        self.job_group = f"tfos-{self.cluster_id[:12]}"
        self._server = ControlServer(self.template, self._secret, local_mode=self._local_mode)
        self._server_address = ""
        self._node_job: threading.Thread | None = None
        self._node_job_error: BaseException | None = None

    # ---- public surface ------------------------------------------------------------------
    @property
    def cluster_spec(self) -> dict[str, list[str]]:
        """TensorFlow's cluster spec: ``{job: ["host:port", ...]}``."""
        return self._server.cluster_spec()

    @property
    def cluster_info(self) -> list[dict[str, Any]]:
        """One dict per node: executor_id, job_name, task_index, host, port, hostname, pid, ports."""
        return self._server.cluster_info()

    @property
    def tensorboard_url(self) -> str | None:
        """``http://host:port`` of TensorBoard on the chief, or None when not started."""
        for node in self._server.cluster_info():
            if node.get("tb_port"):
                return f"http://{node['host']}:{node['tb_port']}"
        return None

    def train(self, data: Any, num_epochs: int = 1, feed_timeout: float = 600, qname: str = "input") -> None:
        """Feeds ``data`` to the chief and workers ``num_epochs`` times (InputMode.SPARK).

        Each epoch is one Spark job; every row reaches exactly one node once per epoch,
        in chunks streamed to the node on the executor that computed its partition.
        Returns when the last epoch has been handed over (nodes may still be consuming
        their buffers) or early, after the current epoch, once a node called
        ``DataFeed.terminate()``.

        Args:
            data: an RDD of rows (tuples, lists, numpy arrays, numbers) or a DataFrame.
            num_epochs: passes over ``data``.
            feed_timeout: seconds a node may go without taking data before
                FeedTimeoutError is raised.
            qname: the queue to feed; nodes read it with ``ctx.get_data_feed(qname_in=...)``.

        Raises:
            FeedDataError: a row does not fit its batch (names the partition and row).
            FeedTimeoutError: a node stopped consuming.
            NodeError: a node's main_fun failed while being fed.
        """
        if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
            raise TFOSConfigError(f"num_epochs must be an integer >= 1; got {num_epochs!r}")
        self._require_feed("train", feed_timeout)
        rdd, arrow = _as_rdd(data)
        if not self._announce(qname, rdd, arrow):
            return
        for _ in range(num_epochs):
            if self._server.terminated(qname):
                log.info("queue %r was terminated by a node; not feeding further epochs", qname)
                break
            epoch = self._feed_epochs.get(qname, 0)
            self._feed_epochs[qname] = epoch + 1
            feeder = self._feeder(qname, epoch, feed_timeout, arrow)
            self._run_feed_job(lambda f=feeder: rdd.mapPartitionsWithIndex(f).collect(), qname, epoch)
            self._server.post({"type": "feed_end", "qname": qname, "epoch": epoch}, self._consumer_ids())

    def inference(self, data: Any, feed_timeout: float = 600, qname: str = "input") -> Any:
        """Feeds ``data`` to the nodes and returns an RDD of their results (InputMode.SPARK).

        The RDD is lazy, as in Spark: rows are fed when an action runs on it. It holds
        exactly one result per input row, in input order within each partition; nodes
        send them with ``DataFeed.batch_results``.
        """
        self._require_feed("inference", feed_timeout)
        rdd, arrow = _as_rdd(data)
        self._announce(qname, rdd, arrow)
        return rdd.mapPartitionsWithIndex(self._feeder(qname, None, feed_timeout, arrow))

    def consumed_rows(self, qname: str = "input") -> dict[str, int]:
        """Rows each fed node has read from ``qname`` so far, as last reported ({"worker:0": n})."""
        counts = {}
        for node in self._server.nodes().values():
            if node.info["job_name"] in FEEDING_JOBS:
                counts[_role(node)] = int(node.stats.get("consumed", {}).get(qname, 0))
        return counts

    def log_tail(self, role: str) -> list[str]:
        """The last lines a node printed (stdout and stderr), e.g. ``cluster.log_tail("worker:0")``."""
        for node in self._server.nodes().values():
            if _role(node) == role:
                return list(node.log_tail)
        raise TFOSConfigError(f"no node {role!r}; nodes: {sorted(_role(n) for n in self._server.nodes().values())}")

    def shutdown(self, grace_secs: float = 0, timeout: float = 259200) -> None:
        """Stops the cluster: waits for chief and workers, then stops every node.

        Idempotent. In InputMode.SPARK the feeds are closed first, so ``should_stop()``
        turns true on every node once its buffered data is consumed. If a node failed
        earlier (and was not restarted), the first call raises that failure.

        Args:
            grace_secs: seconds to let serving nodes (ps, evaluator) run after the
                workers finished, e.g. for a last evaluation.
            timeout: seconds to wait for the chief and workers to finish main_fun;
                after that they are stopped and TFOSError is raised.

        Raises:
            NodeError: a node's main_fun raised (with the remote traceback).
            NodeFailedError: a node process died, its executor was lost, or it went silent.
            TFOSError: the workers did not finish within ``timeout``.
        """
        with self._lock:
            if self.state in (ClusterState.STOPPED, ClusterState.FAILED):
                self._teardown("cluster shut down")  # returns once a teardown under way has finished
                self._raise_failure_once()
                return
            self.state = ClusterState.STOPPING
        started = time.monotonic()
        error: BaseException | None = None
        try:
            workers = self._consumer_ids()
            if self.config.input_mode == InputMode.SPARK:
                self._server.post({"type": "feed_close"}, workers)
            if not self._await_workers(workers, started + timeout):
                running = [_role(n) for n in self._server.nodes().values() if n.info["executor_id"] in workers
                           and n.state not in (FINISHED, SERVING)]
                error = TFOSError(f"{', '.join(running)} still running {timeout}s after shutdown() began; "
                                  "stopped them. Raise shutdown(timeout=...) if training needs longer.")
            elif grace_secs and self._failure is None:
                time.sleep(grace_secs)  # the user asked serving nodes to keep running this long
        finally:
            self._teardown("cluster shut down")
        log.info("tfos cluster shut down in %.2fs", time.monotonic() - started)
        if self._failure is not None:
            self._raise_failure_once()
        if error is not None:
            self.state = ClusterState.FAILED
            raise error

    def _await_workers(self, workers: list[int], deadline: float) -> bool:
        """Waits until every chief/worker finished main_fun, across restarts; False on timeout."""
        while self._failure is None:
            server = self._server  # replaced when the monitor restarts the cluster
            remaining = deadline - time.monotonic()
            if server.wait(lambda s=server: _finished(s, workers) or self._failure is not None or s is not self._server,
                           timeout=min(1.0, max(0.0, remaining))) and _finished(server, workers):
                return True
            if remaining <= 0:
                return False
        return True

    def _raise_failure_once(self) -> None:
        if self._failure is not None and not self._failure_raised:
            self._failure_raised = True
            raise self._failure

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.shutdown()
            return
        try:
            self.shutdown(timeout=30)
        except TFOSError:
            log.exception("shutdown after an error in the with-block failed as well")

    # ---- feeding -----------------------------------------------------------------------------
    def _require_feed(self, method: str, feed_timeout: float) -> None:
        if self.config.input_mode != InputMode.SPARK:
            raise TFOSConfigError(f"{method}() feeds data from Spark: start the cluster with "
                                  "input_mode=tfos.InputMode.SPARK (nodes read their own data in TENSORFLOW mode)")
        if self._failure is not None:
            self._failure_raised = True
            raise self._failure
        if self.state != ClusterState.RUNNING:
            raise TFOSError(f"{method}() on a cluster that is {self.state.value}")
        if not isinstance(feed_timeout, (int, float)) or feed_timeout <= 0:
            raise TFOSConfigError(f"feed_timeout must be a positive number of seconds; got {feed_timeout!r}")

    def _consumer_ids(self) -> list[int]:
        return [eid for eid, (job, _) in sorted(self.template.items()) if job in FEEDING_JOBS]

    def _feeder(self, qname: str, epoch: int | None, feed_timeout: float, arrow: bool) -> Feeder:
        nodes = self._server.nodes()
        consumers = tuple(Consumer(eid, _role(nodes[eid]), nodes[eid].info["host"], nodes[eid].info["feed_port"])
                          for eid in self._consumer_ids())
        return Feeder(cluster_id=self.cluster_id, secret=self._secret, server_address=self._server_address,
                      qname=qname, epoch=epoch, consumers=consumers, feed_timeout=float(feed_timeout),
                      local_mode=self._server.local_mode, arrow=arrow)

    def _announce(self, qname: str, rdd: Any, arrow: bool) -> bool:
        """Tells the nodes the columns of ``qname`` (from the first row); False if no rows."""
        if qname in self._schemas:
            return True
        first = rdd.take(1)
        if not first:
            log.warning("nothing to feed to queue %r: the data is empty", qname)
            return False
        _, schema = next(self._feeder(qname, 0, 1.0, arrow)._chunks(-1, iter(first)))
        self._schemas[qname] = schema
        self._server.post({"type": "feed_begin", "qname": qname, "schema": schema}, self._consumer_ids())
        return True

    def _run_feed_job(self, action: Callable[[], Any], qname: str, epoch: int) -> None:
        """Runs a feeding job; on a node or feed failure cancels it and raises the cause.

        Once a node terminated ``qname``, nodes may have finished: feeding errors then
        end the feed quietly instead.
        """
        description = f"feed {qname} #{epoch}"
        group = f"{self.job_group}-feed"
        server = self._server
        errors_before = len(server.feed_errors())
        outcome: dict[str, BaseException] = {}
        done = threading.Event()

        def body() -> None:
            try:
                action()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                outcome["error"] = exc
            finally:
                done.set()
                server.wake()

        thread = _spark_job_thread(self.sc, group, description, body)
        server.wait(lambda: done.is_set() or self._failure is not None or len(server.feed_errors()) > errors_before,
                    timeout=None)
        failure: BaseException | None = self._failure
        feed_errors = server.feed_errors()[errors_before:]
        if failure is None and feed_errors:
            failure = _feed_error(feed_errors[0])
        if failure is None and "error" in outcome:
            failure = TFOSError(f"feeding job failed: {_short(outcome['error'])}")
            if _NODE_GONE.search(str(failure)):
                # A dead node breaks the feed at once; give the monitor the time to say which and why.
                server.wait(lambda: self._failure is not None, timeout=C.get_float(C.HEARTBEAT_TIMEOUT_SECS) + 2)
                failure = self._failure or failure
        if failure is not None:
            self.sc.cancelJobGroup(group)
            thread.join(timeout=30)
            if failure is self._failure:
                self._failure_raised = True
            elif server.terminated(qname):
                log.info("feeding %s stopped after a node terminated the queue (%s)", description, failure)
                return
            raise failure

    # ---- lifecycle -------------------------------------------------------------------------
    def _start(self) -> None:
        sc, config = self.sc, self.config
        bind_host, advertised = _server_hosts(sc)
        port = self._server.start(bind_host)
        self._server_address = f"{advertised}:{port}"
        launcher = NodeLauncher(
            cluster_id=self.cluster_id, server_address=self._server_address, secret=self._secret,
            template=self.template, input_mode=int(config.input_mode), tensorboard=config.tensorboard,
            log_dir=config.log_dir, release_port=config.release_port,
            reservation_timeout=float(config.reservation_timeout), default_fs=_default_fs(sc), main=self._main,
            num_gpus=config.num_gpus,
        )
        self._node_job = _spark_job_thread(sc, self.job_group, "tfos nodes", self._run_nodes, launcher)
        started = time.monotonic()
        n = len(self.template)
        registered = self._server.wait(
            lambda: self._server.registered() == n or bool(self._server.launch_errors())
            or self._node_job_error is not None,
            timeout=config.reservation_timeout)
        errors = self._server.launch_errors()
        if errors or self._node_job_error is not None or not registered or self._server.registered() < n:
            self._stop_nodes("reservation failed")
            if errors:
                eid, err = sorted(errors.items())[0]
                job, index = self.template[eid]
                raise NodeError(f"node {job}:{index} (executor_id {eid}) failed to start: {err['message']}\n"
                                f"--- remote traceback ---\n{err['traceback']}", job_name=job, task_index=index,
                                executor_id=eid, host=None, remote_traceback=err["traceback"])
            if self._node_job_error is not None:
                raise TFOSError(f"the Spark job hosting the nodes failed: {self._node_job_error}") \
                    from self._node_job_error
            raise ReservationTimeoutError(self._timeout_message(), registered=self._server.registered(), expected=n)
        self._server.touch()  # heartbeats count from now on
        if self.state == ClusterState.STARTING:
            self.state = ClusterState.RUNNING
        if self._atexit is None:
            self._atexit = _register_atexit(self)
        log.info("tfos cluster of %d nodes registered in %.2fs: %s", n, time.monotonic() - started,
                 self.cluster_spec)

    def _run_nodes(self, launcher: NodeLauncher) -> None:
        n = len(self.template)
        try:
            self.sc.parallelize(range(n), n).mapPartitions(launcher).collect()
        except BaseException as exc:  # noqa: BLE001 - surfaced by run()/shutdown()
            if self.state in (ClusterState.STARTING, ClusterState.RUNNING):
                self._node_job_error = exc
            log.debug("node job ended: %s", exc)
        finally:
            self._server.wake()

    def _timeout_message(self) -> str:
        n, got = len(self.template), self._server.registered()
        executors = _live_executors(self.sc)
        missing = [f"{job}:{i}" for eid, (job, i) in sorted(self.template.items())
                   if eid not in self._server.nodes()]
        return (
            f"only {got} of {n} tfos nodes registered within reservation_timeout={self.config.reservation_timeout}s "
            f"(missing: {', '.join(missing)}); Spark has {executors} executor(s). Usual causes: fewer executors "
            f"than num_executors={n} (set spark.executor.instances / spark.cores.max), executors running more "
            "than one task at a time (set spark.task.cpus equal to spark.executor.cores), dynamic allocation on "
            "(set spark.dynamicAllocation.enabled=false), or other jobs holding the executors. Raise "
            "reservation_timeout if executors start slowly."
        )

    # ---- failures and restarts ---------------------------------------------------------------
    def _watch(self) -> None:
        """Starts the monitor that turns node failures into errors (or restarts) within seconds."""
        self._monitor = threading.Thread(target=self._monitor_loop, name=f"{self.job_group}-monitor", daemon=True)
        self._monitor.start()

    def _monitor_loop(self) -> None:
        heartbeat = C.get_float(C.HEARTBEAT_TIMEOUT_SECS)
        while not self._monitor_stop.is_set():
            server = self._server
            server.wait(lambda s=server: self._monitor_stop.is_set() or _failed_node(s) is not None, timeout=0.5)
            if self._monitor_stop.is_set():
                return
            failure = self._detect_failure(server, heartbeat)
            if failure is not None:
                self._handle_failure(failure)

    def _detect_failure(self, server: ControlServer, heartbeat: float) -> TFOSError | None:
        node = _failed_node(server)
        if node is not None:
            return _node_error(node)
        for node in server.silent_nodes(heartbeat):
            server.give_up(node, "silent")
            return _node_failed(node, f"sent no heartbeat for {heartbeat:.0f}s: its process was killed, its Spark "
                                      "executor was lost, or it is stuck holding the GIL. Set "
                                      "TFOS_HEARTBEAT_TIMEOUT_SECS to wait longer")
        return None

    def _handle_failure(self, failure: TFOSError) -> None:
        if self.restarts < self.config.max_restarts:
            self.restarts += 1
            log.warning("%s\nrestarting every tfos node (restart %d of %d)", failure, self.restarts,
                        self.config.max_restarts)
            try:
                self._stop_nodes(f"restarting after a failure: {str(failure).splitlines()[0]}")
                self._new_generation()
                self._start()
                return
            except TFOSError as exc:
                restart_error = TFOSError(f"restart {self.restarts} of {self.config.max_restarts} failed: {exc}\n"
                                          f"--- the failure that caused it ---\n{failure}")
                restart_error.__cause__ = exc
                failure = restart_error
        log.error("tfos cluster failed, stopping every node: %s", failure)
        with self._lock:
            self._failure = failure
            self.state = ClusterState.FAILED
        self._server.wake()
        self.sc.cancelJobGroup(f"{self.job_group}-feed")
        self._teardown(f"stopped after a failure: {str(failure).splitlines()[0]}")

    def _stop_nodes(self, reason: str) -> None:
        """Stops this generation's nodes and control server and ends its node job. Bounded."""
        server = self._server
        nodes = server.nodes()
        server.post({"type": "stop", "reason": reason})
        server.wait(lambda: all(n.exited for n in nodes.values()), timeout=15)
        server.abort(reason)
        if self._node_job is not None:
            self._node_job.join(timeout=5)
            if self._node_job.is_alive():
                self.sc.cancelJobGroup(self.job_group)
                self._node_job.join(timeout=10)
        server.stop()

    def _teardown(self, reason: str) -> None:
        """Stops every node and the server, cancels the cluster's Spark jobs. Bounded, idempotent."""
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
            self._monitor_stop.set()
            self._stop_nodes(reason)
            if self._atexit is not None:
                atexit.unregister(self._atexit)
                self._atexit = None
            self.state = ClusterState.FAILED if self._failure is not None else ClusterState.STOPPED
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=5)


def _finished(server: ControlServer, executor_ids: list[int]) -> bool:
    nodes = server.nodes()
    return all(nodes.get(e) is not None and nodes[e].state in (FINISHED, SERVING) for e in executor_ids)


def _failed_node(server: ControlServer) -> NodeStatus | None:
    for _, node in sorted(server.nodes().items()):
        if node.state == FAILED and node.error is not None:
            return node
    return None


def _node_error(node: NodeStatus) -> TFOSError:
    info, err = node.info, node.error or {}
    if node.lost:
        return _node_failed(node, err.get("message", "died"))
    return NodeError(
        f"main_fun failed on {_role(node)} (host {info['host']}, executor_id {info['executor_id']}): "
        f"{err['message']}\n--- remote traceback ---\n{err['traceback']}",
        job_name=info["job_name"], task_index=info["task_index"], host=info["host"],
        executor_id=info["executor_id"], remote_traceback=err["traceback"])


def _node_failed(node: NodeStatus, what: str) -> NodeFailedError:
    info = node.info
    tail = "\n".join(node.log_tail) or "(no output received from the node)"
    return NodeFailedError(
        f"node {_role(node)} (host {info['host']}, executor_id {info['executor_id']}, pid {info['pid']}) {what}\n"
        f"--- last lines of its log ---\n{tail}",
        job_name=info["job_name"], task_index=info["task_index"], host=info["host"],
        executor_id=info["executor_id"], log_tail=tail)


def _as_rdd(data: Any) -> tuple[Any, bool]:
    """(RDD to feed, whether its elements are Arrow IPC streams of a DataFrame)."""
    from pyspark import RDD
    from pyspark.sql import DataFrame

    if isinstance(data, DataFrame):
        return dataframe_to_arrow_rdd(data), True
    if isinstance(data, RDD):
        return data, False
    raise TFOSConfigError(f"data must be a pyspark RDD or DataFrame; got {type(data).__name__}")


def _feed_error(report: dict[str, Any]) -> TFOSError:
    kinds = {"timeout": FeedTimeoutError, "FeedDataError": FeedDataError, "AuthError": AuthError}
    return kinds.get(report["kind"], TFOSError)(report["message"], partition=report.get("partition"))


def _short(exc: BaseException) -> str:
    """The Python error inside a Py4J / Spark failure, without the JVM stack."""
    text = str(exc)
    python_errors = re.findall(r"^\s*((?:[\w.]+\.)?\w*(?:Error|Exception): .*)$", text, flags=re.MULTILINE)
    python_errors = [line for line in python_errors if not line.startswith(("org.", "java.", "scala."))]
    return (python_errors[-1] if python_errors else text.splitlines()[0] if text else type(exc).__name__)[:2000]


def _role(node: NodeStatus) -> str:
    return f"{node.info['job_name']}:{node.info['task_index']}"


def _spark_job_thread(sc: SparkContext, group: str, description: str, target: Callable[..., None],
                      *args: Any) -> threading.Thread:
    """Runs ``target(*args)`` in a thread whose Spark jobs belong to ``group``."""
    from pyspark import InheritableThread

    def body() -> None:
        sc.setJobGroup(group, description, interruptOnCancel=True)
        target(*args)

    thread = InheritableThread(target=body, name=f"{group}-{description}", daemon=True)
    thread.start()
    return thread


def _exit_on_sigterm() -> None:
    """Makes SIGTERM exit the interpreter normally, so the atexit teardown stops the nodes.

    Only when nobody else handles SIGTERM, and only from the main thread (a Python rule).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_system_exit)


def _raise_system_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _register_atexit(cluster: Cluster) -> Callable[[], None]:
    ref = weakref.ref(cluster)

    def stop_at_exit() -> None:
        live = ref()
        if live is not None and live.state in (ClusterState.RUNNING, ClusterState.STOPPING):
            log.warning("interpreter exiting: shutting down the tfos cluster")
            live._teardown("driver exiting")

    atexit.register(stop_at_exit)
    return stop_at_exit


def _pickle_main(main_fun: Callable[..., Any], tf_args: Any) -> bytes:
    """Pickles with the standalone cloudpickle, not pyspark's copy: loading a pickle that names
    ``pyspark.cloudpickle`` imports pyspark in the node, from Spark's pyspark.zip, whose modules
    are compiled anew on every import (1-1.5 s of each node's start here). Modules registered
    for pickling by value with pyspark's copy, as Spark's docs suggest, are registered here too."""
    import cloudpickle
    from pyspark import cloudpickle as spark_cloudpickle

    for name in spark_cloudpickle.list_registry_pickle_by_value():
        if name in sys.modules:
            cloudpickle.register_pickle_by_value(sys.modules[name])
    try:
        return cloudpickle.dumps((main_fun, tf_args))
    except Exception as exc:
        raise TFOSConfigError(f"main_fun and tf_args must be picklable to reach the executors: {exc}") from exc


def _preflight(sc: SparkContext, config: ClusterConfig) -> bool:
    """Rejects Spark settings that break reservation; returns True in local (single-JVM) mode."""
    conf = sc.getConf()
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        raise TFOSConfigError("spark.dynamicAllocation.enabled=true: executors come and go, so tfos nodes cannot "
                              "be pinned to them. Set spark.dynamicAllocation.enabled=false.")
    master = sc.master or ""
    local_cluster = _LOCAL_CLUSTER.match(master)
    task_cpus = int(conf.get("spark.task.cpus", "1"))
    cores = int(local_cluster.group(2)) if local_cluster else int(conf.get("spark.executor.cores", "0"))
    if cores and cores // task_cpus > 1:
        raise TFOSConfigError(f"executors have {cores // task_cpus} task slots ({cores} cores, spark.task.cpus="
                              f"{task_cpus}), so two tfos nodes could share one. Set spark.task.cpus={cores}.")
    executors = int(local_cluster.group(1)) if local_cluster else int(conf.get("spark.executor.instances", "0"))
    if executors and executors < config.num_executors:
        raise TFOSConfigError(f"num_executors={config.num_executors} but the Spark application has only "
                              f"{executors} executors; lower num_executors or add executors.")
    user_python = conf.get("spark.pyspark.python", None) or os.environ.get("PYSPARK_PYTHON")
    if not user_python and sc.pythonExec != sys.executable:
        log.info("PYSPARK_PYTHON not set: executors will run %s like the driver", sys.executable)
        sc.pythonExec = sys.executable
    return master.startswith("local") and not local_cluster


def _server_hosts(sc: SparkContext) -> tuple[str, str]:
    """(address the control server binds, address nodes use to reach it)."""
    import socket

    override = C.get_str(C.SERVER_HOST)
    if override:
        return override, override
    conf = sc.getConf()
    advertised = conf.get("spark.driver.host", None) or socket.gethostbyname(socket.gethostname())
    return conf.get("spark.driver.bindAddress", None) or "0.0.0.0", advertised


def _default_fs(sc: SparkContext) -> str:
    return sc._jsc.hadoopConfiguration().get("fs.defaultFS") or "file:///"


def _live_executors(sc: SparkContext) -> int:
    try:
        return max(0, sc._jsc.sc().getExecutorMemoryStatus().size() - 1)
    except Exception:  # noqa: BLE001 - diagnostics only
        return -1
