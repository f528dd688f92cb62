"""EpochCache and a FeedQueue serving cached epochs (no Spark, no sockets)."""

from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest

from tfos.feed._cache import CacheError, EpochCache
from tfos.feed._columns import VarColumn
from tfos.feed._hub import CLOSED, Chunk, FeedConnection, FeedQueue


def chunk_columns(start, stop):
    ids = np.arange(start, stop, dtype=np.int64)
    blobs = VarColumn.from_values("binary", [bytes([i % 256]) * (i % 5) + b"\x00" for i in range(start, stop)])
    return [np.stack([ids, ids], axis=1).astype(np.float32), ids, blobs]


def ids_of(pieces):
    out = []
    for columns in pieces:
        assert (columns[0][:, 0] == columns[1]).all()
        assert columns[2].values() == [bytes([i % 256]) * (i % 5) + b"\x00" for i in columns[1].tolist()]
        out += columns[1].tolist()
    return out


def test_rows_spill_to_memory_mapped_files_beyond_the_budget_and_come_back_exactly(tmp_path):
    cache = EpochCache(str(tmp_path / "c"), budget=2000, block_bytes=500)
    for start in range(0, 300, 50):
        cache.add(chunk_columns(start, start + 50))
    assert cache.rows == 300
    assert cache.memory_bytes <= 2000 < cache.memory_bytes + cache.disk_bytes
    assert len(os.listdir(tmp_path / "c")) >= 3  # spilled chunks' files
    assert ids_of(cache.pieces(64)) == list(range(300))
    cache.close()
    assert not os.path.exists(tmp_path / "c")


def test_shuffled_orders_visit_every_row_once_and_repeat_with_the_seed(tmp_path):
    cache = EpochCache(str(tmp_path / "c"), budget=3000, block_bytes=1500)
    for start in range(0, 300, 40):
        cache.add(chunk_columns(start, min(300, start + 40)))
    orders = [ids_of(cache.pieces(37, cache.order(300, e, shuffle=True, seed=7))) for e in (1, 2)]
    assert orders[0] == cache.order(300, 1, shuffle=True, seed=7).tolist()  # rows come in the drawn order
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(300))
    assert orders[0] != orders[1] and orders[0] != list(range(300))
    assert ids_of(cache.pieces(37, cache.order(300, 1, shuffle=True, seed=7))) == orders[0]
    cache.close()


def test_gathered_rows_of_several_binary_values_keep_every_byte(tmp_path):
    values = [b"", b"\x00", b"ab\x00", bytes(range(256)), b"z", b""]
    cache = EpochCache(str(tmp_path / "c"), budget=0, block_bytes=1)  # each chunk its own spilled block
    cache.add([VarColumn.from_values("binary", values[:4], shape=(2, 2))])
    cache.add([VarColumn.from_values("binary", values[4:], shape=(1, 2))])
    (column,) = next(cache.pieces(3, np.array([2, 0, 1])))
    assert column.shape == (3, 2)
    assert column.values() == values[4:] + values[:4]
    cache.close()


def test_a_node_caching_more_rows_than_an_epoch_serves_leaves_a_different_one_out_each_epoch(tmp_path):
    cache = EpochCache(str(tmp_path / "c"), budget=1 << 20)
    cache.add(chunk_columns(0, 5))
    served = [ids_of(cache.pieces(2, cache.order(4, e, shuffle=False, seed=None))) for e in range(1, 6)]
    assert [sorted(set(range(5)) - set(s)) for s in served] == [[1], [2], [3], [4], [0]]
    assert all(len(s) == 4 for s in served)
    shuffled = [cache.order(4, e, shuffle=True, seed=1) for e in (1, 2)]
    assert all(len(o) == len(set(o.tolist())) == 4 for o in shuffled)
    cache.close()


def test_rows_counted_while_a_block_spills_include_that_block(tmp_path, monkeypatch):
    cache = EpochCache(str(tmp_path / "c"), budget=0)
    cache.add(chunk_columns(0, 10))
    saving, release, real_save = threading.Event(), threading.Event(), np.save

    def slow_save(path, array):
        saving.set()
        release.wait(10)
        real_save(path, array)

    monkeypatch.setattr(np, "save", slow_save)
    sealer = threading.Thread(target=cache.seal)
    sealer.start()
    assert saving.wait(10)
    counted = []
    reader = threading.Thread(target=lambda: counted.append(cache.rows))  # e.g. a shuffled epoch drawing its order
    reader.start()
    reader.join(0.2)
    release.set()
    sealer.join(10)
    reader.join(10)
    assert counted == [10]
    cache.close()


def test_a_full_disk_is_a_clear_error_naming_the_settings(tmp_path, monkeypatch):
    def full(path, array):
        raise OSError(errno.ENOSPC, "No space left on device")

    cache = EpochCache(str(tmp_path / "c"), budget=0)
    monkeypatch.setattr(np, "save", full)
    cache.add(chunk_columns(0, 10))  # waits in memory for its block to fill
    with pytest.raises(CacheError, match=r"ran out of disk space in .*TFOS_FEED_CACHE_DIR.*cache=False"):
        cache.seal()
    with pytest.raises(CacheError, match="cannot write /dev/null/x"):
        EpochCache("/dev/null/x", budget=0, block_bytes=1).add(chunk_columns(0, 10))


def test_a_queue_serves_the_cached_epochs_after_the_first_then_deletes_the_cache(tmp_path):
    queue = FeedQueue("input", capacity=1 << 20)
    cache = EpochCache(str(tmp_path / "c"), budget=500)
    queue.set_schema({"cols": []}, epoch_rows=100, cache=cache,
                     cache_plan={"first": 0, "epochs": 3, "shuffle": True, "seed": 1})
    conn = FeedConnection(sock=None, inference=False)
    for start in range(0, 100, 25):
        cols = chunk_columns(start, start + 25)
        assert queue.put(Chunk(0, cols, 25, sum(c.nbytes for c in cols), conn))
    queue.end_epoch(0)  # the driver fed the whole first epoch: the cached epochs follow
    epochs = []
    for _ in range(3):
        seen = []
        while len(seen) < 100:
            pieces, _ = queue.take(100 - len(seen), within_epoch=True)
            seen += [int(i) for chunk, a, b in pieces for i in chunk.columns[1][a:b]]
        queue.finish_epoch()
        epochs.append(seen)
    assert epochs[0] == list(range(100))  # as fed
    assert sorted(epochs[1]) == sorted(epochs[2]) == list(range(100)) and epochs[1] != epochs[2]
    assert queue.consumed == 300
    queue.close()
    assert queue.take(10, within_epoch=False) == ([], CLOSED)
    assert queue.cache is None and not os.path.exists(tmp_path / "c")
