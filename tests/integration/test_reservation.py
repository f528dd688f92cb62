"""Reservations through the real CLI: `tfos reserve` holds a local-cluster, runs go to it, release frees it.

Each `tfos reserve` is its own Spark application (a second local-cluster beside the
session's), as a user's would be.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import tfos
from tests.integration.conftest import wait_until
from tfos._security import Credential, RunSigner

pytestmark = pytest.mark.slow

MASTER = "local-cluster[2,1,1024]"
SPARK = ["--conf", "spark.ui.enabled=false", "--conf", "spark.driver.host=127.0.0.1",
         "--conf", "spark.driver.bindAddress=127.0.0.1", "--conf", "spark.executorEnv.TFOS_ORPHAN_TIMEOUT_SECS=20"]

JOB = textwrap.dedent("""
    import json, os, time

    def main_fun(args, ctx):
        out, tag = args
        print(f"hello from {ctx.job_name}:{ctx.task_index} run {tag}", flush=True)
        with open(os.path.join(out, f"{tag}-{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
            json.dump({"pid": os.getpid(), "tf_config": json.loads(os.environ["TF_CONFIG"])}, f)
        ctx.report(step=3, loss=0.25)
""")


def cli(*args, cwd=None, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "tfos.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=None if env is None else dict(os.environ, **env))


def reserve_detached(handle, master=MASTER, *extra, env=None):
    reserved = cli("reserve", "--master", master, "--num-executors", "2", "--handle", str(handle), "--detach",
                   "--name", "t", *SPARK, *extra, cwd=os.path.dirname(handle), env=env)
    assert reserved.returncode == 0, reserved.stderr[-3000:] + reserved.stdout
    return reserved


def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # exited, waiting for init to reap it
    except psutil.NoSuchProcess:
        return False


def ports_free(spec):
    for address in sum(spec.values(), []):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", int(address.rsplit(":", 1)[1])))
    return True


def fail_on_worker(args, ctx):
    if ctx.job_name == "worker":
        raise ValueError("bad input file: /data/part-7")


def test_reserve_detached_runs_twice_logs_fails_a_run_and_releases_cleanly(tmp_path, no_leftovers):
    handle = tmp_path / "h.handle"
    reserved = reserve_detached(handle, env={"TFOS_HEARTBEAT_TIMEOUT_SECS": "1.5", "TFOS_POLL_HOLD_SECS": "0.3"})
    assert '"chief": ["127.0.0.1:' in reserved.stdout and "worker" in reserved.stdout
    assert stat.S_IMODE(os.stat(handle).st_mode) == 0o600
    info = json.loads(handle.read_text())
    pid, spec = info["pid"], info["cluster_spec"]
    shown_anywhere = reserved.stdout + reserved.stderr + (tmp_path / "h.handle.log").read_text()
    for key in (info["tls"]["key"], info["run_key"]):
        assert "PRIVATE KEY" in key and key.splitlines()[1] not in shown_anywhere

    time.sleep(3)  # idle for longer than the heartbeat timeout: held nodes between runs must not count as silent
    shown = cli("status", str(handle))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "reservation 't': running; last run: none yet", shown.stdout
    assert "ROLE" in lines[1] and any(line.startswith("chief:0") and " idle " in line for line in lines)
    assert any(line.startswith("worker:0") for line in lines)

    script = tmp_path / "job.py"
    script.write_text(JOB)
    out = tmp_path / "out"
    out.mkdir()
    for tag in ("a", "b"):
        ran = cli("run", str(handle), str(script), str(out), tag)
        assert ran.returncode == 0, ran.stderr[-3000:]
    runs = {name: json.loads((out / name).read_text()) for name in os.listdir(out)}
    assert sorted(runs) == ["a-chief-0.json", "a-worker-0.json", "b-chief-0.json", "b-worker-0.json"]
    assert runs["a-chief-0.json"]["pid"] != runs["b-chief-0.json"]["pid"]  # a fresh node process per run
    assert runs["a-worker-0.json"]["tf_config"] == runs["b-worker-0.json"]["tf_config"]  # same roles and ports
    assert runs["b-worker-0.json"]["tf_config"]["cluster"] == spec

    as_json = json.loads(cli("status", str(handle), "--json").stdout)
    nodes = {n["role"]: n for n in as_json["nodes"]}
    assert as_json["state"] == "running" and as_json["run"]["done"] and not as_json["run"]["failed"]
    assert nodes["worker:0"]["metrics"] == {"step": 3, "loss": 0.25} and nodes["chief:0"]["rss"] > 0

    logs = cli("logs", str(handle), "--role", "worker:0")
    assert "[worker:0] hello from worker:0 run a" in logs.stdout and "run b" in logs.stdout
    assert "chief:0" not in logs.stdout

    cluster = tfos.attach(handle)
    with pytest.raises(tfos.NodeError, match=r"main_fun failed on worker:0 .*bad input file: /data/part-7") as err:
        cluster.run(fail_on_worker, None)
    assert err.value.job_name == "worker" and "Traceback" in err.value.remote_traceback
    follow = subprocess.Popen([sys.executable, "-m", "tfos.cli", "logs", str(handle), "--follow"],
                              stdout=subprocess.PIPE, text=True)
    ran = cli("run", str(handle), str(script), str(out), "c")  # the reservation holds on after a failed run
    assert ran.returncode == 0, ran.stderr[-3000:]
    followed: list[str] = []
    threading.Thread(target=lambda: followed.extend(follow.stdout), daemon=True).start()
    found = wait_until(lambda: any("hello from chief:0 run c" in line for line in followed), timeout=60)
    follow.kill()
    follow.wait()
    assert found, followed[-20:]  # old lines first, then the new run's as they come

    released = cli("release", str(handle))
    assert released.returncode == 0, released.stderr
    assert not handle.exists() and not alive(pid)
    assert ports_free(spec)
    gone = cli("status", str(handle))
    assert gone.returncode == 2 and "no reservation handle" in gone.stderr


def test_reserve_in_the_foreground_releases_on_sigterm(tmp_path, no_leftovers):
    handle = tmp_path / "fg.handle"
    proc = subprocess.Popen([sys.executable, "-m", "tfos.cli", "reserve", "--master", MASTER, "--num-executors",
                             "2", "--handle", str(handle), *SPARK], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=tmp_path)
    try:
        assert wait_until(handle.exists, timeout=180), proc.stdout.read() if proc.poll() is not None else ""
        spec = json.loads(handle.read_text())["cluster_spec"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        output = proc.stdout.read()
        assert "cluster spec:" in output and "released" in output
        assert not handle.exists() and ports_free(spec)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bad_input_gets_a_clear_error_and_exit_code(tmp_path):
    missing = cli("status", str(tmp_path / "nope.handle"))
    assert missing.returncode == 2 and "no reservation handle at" in missing.stderr

    unreachable = cli("reserve", "--master", "spark://127.0.0.1:1", "--num-executors", "2")
    assert unreachable.returncode == 2 and "cannot reach the Spark master spark://127.0.0.1:1" in unreachable.stderr

    not_a_master = cli("reserve", "--master", "localhost:7077", "--num-executors", "2")
    assert not_a_master.returncode == 2 and "is not a Spark master URL" in not_a_master.stderr

    # Spark gives the application one executor of the two the reservation needs.
    few = cli("reserve", "--master", MASTER, "--num-executors", "2", "--handle", str(tmp_path / "few.handle"),
              "--reservation-timeout", "15", "--conf", "spark.cores.max=1", *SPARK, cwd=tmp_path)
    assert few.returncode == 4, few.stderr[-3000:]
    assert "only 1 of 2 tfos nodes registered within reservation_timeout=15.0s" in few.stderr
    assert "Spark has 1 executor(s)" in few.stderr and not (tmp_path / "few.handle").exists()

    gone = tmp_path / "gone.handle"
    gone.write_text(json.dumps({"name": "old", "address": "127.0.0.1:9", "tls": Credential.make().to_json(),
                                "run_key": RunSigner.make().private_pem.decode(), "cluster_spec": {},
                                "master": MASTER, "app_id": "app", "host": socket.gethostname(), "pid": 999999}))
    gone.chmod(0o600)
    answer = cli("status", str(gone))
    assert answer.returncode == 1 and "does not answer" in answer.stderr and "reserve again" in answer.stderr


def write_private(path, data):
    path.write_text(json.dumps(data))
    path.chmod(0o600)


def write_marker(args, ctx):
    open(os.path.join(args, f"ran-{ctx.job_name}-{os.getpid()}"), "w").close()


def test_another_key_a_forged_signature_and_a_replayed_submit_are_refused(tmp_path, no_leftovers):
    from tfos._security import RunSigner, new_run_id
    from tfos.driver._cluster import _pickle_main

    handle = tmp_path / "s.handle"
    reserve_detached(handle)
    try:
        data = json.loads(handle.read_text())
        forged = tmp_path / "forged.handle"
        write_private(forged, dict(data, tls=Credential.make().to_json()))  # another cluster's TLS key
        refused = cli("status", str(forged))
        assert refused.returncode == 3 and "refused the keys" in refused.stderr
        script = tmp_path / "job.py"
        script.write_text(JOB)
        refused = cli("run", str(forged), str(script), str(tmp_path), "x")
        assert refused.returncode == 3 and not list(tmp_path.glob("x-*.json"))

        # the control plane's TLS key alone (what every held node has) cannot sign code
        unsigned = tmp_path / "unsigned.handle"
        write_private(unsigned, dict(data, run_key=RunSigner.make().private_pem.decode()))
        refused = cli("run", str(unsigned), str(script), str(tmp_path), "y")
        assert refused.returncode == 3 and "not signed with this reservation's key" in refused.stderr
        assert not list(tmp_path.glob("y-*.json"))

        # a captured Submit, replayed: refused, and its main_fun runs once
        out = tmp_path / "out"
        out.mkdir()
        blob = _pickle_main(write_marker, str(out))
        run = new_run_id()
        submit = {"main": base64.b64encode(blob).decode(), "run": run,
                  "sig": RunSigner(data["run_key"].encode()).sign(run, blob), "keras": None}
        cluster = tfos.attach(handle)
        assert cluster._call("Submit", submit)["ok"]
        assert wait_until(lambda: cluster._call("RunState", {"run": run, "wait": 1.0}).get("done"), timeout=120)
        with pytest.raises(tfos.AuthError, match="submitted before"):
            cluster._call("Submit", submit)
        time.sleep(2)
        assert sorted(name.rsplit("-", 1)[0] for name in os.listdir(out)) == ["ran-chief", "ran-worker"]
        assert cli("status", str(handle)).returncode == 0  # the reservation serves on
    finally:
        assert cli("release", str(handle)).returncode == 0
