"""TensorFlowOnSpark's ``TFParallel`` module (driver): independent single-node runs, one per executor."""

from __future__ import annotations

import logging
import os
from typing import Any

from tfos.errors import TFOSConfigError

__all__ = ["logger", "run"]

logger = logging.getLogger(__name__)


def run(sc: Any, map_fn: Any, tf_args: Any, num_executors: int, use_barrier: bool = True) -> None:
    """Runs ``map_fn(tf_args, ctx)`` once on each of ``num_executors`` executors, in parallel.

    The runs are independent TensorFlow programs (no cluster spec), e.g. inference on
    shards or a hyper-parameter sweep; ``ctx.worker_num`` / ``ctx.executor_id`` is the
    run's index and ``ctx.num_workers`` their number. In barrier mode (the default)
    every run starts together, which needs ``num_executors`` free task slots: fewer is
    a clear error here instead of Spark retrying the barrier stage for minutes.
    """
    if isinstance(num_executors, bool) or not isinstance(num_executors, int) or num_executors < 1:
        raise TFOSConfigError(f"num_executors must be an integer >= 1; got {num_executors!r}")
    task_cpus = int(sc.getConf().get("spark.task.cpus", "1"))
    slots = sc.defaultParallelism // task_cpus
    if use_barrier and slots < num_executors:
        raise TFOSConfigError(f"TFParallel.run with use_barrier=True needs {num_executors} task slots at once but the "
                              f"Spark application has {slots} (defaultParallelism {sc.defaultParallelism}, "
                              f"spark.task.cpus={task_cpus}); add executors or lower num_executors.")
    from tfos.driver._spark import default_fs, described

    runner = _ParallelRun(map_fn, tf_args, num_executors, use_barrier, _strip_root(default_fs(sc)))
    nodes = sc.parallelize(range(num_executors), num_executors)
    with described(sc, None, f"tfos parallel: {num_executors} independent runs"):
        (nodes.barrier() if use_barrier else nodes).mapPartitions(runner).collect()


def _strip_root(default_fs: str) -> str:
    """``file:///`` becomes ``file://``, like ``hdfs://nn``: TensorFlowOnSpark's defaultFS."""
    if default_fs.startswith("file://") and len(default_fs) > 7 and default_fs.endswith("/"):
        return default_fs[:-1]
    return default_fs


class _ParallelRun:
    """The Spark task: picks GPUs, builds a TFNodeContext and runs map_fn."""

    def __init__(self, map_fn: Any, tf_args: Any, num_executors: int, use_barrier: bool, default_fs: str) -> None:
        self.map_fn = map_fn
        self.tf_args = tf_args
        self.num_executors = num_executors
        self.use_barrier = use_barrier
        self.default_fs = default_fs

    def __call__(self, partition: Any) -> list[int]:
        from pyspark import BarrierTaskContext

        from tfos.compat.TFNode import TFNodeContext
        from tfos.executor._context import NodeContext

        index = next(iter(partition))
        num_workers = len(BarrierTaskContext.get().getTaskInfos()) if self.use_barrier else self.num_executors
        claim = self._choose_gpus()
        try:
            native = NodeContext(executor_id=index, job_name="worker", task_index=index, cluster_spec={},
                                 cluster_info=[], default_fs=self.default_fs, working_dir=os.getcwd())
            ctx = TFNodeContext(native)
            ctx.num_workers = num_workers
            self.map_fn(self.tf_args, ctx)
        finally:
            if claim is not None:
                claim.release()
        return [0]

    def _choose_gpus(self) -> Any:
        import shutil

        from tfos.executor._gpus import claim_free_gpus, spark_assigned_gpus

        assigned = spark_assigned_gpus()
        if assigned is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(assigned)
            return None
        wanted = getattr(self.tf_args, "num_gpus", None)
        if wanted is None and isinstance(self.tf_args, dict):
            wanted = self.tf_args.get("num_gpus")
        if wanted is None:
            wanted = 1  # TensorFlowOnSpark's default; only when the host has GPUs
        if not wanted or shutil.which("nvidia-smi") is None:
            return None
        claim = claim_free_gpus(int(wanted))
        os.environ["CUDA_VISIBLE_DEVICES"] = claim.visible_devices
        return claim
