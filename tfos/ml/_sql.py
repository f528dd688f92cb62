"""Models as SQL functions (driver registers; the function runs in executors' Python workers).

:func:`register_model_udf` is Deep Learning Pipelines' ``registerKerasImageUDF`` on Spark's
own ``pyspark.ml.functions.predict_batch_udf``: a batched pandas UDF whose model is loaded
once per Python worker (predict_batch_udf's model cache) and called on batches of rows. It
works in ``spark.sql``, in the DataFrame API and on Structured Streaming DataFrames alike.
The model is a path, or a Keras model object that the driver saves and ships to the
executors (``SparkContext.addFile``; on Spark Connect, a file artifact of the session).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from tfos.errors import TFOSConfigError

__all__ = ["register_model_udf"]

#: What a registered function takes: Spark's image struct, encoded file bytes, or a flat numeric array.
INPUT_KINDS = ("image", "binary", "array")


def register_model_udf(spark: Any, name: str, model_path: Any, *, input: str = "image", layer: str | None = None,
                       batch_size: int = 64, preprocess: Callable[[Any], Any] | None = None,
                       input_shape: list[int] | None = None, signature: str | None = None,
                       output: str | None = None) -> Any:
    """Registers a Keras model (file, SavedModel or model object) as the SQL function ``name``; returns the UDF.

    ``SELECT name(image) FROM t`` then gives each row the model's output (or with ``layer``,
    that layer's output) flattened as ``array<float>``.

    Args:
        spark: the SparkSession.
        name: the SQL function's name.
        model_path: a Keras model file (``.keras``, ``.h5``) or SavedModel directory, on a path
            every executor can read; or a Keras 3 / tf-keras model object, which is saved on the
            driver and shipped to the executors (``SparkContext.addFile``, or a Spark Connect file
            artifact).
        input: what the function takes: ``"image"`` (the struct of ``spark.read.format("image")``),
            ``"binary"`` (encoded PNG / JPEG / GIF / BMP bytes, e.g. ``binaryFile``'s ``content``;
            ``name(struct(content, path))`` also hands over the file's path, to name a bad file) or
            ``"array"`` (a flat numeric array, reshaped to the model's input).
        layer: output this layer's values instead of the model's (``"default"``: the one before
            the classifier, as :class:`DeepFeaturizer`).
        batch_size: rows per model call.
        preprocess: for images, a function of a float32 batch in 0-255 run before the model.
        input_shape: for ``"array"``, the model input's shape without the batch dimension;
            read from the model on the driver when omitted.
        signature: with a SavedModel directory, the signature to run (as ``signatureDefKey``).
        output: the output to give, for a model or signature of several outputs (required then).

    Images are decoded and resized to the model's input size on the executors exactly as
    :class:`DeepFeaturizer` does; an undecodable image fails the query naming its path (the
    image struct's origin, or the path given with the bytes).

    Raises:
        TFOSConfigError: a bad setting, or ``model_path`` is neither a path nor a Keras model.
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
    model_object = None
    if isinstance(model_path, (str, os.PathLike)):
        source = ModelSource(model_path=qualified(os.fspath(model_path)), signature=signature)
    else:
        if signature is not None:
            raise TFOSConfigError("signature applies to a SavedModel directory; a model object is a Keras model: "
                                  "unset signature")
        model_object = model_path
        source = _ship(spark, name, model_object)
    _models.check_source(spark, source)
    shapes = None
    if input == "array":
        if input_shape is None and model_object is not None:
            input_shape = [int(d) for d in model_object.input_shape[1:]]
        if input_shape is None:
            if not _models.is_local(source.model_path):
                raise TFOSConfigError(f"give input_shape for model {model_path}: it is not on a local path, so its "
                                      "input shape cannot be read on the driver")
            input_shape = [int(d) for d in _models.load(source).input_shape[1:]]
        shapes = [[int(np.prod(input_shape))]]
    predict = _ModelFunction(source, input, layer, preprocess, list(input_shape or []), output, name)
    udf = predict_batch_udf(predict, return_type=ArrayType(FloatType()), batch_size=batch_size,
                            input_tensor_shapes=shapes)
    spark.udf.register(name, udf)
    return udf


def _ship(spark: Any, name: str, model: Any) -> Any:
    """Saves a model object on the driver and adds it to the Spark job's files; returns its source."""
    from tfos.driver._spark import backend
    from tfos.ml import _models
    from tfos.ml._models import ModelSource

    # The directory stays for the application's life: Spark serves added files from where they are.
    directory = tempfile.mkdtemp(prefix=f"tfos-udf-{name}-")
    path = _models.save_model_object(model, directory)
    # A fresh name per registration: executors cache models by it, and a re-registered model must not reuse it.
    shipped = os.path.join(directory, f"{uuid.uuid4().hex}-{os.path.basename(path)}")
    os.rename(path, shipped)
    backend(spark).add_file(shipped)
    return ModelSource(model_path=os.path.basename(shipped), shipped=True)


class _ModelFunction:
    """``make_predict_fn`` for predict_batch_udf: pickled to executors, called once per Python worker."""

    def __init__(self, source: Any, input: str, layer: str | None, preprocess: Callable[[Any], Any] | None,
                 input_shape: list[int], output: str | None = None, name: str = "") -> None:
        self.source = source
        self.input = input
        self.layer = layer
        self.preprocess = preprocess
        self.input_shape = input_shape
        self.output = output
        self.name = name

    def model(self) -> Any:
        from tfos.ml import _models

        base = _models.load(self.source)
        label = self.source.label
        if self.layer is None:
            return _models.cached(("output", self.source, self.output),
                                  lambda: _models.with_output(base, self.output, label))
        if self.output is not None or isinstance(base, _models.SignatureModel):
            raise TFOSConfigError(f"layer {self.layer!r} applies to a Keras model's layers; model {label} runs an "
                                  "output or a SavedModel signature: unset layer, or output / signature")
        layer = None if self.layer == "default" else self.layer
        return _models.cached(("features", self.source, layer), lambda: _models.inner_model(base, layer, label))

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
                elif inputs.ndim == 2 and inputs.shape[1] == 2:  # name(struct(content, path)), either order
                    swap = [not isinstance(row[0], (bytes, bytearray)) for row in inputs]
                    values = [row[1] if s else row[0] for row, s in zip(inputs, swap)]
                    paths = [str(row[0] if s else row[1]) for row, s in zip(inputs, swap)]
                else:
                    values = list(inputs)
                    paths = []
                images = []
                for k, value in enumerate(values):
                    path = paths[k] if paths else f"in row {k} of a batch"
                    try:
                        if value is None:
                            raise ValueError("the image is null")
                        images.append(row_pixels(value, path, size))
                    except ValueError as exc:
                        raise bad_image_error(BadImage(path, str(exc)), f"argument of the SQL function {self.name}",
                                              self._fix(bool(paths))) from None
                batch = np.stack(images) if images else np.zeros((0, *size), dtype=np.float32)
                if self.preprocess is not None:
                    batch = np.asarray(self.preprocess(batch.copy()), dtype=np.float32)
            out = np.asarray(model(batch, training=False), dtype=np.float32)
            return out.reshape(len(batch), -1)

        return predict

    def _fix(self, named: bool) -> str:
        """What to do about a bad image: the function has no error column, so fix or drop the file."""
        if named or self.input == "image":
            return "Fix or drop that file."
        return (f"Pass the file's path with its bytes, {self.name}(struct(content, path)), to have the file named "
                "here; then fix or drop it.")
