"""Node output to the driver (node process): ships new lines of the node's log file.

The node's stdout and stderr go straight to a file in the executor's working
directory, so a slow or broken driver connection can never block a print() or
TensorFlow's C++ logging. A daemon thread reads what was appended and sends it to
the driver in batches, where each line is logged as ``[role] line``. Best effort:
lines that cannot be sent are dropped, and nothing here ever raises into training.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from tfos.errors import TFOSError

if TYPE_CHECKING:
    from tfos._rpc import NodeClient

log = logging.getLogger(__name__)

INTERVAL_SECS = 0.5
_MAX_READ = 256 << 10
_MAX_LINES = 1000


class LogShipper:
    """Tails ``path`` from ``offset`` and sends complete lines with ``client.log(...)``."""

    def __init__(self, client: NodeClient, executor_id: int, path: str, offset: int) -> None:
        self._client = client
        self._executor_id = executor_id
        self._path = path
        self._offset = offset
        self._partial = b""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.dropped = 0

    def start(self) -> None:
        threading.Thread(target=self._loop, name="tfos-logs", daemon=True).start()

    def flush(self, timeout: float = 2.0) -> None:
        """Sends what is left (at exit); gives up quietly after ``timeout``."""
        self._stop.set()
        self._ship(timeout, final=True)

    def _loop(self) -> None:
        while not self._stop.wait(INTERVAL_SECS):
            self._ship(timeout=5.0)

    def _ship(self, timeout: float, final: bool = False) -> None:
        with self._lock:
            try:
                lines = self._read(final)
                for start in range(0, len(lines), _MAX_LINES):
                    batch = lines[start:start + _MAX_LINES]
                    try:
                        self._client.log(self._executor_id, batch, timeout=timeout)
                    except TFOSError:
                        self.dropped += len(batch)
            except Exception:  # noqa: BLE001 - a broken log channel must never reach training
                log.debug("log shipping failed", exc_info=True)

    def _read(self, final: bool) -> list[str]:
        try:
            with open(self._path, "rb") as f:
                f.seek(self._offset)
                data = f.read(_MAX_READ)
        except OSError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        if final and self._partial:
            complete.append(self._partial)
            self._partial = b""
        return [line.decode(errors="replace").rstrip("\r") for line in complete]
