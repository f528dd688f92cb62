"""Spark ML Estimator / Model for TensorFlow (driver; the model also runs in executors).

``TFEstimator.fit(df)`` starts a tfos cluster, feeds the DataFrame's mapped columns
to ``train_fn(args, ctx)`` on every node (InputMode.SPARK, through Arrow) and returns
a ``TFModel``. ``TFModel.transform(df)`` runs a SavedModel signature on every
partition with ``mapInArrow``: each Python worker loads the model once and keeps it
for later partitions and jobs. Both carry TensorFlowOnSpark's params, merged into
``args`` for ``train_fn``, and save / load with Spark ML's persistence (``Pipeline``
included).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReadable, MLReader, MLWritable, MLWriter

from tfos.config import InputMode
from tfos.errors import TFOSConfigError

log = logging.getLogger(__name__)


def _to_dict(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError(f"expected a dict of str to str, got {value!r}")
    return dict(value)


def _to_input_mode(value: Any) -> int:
    """InputMode members and plain 0 / 1 (TensorFlowOnSpark's values) alike."""
    try:
        return int(InputMode(value))
    except ValueError:
        raise TypeError(f"expected InputMode.SPARK (1) or InputMode.TENSORFLOW (0), got {value!r}") from None


def _param(name: str, doc: str, converter: Callable[[Any], Any]) -> Param:
    return Param(Params._dummy(), name, doc, typeConverter=converter)


def _accessors(**suffixes: str) -> Callable[[type], type]:
    """Adds TensorFlowOnSpark's ``setX`` / ``getX`` methods for the named params."""

    def make(name: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        def setter(self: Params, value: Any) -> Any:
            return self._set(**{name: value})

        def getter(self: Params) -> Any:
            return self.getOrDefault(name)

        return setter, getter

    def decorate(cls: type) -> type:
        for name, suffix in suffixes.items():
            setter, getter = make(name)
            setter.__doc__, getter.__doc__ = f"Sets param ``{name}``.", f"The value of param ``{name}``."
            setattr(cls, f"set{suffix}", setter)
            setattr(cls, f"get{suffix}", getter)
        return cls

    return decorate


class Namespace:
    """``args`` for ``train_fn``: built from an argparse Namespace, a dict or an argv list.

    With an argv list, ``argv`` holds it and ``train_fn`` receives that list.
    """

    argv: list[str] | None = None

    def __init__(self, args: Any = None) -> None:
        if args is None:
            return
        if isinstance(args, list):
            self.argv = list(args)
        elif isinstance(args, dict):
            self.__dict__.update(args)
        elif isinstance(args, (argparse.Namespace, Namespace)):
            self.__dict__.update(vars(args))
        else:
            raise TFOSConfigError(f"tf_args must be an argparse.Namespace, a dict or a list; got {type(args).__name__}")

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Namespace) and vars(self) == vars(other) and self.argv == other.argv

    def __repr__(self) -> str:
        if self.argv is not None:
            return repr(self.argv)
        return "Namespace(" + ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items())) + ")"


@_accessors(batch_size="BatchSize", input_mapping="InputMapping", model_dir="ModelDir", export_dir="ExportDir")
class TFParams(Params):
    """Params shared by TFEstimator and TFModel (TensorFlowOnSpark's names), plus ``args``."""

    batch_size = _param("batch_size", "rows per batch", TypeConverters.toInt)
    input_mapping = _param("input_mapping", "DataFrame column -> input tensor name", _to_dict)
    model_dir = _param("model_dir", "where train_fn saves checkpoints", TypeConverters.toString)
    export_dir = _param("export_dir", "where train_fn exports the SavedModel that TFModel loads",
                        TypeConverters.toString)

    args: Namespace

    def merge_args_params(self) -> Namespace:
        """A copy of ``args`` with every param's value set as an attribute."""
        merged = copy.copy(self.args)
        for param in self.params:
            setattr(merged, param.name, self.getOrDefault(param))
        return merged

    def _tf_args(self) -> Any:
        merged = self.merge_args_params()
        return merged.argv if merged.argv is not None else merged


@_accessors(cluster_size="ClusterSize", num_ps="NumPS", driver_ps_nodes="DriverPSNodes", input_mode="InputMode",
            master_node="MasterNode", protocol="Protocol", grace_secs="GraceSecs", tensorboard="Tensorboard",
            tfrecord_dir="TFRecordDir", epochs="Epochs", readers="Readers", steps="Steps")
class TFEstimator(Estimator, TFParams, MLReadable, MLWritable):
    """Trains a TensorFlow model on a tfos cluster; ``fit`` returns a :class:`TFModel`.

    Args:
        train_fn: ``train_fn(args, ctx)``, run on every node; reads the fed rows with
            ``ctx.get_data_feed(input_mapping=args.input_mapping)`` and exports a SavedModel
            to ``args.export_dir`` from the chief.
        tf_args: an argparse Namespace, dict or argv list; params are merged into it.
        export_fn: optional ``export_fn(args)`` run once on an executor after training.
    """

    cluster_size = _param("cluster_size", "number of tfos nodes (executors)", TypeConverters.toInt)
    num_ps = _param("num_ps", "number of parameter-server nodes", TypeConverters.toInt)
    driver_ps_nodes = _param("driver_ps_nodes", "run ps nodes on the driver (not supported)",
                             TypeConverters.toBoolean)
    input_mode = _param("input_mode", "InputMode.SPARK (1, feed the DataFrame) or TENSORFLOW (0, via tfrecord_dir)",
                        _to_input_mode)
    master_node = _param("master_node", "job name of the chief ('chief', 'master' or '' for none)",
                         TypeConverters.toString)
    protocol = _param("protocol", "TensorFlow server protocol", TypeConverters.toString)
    grace_secs = _param("grace_secs", "seconds serving nodes run on after the workers finish", TypeConverters.toInt)
    tensorboard = _param("tensorboard", "start TensorBoard on the chief", TypeConverters.toBoolean)
    tfrecord_dir = _param("tfrecord_dir", "where InputMode.TENSORFLOW saves the DataFrame as TFRecords",
                          TypeConverters.toString)
    epochs = _param("epochs", "passes over the DataFrame", TypeConverters.toInt)
    readers = _param("readers", "reader threads (passed to train_fn)", TypeConverters.toInt)
    steps = _param("steps", "maximum training steps (passed to train_fn)", TypeConverters.toInt)

    def __init__(self, train_fn: Callable[[Any, Any], Any], tf_args: Any = None,
                 export_fn: Callable[[Any], Any] | None = None) -> None:
        super().__init__()
        if not callable(train_fn):
            raise TFOSConfigError(f"train_fn must be a function taking (args, ctx); got {type(train_fn).__name__}")
        self.train_fn = train_fn
        self.export_fn = export_fn
        self.args = Namespace(tf_args)
        self._setDefault(input_mapping={}, cluster_size=1, num_ps=0, driver_ps_nodes=False,
                         input_mode=int(InputMode.SPARK), master_node="chief", protocol="grpc", grace_secs=30,
                         tensorboard=False, model_dir=None, export_dir=None, tfrecord_dir=None, batch_size=100,
                         epochs=1, readers=1, steps=1000)

    def _main(self) -> Callable[[Any, Any], Any]:
        """The function each node runs; the compat layer wraps it to hand TFoS's ctx."""
        return self.train_fn

    def _fit(self, dataset: Any) -> TFModel:
        from tfos.driver._cluster import run

        if self.getOrDefault(self.driver_ps_nodes):
            raise TFOSConfigError("driver_ps_nodes=True is not supported: tfos runs parameter servers on executors")
        mapping = self.getOrDefault(self.input_mapping)
        if not mapping:
            raise TFOSConfigError("set the input mapping first, e.g. setInputMapping({'features': 'x', 'label': 'y'})")
        _require_columns(dataset, mapping)
        mode = InputMode(self.getOrDefault(self.input_mode))
        data = dataset.select(sorted(mapping))
        if mode == InputMode.TENSORFLOW:
            self._save_tfrecords(dataset, data)
        tf_args = self._tf_args()
        sc = dataset.sparkSession.sparkContext
        cluster = run(sc, self._main(), tf_args, self.getOrDefault(self.cluster_size),
                      num_ps=self.getOrDefault(self.num_ps), tensorboard=self.getOrDefault(self.tensorboard),
                      input_mode=mode, log_dir=self.getOrDefault(self.model_dir),
                      master_node=self.getOrDefault(self.master_node) or None)
        with cluster:
            if mode == InputMode.SPARK:
                cluster.train(data, num_epochs=self.getOrDefault(self.epochs))
            cluster.shutdown(grace_secs=self.getOrDefault(self.grace_secs))
        if self.export_fn is not None:
            export_fn = self.export_fn
            sc.parallelize([0], 1).foreach(lambda _: export_fn(tf_args))
        return self._copyValues(self._model_class()(self.args))

    def _model_class(self) -> type[TFModel]:
        return TFModel

    def _save_tfrecords(self, dataset: Any, data: Any) -> None:
        """Writes the mapped columns to tfrecord_dir, unless ``dataset`` was read from there."""
        from tfos.ml._tfrecord import loaded_from, qualified, save_tfrecords

        target = self.getOrDefault(self.tfrecord_dir)
        if not target:
            raise TFOSConfigError("input_mode=InputMode.TENSORFLOW needs tfrecord_dir: the DataFrame is saved there "
                                  "as TFRecords for train_fn to read")
        if loaded_from(dataset) == qualified(target):
            return
        save_tfrecords(data, target, overwrite=True)

    # ---- persistence -------------------------------------------------------------------------
    def write(self) -> MLWriter:
        return _Writer(self, {"args": self.args, "train_fn": self.train_fn, "export_fn": self.export_fn})

    @classmethod
    def read(cls) -> MLReader:
        return _Reader(cls)

    @classmethod
    def _restore(cls, state: dict[str, Any]) -> TFEstimator:
        return cls(state["train_fn"], state["args"], state["export_fn"])


@_accessors(output_mapping="OutputMapping", signature_def_key="SignatureDefKey", tag_set="TagSet")
class TFModel(Model, TFParams, MLReadable, MLWritable):
    """Runs a SavedModel signature on a DataFrame: one output row per input row, in order.

    ``input_mapping`` maps columns to the signature's inputs, ``output_mapping`` its
    outputs to the new DataFrame's columns (sorted by output name, as in TFoS). Inputs
    are cast to the signature's dtype and reshaped to its shape (Spark holds flat arrays).
    Outputs become LongType, DoubleType, BooleanType or StringType, or arrays of them.
    """

    output_mapping = _param("output_mapping", "output tensor name -> DataFrame column", _to_dict)
    signature_def_key = _param("signature_def_key", "signature of the SavedModel to run", TypeConverters.toString)
    tag_set = _param("tag_set", "comma-separated tags of the SavedModel's graph", TypeConverters.toString)

    def __init__(self, tf_args: Any = None) -> None:
        super().__init__()
        self.args = Namespace(tf_args)
        self._setDefault(input_mapping={}, output_mapping={}, batch_size=100, model_dir=None, export_dir=None,
                         signature_def_key="serving_default", tag_set="serve")

    def _transform(self, dataset: Any) -> Any:
        from pyspark.sql.types import StructType

        from tfos.feed._feeder import vectors_as_arrays
        from tfos.ml._tfrecord import qualified

        inputs, outputs = self.getOrDefault(self.input_mapping), self.getOrDefault(self.output_mapping)
        if not inputs or not outputs:
            raise TFOSConfigError("set input_mapping ({column: input}) and output_mapping ({output: column}) first")
        _require_columns(dataset, inputs)
        export_dir = self.getOrDefault(self.export_dir)
        if not export_dir:
            raise TFOSConfigError("set export_dir to the SavedModel to run (setExportDir)")
        runner = _SavedModelRunner(
            export_dir=qualified(export_dir),
            tags=self.getOrDefault(self.tag_set), signature=self.getOrDefault(self.signature_def_key),
            inputs=sorted(inputs.items()), outputs=sorted(outputs.items()),
            batch_size=self.getOrDefault(self.batch_size))
        data = vectors_as_arrays(dataset.select(sorted(inputs)))
        sc = dataset.sparkSession.sparkContext
        # The SavedModel is read on an executor (it may live where the driver cannot see it).
        schema = StructType.fromJson(json.loads(sc.parallelize([0], 1).mapPartitions(runner.schema_json).collect()[0]))
        return data.mapInArrow(runner, schema)

    # ---- persistence -------------------------------------------------------------------------
    def write(self) -> MLWriter:
        return _Writer(self, {"args": self.args})

    @classmethod
    def read(cls) -> MLReader:
        return _Reader(cls)

    @classmethod
    def _restore(cls, state: dict[str, Any]) -> TFModel:
        return cls(state["args"])


def _require_columns(dataset: Any, mapping: dict[str, str]) -> None:
    missing = sorted(set(mapping) - set(dataset.columns))
    if missing:
        raise TFOSConfigError(f"input_mapping names columns {missing} that the DataFrame lacks "
                              f"(it has {dataset.columns})")


#: SavedModel signatures loaded by this Python worker: (export_dir, tags, signature) -> signature function.
_SIGNATURES: dict[tuple[str, str, str], Any] = {}


class _SavedModelRunner:
    """The ``mapInArrow`` function of ``TFModel.transform``; runs in executors' Python workers."""

    def __init__(self, export_dir: str, tags: str, signature: str, inputs: list[tuple[str, str]],
                 outputs: list[tuple[str, str]], batch_size: int) -> None:
        self.export_dir = export_dir
        self.tags = tags
        self.signature = signature
        self.inputs = inputs  # (column, input name), sorted by column
        self.outputs = outputs  # (output name, column), sorted by output name
        self.batch_size = batch_size

    def _function(self) -> Any:
        key = (self.export_dir, self.tags, self.signature)
        if key not in _SIGNATURES:
            import tensorflow as tf

            tags = [t for t in self.tags.split(",") if t] or None
            model = tf.saved_model.load(self.export_dir, tags=tags)
            if self.signature not in model.signatures:
                raise TFOSConfigError(f"SavedModel {self.export_dir} has no signature {self.signature!r}; it has "
                                      f"{sorted(model.signatures)}")
            function = model.signatures[self.signature]
            function._tfos_model = model  # the signature needs its model alive
            _SIGNATURES[key] = function
        return _SIGNATURES[key]

    def _specs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        function = self._function()
        input_specs = function.structured_input_signature[1]
        output_specs = function.structured_outputs
        for _, name in self.inputs:
            if name not in input_specs:
                raise TFOSConfigError(f"input_mapping names input {name!r}, but signature {self.signature!r} takes "
                                      f"{sorted(input_specs)}")
        for name, _ in self.outputs:
            if name not in output_specs:
                raise TFOSConfigError(f"output_mapping names output {name!r}, but signature {self.signature!r} gives "
                                      f"{sorted(output_specs)}")
        return input_specs, output_specs

    def schema(self, output_specs: dict[str, Any]) -> Any:
        """The Spark schema of the output columns, from the signature's output specs."""
        from pyspark.sql.types import ArrayType, BooleanType, DoubleType, LongType, StringType, StructField, StructType

        fields = []
        for name, column in self.outputs:
            spec = output_specs[name]
            if spec.dtype.is_floating:
                base: Any = DoubleType()
            elif spec.dtype.is_integer:
                base = LongType()
            elif spec.dtype.is_bool:
                base = BooleanType()
            elif spec.dtype.name == "string":
                base = StringType()
            else:
                raise TFOSConfigError(f"output {name!r} has dtype {spec.dtype.name}, which has no DataFrame type")
            fields.append(StructField(column, base if spec.shape.rank == 1 else ArrayType(base), True))
        return StructType(fields)

    def schema_json(self, _: Iterator[Any]) -> Iterator[str]:
        yield self.schema(self._specs()[1]).json()

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        import tensorflow as tf
        from pyspark import TaskContext
        from pyspark.sql.pandas.types import to_arrow_schema

        from tfos.feed._feeder import _arrow_column

        function = self._function()
        input_specs, output_specs = self._specs()
        arrow_schema = to_arrow_schema(self.schema(output_specs))
        partition = TaskContext.get().partitionId()
        offset = 0
        for batch in batches:
            arrays = {name: _arrow_column(batch.column(column), column, partition, offset)
                      for column, name in self.inputs}
            for start in range(0, batch.num_rows, self.batch_size):
                feeds = {}
                for name, values in arrays.items():
                    spec = input_specs[name]
                    tensor = tf.constant(values[start:start + self.batch_size], dtype=spec.dtype)
                    shape = [tensor.shape[0], *spec.shape[1:]] if spec.shape.rank is not None else None
                    if shape is not None and None not in shape and tensor.shape != shape:
                        tensor = tf.reshape(tensor, shape)
                    feeds[name] = tensor
                results = function(**feeds)
                columns = [_arrow_output(results[name].numpy(), field.type)
                           for (name, _), field in zip(self.outputs, arrow_schema)]
                yield pa.RecordBatch.from_arrays(columns, schema=arrow_schema)
            offset += batch.num_rows


def _arrow_output(value: Any, arrow_type: Any) -> Any:
    """A signature output (rows first) as an Arrow column of ``arrow_type``: values, or lists of values."""
    import numpy as np
    import pyarrow as pa

    rows = len(value) if value.ndim else 1
    if value.dtype.kind in "SO":
        value = np.char.decode(value.astype(bytes), "utf-8")
    if not pa.types.is_list(arrow_type):
        return pa.array(value.reshape(rows)).cast(arrow_type)
    width = int(np.prod(value.shape[1:]))
    flat = value.reshape(rows, width)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(flat.ravel()).cast(arrow_type.value_type)).cast(arrow_type)


class _Writer(MLWriter):
    """Saves params as Spark ML metadata and the Python state (args, functions) with cloudpickle."""

    def __init__(self, instance: Params, state: dict[str, Any]) -> None:
        super().__init__()
        self.instance = instance
        self.state = state

    def saveImpl(self, path: str) -> None:  # noqa: N802 - Spark ML's naming
        from pyspark import cloudpickle

        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession)
        blob = cloudpickle.dumps(self.state)
        self.sparkSession.sparkContext.parallelize([blob], 1).saveAsPickleFile(os.path.join(path, "state"))


class _Reader(MLReader):
    """Loads what :class:`_Writer` saved. Load only models you trust: the state is pickled."""

    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        import pickle

        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        blob = self.sparkSession.sparkContext.pickleFile(os.path.join(path, "state")).collect()[0]
        instance = self.cls._restore(pickle.loads(blob))
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance
