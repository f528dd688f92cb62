"""tfos from a Spark Connect session: no SparkContext and no RDD in the client process."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

import tfos
from tests.integration.test_feed_stream import ROWS_PER_FILE, read_until, seen, write_file
from tests.integration.test_reliability import consume_forever, node_pid, train_in_background, wait_for


def describe_node(args, ctx):
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump({"executor_id": ctx.executor_id, "cluster": ctx.cluster_spec, "pid": os.getpid()}, f)


def test_the_client_process_holds_no_spark_context(spark):
    from pyspark import SparkContext

    assert type(spark).__module__ == "pyspark.sql.connect.session"
    assert SparkContext._active_spark_context is None


def test_nodes_start_and_read_their_own_data(spark, tmp_path, no_leftovers):
    cluster = tfos.run(spark, describe_node, {"out": str(tmp_path)}, 2)
    cluster.shutdown()
    chief = json.loads((tmp_path / "chief-0.json").read_text())
    worker = json.loads((tmp_path / "worker-0.json").read_text())
    assert {chief["executor_id"], worker["executor_id"]} == {0, 1}
    assert chief["cluster"] == worker["cluster"] and len(chief["cluster"]["worker"]) == 1


def drain_then_score(args, ctx):
    """Reads args['rows'] rows of queue 'input', recording ids; then answers queue 'score' with 2 * id."""
    feed = ctx.get_data_feed(qname_in="rows", input_mapping={"id": "id", "x": "x", "b": "b"})
    seen = []
    while len(seen) < args["rows"]:
        batch = feed.next_batch(50)  # divides each node's rows: a fuller batch would wait for rows that never come
        if batch:
            assert (batch["x"][:, 0] == batch["id"]).all()
            assert [int(b) for b in batch["b"]] == list(batch["id"])  # a binary column, bytes as they were
            seen.extend(int(i) for i in batch["id"])
    with open(os.path.join(args["out"], f"{ctx.job_name}.json"), "w") as f:
        json.dump(seen, f)
    scores = ctx.get_data_feed(train_mode=False, qname_in="score")
    while not scores.should_stop():
        rows = scores.next_batch(50)
        if rows:
            scores.batch_results([(int(i), float(2 * i)) for i, _ in rows])


def test_dataframes_train_balanced_epochs_and_infer_to_a_dataframe(spark, tmp_path, no_leftovers):
    n = 3000
    df = spark.range(0, n, 1, 3).selectExpr("id", "array(cast(id as float), 1.0f) AS x",
                                            "cast(cast(id as string) as binary) AS b")
    args = {"out": str(tmp_path), "rows": n}  # each node's share of two epochs
    with tfos.run(spark, drain_then_score, args, 2, input_mode=tfos.InputMode.SPARK) as cluster:
        cluster.train(df, num_epochs=2, qname="rows", shuffle=True, seed=3)
        assert cluster.consumed_rows("rows") == {"chief:0": n, "worker:0": n}
        results = cluster.inference(spark.range(0, 500, 1, 4).selectExpr("id", "0 AS pad"), qname="score",
                                    schema="id long, score double")
        assert type(results).__module__.startswith("pyspark.sql.connect")
        rows = results.collect()
    seen = [i for job in ("chief", "worker") for i in json.loads((tmp_path / f"{job}.json").read_text())]
    assert sorted(seen) == sorted(list(range(n)) * 2)
    assert [(r.id, r.score) for r in rows] == [(i, 2.0 * i) for i in range(500)]


def test_inference_on_connect_needs_a_schema_and_rdds_are_refused(spark, no_leftovers):
    with tfos.run(spark, consume_forever, None, 2, input_mode=tfos.InputMode.SPARK) as cluster:
        with pytest.raises(tfos.TFOSConfigError, match=r"pass schema= naming the columns"):
            cluster.inference(spark.range(10))
        with pytest.raises(tfos.TFOSConfigError, match=r"pass a DataFrame"):
            cluster.train([(1, 2), (3, 4)])


def test_a_killed_node_fails_training_within_seconds(spark, no_leftovers):
    df = spark.range(0, 4000, 1, 4).selectExpr("id", "array_repeat(cast(id as float), 16) AS x")
    cluster = tfos.run(spark, consume_forever, None, 2, input_mode=tfos.InputMode.SPARK)
    thread, outcome = train_in_background(cluster, df)
    wait_for(lambda: sum(cluster.consumed_rows().values()) > 0, 60, "rows to be consumed")
    wait_for(lambda: "worker:0 is consuming" in cluster.log_tail("worker:0"), 30, "the node's output")
    os.kill(node_pid("worker:0"), signal.SIGKILL)
    killed_at = time.monotonic()
    thread.join(timeout=30)
    error = outcome.get("error")
    assert isinstance(error, tfos.NodeFailedError), repr(error)
    assert outcome["at"] - killed_at < 10
    assert "worker:0" in str(error) and "host" in str(error)
    assert cluster.state == tfos.ClusterState.FAILED
    cluster.shutdown()


def test_a_stream_is_fed_by_the_connect_server_and_a_restart_feeds_no_batch_twice(spark, tmp_path, no_leftovers):
    incoming, out, checkpoint = tmp_path / "in", tmp_path / "out", str(tmp_path / "checkpoint")
    incoming.mkdir()
    out.mkdir()
    write_file(incoming, 0)
    write_file(incoming, 1)
    stream = (spark.readStream.schema("id long, x double").option("maxFilesPerTrigger", 1).json(str(incoming))
              .select("id", "x"))
    with tfos.run(spark, read_until, {"want": 2 * ROWS_PER_FILE, "out": str(out), "tag": "a"}, 1,
                  input_mode=tfos.InputMode.SPARK, master_node=None, progress=False) as cluster:
        cluster.train(stream, checkpoint_location=checkpoint)
    assert sorted(seen(out, "a")) == list(range(2 * ROWS_PER_FILE))

    write_file(incoming, 2)  # the query restarts from its checkpoint: only the new file's rows come
    with tfos.run(spark, read_until, {"want": ROWS_PER_FILE, "out": str(out), "tag": "b"}, 1,
                  input_mode=tfos.InputMode.SPARK, master_node=None, progress=False) as cluster:
        cluster.train(stream, checkpoint_location=checkpoint)
    assert sorted(seen(out, "b")) == list(range(2 * ROWS_PER_FILE, 3 * ROWS_PER_FILE))
    assert not spark.streams.active


CLIENT = """
import json, os, sys
from pyspark.sql import SparkSession
import tfos

def drain(args, ctx):
    feed = ctx.get_data_feed()
    rows = 0
    while not feed.should_stop():
        rows += len(feed.next_batch(100))
    with open(os.path.join(args, ctx.job_name), "w") as f:
        f.write(str(rows))

spark = SparkSession.builder.remote(sys.argv[1]).getOrCreate()
with tfos.run(spark, drain, sys.argv[2], 2, input_mode=tfos.InputMode.SPARK, progress=False) as cluster:
    cluster.train(spark.range(0, 1000, 1, 4).selectExpr("id", "id * 2 AS y"))
print(json.dumps(cluster.consumed_rows()))
"""


def test_a_client_with_no_java_runs_a_cluster(connect_server, tmp_path, no_leftovers):
    """As a notebook on shared compute: the client starts no JVM (any `java` it ran would leave a mark)."""
    import stat
    import subprocess
    import sys

    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "java").write_text(f"#!/bin/sh\ntouch {tmp_path}/java-was-run\nexit 1\n")
    (shim / "java").chmod(stat.S_IRWXU)
    (tmp_path / "client.py").write_text(CLIENT)
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_HOME", "SPARK_CONNECT_MODE_ENABLED")}
    env.update(PATH=f"{shim}:{os.environ['PATH']}", JAVA_HOME=str(tmp_path / "no-java"))
    done = subprocess.run([sys.executable, str(tmp_path / "client.py"), connect_server[0], str(out)], env=env,
                          capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"chief:0": 500, "worker:0": 500}
    assert not (tmp_path / "java-was-run").exists()
