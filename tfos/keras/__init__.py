"""Keras helpers for main_fun (node process): multi-worker Keras 3 training, progress reports.

``fit(model, dataset, ...)`` and ``evaluate(model, dataset, ...)`` train and evaluate a
Keras 3 model compiled in ``strategy.scope()`` under ``MultiWorkerMirroredStrategy``,
where Keras 3's own ``model.fit`` fails (keras-team/keras#20585): a custom loop with the
model's compiled loss, optimizer and metrics, equal steps on every worker, metrics
aggregated across workers and the Keras callbacks that matter on a cluster
(ModelCheckpoint, BackupAndRestore, EarlyStopping, TensorBoard). See ``tfos.keras._fit``
for how. tf-keras models go to their own ``model.fit``::

    def main_fun(args, ctx):
        import keras
        import tensorflow as tf
        import tfos.keras

        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        with strategy.scope():
            model = build_and_compile_model()      # keras.Sequential(...).compile(...)
        dataset = ctx.get_data_feed().as_dataset(64)
        history = tfos.keras.fit(model, dataset, epochs=10,
                                 callbacks=[tfos.keras.progress_callback(ctx)])

    cluster = tfos.run(sc, main_fun, args, 2, input_mode=tfos.InputMode.SPARK, keras=3)

``progress_callback(ctx)`` returns a Keras callback that reports the step, the epoch
and Keras' own logs (loss, metrics, validation metrics) with ``ctx.report``, so the
driver's progress view, ``Cluster.metrics()``, ``tfos status`` and the Prometheus
endpoint show them. It subclasses whatever ``tf.keras`` is on the node (tf-keras or
Keras 3). Importing ``tfos.keras`` does not import TensorFlow.
"""

from __future__ import annotations

import time
from typing import Any

from tfos.keras._fit import evaluate, fit

__all__ = ["evaluate", "fit", "progress_callback"]


def progress_callback(ctx: Any, every_secs: float = 0.5) -> Any:
    """A Keras callback reporting training progress through ``ctx.report``.

    Args:
        ctx: the NodeContext given to ``main_fun``.
        every_secs: least seconds between two per-batch reports (epoch ends always report).

    Returns:
        A ``tf.keras.callbacks.Callback`` for ``model.fit(..., callbacks=[...])``.
    """
    import tensorflow as tf

    class ProgressCallback(tf.keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.step, self.epoch, self._sent = 0, 0, 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.epoch = epoch + 1

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.step += 1
            now = time.monotonic()
            if now - self._sent >= every_secs:
                self._sent = now
                ctx.report(step=self.step, epoch=self.epoch, **(logs or {}))

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            ctx.report(step=self.step, epoch=epoch + 1, **(logs or {}))

    return ProgressCallback()
