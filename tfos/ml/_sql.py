"""Models as SQL functions (driver registers; the function runs in executors' Python workers).

:func:`register_model_udf` is Deep Learning Pipelines' ``registerKerasImageUDF`` on Spark's
own ``pyspark.ml.functions.predict_batch_udf``: a batched pandas UDF whose model is loaded
once per Python worker (predict_batch_udf's model cache) and called on batches of rows. It
works in ``spark.sql``, in the DataFrame API and on Structured Streaming DataFrames alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tfos.errors import TFOSConfigError

__all__ = ["register_model_udf"]

#: What a registered function takes: Spark's image struct, encoded file bytes, or a flat numeric array.
INPUT_KINDS = ("image", "binary", "array")


def register_model_udf(spark: Any, name: str, model_path: str, *, input: str = "image", layer: str | None = None,
                       batch_size: int = 64, preprocess: Callable[[Any], Any] | None = None,
                       input_shape: list[int] | None = None) -> Any:
    """Registers a Keras model (file or SavedModel) as the SQL function ``name``; returns the UDF.

    ``SELECT name(image) FROM t`` then gives each row the model's output (or with ``layer``,
    that layer's output) flattened as ``array<float>``.

    Args:
        spark: the SparkSession.
        name: the SQL function's name.
        model_path: a Keras model file (``.keras``, ``.h5``) or SavedModel directory, on a path
            every executor can read.
        input: what the function takes: ``"image"`` (the struct of ``spark.read.format("image")``),
            ``"binary"`` (encoded PNG / JPEG / GIF / BMP bytes, e.g. ``binaryFile``'s ``content``) or
            ``"array"`` (a flat numeric array, reshaped to the model's input).
        layer: output this layer's values instead of the model's (``"default"``: the one before
            the classifier, as :class:`DeepFeaturizer`).
        batch_size: rows per model call.
        preprocess: for images, a function of a float32 batch in 0-255 run before the model.
        input_shape: for ``"array"``, the model input's shape without the batch dimension;
            read from the model on the driver when omitted.

    Images are decoded and resized to the model's input size on the executors exactly as
    :class:`DeepFeaturizer` does; an undecodable image fails the query naming the row.
    """
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import ArrayType, FloatType

    from tfos.ml import _models
    from tfos.ml._models import ModelSource
    from tfos.ml._tfrecord import qualified

    if input not in INPUT_KINDS:
        raise TFOSConfigError(f"input must be one of {INPUT_KINDS}, got {input!r}")
    if batch_size < 1:
        raise TFOSConfigError(f"batch_size must be at least 1, got {batch_size}")
    source = ModelSource(model_path=qualified(model_path))
    _models.check_source(spark.sparkContext, source)
    shapes = None
    if input == "array":
        if input_shape is None:
            if not _models.is_local(source.model_path):
                raise TFOSConfigError(f"give input_shape for model {model_path}: it is not on a local path, so its "
                                      "input shape cannot be read on the driver")
            input_shape = [int(d) for d in _models.load(source).input_shape[1:]]
        shapes = [[int(np.prod(input_shape))]]
    predict = _ModelFunction(source, input, layer, preprocess, list(input_shape or []))
    udf = predict_batch_udf(predict, return_type=ArrayType(FloatType()), batch_size=batch_size,
                            input_tensor_shapes=shapes)
    spark.udf.register(name, udf)
    return udf


class _ModelFunction:
    """``make_predict_fn`` for predict_batch_udf: pickled to executors, called once per Python worker."""

    def __init__(self, source: Any, input: str, layer: str | None, preprocess: Callable[[Any], Any] | None,
                 input_shape: list[int]) -> None:
        self.source = source
        self.input = input
        self.layer = layer
        self.preprocess = preprocess
        self.input_shape = input_shape

    def model(self) -> Any:
        from tfos.ml import _models

        base = _models.load(self.source)
        if self.layer is None:
            return base
        layer = None if self.layer == "default" else self.layer
        return _models.cached(("features", self.source, layer),
                              lambda: _models.inner_model(base, layer, self.source.label))

    def __call__(self) -> Callable[[np.ndarray], np.ndarray]:
        from tfos.ml import _models
        from tfos.ml._images import IMAGE_FIELDS, BadImage, bad_image_error, row_pixels

        model = self.model()
        label = self.source.label

        def predict(inputs: np.ndarray) -> np.ndarray:
            if self.input == "array":
                batch = inputs.reshape([-1, *self.input_shape]).astype(np.float32)
            else:
                size = _models.image_size(model, label)
                if self.input == "image":  # predict_batch_udf hands a struct column as rows of its fields
                    if inputs.ndim != 2 or inputs.shape[1] != len(IMAGE_FIELDS):
                        raise TFOSConfigError(f"function of model {label} takes the image struct of "
                                              "spark.read.format('image'); register it with input='binary' or "
                                              "'array' for other columns")
                    values: list[Any] = [None if row[-1] is None else dict(zip(IMAGE_FIELDS, row)) for row in inputs]
                    paths = [str(row[0]) for row in inputs]
                else:
                    values = list(inputs)
                    paths = [f"row {k} of the batch" for k in range(len(inputs))]
                images = []
                for value, path in zip(values, paths):
                    try:
                        if value is None:
                            raise ValueError("the image is null")
                        images.append(row_pixels(value, path, size))
                    except ValueError as exc:
                        raise bad_image_error(BadImage(path, str(exc)), "the SQL function's argument") from None
                batch = np.stack(images) if images else np.zeros((0, *size), dtype=np.float32)
                if self.preprocess is not None:
                    batch = np.asarray(self.preprocess(batch.copy()), dtype=np.float32)
            out = np.asarray(model(batch, training=False), dtype=np.float32)
            return out.reshape(len(batch), -1)

        return predict
