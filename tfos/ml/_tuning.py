"""Hyper-parameter tuning for TFEstimator (driver; the trials run in executors' Python workers).

Spark ML's ``CrossValidator`` and ``TrainValidationSplit`` call ``Estimator.fitMultiple``
with one param map per grid point. :class:`TunableMixin` gives ``TFEstimator``:

* ``fitMultiple``: independent single-node trials run in parallel, one Spark task per
  trial (Deep Learning Pipelines' way, on TFParallel's machinery: no TensorFlow cluster,
  no reservation). The mapped columns are collected once on the driver and travel with
  the job (Spark broadcasts a large task closure itself; Spark Connect has no broadcast);
  each task runs ``train_fn(args, ctx)`` with a :class:`TrialContext` whose
  ``get_data_feed`` serves those rows from memory with the DataFeed API. Spark places
  the tasks: N trials on E single-core executors take about ceil(N / E) rounds.
  When any grid point has ``cluster_size > 1`` or ``InputMode.TENSORFLOW``, the trials
  train one after another instead, each on its own tfos cluster.
* Per-trial directories: every trial's ``export_dir`` and ``model_dir`` become siblings of
  the configured ones, ``<dir>-trial<index>-<token>`` (``model.keras`` becomes
  ``model-trial0-<token>.keras``), with a fresh token per ``fitMultiple`` call, so the
  folds of a CrossValidator and the final refit (which uses the configured paths) never
  overwrite each other.
* ``argParam(name)``: a Param for a value in ``args`` (e.g. a learning rate), to put in a
  ``ParamGridBuilder``; its value reaches ``train_fn`` as ``args.<name>``.
* MLflow: when an MLflow run is active where ``fitMultiple`` is called, each trial is a
  child run of it (:class:`tfos.driver._mlflow.TrialRuns`).

Training data travels through the driver here: keep tuning sets small (tens of MB; a Spark
Connect client sends the job in one message of at most 128 MB by default), as Deep Learning
Pipelines' ``fitMultiple`` did.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
from pyspark.ml.param import Param

from tfos.errors import TFOSConfigError

log = logging.getLogger(__name__)

__all__ = ["TrialContext", "TunableMixin", "trial_path"]


def trial_path(path: str | None, index: int, token: str) -> str | None:
    """``path`` for trial ``index``: a sibling with ``-trial<index>-<token>`` before any Keras extension."""
    if not path:
        return path
    stripped = path.rstrip("/")
    base, ext = os.path.splitext(stripped)
    if ext not in (".keras", ".h5", ".hdf5"):
        base, ext = stripped, ""
    return f"{base}-trial{index}-{token}{ext}"


class TunableMixin:
    """``fitMultiple`` with parallel single-node trials and ``argParam`` for values in ``args``."""

    def argParam(self, name: str, doc: str | None = None) -> Param:  # noqa: N802 - Spark ML's naming
        """A Param for ``args.<name>``, to grid over with ``ParamGridBuilder``.

        Its default is the current value in ``args`` (if any); a grid value replaces it in the
        ``args`` that ``train_fn`` receives. The same call returns the same Param.

        Example:
            >>> lr = estimator.argParam("learning_rate")
            >>> grid = ParamGridBuilder().addGrid(lr, [0.01, 0.1]).addGrid(estimator.epochs, [1, 3]).build()
        """
        if not name.isidentifier() or name.startswith("_"):
            raise TFOSConfigError(f"argParam needs a Python identifier not starting with '_', got {name!r}")
        existing = getattr(self, name, None)
        if isinstance(existing, Param):
            return existing
        if existing is not None or name in dir(type(self)):
            raise TFOSConfigError(f"argParam({name!r}) clashes with an attribute of {type(self).__name__}; "
                                  "rename the value in args")
        param = Param(self, name, doc or f"args.{name} for train_fn (set by tuning)")
        setattr(self, name, param)
        self._params = None  # Params caches its list of params
        args = self.args  # type: ignore[attr-defined]
        if name in args:
            self._setDefault(**{name: getattr(args, name)})  # type: ignore[attr-defined]
        self._arg_params = sorted({*getattr(self, "_arg_params", ()), name})
        return param

    def _copy_arg_params(self, other: Any) -> None:
        for name in getattr(self, "_arg_params", ()):
            other.argParam(name)

    def fitMultiple(self, dataset: Any, paramMaps: Any) -> Iterator[tuple[int, Any]]:  # noqa: N802
        """Fits one model per param map; returns a thread-safe iterator of ``(index, model)``.

        When every param map leaves a single-node Spark-fed estimator (the default
        ``cluster_size=1``), each trial runs as its own Spark task, in parallel across
        executors; otherwise the trials train in turn.
        """
        from tfos.driver._mlflow import TrialRuns

        param_maps = list(paramMaps)
        token = uuid.uuid4().hex[:8]
        trials = []
        for index, param_map in enumerate(param_maps):
            trial = self.copy(param_map)  # type: ignore[attr-defined]
            for param in (trial.export_dir, trial.model_dir):
                trial._set(**{param.name: trial_path(trial.getOrDefault(param), index, token)})
            trials.append(trial)
        # Looked up here, in the caller's thread: CrossValidator trains in a thread pool, where
        # MLflow's (thread-local) active run is not set.
        grid = [{param.name: value for param, value in param_map.items()} for param_map in param_maps]
        return _Trials(dataset, trials, grid, TrialRuns.for_active_run())

    def _parallel_trials(self) -> bool:
        from tfos.config import InputMode

        if self._main() is not self.train_fn:  # type: ignore[attr-defined] # e.g. compat's TFoS ctx wrapper
            return False
        return (self.getOrDefault("cluster_size") == 1  # type: ignore[attr-defined]
                and InputMode(self.getOrDefault("input_mode")) == InputMode.SPARK)  # type: ignore[attr-defined]


class _Trials:
    """What ``fitMultiple`` returns: trains every trial on the first ``next()``, then hands out models."""

    def __init__(self, dataset: Any, trials: list[Any], grid: list[dict[str, Any]] | None = None,
                 runs: Any = None) -> None:
        self.dataset = dataset
        self.trials = trials
        self.grid = grid or [{} for _ in trials]
        self.runs = runs  # TrialRuns: MLflow child runs of the caller's active run, or None
        self.lock = threading.Lock()
        self.models: list[Any] | None = None
        self.next_index = 0

    def __iter__(self) -> _Trials:
        return self

    def __next__(self) -> tuple[int, Any]:
        with self.lock:
            if self.next_index >= len(self.trials):
                raise StopIteration
            if self.models is None:
                self.models = self._train()
            index = self.next_index
            self.next_index += 1
            return index, self.models[index]

    def _train(self) -> list[Any]:
        if not self.trials:
            return []
        # each trial decides for itself: a grid may vary cluster_size or input_mode
        parallel = all(trial._parallel_trials() for trial in self.trials)
        run_ids = self._start_runs(parallel)
        reported: dict[int, dict[str, Any]] = {}
        models: list[Any] = []
        try:
            if not parallel:
                for trial, run_id in zip(self.trials, run_ids):
                    trial._mlflow_run = run_id  # its cluster logs there (TFEstimator._fit)
                    models.append(trial.fit(self.dataset))
                    self._end_runs(run_ids, parallel, reported, failed=False, only=len(models) - 1)
            elif self.runs is None:
                models = run_trials(self.dataset, self.trials)
            else:
                models = run_trials(self.dataset, self.trials, reported)
        except BaseException:
            # trials that trained keep their FINISHED run; the failing one and those after it fail
            self._end_runs(run_ids, parallel, reported, failed=True, start=0 if parallel else len(models))
            raise
        if parallel:
            self._end_runs(run_ids, parallel, reported, failed=False)
        return models

    def _start_runs(self, parallel: bool) -> list[str | None]:
        if self.runs is None:
            return [None] * len(self.trials)
        from tfos.driver._mlflow import plain_args

        run_ids: list[str | None] = []
        for index, (trial, point) in enumerate(zip(self.trials, self.grid)):
            params = {name: str(value) for name, value in point.items()}
            if parallel:  # a trial on a cluster gets these from its tracker
                params.update(plain_args(trial._tf_args()))
            run_ids.append(self.runs.start(index, params))
        return run_ids

    def _end_runs(self, run_ids: list[str | None], parallel: bool, reported: dict[int, dict[str, Any]],
                  failed: bool, start: int = 0, only: int | None = None) -> None:
        """Ends the child runs of trials ``start..`` (or trial ``only``)."""
        for index, (trial, run_id) in enumerate(zip(self.trials, run_ids)):
            if run_id is None or index < start or (only is not None and index != only):
                continue
            export = trial.getOrDefault(trial.export_dir) if parallel else None
            if export and "://" not in export and not os.path.isabs(export):
                export = None  # resolved on the executor that ran the trial, not here
            self.runs.finish(run_id, failed, reported.get(index), export)


def run_trials(dataset: Any, trials: list[Any], reported: dict[int, dict[str, Any]] | None = None) -> list[Any]:
    """Trains each trial (a TFEstimator) as one Spark task over the collected data; returns their TFModels.

    ``reported``, when given, receives each trial's last ``ctx.report`` values by trial index.
    """
    from tfos.driver._spark import backend
    from tfos.ml._pipeline import run_export

    first = trials[0]
    mapping = first.getOrDefault(first.input_mapping)
    if not mapping:
        raise TFOSConfigError("set the input mapping first, e.g. setInputMapping({'features': 'x', 'label': 'y'})")
    for trial in trials[1:]:
        if trial.getOrDefault(trial.input_mapping) != mapping:
            raise TFOSConfigError("fitMultiple needs the same input_mapping in every param map; grid over other "
                                  "params")
    columns = _collect_columns(dataset, sorted(mapping))
    spark = backend(dataset.sparkSession)
    runs = [_TrialRun(trial.train_fn, trial._tf_args(), index, sorted(mapping),
                      trial.getOrDefault(trial.epochs), columns) for index, trial in enumerate(trials)]
    with spark.described(None, f"tfos fitMultiple: {len(runs)} parallel trials"):
        results = spark.run_on_executors(len(runs), _TrialTasks(runs))
    if reported is not None:
        reported.update(dict(results))
    models = []
    for trial in trials:
        if trial.export_fn is not None:
            run_export(dataset.sparkSession, trial.export_fn, trial._tf_args())
        models.append(trial._fitted_model())
    log.info("fitMultiple trained %d trials in parallel", len(trials))
    return models


def _collect_columns(dataset: Any, names: list[str]) -> list[np.ndarray]:
    """The named columns as numpy arrays (array / vector columns stacked into 2-D), via Arrow."""
    import pyarrow as pa
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT

    vectors = {f.name for f in dataset.schema.fields if isinstance(f.dataType, VectorUDT)}
    table = dataset.select([(vector_to_array(dataset[c]) if c in vectors else dataset[c]).alias(c)
                            for c in names]).toArrow()
    out = []
    for name in names:
        column = table.column(name).combine_chunks()
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            values = column.to_pylist()
            dtype = column.type.value_type.to_pandas_dtype()
            out.append(np.array(values, dtype=dtype) if values else np.zeros((0, 0), dtype=dtype))
        else:
            out.append(column.to_numpy(zero_copy_only=False))
    return out


class _TrialTasks:
    """The job of ``run_trials``: task ``k`` runs trial ``k`` (the trials pickle once, their data with them)."""

    def __init__(self, runs: list[_TrialRun]) -> None:
        self.runs = runs

    def __call__(self, indices: Iterator[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        for index in indices:
            yield from self.runs[index]()


class _TrialRun:
    """One trial: runs ``train_fn`` with a :class:`TrialContext` in a Spark task."""

    def __init__(self, train_fn: Any, tf_args: Any, index: int, names: list[str], epochs: int,
                 columns: list[np.ndarray]) -> None:
        self.train_fn = train_fn
        self.tf_args = tf_args
        self.index = index
        self.names = names
        self.epochs = epochs
        self.columns = columns

    def __call__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        ctx = TrialContext(self.index, self.names, self.columns, self.epochs)
        self.train_fn(self.tf_args, ctx)
        # its last reports go back to the driver (MLflow child runs); numbers as plain floats
        yield self.index, {k: v if isinstance(v, str) else float(v) for k, v in ctx.metrics.items()
                           if isinstance(v, str) or _is_number(v)}


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


class TrialContext:
    """``ctx`` of a ``fitMultiple`` trial: one node, alone; ``get_data_feed`` serves the broadcast rows.

    Attributes match :class:`tfos.NodeContext`: the trial is chief 0 of a one-node cluster
    (``cluster_spec`` is empty, as for TFParallel runs); ``trial_index`` is its param map's index.
    """

    def __init__(self, index: int, names: list[str], columns: list[np.ndarray], epochs: int) -> None:
        self.trial_index = index
        self.executor_id = self.worker_num = 0
        self.job_name = "chief"
        self.task_index = 0
        self.num_workers = 1
        self.cluster_spec: dict[str, list[str]] = {}
        self.cluster_info: list[dict[str, Any]] = []
        self.default_fs = "file://"
        self.working_dir = os.getcwd()
        self.metrics: dict[str, Any] = {}
        self._names = names
        self._columns = columns
        self._epochs = epochs

    def absolute_path(self, path: str) -> str:
        return path if "://" in path or os.path.isabs(path) else os.path.join(self.working_dir, path)

    def report(self, **metrics: Any) -> None:
        """Keeps the trial's last metrics; the driver logs them to the trial's MLflow run, if any."""
        self.metrics.update(metrics)

    def release_port(self) -> None:
        """Nothing to release: a trial reserves no port."""

    def get_data_feed(self, train_mode: bool = True, qname_in: str = "input", qname_out: str = "output",
                      input_mapping: dict[str, str] | list[str] | None = None) -> MemoryFeed:
        return MemoryFeed(self._names, self._columns, self._epochs, input_mapping)

    def __repr__(self) -> str:
        return f"TrialContext(trial {self.trial_index})"


class MemoryFeed:
    """The DataFeed API over in-memory columns, ``epochs`` passes long (``fitMultiple`` trials)."""

    def __init__(self, names: list[str], columns: list[np.ndarray], epochs: int,
                 input_mapping: dict[str, str] | list[str] | None) -> None:
        self.names = names
        self.columns = columns
        self.rows = len(columns[0]) if columns else 0
        self.epochs = epochs
        self.input_mapping = input_mapping
        self.position = 0  # rows read across all epochs by next_batch / next_batch_arrays
        self._done = False

    def _mapped(self, columns: list[Any]) -> dict[str, Any]:
        mapping = self.input_mapping
        if isinstance(mapping, dict):
            return {mapping[name]: columns[self.names.index(name)] for name in mapping}
        return dict(zip(mapping or [], columns))

    def next_batch_arrays(self, batch_size: int) -> list[np.ndarray] | None:
        total = self.rows * self.epochs
        if self._done or self.position >= total:
            return None
        start = self.position % self.rows
        stop = min(start + batch_size, self.rows, start + total - self.position)
        self.position += stop - start
        return [c[start:stop] for c in self.columns]

    def next_batch(self, batch_size: int) -> Any:
        columns = self.next_batch_arrays(batch_size)
        if columns is None:
            return {} if self.input_mapping else []
        if self.input_mapping:
            return self._mapped(columns)
        if len(columns) == 1:
            return list(columns[0])
        return list(zip(*columns))

    def should_stop(self) -> bool:
        return self._done or self.position >= self.rows * self.epochs

    def terminate(self) -> None:
        self._done = True

    def batch_results(self, results: Any) -> None:
        raise TFOSConfigError("fitMultiple trials train; batch_results is for Cluster.inference")

    def as_dataset(self, batch_size: int, drop_remainder: bool = False) -> Any:
        """A ``tf.data.Dataset`` of batches; each pass over it is one epoch."""
        import tensorflow as tf

        columns = [tf.constant(c) if c.dtype != object else tf.constant(list(c)) for c in self.columns]
        if self.input_mapping:
            elements: Any = self._mapped(columns)
        else:
            elements = tuple(columns) if len(columns) > 1 else columns[0]
        return tf.data.Dataset.from_tensor_slices(elements).batch(batch_size, drop_remainder=drop_remainder)
