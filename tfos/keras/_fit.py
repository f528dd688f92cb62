"""Keras 3 ``fit`` / ``evaluate`` for multi-worker clusters (runs in main_fun, on the node).

Keras 3's ``model.fit`` fails under ``tf.distribute.MultiWorkerMirroredStrategy``
(keras-team/keras#20585). This module trains the same compiled model with a custom
loop built from the pieces Keras 3 itself uses: ``strategy.run`` of a step that calls
the model, ``model.compute_loss`` (already scaled by ``1 / num_replicas_in_sync``), a
``tf.GradientTape`` and ``model.optimizer.apply_gradients`` (which sums the gradients
across every replica of every worker), then ``model.compute_metrics``.

How it keeps workers in step:
  * Batches: the dataset is distributed with ``strategy.experimental_distribute_dataset``,
    exactly as Keras' own ``fit`` does, so a batch of the dataset is split across the
    replicas in sync (a global batch) and auto-sharding follows the dataset's options;
    ``DataFeed.as_dataset(batch_size)`` is built for that and gives each worker
    ``batch_size`` of its own rows a step.
  * Equal steps: when every worker's dataset has the same known cardinality (checked once
    with an all-reduce), an epoch is that many steps over ``dataset.repeat()``, with no
    per-step coordination. Otherwise (a Spark feed, a generator, ``filter``) each step
    reads with ``get_next_as_optional``, whose "has data" flag TensorFlow all-reduces
    across workers: the epoch goes on while any worker has data, workers that ran out
    train on an empty batch (which adds nothing to the gradients), and every worker
    takes the same number of steps and drains its own input.
  * Metrics: Keras metric variables are summed over every replica with one all-reduce at
    the end of an epoch (and of a validation pass), so every worker gets, prints and
    returns the same ``History``. Per-batch logs given to callbacks hold the worker's own
    running values (no extra collective per step).
  * Stopping: ``model.stop_training`` (EarlyStopping, or any callback) is all-reduced at
    the end of each epoch, so all workers end together; a request made by a per-batch
    callback takes effect at the end of that epoch.
  * Files: on workers other than the chief, ``ModelCheckpoint``, ``BackupAndRestore``
    and ``TensorBoard`` write into a private temporary directory that is removed at the
    end, so only the chief writes the paths given; ``BackupAndRestore`` still restores
    every worker from the chief's backup, so ``tfos.run(max_restarts=1)`` resumes.

What it does not do: call a model's own ``train_step`` / ``test_step`` (such a model is
refused; override ``compute_loss`` / ``compute_metrics`` instead, or write the loop as
``scripts/gan_digits.py`` does), ``steps_per_execution``, ``class_weight``, or take numpy
arrays (wrap them in ``tf.data.Dataset.from_tensor_slices(...).batch(n)``).

Models of tf-keras (``TF_USE_LEGACY_KERAS=1``, ``tfos.run(keras=2)``) are handed to
their own ``model.fit`` / ``model.evaluate``, which work under MultiWorkerMirroredStrategy.
``ParameterServerStrategy`` is refused with an error naming what to use instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["evaluate", "fit", "is_keras3_model"]


def is_keras3_model(model: Any) -> bool:
    """True for a Keras 3 model, False for a tf-keras (Keras 2) one."""
    for cls in type(model).__mro__:
        module = cls.__module__ or ""
        if module.startswith("tf_keras") or module.startswith("tensorflow.python.keras"):
            return False
        if module.startswith("keras.src") or module == "keras":
            return True
    return False


def resolve_verbose(verbose: Any) -> int:
    """Keras' ``verbose``: "auto" is a progress bar on a terminal and one line an epoch in a log file."""
    if verbose == "auto":
        return 1 if getattr(sys.stdout, "isatty", lambda: False)() else 2
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2; got {verbose!r}")
    return int(verbose)


def is_chief(strategy: Any) -> bool:
    """Whether this node writes the files: the chief, or worker 0 when there is no chief, or a lone process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type:
        return True
    if task_type in ("chief", "master"):
        return True
    spec = resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not ({"chief", "master"} & set(spec))


def _check_strategy(strategy: Any) -> None:
    import tensorflow as tf

    ps_types = tuple(t for t in (getattr(tf.distribute, "ParameterServerStrategy", None),
                                 getattr(tf.distribute.experimental, "ParameterServerStrategy", None)) if t)
    if isinstance(strategy, ps_types):
        raise TypeError(
            "tfos.keras.fit does not train under ParameterServerStrategy: Keras 3 has no "
            "ClusterCoordinator support in fit. Use MultiWorkerMirroredStrategy with tfos.keras.fit, "
            "or drive ParameterServerStrategy yourself with tf.distribute.coordinator.ClusterCoordinator "
            "(strategy.run of a GradientTape step scheduled with coordinator.schedule over "
            "coordinator.create_per_worker_dataset), or run the nodes with tfos.run(keras=2) and tf-keras' model.fit")


def _check_own_steps(model: Any) -> None:
    """Refuses a model whose own train_step / test_step this loop would silently skip."""
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    for name in ("train_step", "test_step"):
        if getattr(type(model), name, None) is not getattr(TensorFlowTrainer, name):
            raise TypeError(
                f"{type(model).__name__} overrides {name}, which tfos.keras.fit does not call: it trains with the "
                "model's compute_loss, optimizer and compute_metrics. Override compute_loss / compute_metrics "
                "instead, or write the loop yourself (strategy.run of a GradientTape step; see scripts/gan_digits.py)")


class _Loop:
    """The compiled step functions and metric aggregation for one model under its strategy."""

    def __init__(self, model: Any, strategy: Any) -> None:
        import tensorflow as tf

        self.model, self.strategy = model, strategy
        self._train_step = tf.function(self._train_known, reduce_retracing=True)
        self._train_optional = tf.function(self._train_maybe, reduce_retracing=True)
        self._test_step = tf.function(self._test_known, reduce_retracing=True)
        self._test_optional = tf.function(self._test_maybe, reduce_retracing=True)
        self._gather = None
        self.key: tuple[Any, ...] = ()  # what the traced steps captured (see _loop_for)

    # ---- per-replica steps -------------------------------------------------------------------
    def _replica_train(self, data: Any) -> Any:
        import keras
        import tensorflow as tf

        model = self.model
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            model._loss_tracker.update_state(_unscale(loss), sample_weight=_batch_size(x))
            scaled = model.optimizer.scale_loss(loss)
        variables = model.trainable_variables
        grads = tape.gradient(scaled, variables)
        model.optimizer.apply_gradients(zip(grads, variables))
        model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return self._replica_logs()

    def _replica_test(self, data: Any) -> Any:
        import keras

        model = self.model
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = model(x, training=False)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)
        model._loss_tracker.update_state(_unscale(loss), sample_weight=_batch_size(x))
        model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return self._replica_logs()

    def _replica_logs(self) -> dict[str, Any]:
        """This replica's running metric values (float32 scalars), read without any collective."""
        import tensorflow as tf

        logs = self.model.get_metrics_result()
        return {k: tf.cast(v, tf.float32) for k, v in logs.items() if tf.convert_to_tensor(v).shape.rank == 0}

    # ---- one step over a distributed iterator (tf.function bodies) ---------------------------
    def _local(self, per_replica: Any) -> Any:
        return self.strategy.experimental_local_results(per_replica)[0]

    def _train_known(self, iterator: Any) -> Any:
        return self._local(self.strategy.run(self._replica_train, args=(next(iterator),)))

    def _test_known(self, iterator: Any) -> Any:
        return self._local(self.strategy.run(self._replica_test, args=(next(iterator),)))

    def _maybe(self, iterator: Any, replica_fn: Any) -> Any:
        import tensorflow as tf

        # has_value() is agreed by every worker (TensorFlow all-reduces it), so all take the same branch.
        optional = iterator.get_next_as_optional()

        def step() -> Any:
            return self._local(self.strategy.run(replica_fn, args=(optional.get_value(),)))

        def skip() -> Any:
            return self._local(self.strategy.run(self._replica_logs))

        return optional.has_value(), tf.cond(optional.has_value(), step, skip)

    def _train_maybe(self, iterator: Any) -> Any:
        return self._maybe(iterator, self._replica_train)

    def _test_maybe(self, iterator: Any) -> Any:
        return self._maybe(iterator, self._replica_test)

    # ---- running an epoch --------------------------------------------------------------------
    def run_epoch(self, source: _Source, training: bool, callbacks: Any) -> None:
        """Runs one pass (``source.steps`` steps, or until no worker has data) with per-batch callbacks."""
        begin = callbacks.on_train_batch_begin if training else callbacks.on_test_batch_begin
        end = callbacks.on_train_batch_end if training else callbacks.on_test_batch_end
        iterator = source.epoch_iterator()
        step = 0
        while source.steps is None or step < source.steps:
            begin(step)
            if source.known:
                logs = (self._train_step if training else self._test_step)(iterator)
            else:
                has_value, logs = (self._train_optional if training else self._test_optional)(iterator)
                if not bool(has_value):
                    source.exhausted()
                    break
            end(step, _pythonify(logs))
            step += 1
        source.epoch_done(step)

    def reset_metrics(self) -> None:
        for metric in self.model.metrics:
            metric.reset_state()

    def aggregated_logs(self) -> dict[str, float]:
        """Every metric's result over all replicas of all workers (one all-reduce; call on every worker)."""
        import tensorflow as tf

        metrics = list(self.model.metrics)
        variables = [v for m in metrics for v in m.variables]
        if not variables:
            return {}
        if self._gather is None:
            def replica_values() -> Any:
                ctx = tf.distribute.get_replica_context()
                local = [tf.cast(tf.convert_to_tensor(v.value), tf.float64) for v in variables]
                return ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)

            self._gather = tf.function(lambda: self._local(self.strategy.run(replica_values)))
        totals = self._gather()
        logs: dict[str, float] = {}
        offset = 0
        for metric in metrics:
            count = len(metric.variables)
            values = [tf.cast(t, v.dtype) for t, v in zip(totals[offset:offset + count], metric.variables)]
            offset += count
            result = metric.stateless_result(values)
            if isinstance(result, dict):
                logs.update(_pythonify(result))
            else:
                logs[metric.name] = _pythonify({"v": result})["v"]
        return logs

    def any_worker(self, flag: bool) -> bool:
        """True on every worker when ``flag`` is true on any of them (a collective: call on every worker)."""
        import tensorflow as tf

        if self.strategy.num_replicas_in_sync == 1:
            return flag

        def replica(value: Any) -> Any:
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, value)

        value = tf.constant(1.0 if flag else 0.0)
        return bool(self._local(self.strategy.run(replica, args=(value,))) > 0.5)


class _Source:
    """One dataset distributed under the strategy, and how its epochs are cut into steps."""

    def __init__(self, strategy: Any, dataset: Any, steps: int | None, keep_iterator: bool,
                 passes: int | None = None) -> None:
        import tensorflow as tf

        if not isinstance(dataset, tf.data.Dataset):
            raise TypeError(
                f"tfos.keras.fit takes a tf.data.Dataset of (x, y) or (x, y, sample_weight) batches, e.g. "
                f"ctx.get_data_feed().as_dataset(batch_size) or tf.data.Dataset.from_tensor_slices(...).batch(n); "
                f"got {type(dataset).__name__}")
        self.element_spec = dataset.element_spec
        cardinality = int(dataset.cardinality())
        # Every worker takes part in this all-reduce, whatever its own cardinality, so all choose the same path.
        agreed = _same_on_all_workers(strategy, cardinality)
        infinite = agreed and cardinality == int(tf.data.INFINITE_CARDINALITY)
        known = agreed and cardinality >= 0
        if cardinality == int(tf.data.INFINITE_CARDINALITY) and steps is None:
            raise ValueError("the dataset repeats forever: pass steps_per_epoch (validation_steps, steps)")
        self.steps = steps if steps is not None else (cardinality if known else None)
        # Known length: repeat it, so TensorFlow's input pipeline needs no per-step "more data?" all-reduce;
        # when an epoch is a pass, no further than the passes fit runs (a Spark feed's rows read ahead are lost).
        self.known = infinite or known
        self.done = threading.Event()  # set when training ends
        if known and not infinite:
            dataset = _then_idle(dataset, passes, self.done) if passes and steps is None else dataset.repeat()
        self._keep = keep_iterator or (infinite or (known and steps is not None))
        self._distributed = strategy.experimental_distribute_dataset(dataset)
        self._iterator: Any = None

    def epoch_iterator(self) -> Any:
        if self._iterator is None or not self._keep:
            self._iterator = iter(self._distributed)
        return self._iterator

    def exhausted(self) -> None:
        self._iterator = None  # the next epoch starts a new pass (for a Spark feed: the next fed epoch)

    def epoch_done(self, steps: int) -> None:
        if self.known and self.steps is not None and not self._keep:
            self._iterator = None


def _same_on_all_workers(strategy: Any, value: int) -> bool:
    """Whether ``value`` is the same on every worker (two all-reduces once per fit)."""
    import tensorflow as tf

    if strategy.num_replicas_in_sync == 1:
        return True

    def replica(v: Any) -> Any:
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.stack([v, v * v]))

    # all equal iff n * sum(v^2) == sum(v)^2; every worker computes the same answer from the same sums
    sums = strategy.run(replica, args=(tf.constant(float(value), tf.float64),))
    total, squares = strategy.experimental_local_results(sums)[0].numpy()
    return strategy.num_replicas_in_sync * squares == total * total


def _known_passes(strategy: Any, dataset: Any, steps: int | None, passes: int) -> tuple[Any, int | None, Any]:
    """For tf-keras' ``model.fit`` under MultiWorkerMirroredStrategy: ``dataset``'s passes as one infinite
    dataset and their steps, when every worker knows the same length; plus an event to set once training ends.

    tf.distribute reads a finite dataset on several workers with a "has every worker data?"
    all-reduce each step (partial-batch handling), known cardinality or not: it cost a small
    model up to 40% of its speed in scripts/bench_feed.py's (c). An infinite one is read without it. Each
    pass still reads one fed epoch; after the last one the dataset idles (it reads nothing
    ahead, so a later fit's first pass starts at the next epoch) until training ends.
    """
    import tensorflow as tf

    done = threading.Event()
    if not isinstance(dataset, tf.data.Dataset) or steps is not None or passes < 1 \
            or not strategy.extended._in_multi_worker_mode():
        return dataset, steps, done
    cardinality = int(dataset.cardinality())
    if not _same_on_all_workers(strategy, cardinality) or cardinality <= 0:
        return dataset, steps, done
    return _then_idle(dataset, passes, done), cardinality, done


def _then_idle(dataset: Any, passes: int, done: threading.Event) -> Any:
    """``passes`` passes over ``dataset``, then an infinite dataset that yields nothing once ``done`` is set:
    prefetching after the last pass waits there instead of reading a next pass's rows."""
    import tensorflow as tf

    def idle():
        done.wait()
        yield from ()

    tail = tf.data.Dataset.from_generator(idle, output_signature=dataset.element_spec).repeat()
    return dataset.repeat(passes).concatenate(tail)


def _unscale(loss: Any) -> Any:
    from keras.src.losses.loss import unscale_loss_for_distribution

    return unscale_loss_for_distribution(loss)


def _batch_size(x: Any) -> Any:
    import tensorflow as tf

    first = next(t for t in tf.nest.flatten(x) if t is not None)
    return tf.shape(first)[0]


def _pythonify(logs: Any) -> dict[str, float]:
    import numpy as np

    out: dict[str, float] = {}
    for key, value in (logs or {}).items():
        array = np.asarray(value)
        out[key] = float(array) if array.ndim == 0 else array.tolist()
    return out


def _sample_batch(element_spec: Any) -> Any:
    """A batch of one zero row shaped like ``element_spec``, to build the model without reading data."""
    import tensorflow as tf

    def zeros(spec: Any) -> Any:
        shape = [1 if d is None else d for d in spec.shape.as_list()]
        return tf.fill(shape, "") if spec.dtype == tf.string else tf.zeros(shape, spec.dtype)

    return tf.nest.map_structure(zeros, element_spec)


def _build(model: Any, strategy: Any, element_spec: Any) -> None:
    """Creates the model's, loss', metrics' and optimizer's variables in the strategy's scope."""
    with strategy.scope():
        model._symbolic_build(data_batch=_sample_batch(element_spec))
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)


def _private_copies(callbacks: list[Any], chief: bool) -> tuple[list[Any], str | None]:
    """On non-chief workers, points file-writing callbacks at a temporary directory (returned, to remove)."""
    import keras

    if chief:
        return callbacks, None
    tmp = tempfile.mkdtemp(prefix="tfos-keras-worker-")
    for cb in callbacks:
        if isinstance(cb, keras.callbacks.ModelCheckpoint):
            cb.filepath = os.path.join(tmp, os.path.basename(str(cb.filepath)) or "checkpoint.keras")
        elif isinstance(cb, keras.callbacks.TensorBoard):
            cb.log_dir = os.path.join(tmp, "tensorboard")
    return callbacks, tmp


def _redirect_backups(callbacks: list[Any], tmp: str | None) -> None:
    """After restoring from the chief's backup, non-chief workers write their backups privately."""
    import keras

    if tmp is None:
        return
    for i, cb in enumerate(c for c in callbacks if isinstance(c, keras.callbacks.BackupAndRestore)):
        private = os.path.join(tmp, f"backup-{i}")
        os.makedirs(private, exist_ok=True)
        cb.backup_dir = private
        cb._weights_path = os.path.join(private, "latest.weights.h5")
        cb._training_metadata_path = os.path.join(private, "training_metadata.json")
        cb._prev_weights_path = cb._weights_path + ".bkp"
        cb._prev_training_metadata_path = cb._training_metadata_path + ".bkp"


def _loop_for(model: Any) -> _Loop:
    """The model's step functions, traced anew when what they captured changed: the strategy, a compile
    (a new optimizer, loss and metrics; Keras makes a new loss tracker each time) or the trainable weights."""
    key = (model.distribute_strategy, getattr(model, "_loss_tracker", None), *model.trainable_variables)
    loop = getattr(model, "_tfos_loop", None)  # a plain object: Keras tracks no metric inside it
    if loop is None or len(loop.key) != len(key) or any(a is not b for a, b in zip(loop.key, key)):
        loop = _Loop(model, model.distribute_strategy)
        loop.key = key
        model._tfos_loop = loop
    return loop


def fit(model: Any, x: Any, epochs: int = 1, steps_per_epoch: int | None = None, callbacks: list[Any] | None = None,
        validation_data: Any = None, validation_steps: int | None = None, verbose: Any = "auto",
        initial_epoch: int = 0) -> Any:
    """Trains a compiled Keras model on every worker in sync, like ``model.fit``.

    Call it on every worker of a ``MultiWorkerMirroredStrategy`` cluster (chief and
    workers), with the model built and compiled in ``strategy.scope()``. Works as well
    with any single-process strategy (default, ``MirroredStrategy``).

    Args:
        model: a Keras 3 model compiled with a loss, an optimizer and metrics. A tf-keras
            model is trained by its own ``model.fit``.
        x: a ``tf.data.Dataset`` of ``(x, y)`` or ``(x, y, sample_weight)`` batches, such as
            ``ctx.get_data_feed().as_dataset(batch)`` (one pass = one fed epoch) or a pipeline
            the node reads itself. As in Keras' ``fit``, a batch is split across all replicas
            (``as_dataset``'s batch size is per worker already).
        epochs: index of the last epoch (as in Keras).
        steps_per_epoch: steps an epoch; None runs each epoch to the end of the data (the
            dataset's cardinality when every worker knows the same, else until no worker has data).
        callbacks: Keras 3 callbacks (ModelCheckpoint, BackupAndRestore, EarlyStopping,
            TensorBoard, ``tfos.keras.progress_callback(ctx)``, ...).
        validation_data: a dataset evaluated at the end of every epoch (``val_`` logs).
        validation_steps: steps of each validation pass (None: to the end of the data).
        verbose: 0 silent, 1 progress bar, 2 one line an epoch, "auto" (1 on a terminal, else 2).
        initial_epoch: epoch to start from (BackupAndRestore overrides it when it restores).

    Returns:
        The ``keras.callbacks.History``, the same on every worker.

    Raises:
        TypeError: ``x`` is not a ``tf.data.Dataset``, or the strategy is ParameterServerStrategy.
        ValueError: an infinite dataset without ``steps_per_epoch``.
    """
    if not is_keras3_model(model):
        import tf_keras

        x, steps_per_epoch, done = _known_passes(model.distribute_strategy, x, steps_per_epoch, epochs - initial_epoch)
        # set before fit drops its iterator, which waits for the reads ahead; and after an error
        ended = tf_keras.callbacks.LambdaCallback(on_train_end=lambda logs: done.set())
        try:
            return model.fit(x, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=[*(callbacks or []), ended],
                             validation_data=validation_data, validation_steps=validation_steps, verbose=verbose,
                             initial_epoch=initial_epoch)
        finally:
            done.set()
    import keras

    strategy = model.distribute_strategy
    _check_strategy(strategy)
    _check_own_steps(model)
    if getattr(model, "optimizer", None) is None or (getattr(model, "_compile_loss", None) is None
                                                     and not model.losses):
        raise ValueError("compile the model (with a loss and an optimizer) in strategy.scope() before tfos.keras.fit")
    verbose = resolve_verbose(verbose)
    # One iterator over the repeated training data for every epoch: a new one would drop the rows the
    # old one had read ahead, and for a Spark feed those rows are gone.
    train = _Source(strategy, x, steps_per_epoch, keep_iterator=True, passes=epochs - initial_epoch)
    val = _Source(strategy, validation_data, validation_steps, keep_iterator=False) \
        if validation_data is not None else None
    _build(model, strategy, train.element_spec)
    loop = _loop_for(model)

    user_callbacks, tmp = _private_copies(list(callbacks or []), is_chief(strategy))
    callback_list = keras.callbacks.CallbackList(user_callbacks, add_history=True, add_progbar=verbose != 0,
                                                 verbose=verbose, epochs=epochs, steps=train.steps, model=model)
    try:
        model.stop_training = False
        model._initial_epoch = None
        callback_list.on_train_begin()
        _redirect_backups(user_callbacks, tmp)
        start = model._initial_epoch or initial_epoch
        training_logs: dict[str, float] | None = None
        for epoch in range(start, epochs):
            loop.reset_metrics()
            callback_list.on_epoch_begin(epoch)
            loop.run_epoch(train, training=True, callbacks=callback_list)
            epoch_logs = loop.aggregated_logs()
            if val is not None:
                loop.reset_metrics()
                callback_list.on_test_begin()
                loop.run_epoch(val, training=False, callbacks=callback_list)
                val_logs = loop.aggregated_logs()
                callback_list.on_test_end(val_logs)
                epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
            callback_list.on_epoch_end(epoch, epoch_logs)
            training_logs = epoch_logs
            # every worker ends together, whichever of them a callback asked to stop
            model.stop_training = loop.any_worker(bool(model.stop_training))
            if model.stop_training:
                break
        callback_list.on_train_end(logs=training_logs)
    finally:
        train.done.set()
        model._initial_epoch = None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return model.history


def evaluate(model: Any, x: Any, steps: int | None = None, verbose: Any = "auto") -> dict[str, float]:
    """Evaluates a compiled Keras model on every worker's data; returns the metrics over all of them.

    Call it on every worker, like ``fit``. Each worker evaluates its own dataset (split
    across replicas like ``fit``'s); the loss and metrics are summed over all workers,
    so every worker returns the same dict.

    Args:
        model: a compiled Keras 3 model (a tf-keras model is evaluated by ``model.evaluate``).
        x: a ``tf.data.Dataset`` of ``(x, y)`` or ``(x, y, sample_weight)`` batches.
        steps: steps to run (None: to the end of the data on every worker).
        verbose: 0, 1, 2 or "auto", as in ``fit``.

    Returns:
        ``{"loss": ..., "<metric>": ...}``.
    """
    if not is_keras3_model(model):
        return model.evaluate(x, steps=steps, verbose=verbose, return_dict=True)
    import keras

    strategy = model.distribute_strategy
    _check_strategy(strategy)
    _check_own_steps(model)
    verbose = resolve_verbose(verbose)
    source = _Source(strategy, x, steps, keep_iterator=False)
    _build(model, strategy, source.element_spec)
    loop = _loop_for(model)
    callback_list = keras.callbacks.CallbackList([], add_progbar=verbose != 0, verbose=verbose, epochs=1,
                                                 steps=source.steps, model=model)
    loop.reset_metrics()
    callback_list.on_test_begin()
    loop.run_epoch(source, training=False, callbacks=callback_list)
    logs = loop.aggregated_logs()
    callback_list.on_test_end(logs)
    return logs
