"""Spark ML Estimator / Model for TensorFlow (driver; the model also runs in executors).

``TFEstimator.fit(df)`` starts a tfos cluster, feeds the DataFrame's mapped columns
to ``train_fn(args, ctx)`` on every node (InputMode.SPARK, through Arrow) and returns
a ``TFModel``. ``TFModel.transform(df)`` runs a SavedModel signature or a Keras model
file on every partition with an iterator Arrow UDF, keeping the input columns and
appending the outputs: each Python worker loads the model once and keeps it for later
partitions and jobs. Both carry TensorFlowOnSpark's params, merged into ``args`` for
``train_fn``, and save / load with Spark ML's persistence (``Pipeline`` included).
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
from tfos.ml._persist import StateWriter, load_state, save_state
from tfos.ml._tuning import TunableMixin

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
            tfrecord_dir="TFRecordDir", epochs="Epochs", readers="Readers", steps="Steps",
            output_mapping="OutputMapping", model_input_mapping="ModelInputMapping")
class TFEstimator(TunableMixin, Estimator, TFParams, MLReadable, MLWritable):
    """Trains a TensorFlow model on a tfos cluster; ``fit`` returns a :class:`TFModel`.

    Under ``CrossValidator`` / ``TrainValidationSplit``, ``fitMultiple`` trains single-node
    trials in parallel, each with its own export and model directory, and ``argParam(name)``
    puts a value of ``args`` into a ``ParamGridBuilder`` (see :mod:`tfos.ml._tuning`).

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
    output_mapping = _param("output_mapping", "output tensor name -> DataFrame column of the fitted TFModel "
                            "(lets CrossValidator's evaluator score it)", _to_dict)
    model_input_mapping = _param("model_input_mapping", "DataFrame column -> input of the fitted TFModel, when it "
                                 "differs from input_mapping (which also maps the label)", _to_dict)

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
                         epochs=1, readers=1, steps=1000, output_mapping={},
                         model_input_mapping={})

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
        cluster = run(dataset.sparkSession, self._main(), tf_args, self.getOrDefault(self.cluster_size),
                      num_ps=self.getOrDefault(self.num_ps), tensorboard=self.getOrDefault(self.tensorboard),
                      input_mode=mode, log_dir=self.getOrDefault(self.model_dir),
                      master_node=self.getOrDefault(self.master_node) or None, export_dir=self._tracked_export(),
                      mlflow_run=getattr(self, "_mlflow_run", None))
        with cluster:
            if mode == InputMode.SPARK:
                cluster.train(data, num_epochs=self.getOrDefault(self.epochs))
            cluster.shutdown(grace_secs=self.getOrDefault(self.grace_secs))
        if self.export_fn is not None:
            run_export(dataset.sparkSession, self.export_fn, tf_args)
        return self._fitted_model()

    def _tracked_export(self) -> str | None:
        """export_dir for MLflow to log the chief's model from, when an MLflow run is active on the driver.

        Only a path the driver resolves as the nodes do (absolute or a URI), and not when
        ``export_fn`` writes the model after the cluster stopped (MLflow logs it at the stop).
        """
        from tfos.driver._mlflow import active_run_id

        path = self.getOrDefault(self.export_dir)
        tracked = active_run_id() is not None or getattr(self, "_mlflow_run", None) is not None  # a tuning trial's
        if not path or self.export_fn is not None or not tracked:
            return None
        return path if os.path.isabs(path) or "://" in path else None

    def _fitted_model(self) -> TFModel:
        """The TFModel of this fit: the shared params copied, ``model_input_mapping`` as its input mapping."""
        model = self._copyValues(self._model_class()(self.args))
        model_inputs = self.getOrDefault(self.model_input_mapping)
        if model_inputs:
            model._set(input_mapping=model_inputs)
        return model

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
        return _Writer(self, {"args": self.args, "train_fn": self.train_fn, "export_fn": self.export_fn,
                              "arg_params": list(getattr(self, "_arg_params", ()))})

    @classmethod
    def read(cls) -> MLReader:
        return _Reader(cls)

    @classmethod
    def _restore(cls, state: dict[str, Any]) -> TFEstimator:
        estimator = cls(state["train_fn"], state["args"], state["export_fn"])
        for name in state.get("arg_params", ()):
            estimator.argParam(name)
        return estimator


@_accessors(output_mapping="OutputMapping", signature_def_key="SignatureDefKey", tag_set="TagSet")
class TFModel(Model, TFParams, MLReadable, MLWritable):
    """Runs a SavedModel signature or a Keras model file on a DataFrame, appending its outputs.

    ``input_mapping`` maps columns to the model's inputs, ``output_mapping`` its outputs to
    new columns (added after the input columns, sorted by output name, as in TFoS; an
    input column of the same name is replaced). ``export_dir`` is a SavedModel directory
    (``signature_def_key`` / ``tag_set`` pick the signature) or a Keras ``.keras`` / ``.h5``
    file, saved by Keras 3 or tf-keras (inputs and outputs are then named by the model's
    input and output layers). Inputs are cast to the model's dtype and reshaped to its
    shape (Spark holds flat arrays). Outputs become LongType, DoubleType, BooleanType or
    StringType, or arrays of them. The signature is read on the driver when ``export_dir``
    is a local path, else by a one-task Spark job.
    """

    output_mapping = _param("output_mapping", "output tensor name -> DataFrame column", _to_dict)
    signature_def_key = _param("signature_def_key", "signature of the SavedModel to run", TypeConverters.toString)
    tag_set = _param("tag_set", "comma-separated tags of the SavedModel's graph", TypeConverters.toString)

    #: Spark ML's way: keep the input columns. tfos.compat.pipeline's TFModel returns only
    #: the output columns, as TensorFlowOnSpark did.
    _keep_input_columns = True

    def __init__(self, tf_args: Any = None) -> None:
        super().__init__()
        self.args = Namespace(tf_args)
        self._setDefault(input_mapping={}, output_mapping={}, batch_size=100, model_dir=None, export_dir=None,
                         signature_def_key="serving_default", tag_set="serve")

    def _transform(self, dataset: Any) -> Any:
        from pyspark.ml.functions import vector_to_array
        from pyspark.ml.linalg import VectorUDT
        from pyspark.sql import functions as F
        from pyspark.sql.types import StructType

        from tfos.ml._tfrecord import qualified
        from tfos.ml._udf import batch_udf

        inputs, outputs = self.getOrDefault(self.input_mapping), self.getOrDefault(self.output_mapping)
        if not inputs or not outputs:
            raise TFOSConfigError("set input_mapping ({column: input}) and output_mapping ({output: column}) first")
        _require_columns(dataset, inputs)
        export_dir = self.getOrDefault(self.export_dir)
        if not export_dir:
            raise TFOSConfigError("set export_dir to the SavedModel or Keras model file to run (setExportDir)")
        runner = _SavedModelRunner(
            export_dir=qualified(export_dir),
            tags=self.getOrDefault(self.tag_set), signature=self.getOrDefault(self.signature_def_key),
            inputs=sorted(inputs.items()), outputs=sorted(outputs.items()),
            batch_size=self.getOrDefault(self.batch_size))
        schema = runner.driver_schema()
        if schema is None:  # not readable here: read it where the executors read the model
            from tfos.driver._spark import backend

            schema = StructType.fromJson(json.loads(
                backend(dataset.sparkSession).run_on_executors(1, runner.schema_json)[0]))
        vectors = {f.name for f in dataset.schema.fields if isinstance(f.dataType, VectorUDT)}
        fed = [(vector_to_array(dataset[c]) if c in vectors else dataset[c]).alias(c) for c in sorted(inputs)]
        tmp = f"__tfos_{self.uid}"
        out = dataset.withColumn(tmp, batch_udf(runner, schema)(F.struct(*fed)))
        added = [F.col(tmp)[f.name].alias(f.name) for f in schema.fields]
        if not self._keep_input_columns:
            return out.select(*added)
        replaced = set(schema.fieldNames())
        return out.select(*[F.col(f"`{c}`") for c in dataset.columns if c not in replaced], *added)

    # ---- persistence -------------------------------------------------------------------------
    def write(self) -> MLWriter:
        return _Writer(self, {"args": self.args})

    @classmethod
    def read(cls) -> MLReader:
        return _Reader(cls)

    @classmethod
    def _restore(cls, state: dict[str, Any]) -> TFModel:
        return cls(state["args"])


def run_export(spark: Any, export_fn: Callable[[Any], Any], tf_args: Any) -> None:
    """Runs ``export_fn(tf_args)`` once, in a one-task Spark job (it may need what only executors reach)."""
    from tfos.driver._spark import backend

    backend(spark).run_on_executors(1, _Export(export_fn, tf_args))


class _Export:
    """The task of :func:`run_export`."""

    def __init__(self, export_fn: Callable[[Any], Any], tf_args: Any) -> None:
        self.export_fn = export_fn
        self.tf_args = tf_args

    def __call__(self, values: Iterator[Any]) -> Iterator[None]:
        for _ in values:
            self.export_fn(self.tf_args)
        yield None


def _require_columns(dataset: Any, mapping: dict[str, str]) -> None:
    missing = sorted(set(mapping) - set(dataset.columns))
    if missing:
        raise TFOSConfigError(f"input_mapping names columns {missing} that the DataFrame lacks "
                              f"(it has {dataset.columns})")


#: Models loaded by this Python worker: (export_dir, tags, signature) -> _Signature.
_SIGNATURES: dict[tuple[str, str, str], Any] = {}


class _Signature:
    """What TFModel runs: named input / output specs (tf.TensorSpec) and a call on named tensors."""

    def __init__(self, inputs: dict[str, Any], outputs: dict[str, Any], call: Callable[[dict[str, Any]], Any]
                 ) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.call = call


def _saved_model_signature(export_dir: str, tags: str, signature: str) -> _Signature:
    import tensorflow as tf

    from tfos.ml._models import local_copy

    model = tf.saved_model.load(local_copy(export_dir), tags=[t for t in tags.split(",") if t] or None)
    if signature not in model.signatures:
        raise TFOSConfigError(f"SavedModel {export_dir} has no signature {signature!r}; it has "
                              f"{sorted(model.signatures)}")
    function = model.signatures[signature]
    function._tfos_model = model  # the signature needs its model alive
    return _Signature(function.structured_input_signature[1], function.structured_outputs,
                      lambda feeds: function(**feeds))


def _keras_signature(model: Any) -> _Signature:
    """A Keras 3 or tf-keras model's inputs and outputs, named by their layers."""
    import tensorflow as tf

    def spec(tensor: Any) -> Any:
        return tf.TensorSpec(shape=tuple(tensor.shape), dtype=tf.as_dtype(tensor.dtype))

    input_names = [t.name.split(":")[0] for t in model.inputs]
    output_names = list(getattr(model, "output_names", None) or [t._keras_history[0].name for t in model.outputs])

    def call(feeds: dict[str, Any]) -> dict[str, Any]:
        args = [feeds[n] for n in input_names]
        result = model(args if len(args) > 1 else args[0], training=False)
        results = result if isinstance(result, (list, tuple)) else [result]
        return dict(zip(output_names, results))

    return _Signature({n: spec(t) for n, t in zip(input_names, model.inputs)},
                      {n: spec(t) for n, t in zip(output_names, model.outputs)}, call)


def _is_model_file(path: str) -> bool:
    """Whether ``path`` names a Keras model file rather than a SavedModel directory."""
    return path.rstrip("/").endswith((".keras", ".h5", ".hdf5"))


class _SavedModelRunner:
    """The batch function of ``TFModel.transform``; runs in executors' Python workers."""

    def __init__(self, export_dir: str, tags: str, signature: str, inputs: list[tuple[str, str]],
                 outputs: list[tuple[str, str]], batch_size: int) -> None:
        self.export_dir = export_dir
        self.tags = tags
        self.signature = signature
        self.inputs = inputs  # (column, input name), sorted by column
        self.outputs = outputs  # (output name, column), sorted by output name
        self.batch_size = batch_size

    def _function(self) -> _Signature:
        key = (self.export_dir, self.tags, self.signature)
        if key not in _SIGNATURES:
            if _is_model_file(self.export_dir):
                from tfos.ml._models import load

                _SIGNATURES[key] = _keras_signature(load(_model_source(self.export_dir)))
            else:
                _SIGNATURES[key] = _saved_model_signature(self.export_dir, self.tags, self.signature)
        return _SIGNATURES[key]

    def _check(self, input_specs: dict[str, Any], output_specs: dict[str, Any]) -> None:
        what = "the Keras model" if _is_model_file(self.export_dir) else f"signature {self.signature!r}"
        for _, name in self.inputs:
            if name not in input_specs:
                raise TFOSConfigError(f"input_mapping names input {name!r}, but {what} takes {sorted(input_specs)}")
        for name, _ in self.outputs:
            if name not in output_specs:
                raise TFOSConfigError(f"output_mapping names output {name!r}, but {what} gives "
                                      f"{sorted(output_specs)}")

    def _specs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        function = self._function()
        self._check(function.inputs, function.outputs)
        return function.inputs, function.outputs

    def driver_schema(self) -> Any:
        """The output schema read here on the driver, or None when ``export_dir`` is not a local path.

        A SavedModel's signature is read from its ``saved_model.pb`` alone (no variables); a
        Keras file is loaded (and kept for later transforms in this process).
        """
        from tfos.ml._models import is_local, local_copy

        if not is_local(self.export_dir):
            return None
        path = local_copy(self.export_dir)
        if _is_model_file(path):
            if not os.path.isfile(path):
                raise TFOSConfigError(f"export_dir {self.export_dir} does not exist: point it at a Keras model file "
                                      "or a SavedModel directory")
            return self.schema(self._specs()[1])
        if not os.path.isdir(path):
            raise TFOSConfigError(f"export_dir {self.export_dir} does not exist: point it at a SavedModel directory "
                                  "or a Keras model file (.keras, .h5)")
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            return None  # e.g. a text-format SavedModel: let TensorFlow itself read it
        input_specs, output_specs = _read_signature_def(path, self.tags, self.signature)
        self._check(input_specs, output_specs)
        return self.schema(output_specs)

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
        import numpy as np
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
            arrays = {name: _arrow_column(batch.field(column), column, partition, offset)
                      for column, name in self.inputs}
            chunks: list[list[Any]] = [[] for _ in self.outputs]
            for start in range(0, len(batch), self.batch_size):
                feeds = {}
                for name, values in arrays.items():
                    spec = input_specs[name]
                    tensor = tf.constant(values[start:start + self.batch_size], dtype=spec.dtype)
                    shape = [tensor.shape[0], *spec.shape[1:]] if spec.shape.rank is not None else None
                    if shape is not None and None not in shape and tensor.shape != shape:
                        tensor = tf.reshape(tensor, shape)
                    feeds[name] = tensor
                results = function.call(feeds)
                for k, ((name, _), field) in enumerate(zip(self.outputs, arrow_schema)):
                    chunks[k].append(_arrow_output(np.asarray(results[name]), field.type))
            columns = [pa.concat_arrays(c) if c else pa.array([], type=f.type) for c, f in zip(chunks, arrow_schema)]
            yield pa.StructArray.from_arrays(columns, fields=list(arrow_schema))
            offset += len(batch)


def _model_source(path: str) -> Any:
    from tfos.ml._models import ModelSource

    return ModelSource(model_path=path)


def _read_signature_def(export_dir: str, tags: str, signature: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A SavedModel signature's input and output specs, from ``saved_model.pb`` alone (driver)."""
    import tensorflow as tf
    from tensorflow.python.saved_model import loader_impl

    saved = loader_impl.parse_saved_model(export_dir)
    wanted = {t for t in tags.split(",") if t}
    graphs = [g for g in saved.meta_graphs if not wanted or set(g.meta_info_def.tags) == wanted]
    if not graphs:
        raise TFOSConfigError(f"SavedModel {export_dir} has no graph with tags {sorted(wanted)}; it has "
                              f"{[sorted(g.meta_info_def.tags) for g in saved.meta_graphs]} (set tag_set)")
    signatures = graphs[0].signature_def
    if signature not in signatures:
        raise TFOSConfigError(f"SavedModel {export_dir} has no signature {signature!r}; it has {sorted(signatures)}")

    def specs(infos: Any) -> dict[str, Any]:
        return {name: tf.TensorSpec(shape=tf.TensorShape(info.tensor_shape), dtype=tf.as_dtype(info.dtype))
                for name, info in infos.items()}

    definition = signatures[signature]
    return specs(definition.inputs), specs(definition.outputs)


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


class _Writer(StateWriter):
    """Saves params as Spark ML metadata and the Python state (args, functions) with cloudpickle."""

    def __init__(self, instance: Params, state: dict[str, Any]) -> None:
        super().__init__()
        self.instance = instance
        self.state = state

    def saveImpl(self, path: str) -> None:  # noqa: N802 - Spark ML's naming
        from pyspark import cloudpickle

        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession)
        save_state(self.sparkSession, path, cloudpickle.dumps(self.state))


class _Reader(MLReader):
    """Loads what :class:`_Writer` saved. Load only models you trust: the state is pickled."""

    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        import pickle

        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        instance = self.cls._restore(pickle.loads(load_state(self.sparkSession, path)))
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance
