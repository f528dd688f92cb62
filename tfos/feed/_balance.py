"""Balanced epochs (driver): which rows of each partition go to which fed node.

A balanced epoch gives every chief / worker the same number of rows, ``N // W`` for
``N`` rows and ``W`` fed nodes, so TensorFlow knows each epoch's length before it
starts. The ``r = N % W`` rows that do not divide evenly sit the epoch out, a
different ``r`` each epoch: epoch ``e`` (0-based) leaves out the ``r`` rows starting
at position ``e * r`` (mod ``N``) of the data in partition order, so no row sits out
twice before every row has sat out once.

When the nodes cache the epoch (``Cluster.train``'s epoch cache), the left-over rows are
not dropped but sent to nodes (one each) for their caches only: every node then serves
``N // W`` rows of its cached share each later epoch, a different row sitting out each
epoch on a node that holds one more, so every row keeps being trained on.

Rows are routed as their partition's feeding task starts: to the node on the task's
own executor while that node still needs rows, then to the nodes with the most rows
still missing (over TCP). A partition feeding several nodes alternates between them,
``SLICE_ROWS`` rows at a time: in synchronous training a node whose rows came last
would starve while the others wait for it, their buffers full, and the task blocked.

Row counts per partition come from a counting job before the first epoch; a partition
that yields another count when fed is a FeedDataError.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from tfos.errors import FeedDataError

#: Rows sent to one node before a partition feeding several turns to the next.
SLICE_ROWS = 2048

#: A run of rows of one partition: (start, stop, executor_id of the node to feed or None to leave
#: out, whether the node serves the rows this epoch or only caches them).
Segment = tuple[int, int, "int | None", bool]


class EpochPlan:
    """The routing of one epoch of one queue; thread-safe (feeding tasks ask concurrently)."""

    def __init__(self, counts: Sequence[int], consumers: Sequence[int], epoch: int, cached: bool = False) -> None:
        total = sum(counts)
        if not consumers:
            raise ValueError("no fed nodes")
        self.rows_per_node = total // len(consumers)
        if self.rows_per_node == 0:
            raise FeedDataError(f"the data has {total} rows, fewer than the {len(consumers)} chief / worker nodes "
                                "it feeds: a balanced epoch needs at least one row per node. Feed more rows, or pass "
                                "balance=False to Cluster.train")
        self.counts = list(counts)
        self.starts = [sum(self.counts[:p]) for p in range(len(self.counts))]
        left_over = total % len(consumers)
        first = (epoch * left_over) % total
        # the rows left out, as global [start, stop) ranges (the window may wrap around the end)
        self.left_out = [(first, min(first + left_over, total))]
        if first + left_over > total:
            self.left_out.append((0, first + left_over - total))
        self._missing = {eid: self.rows_per_node for eid in consumers}
        self._cache_only = list(consumers)[:left_over] if cached else []  # who caches a left-over row
        self._given: dict[int, list[Segment]] = {}
        self._lock = threading.Lock()

    def segments(self, partition: int, executor_id: int | None) -> list[Segment]:
        """The runs of ``partition``'s rows, in order, and where each goes; the same answer if asked again."""
        if not 0 <= partition < len(self.counts):
            raise FeedDataError(f"partition {partition} was not counted: the data has {len(self.counts)} partitions")
        with self._lock:
            if partition not in self._given:
                self._given[partition] = self._route(partition, executor_id)
            return self._given[partition]

    def routed_rows(self, partition: int) -> int:
        """Rows of ``partition`` sent to some node this epoch (served or cached only), as routed so far."""
        with self._lock:
            return sum(stop - start for start, stop, eid, _ in self._given.get(partition, ()) if eid is not None)

    def _route(self, partition: int, executor_id: int | None) -> list[Segment]:
        start, stop = self.starts[partition], self.starts[partition] + self.counts[partition]
        runs: list[tuple[int, int, bool]] = []  # (global start, stop, kept)
        position = start
        for a, b in sorted(self.left_out):
            a, b = max(a, start), min(b, stop)
            if a < b:
                if position < a:
                    runs.append((position, a, True))
                runs.append((a, b, False))
                position = b
        if position < stop:
            runs.append((position, stop, True))
        out: list[Segment] = []
        for a, b, kept in runs:
            if not kept:
                while a < b and self._cache_only:
                    out.append((a - start, a - start + 1, self._cache_only.pop(0), False))
                    a += 1
                if a < b:
                    out.append((a - start, b - start, None, False))
                continue
            shares: dict[int, int] = {}
            while a + sum(shares.values()) < b:
                node = self._pick(executor_id)
                n = min(b - a - sum(shares.values()), self._missing[node])
                self._missing[node] -= n
                shares[node] = shares.get(node, 0) + n
            while shares:  # the shares, interleaved a slice at a time
                for node in list(shares):
                    n = min(SLICE_ROWS, shares[node])
                    out.append((a - start, a - start + n, node, True))
                    a += n
                    shares[node] -= n
                    if not shares[node]:
                        del shares[node]
        return out

    def _pick(self, executor_id: int | None) -> int:
        if self._missing.get(executor_id, 0) > 0:
            return executor_id  # type: ignore[return-value]
        node = max(self._missing, key=lambda eid: self._missing[eid])
        if self._missing[node] == 0:  # cannot happen while the counts hold: every kept row has a place
            raise FeedDataError("more rows were routed than counted")
        return node


class StickyRoutes:
    """The routing of an unbalanced epoch (or a stream): all of a partition's rows go to one node, the node on
    the first attempt's executor when it is fed, else one by partition number; a retried attempt, wherever
    Spark runs it, is sent to the same node, which knows how many of the rows it already holds."""

    def __init__(self, consumers: Sequence[int]) -> None:
        self.consumers = list(consumers)
        self._given: dict[int, list[Segment]] = {}
        self._lock = threading.Lock()

    def segments(self, partition: int, executor_id: int | None) -> list[Segment]:
        with self._lock:
            if partition not in self._given:
                node = executor_id if executor_id in self.consumers else \
                    self.consumers[partition % len(self.consumers)]
                self._given[partition] = [(0, -1, node, True)]
            return self._given[partition]
