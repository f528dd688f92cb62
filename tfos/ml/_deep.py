"""DeepFeaturizer and DeepPredictor: Keras models on image columns (driver; the batch function runs in executors).

Both take a column of Spark's ``image`` data source or of raw file bytes (``binaryFile``'s
``content``), decode and resize the images on the executors (see :mod:`tfos.ml._images`),
or hand each path / file's bytes to the user's own ``imageLoader`` there, and append their
outputs to the DataFrame, keeping every input column:

* :class:`DeepFeaturizer` appends an inner layer's output as a Spark ML vector, ready for
  ``LogisticRegression`` (transfer learning);
* :class:`DeepPredictor` appends the model's output as an array, and with ``topK`` the
  best classes and their probabilities.

The model is a Keras file or SavedModel (``modelPath``) or a ``keras.applications``
architecture (``modelName``) with weights from ``weightsPath``; ``signatureDefKey`` runs a
SavedModel's signature and ``outputName`` chooses one output of several. Each Python worker
loads it once and keeps it for later partitions and jobs. Both are Spark ML transformers:
they go into a ``Pipeline`` and save / load with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReadable, MLReader, MLWritable, MLWriter

from tfos.errors import TFOSConfigError
from tfos.ml import _models
from tfos.ml._models import ModelSource
from tfos.ml._persist import StateWriter, load_state, save_state

__all__ = ["DeepFeaturizer", "DeepPredictor"]


def _to_args(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"expected a dict of keyword arguments for the keras.applications builder, got {value!r}")
    return dict(value)


def _to_function(value: Any) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"expected a function of a batch (numpy float32, rows first), got {value!r}")
    return value


def _to_loader(value: Any) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"expected imageLoader to be a function of a path or of file bytes returning an array of "
                        f"pixels, got {value!r}")
    return value


#: Params holding functions: pickled apart from the Spark ML metadata when saved.
_FUNCTION_PARAMS = ("preprocess", "imageLoader")


def _with_accessors(cls: type) -> type:
    """Adds Spark ML's ``setX`` / ``getX`` for each param the class declares that lacks them."""

    def make(name: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        def setter(self: Params, value: Any) -> Any:
            return self._set(**{name: value})

        def getter(self: Params) -> Any:
            return self.getOrDefault(name)

        setter.__doc__, getter.__doc__ = f"Sets param ``{name}``.", f"The value of param ``{name}``."
        return setter, getter

    for name in {n for klass in cls.__mro__ for n, v in vars(klass).items() if isinstance(v, Param)}:
        suffix = name[0].upper() + name[1:]
        setter, getter = make(name)
        if not hasattr(cls, f"set{suffix}"):
            setattr(cls, f"set{suffix}", setter)
        if not hasattr(cls, f"get{suffix}"):
            setattr(cls, f"get{suffix}", getter)
    return cls


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


class _DeepParams(HasInputCol, HasOutputCol):
    """Params shared by DeepFeaturizer and DeepPredictor."""

    modelPath = Param(Params._dummy(), "modelPath", "Keras model file (.keras, .h5) or SavedModel directory",
                      TypeConverters.toString)
    modelName = Param(Params._dummy(), "modelName", "keras.applications architecture, e.g. ResNet50",
                      TypeConverters.toString)
    weightsPath = Param(Params._dummy(), "weightsPath", "weights file of modelName (nothing is downloaded)",
                        TypeConverters.toString)
    modelArgs = Param(Params._dummy(), "modelArgs", "keyword arguments of the keras.applications builder, e.g. "
                      "{'input_shape': [160, 160, 3], 'alpha': 0.35}", _to_args)
    batchSize = Param(Params._dummy(), "batchSize", "images per model call", TypeConverters.toInt)
    preprocess = Param(Params._dummy(), "preprocess", "function of a float32 batch in 0-255 (rows, height, width, "
                       "channels) run before the model; default: none for modelPath, the architecture's "
                       "preprocess_input for modelName", _to_function)
    errorCol = Param(Params._dummy(), "errorCol", "if set, images that cannot be decoded get a null output and "
                     "the reason in this column instead of failing the job", TypeConverters.toString)
    imageLoader = Param(Params._dummy(), "imageLoader", "function of a path (a string inputCol) or of file bytes "
                        "(a binary inputCol) returning the pixels the model takes, (height, width, channels) "
                        "float32; runs on the executors instead of tfos's decode and resize", _to_loader)
    signatureDefKey = Param(Params._dummy(), "signatureDefKey", "signature of a SavedModel (modelPath) to run, "
                            "e.g. serving_default; default: a Keras model if the directory holds one, else "
                            "serving_default", TypeConverters.toString)
    outputName = Param(Params._dummy(), "outputName", "the output to take from a model or signature of several "
                       "outputs (required then)", TypeConverters.toString)

    def setInputCol(self, value: str) -> Any:  # noqa: N802 - Spark ML's naming
        """Sets param ``inputCol``."""
        return self._set(inputCol=value)

    def setOutputCol(self, value: str) -> Any:  # noqa: N802 - Spark ML's naming
        """Sets param ``outputCol``."""
        return self._set(outputCol=value)

    def _source(self) -> ModelSource:
        from tfos.ml._tfrecord import qualified

        path = self.getOrDefault(self.modelPath)
        weights = self.getOrDefault(self.weightsPath)
        args = self.getOrDefault(self.modelArgs) or {}
        return ModelSource(model_path=qualified(path) if path else None,
                           model_name=self.getOrDefault(self.modelName),
                           weights_path=qualified(weights) if weights else None,
                           model_args=tuple(sorted((k, _frozen(v)) for k, v in args.items())),
                           signature=self.getOrDefault(self.signatureDefKey))

    def _validate(self, dataset: Any) -> tuple[ModelSource, str | None]:
        """Driver-side checks before any job; returns the model source and the path column to report."""
        from pyspark.sql.types import BinaryType, StringType

        from tfos.ml._images import is_image_struct

        source = self._source()
        _models.check_source(dataset.sparkSession, source)
        if self.getOrDefault(self.batchSize) < 1:
            raise TFOSConfigError(f"batchSize must be at least 1, got {self.getOrDefault(self.batchSize)}")
        column = self.getOrDefault(self.inputCol)
        if column not in dataset.columns:
            raise TFOSConfigError(f"inputCol {column!r} is not a column of the DataFrame (it has {dataset.columns})")
        data_type = dataset.schema[column].dataType
        if isinstance(data_type, BinaryType):  # binaryFile bytes, with or without imageLoader
            return source, "path" if "path" in dataset.columns else None
        loader = self.getOrDefault(self.imageLoader) is not None
        if isinstance(data_type, StringType) if loader else is_image_struct(data_type):
            return source, None
        if loader:
            raise TFOSConfigError(f"inputCol {column!r} has type {data_type.simpleString()}; imageLoader takes a "
                                  "string column of paths or the bytes of spark.read.format('binaryFile') (column "
                                  "'content')")
        raise TFOSConfigError(f"inputCol {column!r} has type {data_type.simpleString()}; expected the struct of "
                              "spark.read.format('image') or the bytes of spark.read.format('binaryFile') "
                              "(column 'content'), or with imageLoader=fn a string column of paths")

    def _apply(self, dataset: Any, runner: _ImageRunner, extra: list[tuple[str, str, Any]]) -> Any:
        """Appends the runner's outputs: ``extra`` lists (struct field, column, Column -> Column) to add."""
        from pyspark.sql import functions as F

        from tfos.ml._udf import batch_udf

        udf = batch_udf(runner, runner.return_type())
        image = F.col(f"`{runner.column}`")
        path = F.col(f"`{runner.path_column}`") if runner.path_column else F.lit(None).cast("string")
        tmp = f"__tfos_{self.uid}"
        out = dataset.withColumn(tmp, udf(F.struct(image.alias("image"), path.alias("path"))))
        error_col = self.getOrDefault(self.errorCol)
        added = list(extra) + ([("error", error_col, lambda c: c)] if error_col else [])
        names = {column for _, column, _ in added}
        kept = [F.col(f"`{c}`") for c in dataset.columns if c not in names]
        return out.select(*kept, *[wrap(F.col(tmp)[field]).alias(column) for field, column, wrap in added])

    def _runner(self, dataset: Any, **kwargs: Any) -> _ImageRunner:
        source, path_column = self._validate(dataset)
        return _ImageRunner(source=source, column=self.getOrDefault(self.inputCol), path_column=path_column,
                            batch_size=self.getOrDefault(self.batchSize),
                            preprocess=self.getOrDefault(self.preprocess),
                            keep_errors=bool(self.getOrDefault(self.errorCol)),
                            loader=self.getOrDefault(self.imageLoader),
                            output=self.getOrDefault(self.outputName), **kwargs)

    # ---- persistence: params as Spark ML metadata, the preprocess / imageLoader functions pickled ------
    def write(self) -> MLWriter:
        return _DeepWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _DeepReader(cls)


@_with_accessors
class DeepFeaturizer(Transformer, _DeepParams, MLReadable, MLWritable):
    """Appends a Keras model's inner-layer output for each image as a Spark ML vector.

    Args:
        inputCol: image column: Spark's image struct or encoded file bytes (PNG, JPEG, GIF, BMP).
        outputCol: the vector column to add.
        modelPath: a Keras model file (.keras, .h5) or SavedModel directory, Keras 3 or tf-keras.
        modelName: instead of modelPath, a keras.applications architecture (e.g. ``"ResNet50"``).
        weightsPath: the weights file of ``modelName`` (required with it; nothing is downloaded).
        modelArgs: keyword arguments for the architecture's builder (``input_shape``, ``alpha``, ...).
        layer: the layer whose output to take; default the one before the classifier (the last
            Dense layer), or the last layer of a model without one.
        batchSize: images per model call.
        preprocess: a function of a float32 batch in 0-255, run before the model.
        errorCol: if set, undecodable images give a null vector and the reason in this column.
        imageLoader: a function of a path (``inputCol`` a string column) or of a file's bytes
            (``binaryFile``'s ``content``) returning the pixels the model takes, run on the
            executors instead of tfos's decoding and resizing (e.g. Keras' ``load_img(path,
            target_size=...)`` then ``img_to_array``). ``preprocess`` still runs after it.
        signatureDefKey: with a SavedModel directory, the signature to run (instead of the
            Keras model the directory may hold).
        outputName: the output to take, for a model or signature of several outputs; then
            ``layer`` does not apply.

    Example:
        >>> images = spark.read.format("image").load("photos/")
        >>> featurizer = DeepFeaturizer(inputCol="image", outputCol="features", modelName="ResNet50",
        ...                             weightsPath="/models/resnet50.weights.h5")
        >>> Pipeline(stages=[featurizer, LogisticRegression()]).fit(images.join(labels, "origin"))
    """

    layer = Param(Params._dummy(), "layer", "name of the layer to output (default: the one before the classifier)",
                  TypeConverters.toString)

    @keyword_only
    def __init__(self, *, inputCol: str = "image", outputCol: str = "features", modelPath: str | None = None,
                 modelName: str | None = None, weightsPath: str | None = None,
                 modelArgs: dict[str, Any] | None = None, layer: str | None = None, batchSize: int = 64,
                 preprocess: Callable[[Any], Any] | None = None, errorCol: str | None = None,
                 imageLoader: Callable[[Any], Any] | None = None, signatureDefKey: str | None = None,
                 outputName: str | None = None) -> None:
        super().__init__()
        self._setDefault(inputCol="image", outputCol="features", modelPath=None, modelName=None, weightsPath=None,
                         modelArgs={}, layer=None, batchSize=64, preprocess=None, errorCol=None, imageLoader=None,
                         signatureDefKey=None, outputName=None)
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, inputCol: str = "image", outputCol: str = "features", modelPath: str | None = None,
                  modelName: str | None = None, weightsPath: str | None = None,
                  modelArgs: dict[str, Any] | None = None, layer: str | None = None, batchSize: int = 64,
                  preprocess: Callable[[Any], Any] | None = None, errorCol: str | None = None,
                  imageLoader: Callable[[Any], Any] | None = None, signatureDefKey: str | None = None,
                  outputName: str | None = None) -> DeepFeaturizer:
        """Sets the given params."""
        return self._set(**self._input_kwargs)

    def _transform(self, dataset: Any) -> Any:
        from pyspark.ml.functions import array_to_vector

        runner = self._runner(dataset, layer=self.getOrDefault(self.layer), featurize=True)
        return self._apply(dataset, runner, [("values", self.getOrDefault(self.outputCol), array_to_vector)])


@_with_accessors
class DeepPredictor(Transformer, _DeepParams, MLReadable, MLWritable):
    """Appends a Keras model's output for each image as an array, and optionally its top classes.

    Args:
        inputCol, outputCol, modelPath, modelName, weightsPath, modelArgs, batchSize,
            preprocess, errorCol, imageLoader, signatureDefKey: as for :class:`DeepFeaturizer`.
        outputName: the output to give; required for a model or signature of several outputs,
            which are refused without it (naming them).
        topK: if above 0, also add ``topKCol``: the ``topK`` best classes of each row as
            ``array<struct<label: string, probability: double>>``, best first.
        labels: class names, one per model output (default: the class index as text).
        topKCol: the column for ``topK``'s classes.
    """

    topK = Param(Params._dummy(), "topK", "how many best classes to list per row (0: none)", TypeConverters.toInt)
    labels = Param(Params._dummy(), "labels", "class names, one per model output", TypeConverters.toListString)
    topKCol = Param(Params._dummy(), "topKCol", "column for the topK classes", TypeConverters.toString)

    @keyword_only
    def __init__(self, *, inputCol: str = "image", outputCol: str = "prediction", modelPath: str | None = None,
                 modelName: str | None = None, weightsPath: str | None = None,
                 modelArgs: dict[str, Any] | None = None, batchSize: int = 64,
                 preprocess: Callable[[Any], Any] | None = None, errorCol: str | None = None, topK: int = 0,
                 labels: list[str] | None = None, topKCol: str = "topK",
                 imageLoader: Callable[[Any], Any] | None = None, signatureDefKey: str | None = None,
                 outputName: str | None = None) -> None:
        super().__init__()
        self._setDefault(inputCol="image", outputCol="prediction", modelPath=None, modelName=None, weightsPath=None,
                         modelArgs={}, batchSize=64, preprocess=None, errorCol=None, topK=0, labels=None,
                         topKCol="topK", imageLoader=None, signatureDefKey=None, outputName=None)
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, inputCol: str = "image", outputCol: str = "prediction", modelPath: str | None = None,
                  modelName: str | None = None, weightsPath: str | None = None,
                  modelArgs: dict[str, Any] | None = None, batchSize: int = 64,
                  preprocess: Callable[[Any], Any] | None = None, errorCol: str | None = None, topK: int = 0,
                  labels: list[str] | None = None, topKCol: str = "topK",
                  imageLoader: Callable[[Any], Any] | None = None, signatureDefKey: str | None = None,
                  outputName: str | None = None) -> DeepPredictor:
        """Sets the given params."""
        return self._set(**self._input_kwargs)

    def _transform(self, dataset: Any) -> Any:
        top_k = self.getOrDefault(self.topK)
        if top_k < 0:
            raise TFOSConfigError(f"topK must be 0 (off) or more, got {top_k}")
        runner = self._runner(dataset, featurize=False, top_k=top_k, labels=self.getOrDefault(self.labels))
        extra: list[tuple[str, str, Any]] = [("values", self.getOrDefault(self.outputCol), lambda c: c)]
        if top_k:
            extra.append(("top", self.getOrDefault(self.topKCol), lambda c: c))
        return self._apply(dataset, runner, extra)


class _ImageRunner:
    """The batch function of DeepFeaturizer / DeepPredictor; pickled to executors' Python workers."""

    def __init__(self, source: ModelSource, column: str, path_column: str | None, batch_size: int,
                 preprocess: Callable[[Any], Any] | None, keep_errors: bool, featurize: bool,
                 layer: str | None = None, top_k: int = 0, labels: list[str] | None = None,
                 loader: Callable[[Any], Any] | None = None, output: str | None = None) -> None:
        self.source = source
        self.column = column
        self.path_column = path_column
        self.batch_size = batch_size
        self.preprocess = preprocess
        self.keep_errors = keep_errors
        self.featurize = featurize
        self.layer = layer
        self.top_k = top_k
        self.labels = labels
        self.loader = loader
        self.output = output

    def return_type(self) -> Any:
        from pyspark.sql.types import ArrayType, DoubleType, StringType, StructField, StructType

        fields = [StructField("values", ArrayType(DoubleType()), True), StructField("error", StringType(), True)]
        if self.top_k:
            top = StructType([StructField("label", StringType(), True), StructField("probability", DoubleType())])
            fields.append(StructField("top", ArrayType(top), True))
        return StructType(fields)

    def model(self) -> Any:
        """The model to call, loaded once per process (the inner-layer or chosen-output model built once from it).

        A predictor, a featurizer given ``outputName`` and a featurizer on a bare signature
        take one output of the model (refusing to guess among several); a featurizer on a
        Keras model otherwise takes ``layer``'s output.
        """
        base = _models.load(self.source)
        label = self.source.label
        if self.featurize and self.output is None and not isinstance(base, _models.SignatureModel):
            return _models.cached(("features", self.source, self.layer),
                                  lambda: _models.inner_model(base, self.layer, label))
        if self.featurize and self.layer is not None:
            raise TFOSConfigError(f"layer {self.layer!r} applies to a Keras model's layers; model {label} runs "
                                  f"{'output ' + repr(self.output) if self.output else 'a SavedModel signature'}: "
                                  "unset layer, or unset outputName / signatureDefKey")
        return _models.cached(("output", self.source, self.output),
                              lambda: _models.with_output(base, self.output, label))

    def _preprocess(self) -> Callable[[Any], Any] | None:
        if self.preprocess is not None:
            return self.preprocess
        if self.source.model_name:
            return _models.preprocess_input(self.source.model_name)
        return None

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        from pyspark import TaskContext

        from tfos.ml._images import bad_image_error, image_batch, row_paths
        from tfos.ml._udf import list_column

        model = self.model()
        size = _models.image_size(model, self.source.label)
        preprocess = self._preprocess()
        partition = TaskContext.get().partitionId()
        offset = 0
        for batch in batches:
            images = batch.field("image")
            if self.path_column:
                named = batch.field("path")
            else:  # a column of paths (for imageLoader) names its own rows
                named = images if pa.types.is_string(images.type) or pa.types.is_large_string(images.type) else None
            paths = row_paths(images, named, partition, offset)
            pixels, good, bad = image_batch(images, paths, size, self.loader)
            if not self.keep_errors:
                for problem in bad:
                    if problem is not None:
                        raise bad_image_error(problem, self.column)
            results = [self._call(model, preprocess, pixels[start:start + self.batch_size])
                       for start in range(0, len(good), self.batch_size)]
            values = np.concatenate(results) if results else np.zeros((0, 1), dtype=np.float32)
            arrays = [list_column(values, good, len(batch), pa.list_(pa.float64())),
                      pa.array([None if b is None else b.message() for b in bad], type=pa.string())]
            names = ["values", "error"]
            if self.top_k:
                arrays.append(self._top(values, good, len(batch)))
                names.append("top")
            yield pa.StructArray.from_arrays(arrays, names=names)
            offset += len(batch)

    def _call(self, model: Any, preprocess: Callable[[Any], Any] | None, chunk: np.ndarray) -> np.ndarray:
        if preprocess is not None:
            chunk = np.asarray(preprocess(chunk.copy()), dtype=np.float32)
        out = np.asarray(model(chunk, training=False))
        return out.reshape(len(chunk), -1)

    def _top(self, values: np.ndarray, good: list[int], total: int) -> Any:
        import pyarrow as pa

        width = values.shape[1] if len(values) else 0
        if self.labels is not None and len(values) and len(self.labels) != width:
            raise TFOSConfigError(f"labels has {len(self.labels)} names but model {self.source.label} gives "
                                  f"{width} outputs: give one name per output")
        names = self.labels if self.labels is not None else [str(i) for i in range(width)]
        rows: list[Any] = [None] * total
        for k, row in enumerate(good):
            best = np.argsort(-values[k], kind="stable")[:self.top_k]
            rows[row] = [{"label": names[i], "probability": float(values[k][i])} for i in best]
        kind = pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float64())]))
        return pa.array(rows, type=kind)


class _DeepWriter(StateWriter):
    """Saves params as Spark ML metadata, and the preprocess / imageLoader functions with cloudpickle."""

    def __init__(self, instance: _DeepParams) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:  # noqa: N802 - Spark ML's naming
        from pyspark import cloudpickle

        instance = self.instance
        params = {p.name: v for p, v in instance._paramMap.items() if p.name not in _FUNCTION_PARAMS}
        DefaultParamsWriter.saveMetadata(instance, path, self.sparkSession, paramMap=params)
        blob = cloudpickle.dumps({name: instance.getOrDefault(name) for name in _FUNCTION_PARAMS})
        save_state(self.sparkSession, path, blob)


class _DeepReader(MLReader):
    """Loads what :class:`_DeepWriter` saved. Load only what you trust: the function is pickled."""

    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        import pickle

        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        instance = self.cls()
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        state = pickle.loads(load_state(self.sparkSession, path))
        for name, function in state.items():  # older saves hold preprocess alone
            if function is not None:
                instance._set(**{name: function})
        return instance
