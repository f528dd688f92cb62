"""The public facade (driver): ``tfos.run`` and the ``Cluster`` it returns.

``run`` validates its arguments and boots one node per executor through a
:class:`~tfos.driver._supervisor.Supervisor` (states, monitor, restarts, teardown),
whose nodes live in one Spark job (:class:`SparkNodeJobs`); ``Cluster.train`` and
``Cluster.inference`` go through :class:`~tfos.driver._feeding.Feeding`. Every Spark
call is made by :mod:`tfos.driver._spark`.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from tfos._paths import absolute_path, local_path
from tfos._protocol import NodeState
from tfos._roles import cluster_template
from tfos._security import feed_tls
from tfos.config import ClusterConfig, InputMode
from tfos.driver import _mlflow, _spark
from tfos.driver._feeding import Feeding
from tfos.driver._metrics import serve_metrics
from tfos.driver._progress import ProgressView, Rates, node_rows, progress_mode
from tfos.driver._supervisor import ClusterState, Generation, Supervisor, describe, role
from tfos.errors import TFOSConfigError, TFOSError
from tfos.executor._bootstrap import NodeLauncher

log = logging.getLogger(__name__)


def run(sc: Any, main_fun: Callable[[Any, Any], Any], tf_args: Any, num_executors: int, num_ps: int = 0,
        tensorboard: bool = False, input_mode: InputMode = InputMode.TENSORFLOW, log_dir: str | None = None,
        master_node: str | None = "chief", eval_node: bool = False, reservation_timeout: float = 600,
        release_port: bool = True, max_restarts: int = 0, num_gpus: int = 0,
        progress: bool | None = None, keras: int | None = None, export_dir: str | None = None,
        mlflow: bool | None = None, mlflow_run: Any = None) -> Cluster:
    """Starts a TensorFlow cluster with one node per Spark executor.

    Args:
        sc: a SparkSession (classic or Spark Connect) or a SparkContext; its executors host the nodes
            (one task slot each).
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
        progress: show each node's state, rows fed, rows/s, step and reported metrics while
            the cluster runs: a live table when stderr is a terminal (None, the default, or
            True), a log line per node every ``TFOS_PROGRESS_INTERVAL_SECS`` otherwise;
            False turns it off. A summary table is shown at shutdown either way.
        keras: what ``tf.keras`` is on the nodes: 2 (tf-keras, ``TF_USE_LEGACY_KERAS=1``) or 3
            (Keras 3, TensorFlow's own default; train it with ``tfos.keras``). None: tf-keras
            unless the executors' environment sets ``TF_USE_LEGACY_KERAS``.
        export_dir: a directory every node and the driver can reach (shared or Hadoop filesystem),
            given to main_fun as ``ctx.export_dir``: the chief saves its model there (e.g.
            ``model.save(os.path.join(ctx.export_dir, "model.keras"))``) for MLflow tracking to log.
        mlflow: log this job to one MLflow run (``pip install 'tfos[mlflow]'``): params, every
            node's reported metrics, node memory and rows/s, restarts and failures, and the model
            in ``export_dir``. None (default): only when an MLflow run is active on the driver,
            which is then the run used. See :mod:`tfos.driver._mlflow`.
        mlflow_run: the MLflow run (or run id) to log to; implies ``mlflow=True``. A run tfos
            starts itself is ended when the cluster stops; a given or active run is left open.

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
                           max_restarts=max_restarts, num_gpus=num_gpus, progress=progress,
                           keras=keras, export_dir=export_dir, mlflow=mlflow, mlflow_run=mlflow_run)
    cluster = Cluster(sc, config, tf_args)
    _exit_on_sigterm()
    cluster._start()
    return cluster


class Cluster:
    """A running TensorFlow cluster on Spark executors, returned by :func:`tfos.run`."""

    def __init__(self, sc: Any, config: ClusterConfig, tf_args: Any) -> None:
        #: What the user passed: a SparkSession or a SparkContext.
        self.sc = sc
        self.config = config
        export_uri = None if config.export_dir is None else absolute_path(
            config.export_dir, _spark.backend(sc).default_fs(), os.getcwd())
        self._tracker = _mlflow.tracker_for(config, tf_args, export_uri)  # fails early without mlflow, before Spark
        self.spark = spark = _spark.backend(sc)
        self.template = cluster_template(config.num_executors, config.num_ps, config.master_node, config.eval_node)
        local_mode = spark.preflight(config.num_executors)
        main_fun = config.main_fun if export_uri is None else _mlflow.with_export_dir(config.main_fun,
                                                                                      local_path(export_uri))
        main = _pickle_main(main_fun, tf_args)
        tls = feed_tls()
        jobs = SparkNodeJobs(spark, f"tfos nodes: {describe(self.template.values())}", lambda gen: NodeLauncher(
            cluster_id=gen.cluster_id, server_address=gen.address, credential=gen.credential,
            template=self.template, input_mode=int(config.input_mode), tensorboard=config.tensorboard,
            log_dir=config.log_dir, release_port=config.release_port,
            reservation_timeout=float(config.reservation_timeout), default_fs=spark.default_fs(), main=main,
            num_gpus=config.num_gpus, keras=config.keras, feed_tls=tls))
        self._supervisor = Supervisor(self.template, jobs, local_mode=local_mode,
                                      hosts=spark.server_hosts(), reservation_timeout=config.reservation_timeout,
                                      max_restarts=config.max_restarts)
        self._feeding = Feeding(spark, self._supervisor, feed_tls=tls)
        self._rates = Rates()
        self._atexit: Callable[[], None] | None = None
        #: Port of the Prometheus endpoint when ``TFOS_METRICS_PORT`` is set, else None.
        self.metrics_port: int | None = None

    # ---- public surface ------------------------------------------------------------------
    @property
    def state(self) -> ClusterState:
        """Where the cluster is in its lifecycle (STARTING, RUNNING, RESTARTING, STOPPING, STOPPED, FAILED)."""
        return self._supervisor.state

    @property
    def restarts(self) -> int:
        """How many times every node was restarted after a failure."""
        return self._supervisor.restarts

    @property
    def cluster_id(self) -> str:
        """The current generation's id (a restart gets a new one)."""
        return self._supervisor.generation.cluster_id

    @property
    def job_group(self) -> str:
        """The Spark job group of the nodes' job; feeding jobs use ``job_group + "-feed"``."""
        return self._supervisor.generation.job_group

    @property
    def mlflow_run_id(self) -> str | None:
        """The MLflow run this cluster logs to, or None when not tracked."""
        return self._tracker.run_id if self._tracker is not None else None

    @property
    def mlflow_model_uri(self) -> str | None:
        """URI of the chief's model logged to MLflow (for ``mlflow.pyfunc.load_model``) once the cluster stopped."""
        return self._tracker.model_uri if self._tracker is not None else None

    @property
    def cluster_spec(self) -> dict[str, list[str]]:
        """TensorFlow's cluster spec: ``{job: ["host:port", ...]}``."""
        return self._supervisor.server.cluster_spec()

    @property
    def cluster_info(self) -> list[dict[str, Any]]:
        """One dict per node: executor_id, job_name, task_index, host, port, hostname, pid, ports."""
        return self._supervisor.server.cluster_info()

    @property
    def tensorboard_url(self) -> str | None:
        """``http://host:port`` of TensorBoard on the chief, or None when not started."""
        for node in self._supervisor.server.cluster_info():
            if node.get("tb_port"):
                return f"http://{node['host']}:{node['tb_port']}"
        return None

    def train(self, data: Any, num_epochs: int = 1, feed_timeout: float = 600, qname: str = "input",
              checkpoint_location: str | None = None, balance: bool = True, cache: bool | None = None,
              shuffle: bool = False, seed: int | None = None) -> None:
        """Feeds ``data`` to the chief and workers ``num_epochs`` times (InputMode.SPARK).

        Each epoch is one Spark job, streaming rows in chunks to the node on the executor
        that computed their partition. Epochs are balanced: a counting job first finds the
        ``N`` rows, then every epoch gives each of the ``W`` chief / worker nodes exactly
        ``N // W`` rows (sending part of a partition to another executor's node when
        balance needs it), and nodes know that number before the epoch starts, so
        ``DataFeed.as_dataset`` reports the epoch's steps to TensorFlow. The ``N % W``
        rows left over sit the epoch out, different ones each epoch (epoch ``e`` leaves
        out the ``N % W`` rows from position ``e * (N % W)``, mod ``N``, in partition
        order). With ``balance=False`` every row reaches one node once per epoch, nodes
        get what their executors computed, and the epoch length is unknown to them.

        With the epoch cache (the default when ``num_epochs > 1``), only the first epoch
        is read from Spark: each node keeps its share (in memory up to
        ``TFOS_FEED_CACHE_BYTES``, then memory-mapped files under ``TFOS_FEED_CACHE_DIR``
        on the executor's disk, both set with ``spark.executorEnv``) and serves epochs
        2..N from it, shuffled per epoch with ``shuffle=True`` (the same ``seed`` gives
        the same orders). The cache is deleted when the node exits, however it ends.

        Returns when the last epoch has been handed over (nodes may still be consuming
        their buffers; with the cache, once every node has read its cached epochs) or
        early, after the current epoch, once a node called ``DataFeed.terminate()``.

        A Structured Streaming DataFrame is fed as it arrives, as one epoch, each
        micro-batch once, until the stream ends, ``shutdown()`` is called (from another
        thread) or a node terminates the queue; its query is stopped with the cluster.

        Args:
            data: an RDD of rows (tuples, lists, numpy arrays, numbers), a DataFrame, or a
                streaming DataFrame.
            num_epochs: passes over ``data``.
            feed_timeout: seconds a node may go without taking data before
                FeedTimeoutError is raised.
            qname: the queue to feed; nodes read it with ``ctx.get_data_feed(qname_in=...)``.
            checkpoint_location: for a streaming DataFrame, the query's checkpoint directory
                (any Hadoop filesystem); restarting ``train`` with the same one resumes the
                stream and never feeds a micro-batch twice. Default: a temporary directory.
            balance: balanced, known-length epochs (above); a streaming DataFrame is never
                balanced.
            cache: serve epochs 2..N from the nodes' epoch caches; None: on when
                ``num_epochs > 1`` and ``balance``. Needs ``balance``.
            shuffle: visit the cached epochs' rows in a new random order each epoch (the
                first epoch arrives in Spark's order). Needs the cache.
            seed: makes the shuffled orders reproducible.

        Raises:
            FeedDataError: a row does not fit its batch (names the partition and row).
            FeedTimeoutError: a node stopped consuming.
            NodeError: a node's main_fun failed while being fed.
        """
        if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
            raise TFOSConfigError(f"num_epochs must be an integer >= 1; got {num_epochs!r}")
        self._require_spark_mode("train")
        self._feeding.train(data, num_epochs, feed_timeout, qname, checkpoint_location, balance=bool(balance),
                            cache=cache, shuffle=bool(shuffle), seed=seed)

    def inference(self, data: Any, feed_timeout: float = 600, qname: str = "input", schema: Any = None) -> Any:
        """Feeds ``data`` to the nodes and returns their results (InputMode.SPARK).

        The results are lazy, as in Spark: rows are fed when an action runs on them. They hold
        exactly one result per input row, in input order within each partition; nodes send them
        with ``DataFeed.batch_results``. With ``schema`` (a StructType or DDL string such as
        ``"prediction double"``) the results are a DataFrame of those columns, which Spark
        Connect requires; without, an RDD of rows (a value, or a tuple for several columns).
        """
        self._require_spark_mode("inference")
        return self._feeding.inference(data, feed_timeout, qname, schema)

    def consumed_rows(self, qname: str = "input") -> dict[str, int]:
        """Rows each fed node has read from ``qname`` so far, as last reported ({"worker:0": n})."""
        return self._feeding.consumed_rows(qname)

    def metrics(self) -> dict[str, dict[str, Any]]:
        """The last metrics each node reported with ``ctx.report`` (``{"worker:0": {"loss": 0.3}}``)."""
        return {row["role"]: row["metrics"] for row in self.status()}

    def status(self) -> list[dict[str, Any]]:
        """One dict per node: role, host, pid, state, heartbeat_age, rss, gpus, rows, rows_per_sec,
        metrics, consumed (per queue) and tensorboard (URL or None)."""
        return node_rows(self._supervisor.server, self._rates)

    def log_tail(self, role_name: str) -> list[str]:
        """The last lines a node printed (stdout and stderr), e.g. ``cluster.log_tail("worker:0")``."""
        nodes = self._supervisor.server.nodes().values()
        for node in nodes:
            if role(node) == role_name:
                return list(node.log_tail)
        raise TFOSConfigError(f"no node {role_name!r}; nodes: {sorted(role(n) for n in nodes)}")

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
        sup = self._supervisor
        if not sup.begin_stop():
            sup.teardown("cluster shut down")  # returns once a teardown under way has finished
            sup.raise_failure_once()
            return
        started = time.monotonic()
        error: TFOSError | None = None
        try:
            workers = self._feeding.consumer_ids()
            if self.config.input_mode == InputMode.SPARK:
                self._feeding.close()
            if not sup.await_finished(workers, started + timeout):
                running = [role(n) for n in sup.server.nodes().values() if n.info["executor_id"] in workers
                           and n.state not in (NodeState.FINISHED, NodeState.SERVING)]
                error = TFOSError(f"{', '.join(running)} still running {timeout}s after shutdown() began; "
                                  "stopped them. Raise shutdown(timeout=...) if training needs longer.")
            elif grace_secs and sup.failure is None:
                time.sleep(grace_secs)  # the user asked serving nodes to keep running this long
        finally:
            sup.teardown("cluster shut down")
            self._unregister_atexit()
        log.info("tfos cluster shut down in %.2fs", time.monotonic() - started)
        sup.raise_failure_once()
        if error is not None:
            raise error

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

    # ---- internals -----------------------------------------------------------------------
    def _require_spark_mode(self, method: str) -> None:
        if self.config.input_mode != InputMode.SPARK:
            raise TFOSConfigError(f"{method}() feeds data from Spark: start the cluster with "
                                  "input_mode=tfos.InputMode.SPARK (nodes read their own data in TENSORFLOW mode)")

    def _start(self) -> None:
        sup = self._supervisor
        metrics = serve_metrics(lambda: (sup.server, sup.state.value, sup.restarts), sup.advertised_host)
        if metrics is not None:
            self.metrics_port = metrics.port
            sup.on_teardown(metrics.stop)
        tracker = self._tracker
        if tracker is not None:
            sup.on_teardown(tracker.finish)
        try:
            if tracker is not None:
                tracker.start(sup, describe(self.template.values()))
            sup.start()
        except BaseException as exc:  # incl. Ctrl-C while nodes register: stop what was started
            if tracker is not None:
                tracker.start_error = exc  # the run ends FAILED, saying why
            sup.teardown("start failed or was interrupted")
            raise
        self._atexit = _register_atexit(self)
        mode = progress_mode(self.config.progress)
        if mode is not None:
            view = ProgressView(lambda: sup.server, mode, f"tfos {describe(self.template.values())}").start()
            sup.on_teardown(view.stop)

    def _unregister_atexit(self) -> None:
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None


class SparkNodeJobs:
    """Hosts each generation's nodes in one Spark job, one task per executor."""

    def __init__(self, spark: _spark.Spark, description: str, task: Callable[[Generation], Any]) -> None:
        self.spark = spark
        self.description = description
        self._task = task

    def start(self, generation: Generation) -> None:
        task, n = self._task(generation), len(generation.server.template)

        def body() -> None:
            try:
                self.spark.run_on_executors(n, task)
            except BaseException as exc:  # noqa: BLE001 - surfaced by the supervisor
                if not generation.stopped:
                    generation.job_error = exc
                log.debug("node job ended: %s", exc)
            finally:
                generation.server.wake()

        generation.job = self.spark.job_thread(generation.job_group, self.description, body)

    def stop(self, generation: Generation, grace: float) -> None:
        if generation.job is None:
            return
        generation.job.join(timeout=grace)
        if generation.job.is_alive():
            self.spark.cancel(generation.job_group)
            generation.job.join(timeout=10)

    def executors(self) -> int:
        return self.spark.live_executors()


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
        if live is not None and live.state not in (ClusterState.STOPPED, ClusterState.FAILED):
            log.warning("interpreter exiting: shutting down the tfos cluster")
            live._supervisor.teardown("driver exiting")

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
