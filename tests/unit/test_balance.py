"""EpochPlan: balanced epochs' routing (no Spark)."""

from __future__ import annotations

import pytest

from tfos.errors import FeedDataError
from tfos.feed._balance import EpochPlan


def _fed(plan: EpochPlan, asks: list[tuple[int, int | None]]) -> dict[int | None, list[int]]:
    """Global row positions each node (None: left out) gets, asking partitions in ``asks`` order."""
    got: dict[int | None, list[int]] = {}
    for partition, executor in asks:
        position = plan.starts[partition]
        segments = plan.segments(partition, executor)
        assert [s[0] for s in segments] == [0, *(s[1] for s in segments[:-1])]  # contiguous, in order
        assert segments[-1][1] == plan.counts[partition]
        for a, b, node, served in segments:
            got.setdefault(node if served else None, []).extend(range(position + a, position + b))
    return got


def test_skewed_partitions_give_every_node_the_same_rows_and_lose_none_but_the_left_over():
    plan = EpochPlan([1000, 100, 37], consumers=[0, 1], epoch=0)
    got = _fed(plan, [(0, 0), (1, 1), (2, 1)])
    assert plan.rows_per_node == 568
    assert len(got[0]) == len(got[1]) == 568
    assert len(got[None]) == 1137 % 2
    assert sorted(got[0] + got[1] + got[None]) == list(range(1137))


def test_rows_stay_on_their_executor_while_its_node_needs_them():
    plan = EpochPlan([10, 10], consumers=[0, 1], epoch=0)
    assert plan.segments(0, 0) == [(0, 10, 0, True)]
    assert plan.segments(1, 1) == [(0, 10, 1, True)]


def test_a_partition_bigger_than_its_node_needs_spills_to_the_others():
    plan = EpochPlan([30, 0, 0], consumers=[0, 1, 2], epoch=0)
    assert plan.segments(0, 1) == [(0, 10, 1, True), (10, 20, 0, True), (20, 30, 2, True)]


def test_the_left_over_rows_change_every_epoch_until_each_sat_out_once():
    counts, consumers = [4, 3], [0, 1, 2]  # 7 rows, 3 nodes: one row left over an epoch
    left_out = []
    for epoch in range(7):
        got = _fed(EpochPlan(counts, consumers, epoch), [(0, 0), (1, 2)])
        assert [len(got[n]) for n in consumers] == [2, 2, 2]
        left_out += got[None]
    assert sorted(left_out) == list(range(7))


def test_the_left_over_window_wraps_around_the_end():
    plan = EpochPlan([5], consumers=[0, 1, 2], epoch=2)  # 2 left over, from position 4: rows 4 and 0
    assert plan.segments(0, None) == [(0, 1, None, False), (1, 2, 0, True), (2, 3, 1, True), (3, 4, 2, True),
                                      (4, 5, None, False)]
    got = _fed(EpochPlan([5], consumers=[0, 1, 2], epoch=2), [(0, None)])
    assert sorted(got[None]) == [0, 4]
    assert sorted(len(got[n]) for n in (0, 1, 2)) == [1, 1, 1]


def test_a_cached_epoch_sends_the_left_over_rows_to_caches_one_per_node():
    plan = EpochPlan([8], consumers=[0, 1, 2], epoch=0, cached=True)  # 2 left over: rows 0 and 1
    assert plan.segments(0, 0) == [(0, 1, 0, False), (1, 2, 1, False), (2, 4, 0, True), (4, 6, 1, True),
                                   (6, 8, 2, True)]


def test_a_partition_feeding_several_nodes_alternates_between_them():
    plan = EpochPlan([5000, 0], consumers=[0, 1], epoch=0)
    assert plan.segments(0, 0) == [(0, 2048, 0, True), (2048, 4096, 1, True), (4096, 4548, 0, True),
                                   (4548, 5000, 1, True)]


def test_asking_again_gives_the_same_answer():
    plan = EpochPlan([10, 10], consumers=[0, 1], epoch=0)
    first = plan.segments(0, 1)
    assert plan.segments(0, 0) == first
    assert plan.segments(1, 1) == [(0, 10, 0, True)]


def test_fewer_rows_than_nodes_is_a_clear_error():
    with pytest.raises(FeedDataError, match="1 rows, fewer than the 2 chief / worker nodes"):
        EpochPlan([1, 0], consumers=[0, 1], epoch=0)


def test_an_uncounted_partition_is_refused():
    with pytest.raises(FeedDataError, match="partition 2 was not counted"):
        EpochPlan([1, 1], consumers=[0], epoch=0).segments(2, 0)
