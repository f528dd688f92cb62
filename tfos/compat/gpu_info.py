"""TensorFlowOnSpark's ``gpu_info`` module (executors, or any host): which GPUs are there and free.

Reads ``nvidia-smi`` through tfos's own GPU query (:mod:`tfos.executor._gpus`): a GPU
is free when it has at most ``BUSY_MEMORY_MIB`` of memory in use. Unlike tfos's node
launcher, :func:`get_gpus` claims nothing (no lock files), as in TFoS: it proposes GPU
indices and the caller sets ``CUDA_VISIBLE_DEVICES``. Nodes started by ``TFCluster.run``
already get their GPUs from Spark's resource scheduling or a host-local claim.
"""

from __future__ import annotations

import logging
import random
import time

from tfos.errors import TFOSConfigError, TFOSError
from tfos.executor._gpus import BUSY_MEMORY_MIB, query_gpus

__all__ = ["AS_LIST", "AS_STRING", "MAX_RETRIES", "get_gpus", "is_gpu_available", "logger"]

logger = logging.getLogger(__name__)

#: Times get_gpus asks nvidia-smi again (waiting 30 s, 60 s, ...) before it gives up.
MAX_RETRIES = 3
#: get_gpus ``format``: ``"0,2"``.
AS_STRING = "string"
#: get_gpus ``format``: ``["0", "2"]``.
AS_LIST = "list"

_sleep = time.sleep  # the wait between nvidia-smi queries; a seam for tests


def is_gpu_available() -> bool:
    """True if ``nvidia-smi`` runs on this host and reports at least one GPU."""
    try:
        return len(query_gpus()) > 0
    except TFOSError:
        return False


def get_gpus(num_gpu: int = 1, worker_index: int = -1, format: str = AS_STRING) -> str | list[str]:  # noqa: A002
    """Proposes ``num_gpu`` free GPUs of this host, as TensorFlowOnSpark's ``get_gpus``.

    Asks ``nvidia-smi`` up to ``MAX_RETRIES`` more times, waiting 30 s more each time,
    while fewer than ``num_gpu`` GPUs are free.

    Args:
        num_gpu: how many GPUs to propose.
        worker_index: placement hint: worker ``i`` gets the ``i``-th group of ``num_gpu``
            free GPUs (wrapping around); ``-1`` picks free GPUs at random.
        format: :data:`AS_STRING` for ``"0,1"`` (for ``CUDA_VISIBLE_DEVICES``) or
            :data:`AS_LIST` for ``["0", "1"]``.

    Returns:
        The GPU indices, as a comma-separated string or a list of strings.

    Raises:
        TFOSError: nvidia-smi is missing or fails, or too few GPUs stay free.
        TFOSConfigError: ``format`` is neither AS_STRING nor AS_LIST.
    """
    if format not in (AS_STRING, AS_LIST):
        raise TFOSConfigError(f"get_gpus(format={format!r}): use gpu_info.AS_STRING or gpu_info.AS_LIST")
    retries = 0
    while True:
        gpus = query_gpus()
        free = [str(g.index) for g in sorted(gpus, key=lambda g: g.index) if g.memory_used_mib <= BUSY_MEMORY_MIB]
        if len(free) >= num_gpu:
            break
        if retries >= MAX_RETRIES:
            busy = [f"{g.index} ({g.memory_used_mib} MiB used)" for g in gpus if g.memory_used_mib > BUSY_MEMORY_MIB]
            raise TFOSError(f"needed {num_gpu} free GPU(s) but found {len(free)} of {len(gpus)} after "
                            f"{MAX_RETRIES} retries; busy (>{BUSY_MEMORY_MIB} MiB used): {busy}. Lower num_gpus, "
                            "run fewer executors per host, or use Spark GPU scheduling "
                            "(spark.executor.resource.gpu.amount, spark.task.resource.gpu.amount).")
        retries += 1
        logger.warning("requested %d GPU(s) but %d are free; asking nvidia-smi again in %d s", num_gpu, len(free),
                       30 * retries)
        _sleep(30 * retries)
    logger.info("free GPUs: %s", free)
    if worker_index == -1:
        random.shuffle(free)
        proposed = free[:num_gpu]
    elif num_gpu <= 0:
        proposed = []
    else:
        # TFoS wrapped worker_index * num_gpu around the free list, which left high indices with
        # no GPU when num_gpu > 1; whole groups wrap around here (the same for num_gpu == 1).
        start = worker_index % (len(free) // num_gpu) * num_gpu
        proposed = free[start:start + num_gpu]
    logger.info("proposed GPUs: %s", proposed)
    return ",".join(proposed) if format == AS_STRING else proposed
