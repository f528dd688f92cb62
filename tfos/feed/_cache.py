"""The executor-local epoch cache (node process): one node's share of a fed queue, kept for later epochs.

``Cluster.train(data, num_epochs > 1)`` streams the first epoch from Spark; the node keeps
the chunks it receives here and serves epochs 2..N from them, without Spark jobs. Columns
stay in memory up to ``TFOS_FEED_CACHE_BYTES`` per node; beyond that each chunk is written
to ``.npy`` files in the node's cache directory (under ``TFOS_FEED_CACHE_DIR``, default the
system's temporary directory) and read back memory-mapped, so a node's memory stays bounded
whatever the size of its share (a spilled chunk is mapped while it is served, so open
files stay few). The directory is deleted when the node exits, and by the executor's task
after the node process is gone, however it ended.

A shuffled epoch visits the rows in a random order drawn from ``(seed, epoch)``: the same
seed gives the same orders. Each piece handed to the queue holds random rows of the share,
gathered block by block.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tfos import _constants as C
from tfos.errors import TFOSError
from tfos.feed._columns import Column, VarColumn, concat


class CacheError(TFOSError):
    """The epoch cache could not keep a node's share (e.g. its disk is full)."""


def cache_dir(cluster_id: str, executor_id: int) -> str:
    """Where a node's cache spills; the executor's task deletes it after the node exits."""
    base = C.get_str(C.FEED_CACHE_DIR) or os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(base, f"tfos-cache-{cluster_id}-{executor_id}")


@dataclass(frozen=True)
class _Spilled:
    """A column written to disk: a ``.npy`` file (two for a VarColumn: offsets, data)."""

    paths: tuple[str, ...]
    kind: str | None = None  # the VarColumn kind
    shape: tuple[int, ...] = ()

    def load(self) -> Column:
        arrays = [np.load(path, mmap_mode="r") for path in self.paths]
        return VarColumn(self.kind, arrays[0], arrays[1], self.shape) if self.kind else arrays[0]


class EpochCache:
    """Chunks of one queue's cached epoch, in arrival order; see the module docstring."""

    def __init__(self, directory: str, budget: int) -> None:
        self.directory = directory
        self.budget = budget
        self.blocks: list[list[Column | _Spilled]] = []
        self.starts: list[int] = [0]
        self.memory_bytes = 0
        self.disk_bytes = 0
        self._files = 0
        self._lock = threading.Lock()  # add() on feed connection threads, close() on others
        self._closed = False

    @property
    def rows(self) -> int:
        return self.starts[-1]

    def add(self, columns: list[Column]) -> None:
        """Keeps ``columns`` (one chunk); in memory while the budget allows, else memory-mapped from disk."""
        size = sum(c.nbytes for c in columns)
        with self._lock:
            if self._closed:
                return
            kept: list[Column | _Spilled] = list(columns)
            if self.memory_bytes + size > self.budget:
                kept = [self._spill(c) for c in columns]
                self.disk_bytes += size
            else:
                self.memory_bytes += size
            self.blocks.append(kept)
            self.starts.append(self.starts[-1] + len(columns[0]))

    def pieces(self, rows_per_piece: int, order: np.ndarray | None = None) -> Iterator[list[Column]]:
        """The cached rows, ``rows_per_piece`` at a time: in arrival order, or by ``order`` (row numbers)."""
        if order is None:
            for block in self.blocks:
                columns = _loaded(block)
                for start in range(0, len(columns[0]), rows_per_piece):
                    yield [c[start:start + rows_per_piece] for c in columns]
            return
        starts = np.asarray(self.starts)
        for at in range(0, len(order), rows_per_piece):
            wanted = order[at:at + rows_per_piece]
            block_of = np.searchsorted(starts, wanted, side="right") - 1
            by_block = np.argsort(block_of, kind="stable")  # the piece's rows grouped by block, in one sort
            blocks, firsts = np.unique(block_of[by_block], return_index=True)
            parts = []
            for b, rows in zip(blocks.tolist(), np.split(wanted[by_block], firsts[1:])):
                parts.append([_take(c, rows - starts[b]) for c in _loaded(self.blocks[b])])
            yield parts[0] if len(parts) == 1 else [concat([p[j] for p in parts]) for j in range(len(parts[0]))]

    def order(self, rows: int, epoch: int, shuffle: bool, seed: int | None) -> np.ndarray | None:
        """Which ``rows`` of the cached ones the ``epoch``-th cached epoch serves, in order (None: all, as
        cached). A node caching more rows than an epoch serves leaves a different window out each epoch,
        or, shuffled, a different random subset."""
        if shuffle:
            rng = np.random.default_rng(None if seed is None else [seed, epoch])
            return rng.permutation(self.rows)[:rows]
        extra = self.rows - rows
        if extra <= 0:
            return None
        first = (epoch * extra) % self.rows
        kept = np.arange(first + extra, first + self.rows) % self.rows
        return np.sort(kept)

    def close(self) -> None:
        """Drops the cached rows and deletes the spill files; later add() calls keep nothing."""
        with self._lock:
            self._closed = True
            self.blocks, self.starts = [], [0]
            self.memory_bytes = self.disk_bytes = 0
            shutil.rmtree(self.directory, ignore_errors=True)

    def _spill(self, column: Column) -> _Spilled:
        if isinstance(column, VarColumn):
            compact = column.compact()
            return _Spilled((self._write(compact.offsets), self._write(compact.data)), compact.kind, compact.shape)
        return _Spilled((self._write(column),), None, column.shape)

    def _write(self, array: np.ndarray) -> str:
        path = os.path.join(self.directory, f"{self._files}.npy")
        try:
            os.makedirs(self.directory, exist_ok=True)
            np.save(path, np.ascontiguousarray(array))
            self._files += 1
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheError(
                    f"the epoch cache ran out of disk space in {self.directory} after {self.disk_bytes:,} bytes "
                    f"({self.memory_bytes:,} more in memory). Point TFOS_FEED_CACHE_DIR at a bigger local disk, "
                    "raise TFOS_FEED_CACHE_BYTES if memory allows, or pass cache=False to Cluster.train "
                    "(every epoch is then read from Spark).") from None
            raise CacheError(f"the epoch cache cannot write {path}: {exc}") from None
        return path


def _loaded(block: list[Column | _Spilled]) -> list[Column]:
    return [c.load() if isinstance(c, _Spilled) else c for c in block]


def _take(column: Column, rows: np.ndarray) -> Column:
    """Rows ``rows`` of ``column``, in that order."""
    if not isinstance(column, VarColumn):
        return column[rows]
    width = column.row_width
    offsets, data = column.offsets, column.data
    lengths = offsets[(rows + 1) * width] - offsets[rows * width]
    out_offsets = np.zeros(len(rows) * width + 1, np.int64)
    pieces = []
    for i, row in enumerate(rows.tolist()):
        first = offsets[row * width]
        out_offsets[i * width + 1:(i + 1) * width + 1] = offsets[row * width + 1:(row + 1) * width + 1] - first
        pieces.append(data[first:first + lengths[i]])
    ends = np.cumsum(np.concatenate(([0], lengths)))
    for i in range(len(rows)):  # shift each row's offsets by the bytes before it
        out_offsets[i * width + 1:(i + 1) * width + 1] += ends[i]
    out_data = np.concatenate(pieces) if pieces else np.empty(0, np.uint8)
    return VarColumn(column.kind, out_offsets, out_data, (len(rows), *column.shape[1:]))
