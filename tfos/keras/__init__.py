"""Keras helpers for main_fun (node process): progress reports to the driver.

``progress_callback(ctx)`` returns a Keras callback that reports the step, the epoch
and Keras' own logs (loss, metrics, validation metrics) with ``ctx.report``, so the
driver's progress view, ``Cluster.metrics()``, ``tfos status`` and the Prometheus
endpoint show them. It subclasses whatever ``tf.keras`` is on the node (tf-keras or
Keras 3). Importing ``tfos.keras`` does not import TensorFlow.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["progress_callback"]


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
