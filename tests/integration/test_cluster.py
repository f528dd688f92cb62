"""Cluster lifecycle on real Spark: InputMode.TENSORFLOW training, ps, errors, timeouts."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
import urllib.request

import pytest

import tfos
from tests.conftest import ROOT
from tests.integration.conftest import node_processes


def load_script(name):
    from pyspark import cloudpickle

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.modules[name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)
    return module


def test_tensorflow_mode_trains_and_chief_exports_a_model(sc, export_dir, no_leftovers):
    digits = load_script("train_digits")
    args = digits.parse_args(["--epochs", "20", "--export_dir", export_dir])
    with tfos.run(sc, digits.main_fun, args, num_executors=2, reservation_timeout=120) as cluster:
        assert sorted(cluster.cluster_spec) == ["chief", "worker"]
    assert os.path.exists(os.path.join(export_dir, "saved_model.pb"))
    assert digits.evaluate(export_dir) >= 0.9


def record_context(args, ctx):
    import json
    import sys

    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump({"tf_config": json.loads(os.environ["TF_CONFIG"]), "num_workers": ctx.num_workers,
                   "worker_num": ctx.worker_num, "cwd": os.getcwd(), "working_dir": ctx.working_dir,
                   "path": ctx.absolute_path("model"), "keras": os.environ.get("TF_USE_LEGACY_KERAS"),
                   "pyspark_loaded": "pyspark" in sys.modules}, f)


def test_nodes_get_tf_config_and_context(sc, tmp_path, no_leftovers):
    import json

    with tfos.run(sc, record_context, {"out": str(tmp_path)}, num_executors=2) as cluster:
        spec = cluster.cluster_spec
    chief = json.loads((tmp_path / "chief-0.json").read_text())
    worker = json.loads((tmp_path / "worker-0.json").read_text())
    assert chief["tf_config"] == {"cluster": spec, "task": {"type": "chief", "index": 0}, "environment": "cloud"}
    assert worker["tf_config"]["task"] == {"type": "worker", "index": 0}
    assert chief["num_workers"] == worker["num_workers"] == 2
    assert {chief["worker_num"], worker["worker_num"]} == {0, 1}
    assert chief["path"] == "file://" + os.path.join(chief["working_dir"], "model")
    assert chief["keras"] == "1"
    # Loading main_fun must not import pyspark: from Spark's pyspark.zip that costs each node 1-1.5 s.
    assert not chief["pyspark_loaded"] and not worker["pyspark_loaded"]


def ps_or_worker(args, ctx):
    import tensorflow as tf

    if ctx.job_name == "ps":
        server = tf.distribute.Server(tf.train.ClusterSpec(ctx.cluster_spec), job_name="ps",
                                      task_index=ctx.task_index, protocol="grpc")
        server.join()  # serves until the driver stops the cluster


def test_ps_serves_until_shutdown_and_leaves_nothing(sc, no_leftovers):
    cluster = tfos.run(sc, ps_or_worker, None, num_executors=2, num_ps=1, master_node=None)
    assert sorted(cluster.cluster_spec) == ["ps", "worker"]
    cluster.shutdown()
    cluster.shutdown()  # idempotent
    assert cluster.state is tfos.ClusterState.STOPPED


def fail_on_worker(args, ctx):
    if ctx.job_name == "worker":
        raise ValueError("bad learning rate: -1")


def test_main_fun_exception_reaches_driver_with_role_host_and_traceback(sc, no_leftovers):
    cluster = tfos.run(sc, fail_on_worker, None, num_executors=2)
    with pytest.raises(tfos.NodeError) as info:
        cluster.shutdown()
    err = info.value
    assert (err.job_name, err.task_index, err.host) == ("worker", 0, "127.0.0.1")
    assert "ValueError: bad learning rate: -1" in str(err)
    assert "main_fun failed on worker:0 (host 127.0.0.1" in str(err)
    assert 'in fail_on_worker' in err.remote_traceback


def test_reservation_timeout_with_too_few_executors(sc, tmp_path, no_leftovers):
    """One executor is held by another job: tfos must time out clearly and cancel its job."""
    release = tmp_path / "release"

    def hold(_):
        import time

        while not os.path.exists(str(release)):
            time.sleep(0.05)
        return [0]

    def occupy():
        sc.setJobGroup("occupier", "holds one executor")
        sc.parallelize([0], 1).mapPartitions(hold).collect()

    holder = threading.Thread(target=occupy)
    holder.start()
    try:
        while not sc.statusTracker().getActiveJobsIds():
            pass
        with pytest.raises(tfos.ReservationTimeoutError) as info:
            tfos.run(sc, record_context, {"out": str(tmp_path)}, num_executors=2, reservation_timeout=8)
        message = str(info.value)
        assert "only 1 of 2 tfos nodes registered within reservation_timeout=8s" in message
        assert "spark.dynamicAllocation.enabled=false" in message and "spark.task.cpus" in message
        assert (info.value.registered, info.value.expected) == (1, 2)
    finally:
        release.touch()
        holder.join(timeout=60)
    # The cancelled node job freed its executor: a new cluster starts right away.
    with tfos.run(sc, record_context, {"out": str(tmp_path)}, num_executors=2, reservation_timeout=60):
        pass


def wait_for_stop(args, ctx):
    import time

    deadline = time.time() + 280  # outlives the test's wait for TensorBoard (slow to start on a fresh venv)
    while time.time() < deadline and not os.path.exists(args["stop"]):
        time.sleep(0.1)


def test_tensorboard_answers_while_cluster_runs(sc, tmp_path, no_leftovers):
    stop = tmp_path / "stop"
    cluster = tfos.run(sc, wait_for_stop, {"stop": str(stop)}, num_executors=2, tensorboard=True,
                       log_dir=str(tmp_path / "tb"))
    try:
        url = cluster.tensorboard_url
        assert url and url.startswith("http://127.0.0.1:")
        status = None
        deadline = time.monotonic() + 240  # TensorBoard imports TensorFlow before it binds: slow on a busy host
        while status is None and time.monotonic() < deadline:
            try:
                status = urllib.request.urlopen(url, timeout=2).status
            except OSError:
                threading.Event().wait(0.25)
        assert status == 200, "\n".join(cluster.log_tail("chief:0"))
        assert any("tensorboard.main" in " ".join(p.cmdline()) for p in node_processes())
    finally:
        stop.touch()
        cluster.shutdown()


def test_bad_arguments_fail_before_any_spark_job(sc):
    jobs_before = len(sc.statusTracker().getJobIdsForGroup(None) or [])
    with pytest.raises(tfos.TFOSConfigError, match="num_executors=3 but the Spark application has only 2"):
        tfos.run(sc, record_context, None, num_executors=3)
    with pytest.raises(tfos.TFOSConfigError, match="main_fun must be a function"):
        tfos.run(sc, "main", None, num_executors=2)
    with pytest.raises(tfos.TFOSConfigError, match="must be picklable"):
        tfos.run(sc, record_context, threading.Lock(), num_executors=2)
    assert len(sc.statusTracker().getJobIdsForGroup(None) or []) == jobs_before
