"""TensorFlowOnSpark's ``pipeline`` module (driver; ``single_node_env`` / ``yield_batch`` in executors).

The native :mod:`tfos.ml` ``TFEstimator`` / ``TFModel`` with TFoS's names; ``train_fn(args,
ctx)`` receives TFoS's node context (``ctx.mgr`` for ``TFNode.DataFeed``), and
``TFModel.transform`` returns only the output columns, as TFoS's did (the native one
keeps the input columns). TFoS's param mixins (``HasBatchSize``, ``HasSteps``, ...) and
``TFParams`` are here for classes that build their own estimators from them; each mixin
carries the very Param that the native classes declare (same name, doc and type
conversion), and the estimator and model derive from them as in TFoS.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from pyspark.ml.param import Params

from tfos.compat._unsupported import module_getattr, tensorflow_version
from tfos.compat.TFNode import with_tfnode_context
from tfos.errors import TFOSConfigError
from tfos.ml._pipeline import Namespace, _accessors
from tfos.ml._pipeline import TFEstimator as _TFEstimator
from tfos.ml._pipeline import TFModel as _TFModel
from tfos.ml._pipeline import TFParams as _TFParams

__all__ = [
    "HasBatchSize", "HasClusterSize", "HasEpochs", "HasExportDir", "HasGraceSecs", "HasInputMapping", "HasInputMode",
    "HasMasterNode", "HasModelDir", "HasNumPS", "HasOutputMapping", "HasProtocol", "HasReaders", "HasSignatureDefKey",
    "HasSteps", "HasTFRecordDir", "HasTagSet", "HasTensorboard", "Namespace", "TFEstimator", "TFModel", "TFParams",
    "TFTypeConverters", "TF_VERSION", "get_meta_graph_def", "logger", "single_node_env", "yield_batch",
]  # TFoS's inference-cache globals (pred_fn, global_*) are refused on access, so star-imports skip them

logger = logging.getLogger(__name__)

_CACHE = ("tfos's TFModel.transform loads each model once per Python worker and keeps it itself; to run a "
          "model in your own code, load it with tf.saved_model.load(export_dir).")
__getattr__, __dir__ = module_getattr(
    __name__,
    {"pred_fn": f"It was TFoS's cached signature function. {_CACHE}",
     "global_model": f"It was TFoS's cached SavedModel. {_CACHE}",
     "global_args": f"It was the args of TFoS's cached model. {_CACHE}",
     "global_sess": f"It was TFoS's TF1 session cache. {_CACHE}"},
)

#: The installed TensorFlow's version (read from package metadata; TensorFlow is not imported).
TF_VERSION = tensorflow_version()


class TFParams(Params):
    """TensorFlowOnSpark's mixin: namespace-style ``args`` merged with the Spark ML params.

    Unlike the native :class:`tfos.ml.TFParams` it declares no params of its own, so a
    class built from it and some ``Has*`` mixins has exactly those params, as in TFoS.
    """

    args: Namespace | None = None

    merge_args_params = _TFParams.merge_args_params


class TFTypeConverters:
    """TensorFlowOnSpark's Param type converter for dict values."""

    @staticmethod
    def toDict(value: Any) -> dict[Any, Any]:  # noqa: N802 - TensorFlowOnSpark's name
        """``value`` itself if it is a dict; raises TypeError otherwise."""
        if isinstance(value, dict):
            return value
        raise TypeError(f"could not convert {value!r} to a dict")


# One mixin per TFoS param, each with the native classes' own Param, setter and getter.

@_accessors(batch_size="BatchSize")
class HasBatchSize(Params):
    """``batch_size``: rows per batch (``setBatchSize`` / ``getBatchSize``)."""

    batch_size = _TFParams.batch_size


@_accessors(cluster_size="ClusterSize")
class HasClusterSize(Params):
    """``cluster_size``: number of nodes (``setClusterSize`` / ``getClusterSize``)."""

    cluster_size = _TFEstimator.cluster_size


@_accessors(epochs="Epochs")
class HasEpochs(Params):
    """``epochs``: passes over the DataFrame (``setEpochs`` / ``getEpochs``)."""

    epochs = _TFEstimator.epochs


@_accessors(grace_secs="GraceSecs")
class HasGraceSecs(Params):
    """``grace_secs``: seconds serving nodes run on after the workers finish (``setGraceSecs`` / ``getGraceSecs``)."""

    grace_secs = _TFEstimator.grace_secs


@_accessors(input_mapping="InputMapping")
class HasInputMapping(Params):
    """``input_mapping``: DataFrame column -> input tensor (``setInputMapping`` / ``getInputMapping``)."""

    input_mapping = _TFParams.input_mapping


@_accessors(input_mode="InputMode")
class HasInputMode(Params):
    """``input_mode``: ``InputMode.SPARK`` (1) or ``InputMode.TENSORFLOW`` (0) (``setInputMode`` / ``getInputMode``).

    TFoS refused InputMode.TENSORFLOW here; tfos's estimator supports it (through ``tfrecord_dir``).
    """

    input_mode = _TFEstimator.input_mode


@_accessors(master_node="MasterNode")
class HasMasterNode(Params):
    """``master_node``: job name of the chief (``setMasterNode`` / ``getMasterNode``)."""

    master_node = _TFEstimator.master_node


@_accessors(model_dir="ModelDir")
class HasModelDir(Params):
    """``model_dir``: where checkpoints go (``setModelDir`` / ``getModelDir``)."""

    model_dir = _TFParams.model_dir


@_accessors(num_ps="NumPS", driver_ps_nodes="DriverPSNodes")
class HasNumPS(Params):
    """``num_ps`` and ``driver_ps_nodes`` (``setNumPS`` / ``getNumPS``, ``setDriverPSNodes`` / ``getDriverPSNodes``)."""

    num_ps = _TFEstimator.num_ps
    driver_ps_nodes = _TFEstimator.driver_ps_nodes


@_accessors(output_mapping="OutputMapping")
class HasOutputMapping(Params):
    """``output_mapping``: output tensor -> DataFrame column (``setOutputMapping`` / ``getOutputMapping``)."""

    output_mapping = _TFModel.output_mapping


@_accessors(protocol="Protocol")
class HasProtocol(Params):
    """``protocol``: TensorFlow's server protocol (``setProtocol`` / ``getProtocol``)."""

    protocol = _TFEstimator.protocol


@_accessors(readers="Readers")
class HasReaders(Params):
    """``readers``: reader threads, passed to ``train_fn`` (``setReaders`` / ``getReaders``)."""

    readers = _TFEstimator.readers


@_accessors(steps="Steps")
class HasSteps(Params):
    """``steps``: maximum training steps, passed to ``train_fn`` (``setSteps`` / ``getSteps``)."""

    steps = _TFEstimator.steps


@_accessors(tensorboard="Tensorboard")
class HasTensorboard(Params):
    """``tensorboard``: start TensorBoard on the chief (``setTensorboard`` / ``getTensorboard``)."""

    tensorboard = _TFEstimator.tensorboard


@_accessors(tfrecord_dir="TFRecordDir")
class HasTFRecordDir(Params):
    """``tfrecord_dir``: where InputMode.TENSORFLOW saves the DataFrame (``setTFRecordDir`` / ``getTFRecordDir``)."""

    tfrecord_dir = _TFEstimator.tfrecord_dir


@_accessors(export_dir="ExportDir")
class HasExportDir(Params):
    """``export_dir``: the SavedModel's directory (``setExportDir`` / ``getExportDir``)."""

    export_dir = _TFParams.export_dir


@_accessors(signature_def_key="SignatureDefKey")
class HasSignatureDefKey(Params):
    """``signature_def_key``: the SavedModel signature to run (``setSignatureDefKey`` / ``getSignatureDefKey``).

    Defaults to ``'serving_default'``, the signature Keras and ``tf.saved_model.save``
    export (TFoS's default was None, which TF2 models cannot be run with).
    """

    signature_def_key = _TFModel.signature_def_key

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(signature_def_key="serving_default")


@_accessors(tag_set="TagSet")
class HasTagSet(Params):
    """``tag_set``: comma-separated tags of the SavedModel's graph (``setTagSet`` / ``getTagSet``)."""

    tag_set = _TFModel.tag_set


class TFModel(_TFModel, TFParams, HasInputMapping, HasOutputMapping, HasBatchSize, HasModelDir, HasExportDir,
              HasSignatureDefKey, HasTagSet):
    """TensorFlowOnSpark's ``TFModel(tf_args)``: runs a SavedModel on a DataFrame, returning the outputs only."""

    _keep_input_columns = False


class TFEstimator(_TFEstimator, TFParams, HasInputMapping, HasClusterSize, HasNumPS, HasInputMode, HasMasterNode,
                  HasProtocol, HasGraceSecs, HasTensorboard, HasModelDir, HasExportDir, HasTFRecordDir, HasBatchSize,
                  HasEpochs, HasReaders, HasSteps):
    """TensorFlowOnSpark's ``TFEstimator(train_fn, tf_args, export_fn=None)``."""

    def _main(self) -> Any:
        return with_tfnode_context(self.train_fn)

    def _model_class(self) -> type[TFModel]:
        return TFModel


def single_node_env(args: Any) -> None:
    """Prepares this process to run TensorFlow alone with ``args``, as TFoS's ``pipeline.single_node_env``.

    Sets ``sys.argv`` to ``args`` when it is an argv list (or has a non-empty ``argv``),
    then calls :func:`tfos.compat.util.single_node_env` with ``args.num_gpus`` (1 when
    ``args`` has none).
    """
    from tfos.compat import util

    if isinstance(args, list):
        sys.argv = list(args)
        num_gpus = 1
    else:
        if getattr(args, "argv", None):
            sys.argv = list(args.argv)
        num_gpus = getattr(args, "num_gpus", 1)
    util.single_node_env(num_gpus)


def get_meta_graph_def(saved_model_dir: str, tag_set: str) -> Any:
    """The ``MetaGraphDef`` of the SavedModel in ``saved_model_dir`` whose tags are ``tag_set`` (comma-separated).

    Raises:
        TFOSConfigError: no SavedModel there, or none of its graphs has exactly these tags.
    """
    from tensorflow.python.saved_model import loader_impl

    try:
        saved_model = loader_impl.parse_saved_model(saved_model_dir)
    except OSError as exc:
        raise TFOSConfigError(f"no SavedModel in {saved_model_dir} ({exc}); check the export_dir") from exc
    wanted = {t for t in tag_set.split(",") if t}
    for meta_graph_def in saved_model.meta_graphs:
        if set(meta_graph_def.meta_info_def.tags) == wanted:
            return meta_graph_def
    found = [",".join(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise TFOSConfigError(f"the SavedModel in {saved_model_dir} has no graph with tags {tag_set!r}; its graphs have "
                          f"tags {found}. Set tag_set to one of them.")


def yield_batch(iterable: Iterable[Any], batch_size: int, num_tensors: int = 1) -> Iterator[list[list[Any]]]:
    """Groups rows into column batches: yields ``num_tensors`` lists of up to ``batch_size`` values each.

    Column ``i`` of a batch holds field ``i`` of each row. A ``None`` row ends the
    input, as in TFoS. ``bytearray`` fields become ``bytes`` (TFoS turned them into
    strings, which under Python 3 gave their repr).
    """
    columns: list[list[Any]] = [[] for _ in range(num_tensors)]
    for row in iterable:
        if row is None:
            break
        for i in range(num_tensors):
            value = row[i]
            columns[i].append(bytes(value) if isinstance(value, bytearray) else value)
        if len(columns[0]) >= batch_size:
            yield columns
            columns = [[] for _ in range(num_tensors)]
    if columns and columns[0]:
        yield columns
