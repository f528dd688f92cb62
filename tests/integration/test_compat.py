"""TensorFlowOnSpark programs on tfos.compat: only the import changes."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from tfos.compat import TFCluster, TFNode


def count_rows(args, ctx):
    """A TFoS-style map_fun: reads its feed with TFNode.DataFeed(ctx.mgr) until the end."""
    feed = TFNode.DataFeed(ctx.mgr)
    rows = 0
    while not feed.should_stop():
        rows += len(feed.next_batch(args.batch_size))
    assert feed.done_feeding
    assert TFNode.hdfs_path(ctx, "model") == f"{ctx.defaultFS}/{ctx.working_dir[1:]}/model"
    with open(os.path.join(args.out, f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump({"rows": rows, "mgr": type(ctx.mgr).__name__, "num_workers": ctx.num_workers}, f)


def test_train_with_default_epochs_feeds_ten_times(sc, tmp_path, no_leftovers):
    args = argparse.Namespace(batch_size=16, out=str(tmp_path))
    cluster = TFCluster.run(sc, count_rows, args, 2, 0, input_mode=TFCluster.InputMode.SPARK)
    assert sorted(cluster.cluster.cluster_spec) == ["worker"]  # master_node=None: TFoS's default, workers only
    cluster.train(sc.parallelize(range(100), 4).map(lambda i: (i, float(i))))  # num_epochs=0 means 10
    cluster.shutdown()
    results = [json.loads(p.read_text()) for p in tmp_path.glob("worker-*.json")]
    assert sum(r["rows"] for r in results) == 1000
    assert {r["num_workers"] for r in results} == {2}


def double_it(args, ctx):
    feed = TFNode.DataFeed(ctx.mgr, train_mode=False)
    while not feed.should_stop():
        batch = feed.next_batch(args["batch_size"])
        if len(batch) > 0:
            feed.batch_results([2 * x for (x,) in batch])


def test_inference_returns_one_result_per_row_in_order(sc, no_leftovers):
    cluster = TFCluster.run(sc, double_it, {"batch_size": 7}, 2, 0, input_mode=TFCluster.InputMode.SPARK,
                            master_node="chief")
    results = cluster.inference(sc.parallelize([(i,) for i in range(500)], 5)).collect()
    cluster.shutdown()
    assert results == [2 * i for i in range(500)]


def test_unsupported_and_unknown_arguments_fail_clearly(sc):
    with pytest.raises(ValueError, match="driver_ps_nodes=True is not supported"):
        TFCluster.run(sc, count_rows, None, 2, 1, driver_ps_nodes=True)
    with pytest.raises(ValueError, match="eval_node=True needs input_mode=InputMode.TENSORFLOW"):
        TFCluster.run(sc, count_rows, None, 2, 0, eval_node=True, input_mode=TFCluster.InputMode.SPARK)


def record_run(args, ctx):
    with open(os.path.join(args["out"], f"run-{ctx.worker_num}.json"), "w") as f:
        json.dump({"executor_id": ctx.executor_id, "num_workers": ctx.num_workers, "fs": ctx.defaultFS}, f)


def test_parallel_runs_one_independent_instance_per_executor(sc, tmp_path):
    from tfos.compat import TFParallel

    TFParallel.run(sc, record_run, {"out": str(tmp_path), "num_gpus": 0}, 2)
    runs = sorted(json.loads(p.read_text())["executor_id"] for p in tmp_path.glob("run-*.json"))
    assert runs == [0, 1]
    assert json.loads((tmp_path / "run-0.json").read_text())["num_workers"] == 2
    assert json.loads((tmp_path / "run-0.json").read_text())["fs"] == "file://"


def test_parallel_barrier_run_needs_enough_slots(sc):
    from tfos.compat import TFParallel

    with pytest.raises(ValueError, match="needs 3 task slots at once but the Spark application has 2"):
        TFParallel.run(sc, record_run, {}, 3)


def feed_by_hand(args, ctx):
    """TFoS code that drives a DataFeed itself: a manager, a producer thread, a consumer."""
    import threading

    from tfos.compat import TFManager

    mgr = TFManager.start(b"authkey", ["input", "output"])
    queue = mgr.get_queue("input")

    def produce():
        for i in range(args["rows"]):
            queue.put((ctx.worker_num, i))
        queue.put(None)

    threading.Thread(target=produce, daemon=True).start()
    feed = TFNode.DataFeed(mgr, train_mode=False)
    total = 0
    while not feed.should_stop():
        batch = feed.next_batch(100)
        if batch:
            total += sum(int(i) for _, i in batch)
            feed.batch_results([int(i) for _, i in batch])
    results = [mgr.get_queue("output").get(timeout=10) for _ in range(args["rows"])]
    with open(os.path.join(args["out"], f"manual-{ctx.worker_num}.json"), "w") as f:
        json.dump({"total": total, "results_in_order": results == list(range(args["rows"]))}, f)


def test_tfmanager_feeds_a_datafeed_by_hand_inside_spark_tasks(sc, tmp_path):
    from tfos.compat import TFParallel

    TFParallel.run(sc, feed_by_hand, {"rows": 5000, "out": str(tmp_path)}, 2)
    runs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("manual-*.json"))]
    assert runs == [{"total": sum(range(5000)), "results_in_order": True}] * 2
