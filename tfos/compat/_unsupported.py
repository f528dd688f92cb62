"""TensorFlowOnSpark names that have no counterpart in tfos (driver and executors).

Some of TFoS's public names were module-level state of its multiprocessing manager or
TF1 helpers. A ported program that touches one gets an :class:`UnsupportedNameError`
naming what to use on tfos instead, never a silent stand-in. The error is also an
``AttributeError``, so ``hasattr``, ``inspect`` and ``help()`` treat such a name as
absent rather than crashing, while ``dir()`` still lists it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from tfos.errors import TFOSConfigError


class UnsupportedNameError(TFOSConfigError, AttributeError):
    """A TensorFlowOnSpark name that tfos does not provide; the message says what to use instead."""


def unsupported(name: str, instead: str) -> UnsupportedNameError:
    """The error for TFoS's ``name``; ``instead`` is a sentence naming the tfos replacement."""
    return UnsupportedNameError(f"tfos does not provide TensorFlowOnSpark's {name}. {instead}", name=name)


def module_getattr(module: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__`` for TFoS names that are refused on access.

    Args:
        module: the module's ``__name__``.
        names: the refused names, each with the sentence naming its tfos replacement.

    Returns:
        ``(__getattr__, __dir__)`` to assign in the module.
    """

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module protocol's name
        if name in names:
            raise unsupported(f"{module.rsplit('.', 1)[-1]}.{name}", names[name])
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(vars(sys.modules[module])) | set(names))

    return __getattr__, __dir__


def refused_method(name: str, instead: str) -> Callable[..., Any]:
    """A method standing in for TFoS's ``name`` that raises :class:`UnsupportedNameError` when called.

    Unlike a refused module name, the method exists on the class (``hasattr`` is true), so
    code that only looks it up still imports; the call names the replacement.

    Args:
        name: TFoS's ``Class.method``.
        instead: the sentence naming the tfos replacement.
    """

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise unsupported(name, instead)

    method.__name__ = name.rsplit(".", 1)[-1]
    method.__qualname__ = name
    method.__doc__ = f"TensorFlowOnSpark's ``{name}``: refused. {instead}"
    method.tfos_refused = True  # type: ignore[attr-defined]  # lets the public-API test call it
    return method


@functools.cache
def tensorflow_version() -> str | None:
    """The installed TensorFlow's version from package metadata (TensorFlow is not imported), or None."""
    from importlib import metadata

    for dist in ("tensorflow", "tensorflow-cpu", "tf-nightly"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def start_cluster_server(ctx: Any, num_gpus: int = 1, rdma: bool = False) -> Any:
    """TensorFlowOnSpark's TF1 ``start_cluster_server``: refused, TF2 strategies start their own servers."""
    raise unsupported("TFNode.start_cluster_server",
                      "It started a TF1 tf.train.Server. On TF2 create a tf.distribute strategy (e.g. "
                      "MultiWorkerMirroredStrategy), which reads the TF_CONFIG that tfos sets; a node that only "
                      "serves (a ParameterServerStrategy worker or ps) calls ctx.serve().")


def export_saved_model(sess: Any, export_dir: str, tag_set: Any, signatures: Any) -> Any:
    """TensorFlowOnSpark's TF1 ``TFNode.export_saved_model(sess, ...)``: refused, TF2 has no sessions."""
    raise unsupported("TFNode.export_saved_model",
                      "It exported a TF1 session. Use tfos.compat.compat.export_saved_model(model, export_dir, "
                      "is_chief), model.save(...) or tf.saved_model.save(...).")
