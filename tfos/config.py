"""Cluster settings (driver): frozen, validated when created.

``ClusterConfig`` holds everything ``tfos.run`` was asked for; building one is the
first thing ``run`` does, so bad arguments fail before any Spark job starts.
"""

from __future__ import annotations

import enum
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tfos.errors import TFOSConfigError

_MASTER_NODES = ("chief", "master")


class InputMode(enum.IntEnum):
    """Where the nodes get their data (values match TensorFlowOnSpark's)."""

    #: Each node reads its own data (files, tf.data); Spark only hosts the nodes.
    TENSORFLOW = 0
    #: The driver streams RDD / DataFrame partitions into the nodes.
    SPARK = 1


@dataclass(frozen=True)
class ClusterConfig:
    """What ``tfos.run`` was asked to start; see :func:`tfos.run` for each field."""

    main_fun: Callable[..., Any]
    num_executors: int
    num_ps: int = 0
    tensorboard: bool = False
    input_mode: InputMode = InputMode.TENSORFLOW
    log_dir: str | None = None
    master_node: str | None = "chief"
    eval_node: bool = False
    reservation_timeout: float = 600.0
    release_port: bool = True
    max_restarts: int = 0
    num_gpus: int = 0
    progress: bool | None = None
    keras: int | None = None
    export_dir: str | None = None
    mlflow: bool | None = None
    mlflow_run: Any = None

    def __post_init__(self) -> None:
        if not callable(self.main_fun):
            raise TFOSConfigError(
                f"main_fun must be a function taking (args, ctx); got {type(self.main_fun).__name__}"
            )
        _check_int("num_executors", self.num_executors, minimum=1)
        _check_int("num_ps", self.num_ps, minimum=0)
        _check_int("max_restarts", self.max_restarts, minimum=0)
        _check_int("num_gpus", self.num_gpus, minimum=0)
        if self.master_node not in (None, *_MASTER_NODES):
            raise TFOSConfigError(f"master_node must be 'chief', 'master' or None; got {self.master_node!r}")
        try:
            object.__setattr__(self, "input_mode", InputMode(self.input_mode))
        except ValueError:
            raise TFOSConfigError(
                f"input_mode must be tfos.InputMode.TENSORFLOW or .SPARK; got {self.input_mode!r}"
            ) from None
        if self.num_executors - self.num_ps - bool(self.eval_node) < 1:
            raise TFOSConfigError(
                f"num_executors={self.num_executors} leaves no chief or worker after num_ps={self.num_ps} "
                f"and eval_node={bool(self.eval_node)}; raise num_executors or lower num_ps"
            )
        if self.max_restarts and self.input_mode == InputMode.SPARK:
            raise TFOSConfigError(
                "max_restarts needs input_mode=InputMode.TENSORFLOW: with InputMode.SPARK the rows fed before a "
                "failure cannot be replayed into restarted nodes. Catch NodeFailedError and run again instead."
            )
        if self.keras not in (None, 2, 3):
            raise TFOSConfigError(f"keras must be 2 (tf-keras), 3 (Keras 3) or None (tf-keras unless the executors' "
                                  f"TF_USE_LEGACY_KERAS says otherwise); got {self.keras!r}")
        if self.progress not in (None, True, False):
            raise TFOSConfigError(f"progress must be None (a live view on a terminal), True or False; "
                                  f"got {self.progress!r}")
        if self.export_dir is not None and (not isinstance(self.export_dir, str) or not self.export_dir):
            raise TFOSConfigError(f"export_dir must be a path (str) every node and the driver can reach, or None; "
                                  f"got {self.export_dir!r}")
        if self.mlflow not in (None, True, False):
            raise TFOSConfigError(f"mlflow must be True (log to MLflow), False (never) or None (log when an MLflow "
                                  f"run is active on the driver); got {self.mlflow!r}")
        if self.mlflow is False and self.mlflow_run is not None:
            raise TFOSConfigError("mlflow=False contradicts mlflow_run=...: drop one of them")
        if not isinstance(self.reservation_timeout, numbers.Real) or self.reservation_timeout <= 0:
            raise TFOSConfigError(
                f"reservation_timeout must be a positive number of seconds; got {self.reservation_timeout!r}"
            )


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise TFOSConfigError(f"{name} must be an integer >= {minimum}; got {value!r}")
