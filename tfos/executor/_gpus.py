"""GPU choice (executors, inside the node-launching Spark task).

With Spark resource scheduling (``spark.executor.resource.gpu.amount``,
``spark.task.resource.gpu.amount`` and a discovery script) Spark already gave the task
its GPUs: the node uses exactly those. Without it, and when the node asks for
``num_gpus``, tfos asks ``nvidia-smi`` which GPUs are free and claims them with
host-local lock files, so two executors on one host never take the same GPU. The
locks are ``flock``s held by the node process: they vanish with it, even on SIGKILL.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from tfos.errors import TFOSError

#: A GPU with more memory than this in use (MiB) counts as busy.
BUSY_MEMORY_MIB = 1024


@dataclass(frozen=True)
class Gpu:
    index: int
    memory_used_mib: int
    memory_total_mib: int


def spark_assigned_gpus() -> list[str] | None:
    """The GPU addresses Spark assigned to the running task, or None without GPU scheduling."""
    from pyspark import TaskContext

    task = TaskContext.get()
    resources = task.resources() if task is not None else {}
    if "gpu" not in resources:
        return None
    return list(resources["gpu"].addresses)


def query_gpus(nvidia_smi: str | None = None) -> list[Gpu]:
    """The GPUs ``nvidia-smi`` reports, with their memory use."""
    exe = nvidia_smi or shutil.which("nvidia-smi")
    if exe is None:
        raise TFOSError("num_gpus > 0 but nvidia-smi is not on this executor's PATH; install the NVIDIA driver, or "
                        "let Spark assign GPUs (spark.executor.resource.gpu.amount, spark.task.resource.gpu.amount)")
    try:
        out = subprocess.run([exe, "--query-gpu=index,memory.used,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise TFOSError(f"nvidia-smi failed on this executor: {exc}") from exc
    return parse_gpus(out)


def parse_gpus(text: str) -> list[Gpu]:
    gpus = []
    for line in text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        try:
            gpus.append(Gpu(int(fields[0]), int(float(fields[1])), int(float(fields[2]))))
        except (IndexError, ValueError):
            raise TFOSError(f"cannot read nvidia-smi output line {line!r}") from None
    return gpus


class GpuClaim:
    """GPUs claimed on this host; keep it alive (in the node process) as long as they are used."""

    def __init__(self, indices: list[int], files: list[int]) -> None:
        self.indices = indices
        self._files = files

    @property
    def visible_devices(self) -> str:
        return ",".join(str(i) for i in self.indices)

    def fds(self) -> list[int]:
        return list(self._files)

    def release(self) -> None:
        for fd in self._files:
            os.close(fd)
        self._files = []


def claim_free_gpus(count: int, lock_dir: str | None = None, nvidia_smi: str | None = None) -> GpuClaim:
    """Claims ``count`` free GPUs of this host (least memory used first) with lock files.

    Raises TFOSError naming the busy and claimed GPUs when fewer than ``count`` are free.
    """
    lock_dir = lock_dir or os.path.join(tempfile.gettempdir(), "tfos-gpu-locks")
    os.makedirs(lock_dir, exist_ok=True)
    gpus = sorted(query_gpus(nvidia_smi), key=lambda g: (g.memory_used_mib, g.index))
    claimed: list[int] = []
    files: list[int] = []
    taken_by_others: list[int] = []
    for gpu in gpus:
        if len(claimed) == count:
            break
        if gpu.memory_used_mib > BUSY_MEMORY_MIB:
            continue
        fd = os.open(os.path.join(lock_dir, f"gpu-{gpu.index}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            taken_by_others.append(gpu.index)
            continue
        os.set_inheritable(fd, True)
        claimed.append(gpu.index)
        files.append(fd)
    if len(claimed) < count:
        for fd in files:
            os.close(fd)
        busy = [g.index for g in gpus if g.memory_used_mib > BUSY_MEMORY_MIB]
        raise TFOSError(f"needed {count} free GPU(s) on this host but found only {len(claimed)}: {len(gpus)} GPU(s), "
                        f"busy (>{BUSY_MEMORY_MIB} MiB used): {busy}, claimed by other tfos nodes: {taken_by_others}. "
                        "Lower num_gpus, run fewer executors per host, or use Spark GPU scheduling.")
    return GpuClaim(claimed, files)
