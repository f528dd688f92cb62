"""Failures on real Spark: killed, frozen and orphaned nodes, lost executors, restarts, driver signals."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import tfos
from tests.conftest import ROOT
from tests.integration.conftest import node_processes


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def node_pid(role):
    """The pid of the live node process that has ``role`` (e.g. 'worker:0') in its log prefix."""
    for proc in node_processes():
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        config = json.loads(env.get("TF_CONFIG", "{}"))
        task = config.get("task", {})
        if f"{task.get('type')}:{task.get('index')}" == role:
            return proc.pid
    return None


def consume_forever(args, ctx):
    feed = ctx.get_data_feed()
    print(f"{ctx.job_name}:{ctx.task_index} is consuming", flush=True)
    while not feed.should_stop():
        feed.next_batch(32)


def train_in_background(cluster, rdd):
    outcome = {}

    def body():
        try:
            cluster.train(rdd, num_epochs=1000)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            outcome["error"] = exc
            outcome["at"] = time.monotonic()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def test_killed_node_fails_training_within_seconds(sc, no_leftovers):
    import numpy as np

    rdd = sc.parallelize(range(4000), 4).map(lambda i: (np.full(16, i, np.float32), i))
    cluster = tfos.run(sc, consume_forever, None, 2, input_mode=tfos.InputMode.SPARK)
    thread, outcome = train_in_background(cluster, rdd)
    wait_for(lambda: sum(cluster.consumed_rows().values()) > 0, 60, "rows to be consumed")
    wait_for(lambda: "worker:0 is consuming" in cluster.log_tail("worker:0"), 30, "the node's output")
    pid = node_pid("worker:0")
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    thread.join(timeout=30)
    error = outcome.get("error")
    assert isinstance(error, tfos.NodeFailedError), repr(error)
    assert outcome["at"] - killed_at < 4, "the node's own executor saw it die: no need to wait for heartbeats"
    assert error.job_name == "worker" and error.task_index == 0
    assert "worker:0" in str(error) and "host" in str(error)
    assert "worker:0 is consuming" in str(error)  # the last lines of the node's log
    assert cluster.state == tfos.ClusterState.FAILED
    cluster.shutdown()  # idempotent after a failure: already raised by train()


def idle_until_stopped(args, ctx):
    print(f"{ctx.job_name}:{ctx.task_index} up", flush=True)
    threading.Event().wait()


def test_frozen_node_is_declared_failed_and_the_rest_is_torn_down(sc, monkeypatch):
    monkeypatch.setenv("TFOS_HEARTBEAT_TIMEOUT_SECS", "4")
    cluster = tfos.run(sc, idle_until_stopped, None, 2)
    pid = wait_for(lambda: node_pid("worker:0"), 30, "the worker node")
    chief = wait_for(lambda: node_pid("chief:0"), 30, "the chief node")
    wait_for(lambda: "worker:0 up" in cluster.log_tail("worker:0"), 30, "the node's output")
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        with pytest.raises(tfos.NodeFailedError, match="worker:0 .*sent no heartbeat for 4s") as info:
            cluster.shutdown(timeout=60)
        assert time.monotonic() - stopped_at < 10
        assert "worker:0 up" in str(info.value)
        assert not psutil.pid_exists(chief) or psutil.Process(chief).status() == psutil.STATUS_ZOMBIE
    finally:
        os.kill(pid, signal.SIGCONT)
    # Thawed, it finds the driver gone and exits on its own (TFOS_ORPHAN_TIMEOUT_SECS).
    psutil.Process(pid).wait(timeout=60)


def print_lines(args, ctx):
    for i in range(3):
        print(f"line {i} from {ctx.job_name}:{ctx.task_index}")


def test_node_output_reaches_the_driver_log_with_its_role(sc, caplog, no_leftovers):
    caplog.set_level(logging.DEBUG, logger="tfos")
    from tfos._security import feed_token

    with tfos.run(sc, print_lines, None, 2) as cluster:
        credential = cluster._supervisor.generation.credential
        shown = repr(cluster.cluster_info) + repr(cluster._supervisor.generation) + repr(credential)
    secrets = [line for line in credential.key_pem.decode().splitlines() if "PRIVATE" not in line]
    secrets.append(feed_token(credential).hex())
    logged = "\n".join(r.getMessage() for r in caplog.records) + shown
    assert len(secrets) >= 3 and not [s for s in secrets if s in logged], "the cluster's key reached a log or repr"
    lines = [r.getMessage() for r in caplog.records if r.name == "tfos.node"]
    for role in ("chief:0", "worker:0"):
        assert [m for m in lines if m.startswith(f"[{role}] line ")] == [f"[{role}] line {i} from {role}"
                                                                       for i in range(3)]


def fit_with_backup(args, ctx):
    import numpy as np
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = tf.keras.Sequential([tf.keras.Input(shape=(8,)), tf.keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(ctx.task_index)
    x = rng.random((256, 8), np.float32)
    y = x.sum(axis=1, keepdims=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).with_options(options)
    log_path = os.path.join(args["out"], f"{ctx.job_name}.epochs")
    crash_flag = os.path.join(args["out"], "crashed")

    class Record(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            with open(log_path, "a") as f:
                f.write(f"{epoch} {os.getpid()}\n")
            if ctx.job_name == "worker" and epoch == 1 and not os.path.exists(crash_flag):
                open(crash_flag, "w").close()
                os.kill(os.getpid(), 9)  # a worker dies mid-training, after the epoch-1 backup

    backup = tf.keras.callbacks.BackupAndRestore(backup_dir=args["backup"])
    model.fit(dataset, epochs=args["epochs"], callbacks=[backup, Record()], verbose=0)


def test_restart_resumes_training_from_the_checkpoint(sc, tmp_path, no_leftovers):
    args = {"out": str(tmp_path), "backup": str(tmp_path / "backup"), "epochs": 4}
    cluster = tfos.run(sc, fit_with_backup, args, 2, max_restarts=1, reservation_timeout=120)
    cluster.shutdown(timeout=600)
    assert cluster.restarts == 1
    assert os.path.exists(tmp_path / "crashed")
    chief = [line.split() for line in (tmp_path / "chief.epochs").read_text().splitlines()]
    epochs = [int(epoch) for epoch, _ in chief]
    pids = [pid for _, pid in chief]
    # Epochs 0-1 ran before the failure; the restarted chief resumed at epoch 2, not 0.
    assert epochs == [0, 1, 2, 3], epochs
    assert pids[0] == pids[1] != pids[2] == pids[3]


def test_without_restarts_a_killed_tensorflow_mode_node_is_reported(sc, tmp_path, no_leftovers):
    args = {"out": str(tmp_path), "backup": str(tmp_path / "backup"), "epochs": 4}
    cluster = tfos.run(sc, fit_with_backup, args, 2, reservation_timeout=120)
    with pytest.raises(tfos.NodeFailedError, match=r"node worker:0 .*killed by signal 9"):
        cluster.shutdown(timeout=600)
    assert cluster.restarts == 0


DRIVER = textwrap.dedent("""
    import sys, threading
    from pyspark import SparkConf, SparkContext
    import tfos

    def idle(args, ctx):
        threading.Event().wait()

    conf = (SparkConf().setMaster("local[2]").set("spark.ui.enabled", "false")
            .set("spark.driver.host", "127.0.0.1").set("spark.driver.bindAddress", "127.0.0.1"))
    sc = SparkContext(conf=conf)
    cluster = tfos.run(sc, idle, None, 2)
    print("READY", flush=True)
    if sys.argv[1] == "wait":
        threading.Event().wait()
    sys.stdin.readline()  # "exit": the script ends without shutdown(); the interpreter's exit stops the nodes
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, None], ids=["SIGTERM", "SIGINT", "exit"])
def test_driver_killed_by_a_signal_or_exiting_stops_every_node_at_once(signum, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=ROOT, TFOS_ORPHAN_TIMEOUT_SECS="300")
    before = {p.pid for p in node_processes()}
    # local[2] runs the nodes in the driver's working directory, where they write their logs.
    driver = subprocess.Popen([sys.executable, str(script), "exit" if signum is None else "wait"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                              text=True, cwd=tmp_path)
    try:
        assert wait_for(lambda: driver.stdout.readline().strip() == "READY", 120, "the driver's cluster")
        new_nodes = lambda: [p for p in node_processes() if p.pid not in before]  # noqa: E731
        nodes = wait_for(lambda: len(new_nodes()) == 2 and new_nodes(), 30, "both nodes")
        started = time.monotonic()
        if signum is None:
            driver.stdin.write("\n")
            driver.stdin.flush()
        else:
            driver.send_signal(signum)
        # The driver's exit tells the nodes to stop (its control server answers until then): they are gone
        # in a few seconds, long before their 300 s orphan timeout.
        _, alive = psutil.wait_procs(nodes, timeout=10)
        assert not alive, f"nodes alive {time.monotonic() - started:.1f}s after the driver was told to exit"
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()


def test_lost_executor_fails_the_cluster_and_spark_recovers(sc, no_leftovers):
    from tfos.driver._spark import backend

    cluster = tfos.run(sc, idle_until_stopped, None, 2)
    wait_for(lambda: "worker:0 up" in cluster.log_tail("worker:0"), 30, "the node's output")
    worker = next(n for n in cluster.cluster_info if n["job_name"] == "worker")
    os.kill(worker["executor_pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    with pytest.raises(tfos.NodeFailedError, match=r"worker:0 .*executor lost") as info:
        cluster.shutdown(timeout=60)
    assert time.monotonic() - killed_at < 10
    assert info.value.host == worker["host"]
    # The standalone master replaces the executor; later tests get their two executors back.
    wait_for(lambda: backend(sc).live_executors() == 2, 120, "Spark to replace the lost executor")
