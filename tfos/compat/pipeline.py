"""TensorFlowOnSpark's ``pipeline`` module (driver): Spark ML ``TFEstimator`` / ``TFModel``.

The native :mod:`tfos.ml` classes with TFoS's names; ``train_fn(args, ctx)`` receives
TFoS's node context (``ctx.mgr`` for ``TFNode.DataFeed``).
"""

from __future__ import annotations

from typing import Any

from tfos.compat.TFNode import with_tfnode_context
from tfos.ml._pipeline import Namespace, TFParams
from tfos.ml._pipeline import TFEstimator as _TFEstimator
from tfos.ml._pipeline import TFModel as _TFModel

__all__ = ["Namespace", "TFEstimator", "TFModel", "TFParams"]


class TFModel(_TFModel):
    """TensorFlowOnSpark's ``TFModel(tf_args)``: runs a SavedModel on a DataFrame."""


class TFEstimator(_TFEstimator):
    """TensorFlowOnSpark's ``TFEstimator(train_fn, tf_args, export_fn=None)``."""

    def _main(self) -> Any:
        return with_tfnode_context(self.train_fn)

    def _model_class(self) -> type[TFModel]:
        return TFModel
