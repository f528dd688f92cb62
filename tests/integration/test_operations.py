"""What a person operating a cluster sees: Spark UI job names, Prometheus metrics, the live progress view."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import socket
import struct
import sys
import termios
import textwrap
import time
import urllib.request

import pytest

import tfos
from tests.conftest import ROOT
from tests.integration.conftest import wait_until


def spark_jobs(sc):
    """(job group, description) of every job of the application, from Spark's status store (what the UI shows)."""
    jobs = sc._jsc.sc().statusStore().jobsList(None)
    def value(option):
        return option.get() if option.isDefined() else None

    return [(value(jobs.apply(i).jobGroup()), value(jobs.apply(i).description())) for i in range(jobs.size())]


def drain(args, ctx):
    feed = ctx.get_data_feed()
    while not feed.should_stop():
        feed.next_batch(50)


def test_spark_jobs_carry_tfos_groups_and_readable_descriptions(sc, no_leftovers):
    sc.setJobGroup("user-group", "the user's own jobs")
    cluster = tfos.run(sc, drain, None, 2, input_mode=tfos.InputMode.SPARK, progress=False)
    cluster.train(sc.parallelize(range(200), 2), num_epochs=2, cache=False)  # a feeding job per epoch
    cluster.shutdown()
    jobs = spark_jobs(sc)
    assert (cluster.job_group, "tfos nodes: chief + 1 worker") in jobs
    feed_group = cluster.job_group + "-feed"
    assert (feed_group, "tfos feed 'input' epoch 1/2") in jobs and (feed_group, "tfos feed 'input' epoch 2/2") in jobs
    assert ("user-group", "tfos feed 'input': first row for the schema") in jobs
    assert len(sc.statusTracker().getJobIdsForGroup(feed_group)) == 2
    # The caller's own group and description are left as they were.
    assert sc.getLocalProperty("spark.jobGroup.id") == "user-group"
    assert sc.getLocalProperty("spark.job.description") == "the user's own jobs"
    sc.setLocalProperty("spark.jobGroup.id", None)
    sc.setLocalProperty("spark.job.description", None)


def fit_report_and_drain(args, ctx):
    import numpy as np
    import tensorflow as tf

    from tfos.keras import progress_callback

    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.random.default_rng(ctx.task_index).random((64, 4), dtype=np.float32)
    model.fit(x, x.sum(axis=1), epochs=2, batch_size=16, verbose=0, callbacks=[progress_callback(ctx)])
    ctx.report(phase="feeding")
    drain(args, ctx)


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def sample(text, family, **labels):
    """The value of one Prometheus sample, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == (f"{family}{{{want}}}" if labels else family):
            return float(value)
    return None


def test_metrics_endpoint_and_cluster_metrics_show_rows_and_reported_metrics(sc, monkeypatch, no_leftovers):
    monkeypatch.setenv("TFOS_METRICS_PORT", "0")
    monkeypatch.setenv("TFOS_METRICS_HOST", "127.0.0.1")
    cluster = tfos.run(sc, fit_report_and_drain, None, 2, input_mode=tfos.InputMode.SPARK, progress=False)
    port = cluster.metrics_port
    try:
        cluster.train(sc.parallelize([[float(i)] * 4 for i in range(300)], 3))

        def fed_and_reported():
            text = scrape(port)
            rows = [sample(text, "tfos_node_rows_consumed_total", role=role, queue="input")
                    for role in ("chief:0", "worker:0")]
            epoch = sample(text, "tfos_node_metric", role="worker:0", name="epoch")
            return None not in rows and sum(rows) == 300 and epoch == 2.0

        assert wait_until(fed_and_reported, timeout=60), scrape(port)
        text = scrape(port)
        assert sample(text, "tfos_node_up", role="chief:0") == 1.0
        assert sample(text, "tfos_cluster_state", state="running") == 1.0
        assert sample(text, "tfos_node_rss_bytes", role="worker:0") > 10 << 20
        assert sample(text, "tfos_node_metric", role="chief:0", name="loss") >= 0
        metrics = cluster.metrics()
        assert metrics["worker:0"]["epoch"] == 2 and metrics["chief:0"]["phase"] == "feeding"
        assert metrics["chief:0"]["step"] == 8  # 2 epochs of 64 rows in batches of 16
    finally:
        cluster.shutdown()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


PROGRESS_DRIVER = textwrap.dedent("""
    import sys, time
    from pyspark import SparkConf, SparkContext
    import tfos

    def main_fun(args, ctx):
        import time
        for step in range(1, 16):
            ctx.report(step=step, loss=1.0 / step)
            time.sleep(0.4)

    conf = (SparkConf().setMaster("local[2]").set("spark.ui.enabled", "false")
            .set("spark.ui.showConsoleProgress", "false")
            .set("spark.driver.host", "127.0.0.1").set("spark.driver.bindAddress", "127.0.0.1"))
    sc = SparkContext(conf=conf)
    sc.setLogLevel("ERROR")
    tfos.run(sc, main_fun, None, 2).shutdown()
    sc.stop()
    print("DRIVER DONE", flush=True)
""")


def test_progress_view_in_a_terminal_shows_node_lines_that_change(tmp_path):
    import pyte

    script = tmp_path / "driver.py"
    script.write_text(PROGRESS_DRIVER)
    screen = pyte.Screen(160, 48)
    stream = pyte.ByteStream(screen)
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="160", LINES="48", PYTHONPATH=ROOT)
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(tmp_path)
        os.execve(sys.executable, [sys.executable, str(script)], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 48, 160, 0, 0))
    steps, screens, deadline = set(), [], time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                stream.feed(data)
            lines = [line.rstrip() for line in screen.display]
            chief = [line for line in lines if "chief:0" in line and "running" in line]
            if chief and any("worker:0" in line and "running" in line for line in lines):
                steps.add(chief[-1])
                screens.append("\n".join(lines))
            if any("DRIVER DONE" in line for line in lines):
                break
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)
    final = "\n".join(line.rstrip() for line in screen.display)
    assert screens, f"no live table with both nodes running; screen:\n{final}"
    assert len(steps) >= 3, f"the chief's line did not change: {steps}"  # step and loss move as it reports
    assert "(summary)" in final and "DRIVER DONE" in final, final
