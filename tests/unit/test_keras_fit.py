"""tfos.keras.fit / evaluate in-process, without Spark: the default (single-replica) strategy and the pure helpers."""

from __future__ import annotations

import os
import types

import numpy as np
import pytest

from tfos.keras import _fit

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


def model3(seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def dataset(digits, n=None):
    x, y = digits
    return tf.data.Dataset.from_tensor_slices((x[:n], y[:n])).batch(64)


def test_fit_trains_and_its_history_and_evaluate_match_keras(digits):
    model = model3()
    history = _fit.fit(model, dataset(digits), epochs=4, validation_data=dataset(digits, 300), verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history.history["loss"]) == 4 and history.history["accuracy"][-1] > 0.9
    ours = _fit.evaluate(model, dataset(digits), verbose=0)
    theirs = model.evaluate(dataset(digits), return_dict=True, verbose=0)
    assert ours.keys() == theirs.keys()
    assert all(abs(ours[k] - theirs[k]) < 1e-5 for k in ours)
    assert int(model.optimizer.iterations.numpy()) == 4 * 29  # 1797 rows / 64 = 29 steps an epoch


def test_known_and_unknown_length_datasets_take_the_same_steps(digits):
    known, unknown = model3(), model3()
    _fit.fit(known, dataset(digits), epochs=2, verbose=0)
    hidden = dataset(digits).filter(lambda x, y: True)  # cardinality unknown: the "has data" path
    assert int(hidden.cardinality()) == int(tf.data.UNKNOWN_CARDINALITY)
    _fit.fit(unknown, hidden, epochs=2, verbose=0)
    assert known.optimizer.iterations.numpy() == unknown.optimizer.iterations.numpy() == 58
    for a, b in zip(known.get_weights(), unknown.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_steps_per_epoch_over_a_repeated_dataset_and_initial_epoch(digits):
    model = model3()
    history = _fit.fit(model, dataset(digits).repeat(), epochs=3, steps_per_epoch=5, initial_epoch=1, verbose=0)
    assert len(history.history["loss"]) == 2 and history.epoch == [1, 2]
    assert int(model.optimizer.iterations.numpy()) == 10


def test_callbacks_see_epochs_batches_and_can_stop(digits):
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(("batch", batch, sorted(logs)))

        def on_epoch_end(self, epoch, logs=None):
            seen.append(("epoch", epoch, sorted(logs)))
            if epoch == 1:
                self.model.stop_training = True

    model = model3()
    history = _fit.fit(model, dataset(digits, 640), epochs=10, callbacks=[Spy()], verbose=0)
    assert len(history.history["loss"]) == 2
    names = ["accuracy", "loss"]
    assert [s for s in seen if s[0] == "epoch"] == [("epoch", 0, names), ("epoch", 1, names)]
    assert ("batch", 9, ["accuracy", "loss"]) in seen


def test_a_recompiled_model_trains_with_its_new_optimizer_and_trainable_weights(digits):
    """Fine-tuning: fit, freeze a layer, compile again, fit: the second fit must not reuse the first's steps."""
    model = model3()
    _fit.fit(model, dataset(digits), epochs=1, verbose=0)
    first_optimizer = model.optimizer
    model.layers[0].trainable = False
    frozen = [w.copy() for w in model.layers[0].get_weights()]
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    head = [w.copy() for w in model.layers[1].get_weights()]
    history = _fit.fit(model, dataset(digits), epochs=2, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2 * 29 and int(first_optimizer.iterations.numpy()) == 29
    for before, after in zip(frozen, model.layers[0].get_weights()):
        np.testing.assert_array_equal(before, after)
    assert any(not np.array_equal(b, a) for b, a in zip(head, model.layers[1].get_weights()))
    assert len(history.history["loss"]) == 2 and 0 < history.history["accuracy"][-1] <= 1
    assert [m.name for m in model.metrics].count("loss") == 1  # no stale loss tracker among the metrics


def test_a_subclassed_model_with_its_own_compute_loss_trains_twice(digits):
    class Smoothed(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden, self.out = keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)
            self.calls = 0

        def call(self, x):
            return self.out(self.hidden(x))

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            self.calls += 1  # counted while tracing: the loop uses this compute_loss
            return super().compute_loss(x, y, y_pred, sample_weight, training) + 0.0 * tf.reduce_sum(y_pred)

    keras.utils.set_random_seed(0)
    model = Smoothed()
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    _fit.fit(model, dataset(digits), epochs=2, verbose=0)
    history = _fit.fit(model, dataset(digits), epochs=4, initial_epoch=2, verbose=0)
    assert model.calls >= 1 and history.history["accuracy"][-1] > 0.9
    assert int(model.optimizer.iterations.numpy()) == 4 * 29
    assert sorted(_fit.evaluate(model, dataset(digits), verbose=0)) == ["accuracy", "loss"]


def test_early_stopping_and_model_checkpoint(digits, tmp_path):
    model = model3()
    path = str(tmp_path / "e{epoch}.weights.h5")
    stop = keras.callbacks.EarlyStopping(monitor="loss", min_delta=100.0, patience=1)
    history = _fit.fit(model, dataset(digits), epochs=10, verbose=0,
                       callbacks=[stop, keras.callbacks.ModelCheckpoint(path, save_weights_only=True)])
    assert len(history.history["loss"]) == 2
    assert sorted(os.listdir(tmp_path)) == ["e1.weights.h5", "e2.weights.h5"]


def test_backup_and_restore_resumes_at_the_saved_epoch(digits, tmp_path):
    backup = str(tmp_path / "backup")

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("crash")

    model = model3()
    with pytest.raises(RuntimeError):
        _fit.fit(model, dataset(digits), epochs=4, verbose=0,
                 callbacks=[keras.callbacks.BackupAndRestore(backup), Crash()])
    resumed = model3(seed=5)
    history = _fit.fit(resumed, dataset(digits), epochs=4, verbose=0,
                       callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert history.epoch == [2, 3]
    assert not os.path.exists(backup)


def test_bad_inputs_get_clear_errors(digits):
    model = model3()
    x, y = digits
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        _fit.fit(model, x, epochs=1)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        _fit.fit(model, dataset(digits).repeat(), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="verbose"):
        _fit.fit(model, dataset(digits), verbose=3)
    uncompiled = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="compile"):
        _fit.fit(uncompiled, dataset(digits))


def test_a_model_with_its_own_train_step_is_refused(digits):
    class Custom(keras.Sequential):
        def train_step(self, data):
            return {}

    model = Custom([keras.Input((64,)), keras.layers.Dense(10)])
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(TypeError, match="overrides train_step"):
        _fit.fit(model, dataset(digits))


def test_parameter_server_strategy_is_refused_with_what_to_use():
    fake = tf.distribute.ParameterServerStrategy.__new__(tf.distribute.ParameterServerStrategy)
    with pytest.raises(TypeError, match="ClusterCoordinator"):
        _fit._check_strategy(fake)


def test_tf_keras_models_go_to_their_own_fit(digits):
    tf_keras = pytest.importorskip("tf_keras")
    model = tf_keras.Sequential([tf_keras.Input((64,)), tf_keras.layers.Dense(10)])
    model.compile(optimizer="adam", loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert not _fit.is_keras3_model(model) and _fit.is_keras3_model(model3())
    history = _fit.fit(model, dataset(digits), epochs=1, verbose=0)
    assert isinstance(history, tf_keras.callbacks.History)
    assert "loss" in _fit.evaluate(model, dataset(digits), verbose=0)


def test_tf_keras_multi_worker_fit_reads_known_length_passes_as_one_infinite_dataset():
    class MultiWorker:  # the seam: a strategy in multi-worker mode with one replica (no collectives needed)
        num_replicas_in_sync = 1
        extended = types.SimpleNamespace(_in_multi_worker_mode=lambda: True)

    passes = tf.data.Dataset.range(10).batch(4)  # 3 batches a pass
    data, steps, done = _fit._known_passes(MultiWorker(), passes, None, 2)
    assert steps == 3 and int(data.cardinality()) == int(tf.data.INFINITE_CARDINALITY)  # no per-step sync
    it = iter(data)
    assert [next(it).numpy().tolist() for _ in range(6)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] * 2
    done.set()  # training ended: nothing more was read, and the dataset ends
    assert list(it) == []
    # unknown length, steps given, a single process: the dataset is left as it is
    unknown = passes.filter(lambda x: True)
    assert _fit._known_passes(MultiWorker(), unknown, None, 2)[:2] == (unknown, None)
    assert _fit._known_passes(MultiWorker(), passes, 5, 2)[:2] == (passes, 5)
    assert _fit._known_passes(tf.distribute.get_strategy(), passes, None, 2)[:2] == (passes, None)


def test_helpers():
    assert _fit.resolve_verbose(0) == 0 and _fit.resolve_verbose(2) == 2 and _fit.resolve_verbose("auto") in (1, 2)

    def strategy(task_type, task_id, jobs):
        spec = types.SimpleNamespace(as_dict=lambda: {j: ["h:1"] for j in jobs})
        resolver = types.SimpleNamespace(task_type=task_type, task_id=task_id, cluster_spec=lambda: spec)
        return types.SimpleNamespace(cluster_resolver=resolver)

    assert _fit.is_chief(types.SimpleNamespace())  # default strategy: one process writes
    assert _fit.is_chief(strategy("chief", 0, ["chief", "worker"]))
    assert not _fit.is_chief(strategy("worker", 0, ["chief", "worker"]))
    assert _fit.is_chief(strategy("worker", 0, ["worker"]))
    assert not _fit.is_chief(strategy("worker", 1, ["worker"]))


def test_non_chief_workers_write_checkpoints_privately(tmp_path):
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "m.keras"))
    board = keras.callbacks.TensorBoard(str(tmp_path / "tb"))
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    same, tmp = _fit._private_copies([checkpoint, board, backup], chief=True)
    assert tmp is None and checkpoint.filepath == str(tmp_path / "m.keras")
    _, tmp = _fit._private_copies([checkpoint, board, backup], chief=False)
    _fit._redirect_backups([checkpoint, board, backup], tmp)
    try:
        assert checkpoint.filepath == os.path.join(tmp, "m.keras")
        assert board.log_dir.startswith(tmp) and backup._weights_path.startswith(tmp)
    finally:
        import shutil

        shutil.rmtree(tmp)
