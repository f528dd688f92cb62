"""Children of the node process that die with it: ``start_child(argv)``.

The death signal (Linux's PR_SET_PDEATHSIG) is armed in the child itself, by running this module ahead of
the command, and not in a Popen ``preexec_fn``: a preexec_fn makes Python fork the whole node, and gRPC's
fork handlers can abort that child before it execs when the node's channels are busy (grpc/grpc#43055:
TensorBoard then never starts). Without one Python spawns with vfork, which runs no fork handlers. The
signal survives exec, so ``python -m tfos.executor._child PID CMD...`` arms it and execs CMD.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any


def start_child(argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
    """Starts ``argv`` so that it gets SIGTERM when this process dies (Linux; elsewhere a plain child)."""
    return subprocess.Popen([sys.executable, "-m", __name__, str(os.getpid()), *argv], **popen_kwargs)


def main() -> None:
    parent, argv = int(sys.argv[1]), sys.argv[2:]
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        sys.exit(143)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
