"""Keras / SavedModel loading for the Spark ML transformers (driver checks; loading runs in executors).

Each Python worker loads a model once and keeps it in :data:`_MODELS` for later
partitions and jobs; :data:`LOADS` counts the loads per model so tests can see the reuse.
Files saved by Keras 3 and by tf-keras (Keras 2) load alike: a ``.keras`` / ``.h5`` file
is tried with ``keras`` first, a SavedModel directory with ``tf_keras`` first, and the
other one after; a SavedModel that neither Keras can revive, or one whose signature is
named (``signatureDefKey``), runs through that signature. A model of several outputs is
refused unless one is named (``outputName``): its values would otherwise interleave across
rows, or the first name in sort order would stand for the model. ``keras.applications``
architectures are built with ``weights=None`` and read their weights from a file the user
provides: nothing is downloaded. A model object registered on the driver travels to the
executors as a file shipped with the job (``SparkContext.addFile``, or a Spark Connect file
artifact: ``ModelSource.shipped``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tfos.errors import TFOSConfigError

log = logging.getLogger(__name__)

#: Models loaded by this Python worker, by key (see :func:`cached`).
_MODELS: dict[Any, Any] = {}
#: How many times this process loaded each model source (path, or name + weights).
LOADS: dict[str, int] = {}

#: keras.applications architectures: name -> (module holding preprocess_input, default input size).
ARCHITECTURES: dict[str, tuple[str, int]] = {
    "ConvNeXtTiny": ("convnext", 224), "ConvNeXtSmall": ("convnext", 224), "ConvNeXtBase": ("convnext", 224),
    "DenseNet121": ("densenet", 224), "DenseNet169": ("densenet", 224), "DenseNet201": ("densenet", 224),
    "EfficientNetB0": ("efficientnet", 224), "EfficientNetB1": ("efficientnet", 240),
    "EfficientNetB2": ("efficientnet", 260), "EfficientNetB3": ("efficientnet", 300),
    "EfficientNetB4": ("efficientnet", 380), "EfficientNetB5": ("efficientnet", 456),
    "EfficientNetB6": ("efficientnet", 528), "EfficientNetB7": ("efficientnet", 600),
    "EfficientNetV2B0": ("efficientnet_v2", 224), "EfficientNetV2B1": ("efficientnet_v2", 240),
    "EfficientNetV2B2": ("efficientnet_v2", 260), "EfficientNetV2B3": ("efficientnet_v2", 300),
    "EfficientNetV2S": ("efficientnet_v2", 384),
    "InceptionResNetV2": ("inception_resnet_v2", 299), "InceptionV3": ("inception_v3", 299),
    "MobileNet": ("mobilenet", 224), "MobileNetV2": ("mobilenet_v2", 224),
    "MobileNetV3Small": ("mobilenet_v3", 224), "MobileNetV3Large": ("mobilenet_v3", 224),
    "NASNetMobile": ("nasnet", 224), "NASNetLarge": ("nasnet", 331),
    "ResNet50": ("resnet50", 224), "ResNet101": ("resnet", 224), "ResNet152": ("resnet", 224),
    "ResNet50V2": ("resnet_v2", 224), "ResNet101V2": ("resnet_v2", 224), "ResNet152V2": ("resnet_v2", 224),
    "VGG16": ("vgg16", 224), "VGG19": ("vgg19", 224), "Xception": ("xception", 299),
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a file / SavedModel, or an architecture and its weights file."""

    model_path: str | None = None
    model_name: str | None = None
    weights_path: str | None = None
    model_args: tuple[tuple[str, Any], ...] = ()
    #: The SavedModel signature to run instead of reviving a Keras model (None: Keras first).
    signature: str | None = None
    #: model_path is the name of a file shipped to the executors (a model object saved by the driver).
    shipped: bool = False

    @property
    def label(self) -> str:
        if self.shipped:
            return f"(the model object registered as {self.model_path})"
        if self.model_path:
            return self.model_path
        return f"{self.model_name}({self.weights_path})"


def check_source(spark: Any, source: ModelSource) -> None:
    """Driver-side checks, before any Spark job: one source, a known architecture, files that exist.

    ``spark`` is a SparkSession (classic or Spark Connect) or a SparkContext.

    Raises:
        TFOSConfigError: naming the param or file to fix.
    """
    if bool(source.model_path) == bool(source.model_name):
        raise TFOSConfigError("set exactly one of modelPath (a .keras / .h5 file or a SavedModel directory) and "
                              f"modelName (a keras.applications architecture); got modelPath={source.model_path!r}, "
                              f"modelName={source.model_name!r}")
    if source.signature is not None and not source.model_path:
        raise TFOSConfigError("signatureDefKey applies to a SavedModel directory (modelPath), not to modelName "
                              f"{source.model_name!r}")
    if source.shipped:
        return
    if source.model_path:
        if not path_exists(spark, source.model_path):
            raise TFOSConfigError(f"modelPath {source.model_path} does not exist: point it at a Keras model file "
                                  "(.keras, .h5) or a SavedModel directory that every executor can read")
        return
    if source.model_name not in ARCHITECTURES:
        raise TFOSConfigError(f"modelName {source.model_name!r} is not a known keras.applications architecture; "
                              f"use one of {sorted(ARCHITECTURES)}, or set modelPath to a saved model")
    hint = (f"provide the file: on a machine with internet access run keras.applications.{source.model_name}"
            f"(weights='imagenet'{_args_text(source)}).save_weights('{_snake(source.model_name)}.weights.h5') and set "
            "weightsPath to where every executor can read it (nothing is downloaded at run time)")
    if not source.weights_path:
        raise TFOSConfigError(f"modelName {source.model_name!r} needs weightsPath: {hint}")
    if not path_exists(spark, source.weights_path):
        raise TFOSConfigError(f"weightsPath {source.weights_path} (weights of {source.model_name}) does not exist: "
                              f"{hint}")


def _args_text(source: ModelSource) -> str:
    return "".join(f", {k}={v!r}" for k, v in source.model_args)


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() and i and not name[i - 1].isupper() else c.lower()
                   for i, c in enumerate(name))


def path_exists(spark: Any, path: str) -> bool:
    """Whether ``path`` exists, seen from the driver (local paths directly, URIs through Hadoop).

    On Spark Connect a local path missing here is looked up by the server too: the client may run
    on another machine than the Spark driver and its executors.
    """
    from tfos.driver._spark import backend

    local = path
    if local.startswith("file:"):
        local = local[len("file:"):]
        if local.startswith("//"):
            local = local[2:]
    spark = backend(spark)
    if "://" not in local and (os.path.exists(local) or not spark.remote):
        return os.path.exists(local)
    return spark.path_exists(path)


def is_local(path: str) -> bool:
    """Whether the driver can open ``path`` as a local file (no scheme, or file:)."""
    return "://" not in path or path.startswith("file:")


def local_copy(path: str) -> str:
    """``path`` as a local path: remote files and directories are copied to a temp dir first (executor)."""
    if path.startswith("file://"):
        return path[len("file://"):]
    if path.startswith("file:"):
        return path[len("file:"):]
    if "://" not in path:
        return path
    import tensorflow as tf

    target = os.path.join(tempfile.mkdtemp(prefix="tfos-model-"), os.path.basename(path.rstrip("/")))
    if tf.io.gfile.isdir(path):
        for root, _, files in tf.io.gfile.walk(path):
            rel = os.path.relpath(root, path) if root != path else ""
            os.makedirs(os.path.join(target, rel), exist_ok=True)
            for name in files:
                tf.io.gfile.copy(f"{root.rstrip('/')}/{name}", os.path.join(target, rel, name), overwrite=True)
    else:
        tf.io.gfile.copy(path, target, overwrite=True)
    return target


def cached(key: Any, load: Callable[[], Any]) -> Any:
    """The value for ``key`` in this process, loading it on first use."""
    if key not in _MODELS:
        _MODELS[key] = load()
    return _MODELS[key]


def _count(source: str) -> None:
    LOADS[source] = LOADS.get(source, 0) + 1
    log.info("loaded model %s in process %d (%d loads)", source, os.getpid(), LOADS[source])


class SignatureModel:
    """A SavedModel called through one of its signatures, giving one chosen output.

    Args:
        loaded: what ``tf.saved_model.load`` returned.
        signature: the signature's key.
        label: the model's path, for messages.
        output: the output to give; None: the only one (a signature of several outputs is then
            refused when called, naming them; :func:`with_output` chooses one).

    Raises:
        TFOSConfigError: the signature takes more than one input, or has no output ``output``;
            the message lists them.
    """

    def __init__(self, loaded: Any, signature: str, label: str, output: str | None = None) -> None:
        self.loaded = loaded
        self.signature = signature
        self.function = loaded.signatures[signature]
        _, kwargs = self.function.structured_input_signature
        if len(kwargs) != 1:
            raise TFOSConfigError(f"signature {signature!r} of model {label} takes {len(kwargs)} inputs "
                                  f"{sorted(kwargs)}; image models take one (use tfos.ml.TFModel, which maps "
                                  "columns to inputs)")
        self.input_name = next(iter(kwargs))
        self.input_spec = kwargs[self.input_name]
        self.output_names = sorted(self.function.structured_outputs)
        self.what = f"signature {signature!r} of model {label}"
        several = output is None and len(self.output_names) > 1
        self.output = None if several else pick_output(self.output_names, output, self.what)
        self.layers: list[Any] = []

    @property
    def input_shape(self) -> tuple[Any, ...]:
        return tuple(self.input_spec.shape)

    def __call__(self, batch: Any, training: bool = False) -> Any:
        import tensorflow as tf

        output = self.output or pick_output(self.output_names, None, self.what)  # never guess among several
        out = self.function(**{self.input_name: tf.constant(batch, dtype=self.input_spec.dtype)})
        return out[output]


def pick_output(names: list[str], output: str | None, what: str) -> str:
    """``output`` if ``names`` has it, else the only name; refuses to guess among several.

    Raises:
        TFOSConfigError: naming ``what`` and its outputs.
    """
    if output is not None:
        if output not in names:
            raise TFOSConfigError(f"{what} has no output {output!r}; its outputs are {names}: set outputName to "
                                  "one of them")
        return output
    if len(names) != 1:
        raise TFOSConfigError(f"{what} has {len(names)} outputs {names}; set outputName to the one you want (for "
                              "several at once use tfos.ml.TFModel, which maps each output to a column)")
    return names[0]


def load_signature(path: str, signature: str | None, label: str) -> SignatureModel:
    """A SavedModel directory run through ``signature`` (None: ``serving_default``, or the only one).

    Raises:
        TFOSConfigError: the directory is not a SavedModel, or has no such signature (listed).
    """
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(local_copy(path))
    except Exception as exc:
        raise TFOSConfigError(f"cannot load SavedModel {label} to run its signature {signature!r}: "
                              f"{type(exc).__name__}: {exc}") from exc
    names = sorted(loaded.signatures)
    if signature is None:
        if "serving_default" in names or len(names) == 1:
            signature = "serving_default" if "serving_default" in names else names[0]
        else:
            raise TFOSConfigError(f"SavedModel {label} has no 'serving_default' signature; it has {names}: set "
                                  "signatureDefKey to the one to run")
    elif signature not in names:
        raise TFOSConfigError(f"SavedModel {label} has no signature {signature!r}; it has {names}: set "
                              "signatureDefKey to one of them")
    _count(label)
    return SignatureModel(loaded, signature, label)


def load_model_file(path: str, first: str | None = None) -> Any:
    """A Keras model from a ``.keras`` / ``.h5`` file or a SavedModel directory, saved by Keras 3 or tf-keras.

    ``first`` (``"keras"`` or ``"tf_keras"``) is the Keras to try first, when the saver is known.

    Raises:
        TFOSConfigError: neither Keras (nor, for a directory, tf.saved_model) can load it;
            the message carries each one's reason.
    """
    local = local_copy(path)
    is_dir = os.path.isdir(local)
    order = ("tf_keras", "keras") if is_dir else ("keras", "tf_keras")
    if first is not None:
        order = (first, *(name for name in order if name != first))
    reasons = []
    for name in order:
        try:
            module = __import__(name)
            model = module.models.load_model(local, compile=False)
        except Exception as exc:  # each Keras refuses the other's files in its own way
            reasons.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        if hasattr(model, "layers") and hasattr(model, "inputs"):
            _count(path)
            return model
        reasons.append(f"{name}: loaded a {type(model).__name__}, not a Keras model")
    if is_dir:
        try:
            return load_signature(local, None, path)
        except TFOSConfigError as exc:
            if "has no 'serving_default' signature" in str(exc):
                raise
            reasons.append(f"tf.saved_model: {exc}")
    raise TFOSConfigError(f"cannot load model {path}: " + "; ".join(reasons) + ". Save it with model.save('m.keras') "
                          "(Keras 3) or model.save('m.h5') / a SavedModel (tf-keras)")


def build_application(source: ModelSource) -> Any:
    """A keras.applications architecture built with ``weights=None`` and loaded from ``weights_path``."""
    import keras

    builder = getattr(keras.applications, str(source.model_name))
    if not source.weights_path:
        raise TFOSConfigError(f"modelName {source.model_name!r} needs weightsPath: the file of its weights")
    model = builder(weights=None, **dict(source.model_args))
    local = local_copy(source.weights_path)
    try:
        model.load_weights(local)
    except Exception as exc:
        raise TFOSConfigError(f"weightsPath {source.weights_path} does not fit {source.model_name}"
                              f"({_args_text(source).lstrip(', ')}): {type(exc).__name__}: {exc}. Save the weights "
                              "from the same architecture and arguments (modelArgs)") from exc
    _count(source.label)
    return model


def preprocess_input(model_name: str) -> Callable[[Any], Any]:
    """keras.applications' own ``preprocess_input`` for an architecture."""
    import importlib

    module = importlib.import_module(f"keras.applications.{ARCHITECTURES[model_name][0]}")
    return module.preprocess_input


def load(source: ModelSource) -> Any:
    """The model of ``source``, loaded once per process."""
    if source.shipped:
        from pyspark import SparkFiles

        first = "tf_keras" if source.model_path.endswith(".h5") else "keras"  # see save_model_object
        return cached(("shipped", source.model_path),
                      lambda: load_model_file(SparkFiles.get(str(source.model_path)), first))
    if source.signature is not None:
        return cached(("signature", source.model_path, source.signature),
                      lambda: load_signature(str(source.model_path), source.signature, source.label))
    if source.model_path:
        return cached(("file", source.model_path), lambda: load_model_file(source.model_path))
    return cached(("app", source), lambda: build_application(source))


def with_output(model: Any, output: str | None, label: str) -> Any:
    """``model`` giving the one output ``output`` (None: its only output).

    A Keras model of several outputs becomes ``Model(inputs, that output)``; a signature
    gives that key of its result.

    Raises:
        TFOSConfigError: no such output, or several outputs and ``output`` is None; the message lists them.
    """
    if isinstance(model, SignatureModel):
        chosen = pick_output(model.output_names, output, model.what)
        return model if chosen == model.output else SignatureModel(model.loaded, model.signature, label, chosen)
    outputs = list(getattr(model, "outputs", None) or [])
    names = [str(n) for n in (getattr(model, "output_names", None) or range(len(outputs)))]
    if len(outputs) <= 1 and (output is None or names == [output]):
        return model
    chosen = pick_output(names, output, f"model {label}")
    if len(outputs) == 1:
        return model
    module = __import__(type(model).__module__.split(".")[0])
    if not hasattr(module, "Model"):
        import keras as module
    inputs = model.inputs if len(model.inputs) > 1 else model.inputs[0]
    return module.Model(inputs, outputs[names.index(chosen)])


def save_model_object(model: Any, directory: str) -> str:
    """Saves a Keras 3 or tf-keras model object under ``directory``; returns the path to ship (driver).

    Keras 3 models go to a ``.keras`` file, tf-keras models to an ``.h5`` file (one file, as
    ``SparkContext.addFile`` ships; a directory it ships in local mode only); :func:`load`
    reads each with the Keras that saved it, so executors rebuild the same model.

    Raises:
        TFOSConfigError: ``model`` is not a Keras model.
    """
    if not (hasattr(model, "save") and hasattr(model, "inputs") and hasattr(model, "layers")):
        raise TFOSConfigError(f"expected a model path (str) or a Keras model object, got {type(model).__name__}")
    if type(model).__module__.startswith("tf_keras"):
        path = os.path.join(directory, "model.h5")
        model.save(path)
    else:
        path = os.path.join(directory, "model.keras")
        model.save(path)
    return path


def image_size(model: Any, label: str) -> tuple[int, int, int]:
    """(height, width, channels) of a model's image input."""
    shape = model.input_shape
    if isinstance(shape, list):
        if len(shape) != 1:
            raise TFOSConfigError(f"model {label} takes {len(shape)} inputs; image transformers need one image input")
        shape = shape[0]
    shape = tuple(shape)
    if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[3] not in (1, 3):
        raise TFOSConfigError(f"model {label} takes input of shape {shape}; image transformers need "
                              "(batch, height, width, 1 or 3 channels) with a fixed height and width")
    return int(shape[1]), int(shape[2]), int(shape[3])


def layer_names(model: Any) -> list[str]:
    return [layer.name for layer in getattr(model, "layers", [])]


#: Layers that may follow a classifier's Dense layer without changing what comes before it.
_AFTER_CLASSIFIER = ("Activation", "Softmax", "Dropout")


def default_layer(model: Any) -> str:
    """The layer before the classifier: the one before the last Dense (past any activation or
    dropout after it), or the last layer when the model ends without a Dense classifier."""
    layers = model.layers
    k = len(layers) - 1
    while k > 0 and type(layers[k]).__name__ in _AFTER_CLASSIFIER:
        k -= 1
    if k > 0 and type(layers[k]).__name__ == "Dense":
        return layers[k - 1].name
    return layers[-1].name


def inner_model(model: Any, layer: str | None, label: str) -> Any:
    """A model giving ``layer``'s output (default: :func:`default_layer`)."""
    names = layer_names(model)
    if len(names) < 2:
        raise TFOSConfigError(f"model {label} has no Keras layers to take features from (layers: {names}); "
                              "load a Keras model file, not a bare SavedModel signature")
    if layer is None:
        layer = default_layer(model)
    elif layer not in names:
        raise TFOSConfigError(f"model {label} has no layer {layer!r}; its layers are {names}")
    module = __import__(type(model).__module__.split(".")[0])
    if not hasattr(module, "Model"):
        import keras as module
    inputs = model.inputs if len(model.inputs) > 1 else model.inputs[0]
    return module.Model(inputs, model.get_layer(layer).output)
