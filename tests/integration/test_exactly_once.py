"""Exactly-once feeding under Spark's own retries: its own Spark application with spark.task.maxFailures=4
(the session's context fails fast), a feeding task that fails mid-partition, every row counted on the nodes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

DRIVER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from pyspark import SparkConf, SparkContext, TaskContext
    import tfos

    out, balance = sys.argv[1], sys.argv[2] == "balanced"
    sc = SparkContext(conf=SparkConf().setMaster("local-cluster[2,1,1024]").setAppName("tfos-exactly-once")
                      .set("spark.ui.enabled", "false").set("spark.driver.host", "127.0.0.1")
                      .set("spark.driver.bindAddress", "127.0.0.1").set("spark.task.maxFailures", "4")
                      .set("spark.executorEnv.TFOS_FEED_CHUNK_BYTES", str(16 * 500))
                      .set("spark.executorEnv.TFOS_FEED_CACHE_DIR", os.path.join(out, "cache")))
    sc.setLogLevel("ERROR")

    def collect(args, ctx):
        feed = ctx.get_data_feed()
        ids = []
        while (batch := feed.next_batch_arrays(1000)) is not None:
            ids += batch[0].tolist()
        with open(os.path.join(args, f"ids-{ctx.job_name}"), "w") as f:
            json.dump(ids, f)

    def fail_first_attempt(i):
        task = TaskContext.get()
        if task.partitionId() == 1 and task.attemptNumber() == 0 and i == 15_000:
            open(os.path.join(out, f"failed-{task.stageId()}"), "w").close()
            raise RuntimeError("injected: the feeding task dies after 5,000 of its rows")
        return (i, np.float32(i))

    rows = sc.parallelize(range(40_000), 4).map(fail_first_attempt)
    cluster = tfos.run(sc, collect, out, 2, input_mode=tfos.InputMode.SPARK)
    cluster.train(rows, num_epochs=2, balance=balance, cache=False)
    cluster.shutdown()
    print(json.dumps({"ok": True}))
    sc.stop()
""")


@pytest.mark.parametrize("balance", ["balanced", "unbalanced"])
def test_a_feeding_task_retried_by_spark_delivers_every_row_exactly_once(tmp_path, balance, no_leftovers):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    ran = subprocess.run([sys.executable, str(script), str(tmp_path), balance], capture_output=True, text=True,
                         timeout=280)
    assert ran.returncode == 0, ran.stderr[-4000:]
    failed = len(list(tmp_path.glob("failed-*")))  # a stage's task failed and Spark retried it
    assert failed >= 2, "each epoch's feeding job must have lost a task mid-partition"
    ids = []
    for job in ("chief", "worker"):
        ids += json.loads((tmp_path / f"ids-{job}").read_text())
    counts = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    assert sorted(counts) == list(range(40_000)), "rows lost"
    assert set(counts.values()) == {2}, f"rows doubled: {sum(1 for c in counts.values() if c > 2)}"  # 2 epochs
