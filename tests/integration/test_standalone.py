"""A real Spark standalone cluster (scripts/start_spark.sh) running tfos jobs through `tfos submit`.

Four workers of one core each, offering a (fake) GPU found by a discovery script; the
jobs run as separate spark-submit applications, like on a real cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from tests.conftest import ROOT
from tests.integration.conftest import free_port, node_processes
from tests.integration.test_reservation import JOB, cli, reserve_detached

pytestmark = pytest.mark.slow

FAKE_GPU = "5"


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    state = tmp_path_factory.mktemp("spark")
    discovery = state / "gpus.sh"
    discovery.write_text(f"#!/bin/sh\necho '{{\"name\": \"gpu\", \"addresses\": [\"{FAKE_GPU}\"]}}'\n")
    discovery.chmod(0o755)
    env = dict(os.environ, TFOS_SPARK_DIR=str(state), TFOS_SPARK_MASTER_PORT=str(free_port()),
               TFOS_SPARK_UI_PORT=str(free_port()), TFOS_SPARK_GPU_DISCOVERY=str(discovery))
    started = subprocess.run(["bash", "scripts/start_spark.sh", "4"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    master = started.stdout.strip().splitlines()[-1]
    assert master.startswith("spark://")
    pids = [int((state / name).read_text()) for name in os.listdir(state) if name.endswith(".pid")]
    assert len(pids) == 5
    yield master
    stopped = subprocess.run(["bash", "scripts/stop_spark.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def submit(master, executors, script, *args, conf=()):
    command = [sys.executable, "-m", "tfos.cli", "submit", "--master", master, "--executor-cores", "1",
               "--executor-memory", "1g", "--conf", f"spark.cores.max={executors}",
               "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.ui.enabled=false"]
    for item in conf:
        command += ["--conf", item]
    before = {p.pid for p in node_processes()}
    done = subprocess.run([*command, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    left = [p for p in node_processes() if p.pid not in before]
    _, alive = psutil.wait_procs(left, timeout=30)
    assert not alive, "tfos node processes outlived their application"
    return done.stdout


def accuracy(output):
    lines = [line for line in output.splitlines() if line.startswith("test accuracy: ")]
    assert lines, output[-2000:]
    return float(lines[-1].split(": ")[1])


def test_tensorflow_mode_job(standalone, tmp_path):
    out = submit(standalone, 2, "scripts/train_digits.py", "--epochs", "20", "--export_dir", str(tmp_path / "m"))
    assert accuracy(out) >= 0.9


def test_spark_mode_job(standalone, tmp_path):
    out = submit(standalone, 2, "scripts/train_digits_spark.py", "--epochs", "15", "--export_dir",
                 str(tmp_path / "m"))
    assert accuracy(out) >= 0.9


def test_parameter_server_job_on_four_executors(standalone, tmp_path):
    out = submit(standalone, 4, "scripts/train_digits_ps.py", "--epochs", "5", "--export_dir", str(tmp_path / "m"))
    assert accuracy(out) >= 0.8


PROBE = textwrap.dedent("""
    import json, os, sys
    from pyspark import SparkContext
    import tfos

    def record(args, ctx):
        with open(os.path.join(args, f"{ctx.job_name}.json"), "w") as f:
            json.dump(os.environ.get("CUDA_VISIBLE_DEVICES"), f)

    sc = SparkContext()
    with tfos.run(sc, record, sys.argv[1], 2, num_gpus=3):  # Spark's assignment wins over num_gpus
        pass
    sc.stop()
""")


def test_nodes_use_exactly_the_gpus_spark_assigned(standalone, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    submit(standalone, 2, str(probe), str(tmp_path),
           conf=["spark.executor.resource.gpu.amount=1", "spark.task.resource.gpu.amount=1"])
    for role in ("chief", "worker"):
        assert json.loads((tmp_path / f"{role}.json").read_text()) == FAKE_GPU


def test_reserve_on_the_standalone_cluster(standalone, tmp_path, no_leftovers):
    handle = tmp_path / "sa.handle"
    reserve_detached(handle, standalone, "--conf", "spark.executor.memory=1g")
    try:
        script = tmp_path / "job.py"
        script.write_text(JOB)
        started = time.monotonic()
        for tag in ("a", "b"):
            ran = cli("run", str(handle), str(script), str(tmp_path), tag)
            assert ran.returncode == 0, ran.stderr[-3000:]
        assert time.monotonic() - started < 120
        assert len(list(tmp_path.glob("[ab]-*.json"))) == 4
    finally:
        assert cli("release", str(handle)).returncode == 0
    assert not handle.exists()
