"""TensorFlowOnSpark's ``TFManager`` module (node process): feed queues a program drives by hand.

In TFoS, ``ctx.mgr`` was a multiprocessing manager whose queues took one row per
``put``, with ``None`` marking the end of the feed; some programs drove a ``DataFeed``
that way themselves. Here a :class:`TFManager` wraps the node's native feed buffers:
``get_queue(name).put(row)`` adds one row to them (``DataFeed`` reads it like a fed
row) and ``get()`` returns the results ``DataFeed.batch_results`` produced for such
rows. Rows fed by ``Cluster.train`` / ``inference`` still take the fast batched path.
"""

from __future__ import annotations

import queue as _queue
import threading
from typing import Any

import numpy as np

from tfos import _constants as C
from tfos.compat._unsupported import module_getattr
from tfos.errors import FeedDataError, TFOSConfigError
from tfos.feed._columns import is_multi_field, pack
from tfos.feed._feeder import result_rows
from tfos.feed._hub import Chunk, FeedQueue
from tfos.feed._protocol import column_spec

__all__ = ["TFManager", "connect", "start"]

__getattr__, __dir__ = module_getattr(__name__, {
    "mgr": "It was the manager process's own instance: use the manager TFManager.start(...) returns, or ctx.mgr.",
    "qdict": "It held that process's queues: use get_queue(name) of the manager from TFManager.start(...) or ctx.mgr.",
    "kdict": "It held that process's values: use get(key) / set(key, value) of the manager from "
             "TFManager.start(...) or ctx.mgr.",
})


class TFManager:
    """TensorFlowOnSpark's manager: named queues plus a small key-value store (``get`` / ``set``).

    ``hub`` is what serves the queues: the node's feed hub, or a :class:`LocalHub` made
    by :func:`start`.
    """

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self._values: dict[str, Any] = {"state": "running"}
        self._queues: dict[str, ManagerQueue] = {}
        self._lock = threading.Lock()

    def get_queue(self, qname: str) -> ManagerQueue:
        """The queue ``qname``: ``put(row)`` feeds a row (``None`` ends the feed), ``get()`` reads a result."""
        with self._lock:
            if qname not in self._queues:
                self._queues[qname] = ManagerQueue(self, self.hub.queue(qname))
            return self._queues[qname]

    def get(self, key: str) -> Any:
        return self._values[key]

    def set(self, key: str, value: Any) -> None:
        self._values[key] = value


class LocalConnection:
    """Where results for hand-fed rows go: the manager queue named by ``DataFeed(qname_out=...)``."""

    inference = True  # rows put by hand may get results back (batch_results)

    def __init__(self, manager: TFManager) -> None:
        self.manager = manager

    def send_results(self, columns: list[np.ndarray], count: int, qname_out: str = "output") -> None:
        out = self.manager.get_queue(qname_out)
        for row in result_rows(columns):
            out.results.put(row)


class ManagerQueue:
    """One named queue of a :class:`TFManager`, with ``queue.Queue``'s methods."""

    def __init__(self, manager: TFManager, feed: FeedQueue) -> None:
        self.feed = feed
        self.results: _queue.Queue[Any] = _queue.Queue()
        self._conn = LocalConnection(manager)
        self._count = 0
        self._lock = threading.Lock()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Feeds one row (a tuple of fields or a single value); ``None`` ends the feed.

        Waits while the queue's buffer (``TFOS_FEED_BUFFER_BYTES``) is full.
        """
        if item is None:
            self.feed.close()
            return
        with self._lock:
            expected = self.feed.schema["cols"] if self.feed.schema else None
            multi = is_multi_field(item) if self.feed.schema is None else bool(self.feed.schema["multi"])
            try:
                columns = pack([item], -1, self._count, multi, expected)
            except FeedDataError as exc:
                detail = str(exc).split(": ", 1)[-1]
                raise FeedDataError(f"item {self._count} put into queue {self.feed.name!r}: {detail}",
                                    row=self._count) from None
            if self.feed.schema is None:
                self.feed.set_schema({"multi": multi, "names": None, "cols": [column_spec(c) for c in columns]})
            self._count += 1
        self.feed.put(Chunk(None, columns, 1, sum(c.nbytes for c in columns), self._conn))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The next result ``batch_results`` produced for a row put by hand (``queue.Empty`` if none came)."""
        return self.results.get(block, timeout)

    def task_done(self) -> None:
        """Accepted for TensorFlowOnSpark code; rows count as done once a DataFeed has read them."""

    def join(self) -> None:
        """Waits until every row put so far has been read (or the queue was terminated)."""
        with self.feed.cond:
            self.feed.cond.wait_for(lambda: not self.feed.chunks or self.feed.terminated)

    def qsize(self) -> int:
        """Rows put and not yet read, plus results not yet taken with ``get``."""
        with self.feed.cond:
            waiting = sum(chunk.nrows - chunk.pos for chunk in self.feed.chunks)
        return waiting + self.results.qsize()

    def empty(self) -> bool:
        return self.qsize() == 0


class LocalHub:
    """Feed buffers in this process, for a manager made by :func:`start` (no Spark involved)."""

    def __init__(self, queues: list[str]) -> None:
        self.capacity = C.get_int(C.FEED_BUFFER_BYTES)
        self.queues = {name: FeedQueue(name, self.capacity) for name in queues}
        self.lock = threading.Lock()
        self.manager: TFManager | None = None

    def queue(self, name: str) -> FeedQueue:
        with self.lock:
            if name not in self.queues:
                self.queues[name] = FeedQueue(name, self.capacity)
            return self.queues[name]

    def terminate(self, feed: FeedQueue) -> None:
        feed.terminate()
        if self.manager is not None:
            self.manager.set("state", "terminating")


def start(authkey: bytes | str, queues: list[str], mode: str = "local") -> TFManager:
    """A new manager with the named queues, for driving a ``TFNode.DataFeed`` by hand.

    Args:
        authkey: accepted for TensorFlowOnSpark code; nothing leaves this process.
        queues: queue names, e.g. ``['input', 'output', 'error']``.
        mode: ``'local'``. TFoS's ``'remote'`` managers served pickled objects over TCP;
            tfos feeds nodes through ``Cluster.train`` over its own authenticated
            channel instead, so ``'remote'`` is refused.
    """
    if mode != "local":
        raise TFOSConfigError(f"TFManager.start(mode={mode!r}) is not supported: only 'local' managers exist in tfos. "
                              "Feed nodes from the driver with TFCluster.train / Cluster.train instead.")
    hub = LocalHub(list(queues))
    manager = TFManager(hub)
    hub.manager = manager
    return manager


def connect(address: Any, authkey: bytes | str) -> TFManager:
    """Not provided: TFoS used it to reach a node's manager over TCP with pickled messages."""
    raise TFOSConfigError("TFManager.connect() is not supported: tfos never exposes a node's queues over the network. "
                          "Feed nodes with TFCluster.train / Cluster.train, which stream batches over an "
                          "authenticated channel.")
