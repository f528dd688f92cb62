"""TensorFlowOnSpark's ``compat`` module (node process): helpers its example programs import."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

__all__ = ["disable_auto_shard", "export_saved_model", "is_gpu_available"]


def export_saved_model(model: Any, export_dir: str, is_chief: bool = False) -> None:
    """Saves a Keras model as a SavedModel from the chief.

    Under MultiWorkerMirroredStrategy every worker must take part in saving: the
    others save to a temporary directory that is removed afterwards.
    """
    path = export_dir if is_chief else tempfile.mkdtemp(prefix="tfos-worker-model-")
    try:
        model.save(path, save_format="tf")
    finally:
        if not is_chief:
            shutil.rmtree(path, ignore_errors=True)


def disable_auto_shard(options: Any) -> None:
    """Turns tf.data auto-sharding off in ``options`` (a ``tf.data.Options``)."""
    import tensorflow as tf

    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF


def is_gpu_available() -> bool:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU")) > 0
