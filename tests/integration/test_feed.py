"""InputMode.SPARK on real Spark: RDD and DataFrame feeds, inference, queues, errors."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

import tfos


def rows_rdd(sc, n, partitions, dim=8):
    return sc.parallelize(range(n), partitions).map(lambda i: (np.full(dim, i, np.float32), i))


def drain_ids(args, ctx):
    """Reads every row of queue args['q'] until the feed ends; records the ids seen."""
    feed = ctx.get_data_feed(qname_in=args.get("q", "input"))
    seen = []
    while True:
        batch = feed.next_batch_arrays(args.get("batch", 50))
        if batch is None:
            break
        assert (batch[0][:, 0] == batch[1]).all()
        seen.extend(int(i) for i in batch[1])
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump(seen, f)


def seen_ids(out):
    ids = []
    for name in os.listdir(out):
        with open(os.path.join(out, name)) as f:
            ids += json.load(f)
    return sorted(ids)


@pytest.mark.parametrize("balance", [True, False])
def test_rdd_feed_reaches_each_worker_exactly_once_per_epoch(sc, tmp_path, no_leftovers, balance):
    n = 3000
    cluster = tfos.run(sc, drain_ids, {"out": str(tmp_path)}, 2, input_mode=tfos.InputMode.SPARK)
    cluster.train(rows_rdd(sc, n, 5), num_epochs=2, balance=balance)
    cluster.shutdown()
    assert seen_ids(tmp_path) == sorted(list(range(n)) * 2)
    counts = cluster.consumed_rows()
    assert set(counts) == {"chief:0", "worker:0"}
    assert sum(counts.values()) == 2 * n
    if balance:
        assert counts == {"chief:0": n, "worker:0": n}


def drain_dataframe(args, ctx):
    feed = ctx.get_data_feed(input_mapping={"features": "x", "id": "id"})
    seen = []
    while not feed.should_stop():
        batch = feed.next_batch(64)
        if batch:
            assert batch["x"].shape[1:] == (4,)
            assert (batch["x"][:, 0] == batch["id"]).all()
            seen.extend(int(i) for i in batch["id"])
    with open(os.path.join(args["out"], f"{ctx.job_name}.json"), "w") as f:
        json.dump(seen, f)


def test_dataframe_feed_through_arrow(sc, tmp_path, no_leftovers):
    from pyspark.sql import SparkSession

    spark = SparkSession(sc)
    n = 2000
    df = spark.createDataFrame([(i, [float(i)] * 4, f"r{i}") for i in range(n)], ["id", "features", "name"])
    cluster = tfos.run(sc, drain_dataframe, {"out": str(tmp_path)}, 2, input_mode=tfos.InputMode.SPARK)
    cluster.train(df.repartition(3), num_epochs=2)
    cluster.shutdown()
    assert seen_ids(tmp_path) == sorted(list(range(n)) * 2)
    assert sum(cluster.consumed_rows().values()) == 2 * n


def square_sum(args, ctx):
    feed = ctx.get_data_feed(train_mode=False)
    while not feed.should_stop():
        rows = feed.next_batch(37)
        if rows:
            feed.batch_results([float((features ** 2).sum()) + label for features, label in rows])


def test_inference_returns_one_result_per_row_in_order(sc, no_leftovers):
    data = rows_rdd(sc, 1234, 4, dim=3)
    expected = [float((np.full(3, i, np.float32) ** 2).sum()) + i for i in range(1234)]
    with tfos.run(sc, square_sum, None, 2, input_mode=tfos.InputMode.SPARK) as cluster:
        results = cluster.inference(data)
        assert results.getNumPartitions() == 4
        assert results.collect() == expected


def test_a_reader_that_stops_early_gets_its_rows_and_the_cluster_serves_on(sc, no_leftovers):
    from pyspark.sql import SparkSession

    n = 40_000  # far more rows than the first results: the node still has rows queued when take() leaves
    data = rows_rdd(sc, n, 4, dim=3)
    expected = [float((np.full(3, i, np.float32) ** 2).sum()) + i for i in range(n)]
    spark = SparkSession(sc)
    with tfos.run(sc, square_sum, None, 2, input_mode=tfos.InputMode.SPARK) as cluster:
        assert cluster.inference(data).take(3) == expected[:3]
        assert cluster.inference(data).first() == expected[0]
        as_df = spark.createDataFrame(cluster.inference(data).map(lambda v: (v,)), ["y"])
        assert [r.y for r in as_df.limit(5).collect()] == expected[:5]
        assert cluster.inference(data).collect() == expected  # every node still serves, in full
        assert cluster.state is tfos.ClusterState.RUNNING


def two_queues(args, ctx):
    counts = {}
    for q in ("train", "validation"):
        feed = ctx.get_data_feed(qname_in=q)
        counts[q] = 0
        while True:
            pieces = feed.next_batch_arrays(100)
            if pieces is None:
                break
            counts[q] += len(pieces[0])
            if q == "train" and counts[q] == args["train_rows_per_node"]:
                break
    with open(os.path.join(args["out"], f"{ctx.job_name}.json"), "w") as f:
        json.dump(counts, f)


def test_two_queues_on_one_cluster(sc, tmp_path, no_leftovers):
    train, validation = rows_rdd(sc, 400, 2), rows_rdd(sc, 60, 2)
    # Two partitions on two executors: each node gets one partition of 200 training rows.
    cluster = tfos.run(sc, two_queues, {"out": str(tmp_path), "train_rows_per_node": 200}, 2,
                       input_mode=tfos.InputMode.SPARK)
    cluster.train(train, qname="train")
    cluster.train(validation, qname="validation")
    cluster.shutdown()
    totals = {"train": 0, "validation": 0}
    for name in os.listdir(tmp_path):
        for q, c in json.loads((tmp_path / name).read_text()).items():
            totals[q] += c
    assert totals == {"train": 400, "validation": 60}
    assert sum(cluster.consumed_rows("validation").values()) == 60


def test_bad_row_names_partition_and_row(sc, tmp_path, no_leftovers):
    def row(i):
        return (np.full(5 if i == 730 else 4, i, np.float32), i)

    data = sc.parallelize(range(1000), 2).map(row)  # partition 1 holds 500..999
    cluster = tfos.run(sc, drain_ids, {"out": str(tmp_path)}, 2, input_mode=tfos.InputMode.SPARK)
    try:
        with pytest.raises(tfos.FeedDataError, match=r"partition 1 row 230: field 0 .*shape \(5,\)"):
            cluster.train(data)
    finally:
        cluster.shutdown()


def never_reads(args, ctx):
    ctx.get_data_feed()
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(args["stop"]):
        time.sleep(0.05)


def test_node_that_stops_consuming_times_out_naming_it(sc, tmp_path, no_leftovers):
    # 96 MiB of rows per node: more than a node buffers (TFOS_FEED_BUFFER_BYTES, 64 MiB).
    data = sc.parallelize(range(192), 2).map(lambda i: (np.zeros(1 << 18, np.float32), i))
    stop = tmp_path / "stop"
    cluster = tfos.run(sc, never_reads, {"stop": str(stop)}, 2, input_mode=tfos.InputMode.SPARK)
    started = time.monotonic()
    try:
        with pytest.raises(tfos.FeedTimeoutError, match=r"node (chief|worker):0 .* feed_timeout=3.0s"):
            cluster.train(data, feed_timeout=3)
        assert time.monotonic() - started < 60
    finally:
        stop.touch()
        cluster.shutdown()


def read_then_terminate(args, ctx):
    feed = ctx.get_data_feed()
    got = 0
    while got < 300:
        got += len(feed.next_batch(50))
    feed.terminate()
    assert feed.should_stop()
    with open(os.path.join(args["out"], f"{ctx.job_name}.json"), "w") as f:
        json.dump(got, f)


def test_terminate_stops_feeding_without_hanging(sc, tmp_path, no_leftovers):
    cluster = tfos.run(sc, read_then_terminate, {"out": str(tmp_path)}, 2, input_mode=tfos.InputMode.SPARK)
    started = time.monotonic()
    cluster.train(rows_rdd(sc, 20000, 4), num_epochs=5)
    assert time.monotonic() - started < 120
    cluster.shutdown()
    counts = cluster.consumed_rows()
    assert all(c == 300 for c in counts.values()), counts


def fail_while_fed(args, ctx):
    feed = ctx.get_data_feed()
    feed.next_batch(10)
    if ctx.job_name == "worker":
        raise RuntimeError("loss is NaN")
    while not feed.should_stop():
        feed.next_batch(10)


def test_node_exception_while_fed_fails_train_promptly(sc, no_leftovers):
    data = sc.parallelize(range(200), 2).map(lambda i: (np.zeros(1 << 16, np.float32), i))
    cluster = tfos.run(sc, fail_while_fed, None, 2, input_mode=tfos.InputMode.SPARK)
    started = time.monotonic()
    with pytest.raises(tfos.NodeError, match="RuntimeError: loss is NaN") as info:
        cluster.train(data, num_epochs=20, feed_timeout=300)
    assert time.monotonic() - started < 60
    assert "in fail_while_fed" in info.value.remote_traceback
    assert cluster.state == tfos.ClusterState.FAILED
    cluster.shutdown()  # idempotent: the failure was raised once, by train()


def test_train_on_tensorflow_mode_cluster_is_refused(sc, no_leftovers):
    with tfos.run(sc, lambda args, ctx: None, None, 2) as cluster:
        with pytest.raises(tfos.TFOSConfigError, match="input_mode=tfos.InputMode.SPARK"):
            cluster.train(rows_rdd(sc, 10, 1))
        with pytest.raises(tfos.TFOSConfigError, match="num_epochs"):
            cluster.train(rows_rdd(sc, 10, 1), num_epochs=-1)


def fit_from_feed(args, ctx):
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = tf.keras.Sequential([tf.keras.Input(shape=(8,)), tf.keras.layers.Dense(4)])
        model.compile(optimizer="sgd", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dataset = ctx.get_data_feed().as_dataset(32)
    steps = []

    class Steps(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            steps.append(0)

        def on_train_batch_end(self, batch, logs=None):
            steps[-1] = batch + 1

    if args.get("via") == "tfos.keras.fit":
        from tfos.keras import fit

        # two calls: the first must read nothing of the second's epochs ahead
        fit(model, dataset, epochs=1, verbose=0, callbacks=[Steps()])
        fit(model, dataset, epochs=2, initial_epoch=1, verbose=0, callbacks=[Steps()])
    else:
        model.fit(dataset, epochs=2, verbose=0, callbacks=[Steps()])
    with open(os.path.join(args["out"], f"{ctx.job_name}.json"), "w") as f:
        json.dump({"cardinality": int(dataset.cardinality()), "steps": steps}, f)


def skewed_rdd(sc, sizes=(1000, 100, 37)):
    """Partitions of very different sizes, rows ``(features, label)`` whose label is the row id."""
    starts = np.cumsum((0, *sizes))
    return sc.parallelize(range(len(sizes)), len(sizes)).flatMap(
        lambda p: ((np.full(8, i % 7, np.float32), i) for i in range(starts[p], starts[p + 1])))


@pytest.mark.parametrize("balance,via", [(True, "model.fit"), (True, "tfos.keras.fit"), (False, "model.fit")])
def test_synchronous_keras_fit_on_uneven_partitions_ends_epochs_together(sc, tmp_path, no_leftovers, balance, via):
    # 3 partitions of very different sizes on 2 executors: unbalanced, the nodes get unequal rows.
    data = skewed_rdd(sc).map(lambda row: (row[0], row[1] % 4))
    cluster = tfos.run(sc, fit_from_feed, {"out": str(tmp_path), "via": via}, 2, input_mode=tfos.InputMode.SPARK)
    cluster.train(data, num_epochs=2, feed_timeout=120, balance=balance)
    cluster.shutdown(timeout=180)
    chief, worker = (json.loads((tmp_path / f"{job}.json").read_text()) for job in ("chief", "worker"))
    assert len(chief["steps"]) == len(worker["steps"]) == 2
    if balance:
        # 1137 rows, 2 workers: 568 each an epoch, known to Keras before it starts (-(-568 // 32) == 18 steps)
        assert chief == worker == {"cardinality": 18, "steps": [18, 18]}
        assert cluster.consumed_rows() == {"chief:0": 2 * 568, "worker:0": 2 * 568}
    else:
        assert chief["cardinality"] == worker["cardinality"] == -2  # unknown
        assert sum(cluster.consumed_rows().values()) == 2 * 1137


def ids_by_epoch(args, ctx):
    """Iterates as_dataset once per epoch; records each epoch's ids and the dataset's cardinality."""
    dataset = ctx.get_data_feed().as_dataset(50)
    epochs = [[int(i) for _, ids in dataset for i in ids.numpy()] for _ in range(args["epochs"])]
    with open(os.path.join(args["out"], f"{ctx.job_name}.json"), "w") as f:
        json.dump({"cardinality": int(dataset.cardinality()), "epochs": epochs}, f)


@pytest.mark.parametrize("cache", [False, True])
def test_balanced_epochs_route_rows_across_executors_and_rotate_the_left_over(sc, tmp_path, no_leftovers, cache):
    epochs, n = 3, 1137
    cluster = tfos.run(sc, ids_by_epoch, {"out": str(tmp_path), "epochs": epochs}, 2,
                       input_mode=tfos.InputMode.SPARK)
    cluster.train(skewed_rdd(sc), num_epochs=epochs, cache=cache)
    cluster.shutdown()
    chief, worker = (json.loads((tmp_path / f"{job}.json").read_text()) for job in ("chief", "worker"))
    assert chief["cardinality"] == worker["cardinality"] == 12  # -(-568 // 50): not multiplied by the workers
    left_out = []
    for e in range(epochs):
        assert len(chief["epochs"][e]) == len(worker["epochs"][e]) == 568
        fed = sorted(chief["epochs"][e] + worker["epochs"][e])
        assert len(set(fed)) == len(fed) == n - 1  # once each, bar the one row left over
        left_out += sorted(set(range(n)) - set(fed))
    if not cache:
        assert left_out == [0, 1, 2]  # epoch e leaves out the row at position e * (1137 % 2)
    else:  # epoch 1 leaves out row 0 but a node caches it; then that node leaves out another row each epoch
        assert left_out[0] == 0 and len(set(left_out)) == 3


def read_to_the_end(args, ctx):
    feed = ctx.get_data_feed()
    while feed.next_batch_arrays(50) is not None:
        pass


def test_fewer_rows_than_workers_is_refused_before_feeding(sc, no_leftovers):
    cluster = tfos.run(sc, read_to_the_end, None, 2, input_mode=tfos.InputMode.SPARK)
    try:
        with pytest.raises(tfos.FeedDataError, match="1 rows, fewer than the 2 chief / worker nodes"):
            cluster.train(rows_rdd(sc, 1, 1))
    finally:
        cluster.shutdown()


def ids_per_epoch(args, ctx):
    """Reads args['epochs'] epochs with next_batch_arrays-sized takes from as_dataset; records ids per epoch."""
    dataset = ctx.get_data_feed().as_dataset(256)
    epochs, spilled = [], []
    for _ in range(args["epochs"]):
        ids = []
        for x, i in dataset:
            assert (x.numpy()[:, 0] == i.numpy()).all()
            ids += i.numpy().tolist()
        epochs.append(ids)
        spilled += [name for _, _, files in os.walk(os.environ["TFOS_FEED_CACHE_DIR"]) for name in files]
    with open(os.path.join(args["out"], f"{ctx.job_name}.json"), "w") as f:
        json.dump({"epochs": epochs, "spilled": len(spilled)}, f)


def test_cached_shuffled_epochs_come_from_the_nodes_without_spark_jobs(sc, tmp_path, no_leftovers):
    epochs, n = 3, 6000  # 3000 rows of 3 KiB per node: beyond the 8 MiB the test nodes keep in memory
    computed = sc.accumulator(0)

    def row(i):
        computed.add(1)
        return np.full(784, i, np.float32), i

    data = sc.parallelize(range(n), 3).map(row)
    cluster = tfos.run(sc, ids_per_epoch, {"out": str(tmp_path), "epochs": epochs}, 2,
                       input_mode=tfos.InputMode.SPARK)
    cluster.train(data, num_epochs=epochs, shuffle=True, seed=3)
    cluster.shutdown()
    # the counting job, the first row (for the schema) and the first epoch: epochs 2 and 3 ran no Spark job
    assert computed.value == 2 * n + 1
    for job in ("chief", "worker"):
        result = json.loads((tmp_path / f"{job}.json").read_text())
        seen = result["epochs"]
        assert result["spilled"], "nothing spilled to disk"
        assert [len(e) for e in seen] == [3000] * epochs
        assert sorted(seen[1]) == sorted(seen[2]) == sorted(seen[0])  # the same share every epoch, once each
        assert seen[1] != seen[2] and seen[1] != seen[0]  # shuffled, differently each epoch
    assert cluster.consumed_rows() == {"chief:0": epochs * 3000, "worker:0": epochs * 3000}


def crash_after_first_epoch(args, ctx):
    dataset = ctx.get_data_feed().as_dataset(256)
    for _ in dataset:
        pass
    os._exit(3)  # no clean exit: the executor's task deletes the cache


def test_a_crashed_node_leaves_no_cache_behind(sc, no_leftovers):
    cluster = tfos.run(sc, crash_after_first_epoch, None, 2, input_mode=tfos.InputMode.SPARK)
    with pytest.raises(tfos.NodeFailedError):
        cluster.train(rows_rdd(sc, 6000, 2, dim=784), num_epochs=3, feed_timeout=60)
    cluster.shutdown()
    # no_leftovers checks that the cache directory is empty


def test_cache_and_shuffle_settings_are_checked(sc, no_leftovers):
    with tfos.run(sc, read_to_the_end, None, 2, input_mode=tfos.InputMode.SPARK) as cluster:
        with pytest.raises(tfos.TFOSConfigError, match="cache=True needs balanced epochs"):
            cluster.train(rows_rdd(sc, 10, 1), num_epochs=2, balance=False, cache=True)
        with pytest.raises(tfos.TFOSConfigError, match="shuffle=True shuffles the cached epochs"):
            cluster.train(rows_rdd(sc, 10, 1), num_epochs=2, cache=False, shuffle=True)


def test_an_executor_without_a_fed_node_feeds_over_tcp(sc, tmp_path, no_leftovers):
    # one node on two executors: partitions computed on the other executor reach it over TCP
    n = 2000
    cluster = tfos.run(sc, drain_ids, {"out": str(tmp_path)}, 1, input_mode=tfos.InputMode.SPARK)
    cluster.train(rows_rdd(sc, n, 4), num_epochs=2, cache=False)
    cluster.shutdown()
    assert seen_ids(tmp_path) == sorted(list(range(n)) * 2)


LOCAL_MODE_DRIVER = """
import json, sys
import numpy as np
from pyspark import SparkConf, SparkContext
import tfos

def main_fun(args, ctx):
    seen = []
    dataset = ctx.get_data_feed().as_dataset(64)
    for _ in range(3):
        seen.append(sorted(int(i) for _, ids in dataset for i in ids.numpy()))
    with open(f"{args}/{ctx.job_name}.json", "w") as f:
        json.dump(seen, f)

conf = (SparkConf().setMaster("local[2]").set("spark.ui.enabled", "false")
        .set("spark.ui.showConsoleProgress", "false")
        .set("spark.driver.host", "127.0.0.1").set("spark.driver.bindAddress", "127.0.0.1"))
sc = SparkContext(conf=conf)
sc.setLogLevel("ERROR")
rdd = sc.parallelize(range(1001), 3).map(lambda i: (np.full(4, i, np.float32), i))
cluster = tfos.run(sc, main_fun, sys.argv[1], 2, input_mode=tfos.InputMode.SPARK)
cluster.train(rdd, num_epochs=3, shuffle=True, seed=1)
cluster.shutdown()
print("CONSUMED", json.dumps(cluster.consumed_rows()), flush=True)
sc.stop()
"""


def test_a_local_master_feeds_balanced_cached_epochs_over_tcp(tmp_path, no_leftovers):
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = tmp_path / "driver.py"
    script.write_text(LOCAL_MODE_DRIVER)
    env = dict(os.environ, PYTHONPATH=ROOT)
    # local[2] runs the nodes in the driver's working directory, where they write their logs
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = {job: json.loads((tmp_path / f"{job}.json").read_text()) for job in ("chief", "worker")}
    consumed = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("CONSUMED"))[9:])
    assert consumed == {"chief:0": 3 * 500, "worker:0": 3 * 500}
    for e in range(3):
        epoch = seen["chief"][e] + seen["worker"][e]
        assert len(epoch) == len(set(epoch)) == 1000  # 1001 rows, 2 nodes: one sits out
