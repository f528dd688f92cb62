"""MLflow tracking of a tfos job (driver): one MLflow run per cluster, however many nodes.

``tfos.run(..., mlflow=True)`` (or ``mlflow_run=...``, or an MLflow run active on the
driver when ``tfos.run`` is called) makes a :class:`Tracker` that only the driver talks
to MLflow through; nodes never import mlflow. It logs into one run:

- params: the cluster shape, input mode, Keras setting and every plain value (str, int,
  float, bool) of ``args`` as ``args.<name>``;
- metrics: what every node reports with ``ctx.report`` / ``tfos.keras.progress_callback``,
  read from the control server a few times a second and logged once per reported step
  (the ``step`` a node reports; nodes that report none count their reports). The chief's
  (or, with ``master_node=None``, ``worker:0``'s) metrics keep their own names
  (``loss``); every other node's are prefixed with its id (``worker_1/loss``). Nodes
  send at most two reports a second, so a node reporting faster is sampled: each step
  the driver sees is logged once, and the last report is always seen;
- system metrics per node, every ``TFOS_MLFLOW_SYSTEM_SECS`` and at the end:
  ``system/<node>/rss_bytes``, ``system/<node>/rows_fed`` and ``system/<node>/rows_per_sec``;
- tags: ``tfos.nodes`` (the cluster spec), ``tfos.restarts``, ``tfos.failures`` and
  ``tfos.failure.<n>`` (the first line of each failure, restarted or not), ``tfos.state``;
- the chief's saved model: with ``export_dir=...``, nodes find that directory as
  ``ctx.export_dir``; when the cluster ends without a failure, a Keras model file the
  chief saved there (``model.keras``, any ``*.keras`` / ``*.h5``, or a tf-keras SavedModel)
  is logged as the run's ``model`` (``mlflow.keras`` for Keras 3, ``mlflow.tensorflow``
  for tf-keras) with a tensor signature read from the model's inputs and outputs, so
  ``mlflow.pyfunc.load_model`` and ``mlflow.pyfunc.spark_udf`` take it. Anything else
  found there is logged as plain artifacts under ``export/``.

A run tfos started is ended with FINISHED or FAILED when the cluster stops; a run the
user passed or had active is left open for them. :class:`TrialRuns` makes the trials of
``TFEstimator.fitMultiple`` (CrossValidator, TrainValidationSplit) child runs of the
driver's active run.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tfos import _constants as C
from tfos._paths import local_path
from tfos.config import ClusterConfig
from tfos.driver._progress import Rates, node_rows
from tfos.errors import TFOSConfigError, TFOSError

if TYPE_CHECKING:
    from tfos.driver._supervisor import Generation, Supervisor

log = logging.getLogger(__name__)

INSTALL = "pip install 'tfos[mlflow]'"
#: Seconds between two looks at the nodes' reported metrics.
POLL_SECS = 0.2
#: Name of the logged model within the run.
MODEL_NAME = "model"
_PARAM_MAX = 500


def import_mlflow() -> Any:
    """Imports mlflow, or raises TFOSConfigError naming the extra to install (a seam for tests)."""
    try:
        return importlib.import_module("mlflow")
    except ImportError as exc:
        raise TFOSConfigError(f"MLflow tracking was asked for (tfos.run(mlflow=True) or mlflow_run=...) but mlflow "
                              f"cannot be imported ({exc}). Install it on the driver: {INSTALL}") from exc


def active_run_id() -> str | None:
    """The MLflow run active in this thread, without importing mlflow when nobody has."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or not hasattr(mlflow, "active_run"):
        return None
    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


def run_id_of(run: Any) -> str:
    """A run id from what ``mlflow_run=`` accepts: an id, an ``mlflow.ActiveRun`` or ``Run``."""
    if isinstance(run, str) and run:
        return run
    run_id = getattr(getattr(run, "info", None), "run_id", None)
    if isinstance(run_id, str) and run_id:
        return run_id
    raise TFOSConfigError(f"mlflow_run must be an MLflow run id or a run (mlflow.start_run() / "
                          f"MlflowClient().get_run(id)); got {type(run).__name__}")


def tracker_for(config: ClusterConfig, tf_args: Any, export_uri: str | None) -> Tracker | None:
    """The tracker ``tfos.run`` asked for, or None. Raises before any Spark job when mlflow is missing."""
    if config.mlflow is False:
        return None
    user_run = run_id_of(config.mlflow_run) if config.mlflow_run is not None else None
    if config.mlflow is None and user_run is None:
        user_run = active_run_id()
        if user_run is None:
            return None
    return Tracker(import_mlflow(), config, tf_args, export_uri, user_run)


def params_of(config: ClusterConfig, roles: str, tf_args: Any) -> dict[str, str]:
    """The run's params: cluster shape, input mode, Keras setting, plain values of ``args``."""
    params: dict[str, Any] = {
        "tfos.num_executors": config.num_executors, "tfos.num_ps": config.num_ps,
        "tfos.master_node": config.master_node, "tfos.eval_node": config.eval_node,
        "tfos.roles": roles, "tfos.input_mode": config.input_mode.name,
        "tfos.keras": {2: "tf-keras", 3: "keras3"}.get(config.keras, "default (tf-keras)"),
        "tfos.max_restarts": config.max_restarts, "tfos.num_gpus": config.num_gpus,
    }
    return {**{key: str(value) for key, value in params.items()}, **plain_args(tf_args)}


def plain_args(tf_args: Any) -> dict[str, str]:
    """``{"args.<name>": value}`` for each plain value (str, int, float, bool) of ``args``."""
    if hasattr(tf_args, "__dict__") and not isinstance(tf_args, type):
        items = vars(tf_args).items()  # argparse.Namespace, tfos.ml's Namespace
    elif isinstance(tf_args, dict):
        items = tf_args.items()
    else:
        items = ()
    # Plain values only: a long list or an object says nothing useful as a param.
    return {f"args.{name}": str(value) for name, value in items
            if isinstance(name, str) and _plain(value)}


def _plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and len(str(value)) <= _PARAM_MAX


def node_key(role: str) -> str:
    """``worker:1`` -> ``worker_1``: a metric prefix valid on every platform MLflow runs on."""
    return role.replace(":", "_")


class Tracker:
    """Logs one tfos job into one MLflow run; see the module docstring."""

    def __init__(self, mlflow: Any, config: ClusterConfig, tf_args: Any, export_uri: str | None,
                 user_run: str | None) -> None:
        self.mlflow = mlflow
        self.config = config
        self.tf_args = tf_args
        self.export_uri = export_uri
        self.lead = f"{config.master_node}:0" if config.master_node else "worker:0"
        self.client = mlflow.MlflowClient()
        self.run_id: str | None = user_run
        self.owns_run = user_run is None
        #: URI of the logged model once logged (``models:/...``), else None.
        self.model_uri: str | None = None
        self._sup: Supervisor | None = None
        self._last: dict[str, tuple[Any, ...]] = {}  # role -> (generation, step, values) last logged
        self._counts: dict[str, int] = {}  # role -> reports logged (the step of nodes that report none)
        self._failures: list[str] = []
        self._failures_logged = 0
        self._restarts_logged = 0
        self._nodes_tagged = 0
        self._gen: Generation | None = None  # the generation sampled last
        self._rates = Rates()
        self._system_at = 0.0
        self._system_step = 0
        #: Why the cluster did not start, set by Cluster._start: the run then ends FAILED.
        self.start_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one sample at a time: the poll thread and finish()

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self, sup: Supervisor, roles: str) -> None:
        """Creates (or joins) the run, logs the params, and starts watching ``sup``'s nodes."""
        self._sup, self._gen = sup, sup.generation
        try:
            if self.run_id is None:
                experiment = self.mlflow.tracking.fluent._get_experiment_id()  # honours set_experiment / env vars
                run = self.client.create_run(experiment, run_name=f"tfos {roles}", tags={"tfos.roles": roles})
                self.run_id = run.info.run_id
            self._set_tags({"tfos.state": "starting"})
        except Exception as exc:
            raise TFOSConfigError(
                f"could not {'start' if self.run_id is None else 'log to'} an MLflow run at "
                f"{self.mlflow.get_tracking_uri()}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
                "Set MLFLOW_TRACKING_URI (or call mlflow.set_tracking_uri) to a tracking server this driver "
                "reaches, or pass mlflow=False") from exc
        log.info("tfos logs this cluster to MLflow run %s (%s)", self.run_id, self.mlflow.get_tracking_uri())
        params = params_of(self.config, roles, self.tf_args)
        try:
            self.client.log_batch(self.run_id, params=[self.mlflow.entities.Param(k, v) for k, v in params.items()])
        except self.mlflow.exceptions.MlflowException as exc:
            # MLflow refuses to change a logged param: a second job in the same (active) run. Track it anyway.
            log.warning("MLflow run %s keeps its params (%s); this job's are not logged", self.run_id,
                        str(exc).splitlines()[0])
        previous = sup.on_failure
        sup.on_failure = functools.partial(self._on_failure, previous)
        self._thread = threading.Thread(target=self._loop, name="tfos-mlflow", daemon=True)
        self._thread.start()

    def _on_failure(self, previous: Callable[[TFOSError], bool] | None, failure: TFOSError) -> bool:
        # Called on the monitor thread before the restart-or-fail decision: record, never block.
        self._failures.append(str(failure).splitlines()[0][:_PARAM_MAX])
        return previous(failure) if previous is not None else False

    def finish(self) -> None:
        """Teardown hook: last sample, tags, the chief's model, and the run's end. Never raises."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.run_id is None:
            return
        if self._thread is None:  # start() itself failed: talk to the server no more than to end the run
            if self.owns_run:
                try:
                    self.client.set_terminated(self.run_id, "FAILED")
                except Exception:  # noqa: BLE001
                    log.exception("tfos could not end MLflow run %s", self.run_id)
            return
        sup = self._sup
        failure = sup.failure if sup is not None and sup.failure is not None else self.start_error
        failed = failure is not None
        try:
            self.sample(final=True)
            tags = {"tfos.state": "failed" if failed else sup.state.value if sup is not None else "stopped"}
            if failure is not None:
                tags["tfos.failure"] = (str(failure).splitlines() or [type(failure).__name__])[0][:_PARAM_MAX]
            self._set_tags(tags)
            if not failed and self.export_uri:
                self.log_export()
        except Exception:  # noqa: BLE001 - tracking never hides how the cluster ended
            log.exception("tfos could not finish logging MLflow run %s", self.run_id)
        finally:
            if self.owns_run:
                try:
                    self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
                except Exception:  # noqa: BLE001
                    log.exception("tfos could not end MLflow run %s", self.run_id)

    # ---- metrics -------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(POLL_SECS):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a tracking server hiccup must not end training
                log.warning("tfos could not log to MLflow run %s; trying again", self.run_id, exc_info=True)
                self._stop.wait(5)

    def sample(self, final: bool = False) -> None:
        """Logs what changed since the last look: new steps, system metrics when due, restarts."""
        sup = self._sup
        if sup is None or self.run_id is None:
            return
        with self._lock:
            gen = sup.generation
            now = time.time()
            metrics = []
            if self._gen is not None and self._gen is not gen:
                # A restart replaced the generation: its nodes' last reports may not have been seen yet.
                for row in node_rows(self._gen.server, Rates()):
                    metrics += self._node_metrics(self._gen.number, row, now)
            self._gen = gen
            rows = node_rows(gen.server, self._rates)
            for row in rows:
                metrics += self._node_metrics(gen.number, row, now)
            if final or time.monotonic() - self._system_at >= C.get_float(C.MLFLOW_SYSTEM_SECS):
                self._system_at = time.monotonic()
                self._system_step += 1
                metrics += self._system_metrics(rows, now, self._system_step)
            tags = {}
            if sup.restarts != self._restarts_logged:
                self._restarts_logged = sup.restarts
                tags["tfos.restarts"] = str(sup.restarts)
            failures = list(self._failures)
            for number in range(self._failures_logged + 1, len(failures) + 1):
                tags[f"tfos.failure.{number}"] = failures[number - 1]
                tags["tfos.failures"] = str(number)
            self._failures_logged = len(failures)
            if gen.number != self._nodes_tagged and len(rows) == len(sup.template):
                self._nodes_tagged = gen.number  # each generation registers anew, maybe on other hosts
                tags["tfos.nodes"] = json.dumps(gen.server.cluster_spec())[:5000]
                tags["tfos.state"] = sup.state.value
            log.debug("MLflow run %s: generation %d, %d metrics, tags %s", self.run_id, gen.number, len(metrics), tags)
            for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a batch
                self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])
            self._set_tags(tags)

    def _node_metrics(self, generation: int, row: dict[str, Any], now: float) -> list[Any]:
        role = row["role"]
        values = {name: float(value) for name, value in row["metrics"].items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "step"}
        reported_step = row["metrics"].get("step")
        if not values:
            return []
        last = self._last.get(role)
        if isinstance(reported_step, (int, float)) and not isinstance(reported_step, bool):
            step = int(reported_step)
            if last is not None and last[:2] == (generation, step):
                return []  # this step is logged already (a restart may repeat it: then it is logged again)
        else:
            if last is not None and last[0] == generation and last[2] == values:
                return []
            step = self._counts.get(role, 0) + 1
        self._counts[role] = self._counts.get(role, 0) + 1
        self._last[role] = (generation, step, values)
        prefix = "" if role == self.lead else f"{node_key(role)}/"
        timestamp = int(now * 1000)
        return [self.mlflow.entities.Metric(f"{prefix}{name}", value, timestamp, step)
                for name, value in values.items()]

    def _system_metrics(self, rows: list[dict[str, Any]], now: float, step: int) -> list[Any]:
        metric, timestamp, out = self.mlflow.entities.Metric, int(now * 1000), []
        for row in rows:
            key = f"system/{node_key(row['role'])}"
            if row["rss"] is not None:
                out.append(metric(f"{key}/rss_bytes", float(row["rss"]), timestamp, step))
            out.append(metric(f"{key}/rows_fed", float(row["rows"]), timestamp, step))
            out.append(metric(f"{key}/rows_per_sec", float(row["rows_per_sec"]), timestamp, step))
        return out

    def _set_tags(self, tags: dict[str, str]) -> None:
        if tags:
            self.client.log_batch(self.run_id, tags=[self.mlflow.entities.RunTag(k, v) for k, v in tags.items()])

    # ---- the chief's model ---------------------------------------------------------------
    def log_export(self) -> None:
        """Logs what the chief saved in ``export_dir`` (see :func:`log_export`)."""
        if self.export_uri is not None and self.run_id is not None:
            self.model_uri = log_export(self.mlflow, self.run_id, self.export_uri)


def log_export(mlflow: Any, run_id: str, export_uri: str) -> str | None:
    """Logs a Keras model found at ``export_uri`` as the run's MLflow model (other files as plain artifacts).

    Returns the model's URI, or None when there was no Keras model. Tags the run with what was found.
    """
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory(prefix="tfos-export-") as tmp:
        path = local_export(export_uri, tmp)
        if path is None:
            log.warning("export_dir=%s is empty or missing after the run: no model to log to MLflow (save it on the "
                        "chief, e.g. model.save(os.path.join(ctx.export_dir, 'model.keras')))", export_uri)
            client.set_tag(run_id, "tfos.model", f"nothing found in {export_uri}")
            return None
        found = find_model(path)
        if found is None:
            if os.path.isfile(path):
                client.log_artifact(run_id, path, "export")
            else:
                client.log_artifacts(run_id, path, "export")
            client.set_tag(run_id, "tfos.model", f"no Keras model in {export_uri}; logged its files as export/")
            return None
        model_path, flavor = found
        model_uri = log_keras_model(mlflow, run_id, model_path, flavor)
        client.log_batch(run_id, tags=[mlflow.entities.RunTag("tfos.model", model_uri),
                                       mlflow.entities.RunTag("tfos.model_flavor", flavor)])
        log.info("tfos logged the model %s to MLflow as %s", model_path, model_uri)
        return model_uri


class TrialRuns:
    """Child runs of the driver's active MLflow run for ``fitMultiple``'s trials (CrossValidator, ...).

    Each trial gets a run named ``trial <i>`` under the parent, with its grid point's params.
    A trial on a tfos cluster is tracked by its :class:`Tracker` (``mlflow_run=``); a parallel
    single-node trial gets its plain ``args``, its last ``ctx.report`` values and its model here.
    """

    def __init__(self, mlflow: Any, parent: str) -> None:
        self.mlflow = mlflow
        self.parent = parent
        self.client = mlflow.MlflowClient()
        self.experiment = self.client.get_run(parent).info.experiment_id

    @classmethod
    def for_active_run(cls) -> TrialRuns | None:
        """Child runs of the run active in this thread (``fitMultiple``'s caller's), or None."""
        parent = active_run_id()
        return cls(import_mlflow(), parent) if parent is not None else None

    def start(self, index: int, params: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment, run_name=f"trial {index}",
                                     tags={"mlflow.parentRunId": self.parent, "tfos.trial": str(index)})
        entities = self.mlflow.entities
        self.client.log_batch(run.info.run_id, params=[entities.Param(k, v[:_PARAM_MAX]) for k, v in params.items()])
        return run.info.run_id

    def finish(self, run_id: str, failed: bool, metrics: dict[str, Any] | None = None,
               export_uri: str | None = None) -> None:
        """Logs a parallel trial's last metrics and model, and ends the run. Never raises."""
        try:
            numbers = {k: float(v) for k, v in (metrics or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
            step = metrics.get("step", 0) if metrics else 0
            if numbers:
                now = int(time.time() * 1000)
                self.client.log_batch(run_id, metrics=[
                    self.mlflow.entities.Metric(k, v, now, int(step) if isinstance(step, (int, float)) else 0)
                    for k, v in numbers.items()])
            if export_uri and not failed:
                log_export(self.mlflow, run_id, export_uri)
        except Exception:  # noqa: BLE001 - tracking never hides how training ended
            log.exception("tfos could not finish logging MLflow run %s", run_id)
        finally:
            try:
                self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
            except Exception:  # noqa: BLE001
                log.exception("tfos could not end MLflow run %s", run_id)


def local_export(uri: str, tmp: str) -> str | None:
    """A local directory holding ``uri``'s files (copied when it is not on this machine's disk)."""
    if "://" not in uri or uri.startswith("file://"):
        path = local_path(uri)
        return path if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path)) else None
    import tensorflow as tf  # TensorFlow's filesystems: hdfs://, gs://, s3:// with its plugins

    if not tf.io.gfile.isdir(uri):
        if not tf.io.gfile.exists(uri):
            return None
        target = os.path.join(tmp, uri.rstrip("/").rsplit("/", 1)[-1])  # a model file
        tf.io.gfile.copy(uri, target)
        return target
    target = os.path.join(tmp, "export")
    for root, _, files in tf.io.gfile.walk(uri):
        rel = os.path.relpath(root, uri) if root != uri else ""
        os.makedirs(os.path.join(target, rel), exist_ok=True)
        for name in files:
            tf.io.gfile.copy(f"{root.rstrip('/')}/{name}", os.path.join(target, rel, name), overwrite=True)
    return target if os.listdir(target) else None


def find_model(path: str) -> tuple[str, str] | None:
    """(model path, ``"keras"`` for Keras 3 / ``"tensorflow"`` for tf-keras) of a Keras model at or in ``path``."""
    if os.path.isfile(path):
        return (path, _keras_file_flavor(path)) if path.endswith((".keras", ".h5")) else None
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return (path, "tensorflow") if os.path.isfile(os.path.join(path, "keras_metadata.pb")) else None
    names = sorted(os.listdir(path))
    files = [n for n in names if n.endswith((".keras", ".h5"))]
    if not files:
        return None
    name = "model.keras" if "model.keras" in files else files[0]
    model = os.path.join(path, name)
    return model, _keras_file_flavor(model)


def _keras_file_flavor(model: str) -> str:
    if model.endswith(".h5"):
        return "tensorflow"  # HDF5 is tf-keras' format; Keras 3 only reads it
    try:
        with zipfile.ZipFile(model) as archive:
            version = json.loads(archive.read("metadata.json")).get("keras_version", "")
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise TFOSError(f"{model} is not a Keras model file: {exc}") from exc
    return "keras" if version.startswith("3.") else "tensorflow"


def log_keras_model(mlflow: Any, run_id: str, model_path: str, flavor: str) -> str:
    """Loads the chief's model on the driver and logs it with its flavor; returns the model URI."""
    if flavor == "keras":
        import keras

        model = keras.saving.load_model(model_path, compile=False)
        requirements = [f"keras=={keras.__version__}"]
        module = importlib.import_module("mlflow.keras")
    else:
        import tensorflow as tf
        import tf_keras

        if not issubclass(tf_keras.Model, tf.keras.Model):
            raise TFOSError("the chief saved a tf-keras model, but TensorFlow on the driver uses Keras 3, so MLflow "
                            "cannot log it as a Keras model. Set TF_USE_LEGACY_KERAS=1 in the driver's environment "
                            "before TensorFlow is imported (or train with keras=3)")
        model = tf_keras.models.load_model(model_path, compile=False)
        requirements = [f"tf-keras=={tf_keras.__version__}"]
        module = importlib.import_module("mlflow.tensorflow")
    import tensorflow as tf

    # Given requirements spare MLflow a subprocess that loads the model again to infer them.
    requirements.append(f"tensorflow=={tf.__version__}")
    info = mlflow.models.Model.log(artifact_path=None, name=MODEL_NAME, flavor=module, model=model, run_id=run_id,
                                   signature=signature_of(mlflow, model), pip_requirements=requirements)
    return info.model_uri


def signature_of(mlflow: Any, model: Any) -> Any:
    """A tensor signature from a Keras model's inputs and outputs (batch dimension -1), or None."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def specs(tensors: Any) -> list[Any]:
        tensors = list(tensors)
        out = []
        for tensor in tensors:
            dtype = getattr(tensor.dtype, "as_numpy_dtype", tensor.dtype)  # tf.DType (tf-keras) or a name (Keras 3)
            shape = tuple(-1 if d is None else int(d) for d in tensor.shape)
            name = tensor.name.split(":")[0] if len(tensors) > 1 else None
            out.append(TensorSpec(np.dtype(dtype), shape, name))
        return out

    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        log.warning("the chief's model has no defined inputs (a subclassed model?): logged without a signature, "
                    "so mlflow.pyfunc.spark_udf cannot score it; build it with keras.Input")
        return None
    return ModelSignature(inputs=Schema(specs(inputs)), outputs=Schema(specs(outputs)))


def with_export_dir(main_fun: Callable[[Any, Any], Any], export_dir: str) -> Callable[[Any, Any], Any]:
    """``main_fun`` run with ``ctx.export_dir`` set (the wrapper is pickled by reference to the executor module)."""
    from tfos.executor._context import run_with_export_dir

    return functools.partial(run_with_export_dir, main_fun, export_dir)
