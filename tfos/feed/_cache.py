"""The executor-local epoch cache (node process): one node's share of a fed queue, kept for later epochs.

``Cluster.train(data, num_epochs > 1)`` streams the first epoch from Spark; the node keeps
the chunks it receives here and serves epochs 2..N from them, without Spark jobs. Columns
arrive in chunks of about ``TFOS_FEED_CHUNK_BYTES``; the cache joins them into blocks of
about ``BLOCK_BYTES`` (few blocks make a shuffled gather cheap). Blocks stay in memory up to
``TFOS_FEED_CACHE_BYTES`` per node; beyond that each block is written to ``.npy`` files in
the node's cache directory (under ``TFOS_FEED_CACHE_DIR``, default the system's temporary
directory) and read back memory-mapped, so a node's memory stays bounded whatever the size
of its share: the budget plus one block being joined. The directory is deleted when the
node exits, and by the executor's task after the node process is gone, however it ended.

A shuffled epoch visits the rows in a random order drawn from ``(seed, epoch)``: the same
seed gives the same orders. Each piece handed to the queue holds the next rows of that
order, gathered with one indexing per block and column.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tfos.errors import TFOSError
from tfos.feed._columns import Column, VarColumn, concat


class CacheError(TFOSError):
    """The epoch cache could not keep a node's share (e.g. its disk is full)."""


@dataclass(frozen=True)
class _Spilled:
    """A column written to disk: a ``.npy`` file (two for a VarColumn: offsets, data)."""

    paths: tuple[str, ...]
    kind: str | None = None  # the VarColumn kind
    shape: tuple[int, ...] = ()

    def load(self) -> Column:
        arrays = [np.asarray(np.load(path, mmap_mode="r")) for path in self.paths]  # plain views index faster
        return VarColumn(self.kind, arrays[0], arrays[1], self.shape) if self.kind else arrays[0]


#: Chunks are joined into blocks of about this many bytes before they are kept.
BLOCK_BYTES = 16 << 20


class EpochCache:
    """Blocks of one queue's cached epoch, in arrival order; see the module docstring."""

    def __init__(self, directory: str, budget: int, block_bytes: int = BLOCK_BYTES) -> None:
        self.directory = directory
        self.budget = budget
        self.block_bytes = block_bytes
        self.blocks: list[list[Column | _Spilled]] = []
        self.starts: list[int] = [0]
        self.memory_bytes = 0
        self.disk_bytes = 0
        self._joining: list[list[Column]] = []  # chunks not yet in a block
        self._joining_bytes = 0
        self._joining_rows = 0
        self._files = 0
        self._lock = threading.Lock()  # add() on feed connection threads, close() on others
        self._closed = False

    @property
    def rows(self) -> int:
        with self._lock:  # not halfway through a join
            return self.starts[-1] + self._joining_rows

    def add(self, columns: list[Column]) -> None:
        """Keeps ``columns`` (one chunk); its block goes to memory while the budget allows, else to disk."""
        with self._lock:
            if self._closed:
                return
            self._joining.append(columns)
            self._joining_bytes += sum(c.nbytes for c in columns)
            self._joining_rows += len(columns[0])
            if self._joining_bytes >= self.block_bytes:
                self._join()

    def seal(self) -> None:
        """Keeps the chunks still waiting to fill a block (the epoch is all here)."""
        with self._lock:
            self._join()

    def pieces(self, rows_per_piece: int, order: np.ndarray | None = None) -> Iterator[list[Column]]:
        """The cached rows, ``rows_per_piece`` at a time: in arrival order, or by ``order`` (row numbers)."""
        with self._lock:
            self._join()
            blocks = [_loaded(block) for block in self.blocks]  # spilled blocks stay mapped for the pass
            starts = np.asarray(self.starts)
        if order is None:
            for columns in blocks:
                for start in range(0, len(columns[0]), rows_per_piece):
                    yield [c[start:start + rows_per_piece] for c in columns]
            return
        for at in range(0, len(order), rows_per_piece):
            yield _gather(blocks, starts, order[at:at + rows_per_piece])

    def order(self, rows: int, epoch: int, shuffle: bool, seed: int | None) -> np.ndarray | None:
        """Which ``rows`` of the cached ones the ``epoch``-th cached epoch serves, in order (None: all, as
        cached). A node caching more rows than an epoch serves leaves a different window out each epoch,
        or, shuffled, a different random subset."""
        cached = self.rows  # one read: each takes the lock
        if shuffle:
            rng = np.random.default_rng(None if seed is None else [seed, epoch])
            return rng.permutation(cached)[:rows]
        extra = cached - rows
        if extra <= 0:
            return None
        first = (epoch * extra) % cached
        return np.sort(np.arange(first + extra, first + cached) % cached)

    def close(self) -> None:
        """Drops the cached rows and deletes the spill files; later add() calls keep nothing."""
        with self._lock:
            self._closed = True
            self.blocks, self.starts, self._joining = [], [0], []
            self.memory_bytes = self.disk_bytes = self._joining_bytes = self._joining_rows = 0
            shutil.rmtree(self.directory, ignore_errors=True)

    def _join(self) -> None:
        """Makes the chunks not yet in a block one block (under the lock)."""
        if not self._joining:
            return
        chunks, size, rows = self._joining, self._joining_bytes, self._joining_rows
        self._joining, self._joining_bytes, self._joining_rows = [], 0, 0
        columns = chunks[0] if len(chunks) == 1 else [concat([c[j] for c in chunks]) for j in range(len(chunks[0]))]
        kept: list[Column | _Spilled] = list(columns)
        if self.memory_bytes + size > self.budget:
            kept = [self._spill(c) for c in columns]
            self.disk_bytes += size
        else:
            self.memory_bytes += size
        self.blocks.append(kept)
        self.starts.append(self.starts[-1] + rows)

    def _spill(self, column: Column) -> _Spilled:
        if isinstance(column, VarColumn):
            compact = column.compact()
            return _Spilled((self._write(compact.offsets), self._write(compact.data)), compact.kind, compact.shape)
        return _Spilled((self._write(column),), None, column.shape)

    def _write(self, array: np.ndarray) -> str:
        path = os.path.join(self.directory, f"{self._files}.npy")
        try:
            # Fed rows are the user's data: the node's cache directory and its queues' are the owner's only.
            os.makedirs(os.path.dirname(self.directory), mode=0o700, exist_ok=True)
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                np.save(f, np.ascontiguousarray(array))
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


def _gather(blocks: list[list[Column]], starts: np.ndarray, wanted: np.ndarray) -> list[Column]:
    """Rows ``wanted`` (numbers across the blocks that begin at ``starts``), in that order."""
    block_of = np.searchsorted(starts, wanted, side="right") - 1
    by_block = np.argsort(block_of, kind="stable")  # positions of the wanted rows, grouped by block
    grouped = block_of[by_block]
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(grouped)) + 1, [len(grouped)])).tolist()
    groups = [(int(grouped[lo]), by_block[lo:hi]) for lo, hi in zip(bounds, bounds[1:])]
    out: list[Column] = []
    for j, first in enumerate(blocks[0]):
        if isinstance(first, VarColumn):  # gathered block by block, then put in the wanted order
            parts = [_take(blocks[b][j], wanted[at] - starts[b]) for b, at in groups]
            out.append(_take(concat(parts), np.argsort(by_block)) if len(parts) > 1 else parts[0])
            continue
        column = np.empty((len(wanted), *first.shape[1:]), first.dtype)
        for b, at in groups:
            column[at] = blocks[b][j][wanted[at] - starts[b]]
        out.append(column)
    return out


def _take(column: Column, rows: np.ndarray) -> Column:
    """Rows ``rows`` of ``column``, in that order."""
    if not isinstance(column, VarColumn):
        return column[rows]
    width = column.row_width
    offsets = column.offsets
    # each row's value bounds: offsets[row * width .. row * width + width]
    bounds = offsets[rows[:, None] * width + np.arange(width + 1)]
    lengths = bounds[:, -1] - bounds[:, 0]
    out_starts = np.concatenate(([0], np.cumsum(lengths)))
    out_offsets = np.empty(len(rows) * width + 1, np.int64)
    out_offsets[0] = 0
    out_offsets[1:] = (bounds[:, 1:] - bounds[:, :1] + out_starts[:-1, None]).ravel()
    # byte i of row k's values is data[bounds[k, 0] + i]
    index = np.arange(out_starts[-1]) + np.repeat(bounds[:, 0] - out_starts[:-1], lengths)
    return VarColumn(column.kind, out_offsets, column.data[index], (len(rows), *column.shape[1:]))
