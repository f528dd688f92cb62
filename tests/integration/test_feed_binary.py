"""Binary and string data fed from real Spark, byte-exact; DataFrame column types checked on the driver."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

import tfos


def awkward_values(n, seed=3):
    """Values fixed-width strings get wrong: trailing NULs, empties, tiny next to ~1 MiB (PNG-sized)."""
    rng = np.random.default_rng(seed)
    values = [rng.integers(0, 256, int(rng.integers(0, 80)), dtype=np.uint8).tobytes() + b"\x00" for _ in range(n)]
    values[0], values[1] = b"", b"\x00"
    for i in (5, n // 2, n - 3):
        values[i] = b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, 700_000 + i, dtype=np.uint8).tobytes() + b"\x00\x00"
    return values


TEXT = ["", "plain", "naïve café", "日本語", "emoji 🎉", "nul\x00", "trailing \x00\x00"]


def digest(value):
    return [type(value).__name__, len(value), hashlib.sha256(value).hexdigest()]


def write(args, ctx, records):
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump(records, f)


def read_all(out):
    records = []
    for name in sorted(os.listdir(out)):
        with open(os.path.join(out, name)) as f:
            records += json.load(f)
    return sorted(records)


# ---- RDD rows ----------------------------------------------------------------------------------------
def drain_binary_rows(args, ctx):
    feed = ctx.get_data_feed()
    records, step = [], 0
    while not feed.should_stop():
        step += 1
        if step % 2:
            rows = feed.next_batch(7)
        else:
            arrays = feed.next_batch_arrays(11)
            if arrays is None:
                break
            assert arrays[1].dtype == object
            rows = list(zip(arrays[0].tolist(), arrays[1]))
        records += [[int(i), *digest(value)] for i, value in rows]
    write(args, ctx, records)


def test_rdd_bytes_and_bytearray_rows_reach_next_batch_byte_exact(sc, tmp_path, no_leftovers):
    from pyspark.sql import SparkSession

    values = awkward_values(240)
    as_bytes = sc.parallelize([(i, values[i]) for i in range(120)], 3)
    # PySpark hands a DataFrame's binary column to RDD code as bytearray (before Spark 4.1's binaryAsBytes)
    df = SparkSession(sc).createDataFrame([(i, values[i]) for i in range(120, 240)], "id long, data binary")
    as_bytearray = df.rdd.map(lambda row: (row.id, bytearray(row.data)))
    cluster = tfos.run(sc, drain_binary_rows, {"out": str(tmp_path)}, 2, input_mode=tfos.InputMode.SPARK)
    cluster.train(as_bytes.union(as_bytearray))
    cluster.shutdown()
    assert read_all(tmp_path) == sorted([i, *digest(values[i])] for i in range(240))


def reverse_each(args, ctx):
    feed = ctx.get_data_feed(train_mode=False)
    while not feed.should_stop():
        rows = feed.next_batch(13)
        if rows:
            feed.batch_results([value[::-1] for _, value in rows])  # trailing NULs become leading ones


def test_rdd_inference_returns_bytes_byte_exact(sc, no_leftovers):
    values = awkward_values(150, seed=5)
    data = sc.parallelize([(i, bytearray(v) if i % 2 else v) for i, v in enumerate(values)], 4)
    with tfos.run(sc, reverse_each, None, 2, input_mode=tfos.InputMode.SPARK) as cluster:
        results = cluster.inference(data).collect()
    assert results == [v[::-1] for v in values]
    assert all(type(r) is bytes for r in results)


# ---- DataFrames --------------------------------------------------------------------------------------
def binary_frame(sc, n, seed):
    from pyspark.sql import SparkSession

    values = awkward_values(n, seed)
    rows = [(i, values[i], TEXT[i % len(TEXT)] + str(i)) for i in range(n)]
    return SparkSession(sc).createDataFrame(rows, "id long, img binary, name string").repartition(3), rows


def read_as_dataset(args, ctx):
    import tensorflow as tf

    dataset = ctx.get_data_feed().as_dataset(16)
    assert [spec.dtype for spec in dataset.element_spec] == [tf.int64, tf.string, tf.string]
    records = []
    for ids, images, names in dataset:  # one epoch
        records += [[int(i), *digest(img), name.decode()]
                    for i, img, name in zip(ids.numpy(), images.numpy(), names.numpy())]
    write(args, ctx, records)


def test_dataframe_binary_and_string_columns_reach_as_dataset_byte_exact(sc, tmp_path, no_leftovers):
    df, rows = binary_frame(sc, 200, seed=11)
    cluster = tfos.run(sc, read_as_dataset, {"out": str(tmp_path)}, 2, input_mode=tfos.InputMode.SPARK)
    cluster.train(df, num_epochs=1, feed_timeout=120)
    cluster.shutdown(timeout=120)
    assert read_all(tmp_path) == sorted([i, *digest(img), name] for i, img, name in rows)


def echo_image_and_name(args, ctx):
    feed = ctx.get_data_feed(train_mode=False)
    while not feed.should_stop():
        rows = feed.next_batch(9)
        if rows:
            assert all(type(img) is bytes and type(name) is str for _, img, name in rows)
            ids = np.array([i for i, _, _ in rows])
            images, names = np.empty(len(rows), object), np.empty(len(rows), object)
            images[:] = [img for _, img, _ in rows]
            names[:] = [name.upper() for _, _, name in rows]
            feed.batch_results((ids, images, names))  # three result columns: numbers, bytes, str


def test_dataframe_inference_returns_bytes_and_str_byte_exact(sc, no_leftovers):
    df, rows = binary_frame(sc, 120, seed=13)
    with tfos.run(sc, echo_image_and_name, None, 2, input_mode=tfos.InputMode.SPARK) as cluster:
        results = cluster.inference(df).collect()
    assert sorted(results) == [(i, img, name.upper()) for i, img, name in rows]
    assert all(type(img) is bytes and type(name) is str for _, img, name in results)


# ---- unsupported column types ------------------------------------------------------------------------
def count_rows(args, ctx):
    feed = ctx.get_data_feed()
    seen = 0
    while not feed.should_stop():
        seen += len(feed.next_batch(50))
    write(args, ctx, [seen])


@pytest.fixture
def typed_frames(sc):
    import datetime
    import decimal

    from pyspark.sql import SparkSession

    spark = SparkSession(sc)
    return {
        "stamp": spark.createDataFrame([(1, datetime.datetime(2024, 1, 1))], "id long, stamp timestamp"),
        "price": spark.createDataFrame([(1, decimal.Decimal("1.50"))], "id long, price decimal(10,2)"),
        "attrs": spark.createDataFrame([(1, {"a": 1})], "id long, attrs map<string,int>"),
    }


def test_unsupported_dataframe_columns_fail_on_the_driver_before_any_node_is_fed(sc, tmp_path, typed_frames,
                                                                                  no_leftovers):
    cluster = tfos.run(sc, count_rows, {"out": str(tmp_path)}, 2, input_mode=tfos.InputMode.SPARK)
    try:
        for column, df in typed_frames.items():
            # "DataFrame column ..." comes from the driver's schema check, before the first feeding job
            with pytest.raises(tfos.FeedDataError, match=rf"DataFrame column '{column}' has type "
                                                         r"(timestamp|decimal\(10,2\)|map<string,int>), which"):
                cluster.train(df)
            with pytest.raises(tfos.FeedDataError, match=rf"column '{column}'"):
                cluster.inference(df)
        assert sum(cluster.consumed_rows().values()) == 0
        assert cluster.state == tfos.ClusterState.RUNNING
        # the fix works (one row for two nodes: unbalanced)
        cluster.train(typed_frames["stamp"].selectExpr("id", "cast(stamp as long) as stamp"), balance=False)
    finally:
        cluster.shutdown()
    assert sum(read_all(tmp_path)) == 1
