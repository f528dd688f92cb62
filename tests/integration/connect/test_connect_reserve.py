"""``tfos reserve --remote``: a reservation held from a Spark Connect session, used by the same CLI as today.

The reserving process is a Connect client: it starts no JVM of its own, the executors
belong to the Connect server's application, and the control server runs in the client.
"""

from __future__ import annotations

import json
import os
import stat

import psutil
import pytest

from tests.integration.test_reservation import JOB, alive, cli, ports_free

pytestmark = pytest.mark.slow


def test_reserve_over_connect_runs_twice_shows_status_and_logs_and_releases(connect_server, tmp_path,
                                                                            no_leftovers):
    url, _ = connect_server
    handle = tmp_path / "c.handle"
    reserved = cli("reserve", "--remote", url, "--num-executors", "2", "--handle", str(handle), "--detach",
                   "--name", "c", cwd=tmp_path, env={"TFOS_POLL_HOLD_SECS": "0.3"})
    assert reserved.returncode == 0, reserved.stderr[-3000:] + reserved.stdout + _log(handle)
    assert f"2 nodes on {url} (Spark Connect)" in reserved.stdout and '"chief": ["127.0.0.1:' in reserved.stdout
    assert stat.S_IMODE(os.stat(handle).st_mode) == 0o600
    info = json.loads(handle.read_text())
    pid, spec = info["pid"], info["cluster_spec"]
    assert info["master"] == f"{url} (Spark Connect)" and info["app_id"].startswith("app-")
    # A Connect client: the reserving process started no JVM (no SparkContext, no py4j gateway).
    assert not [p for p in psutil.Process(pid).children(recursive=True) if "java" in p.name()]

    shown = cli("status", str(handle))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "reservation 'c': running; last run: none yet", shown.stdout
    assert any(line.startswith("chief:0") and " idle " in line for line in lines)
    assert any(line.startswith("worker:0") for line in lines)

    script = tmp_path / "job.py"
    script.write_text(JOB)
    out = tmp_path / "out"
    out.mkdir()
    for tag in ("a", "b"):
        ran = cli("run", str(handle), str(script), str(out), tag)
        assert ran.returncode == 0, ran.stderr[-3000:] + _log(handle)
    runs = {name: json.loads((out / name).read_text()) for name in os.listdir(out)}
    assert sorted(runs) == ["a-chief-0.json", "a-worker-0.json", "b-chief-0.json", "b-worker-0.json"]
    assert runs["a-chief-0.json"]["pid"] != runs["b-chief-0.json"]["pid"]  # a fresh node process per run
    assert runs["b-worker-0.json"]["tf_config"]["cluster"] == spec == runs["a-worker-0.json"]["tf_config"]["cluster"]

    as_json = json.loads(cli("status", str(handle), "--json").stdout)
    assert as_json["state"] == "running" and as_json["run"]["done"] and not as_json["run"]["failed"]
    assert {n["role"]: n for n in as_json["nodes"]}["worker:0"]["metrics"] == {"step": 3, "loss": 0.25}

    logs = cli("logs", str(handle), "--role", "worker:0")
    assert logs.returncode == 0, logs.stderr
    assert "[worker:0] hello from worker:0 run a" in logs.stdout and "run b" in logs.stdout
    assert "chief:0" not in logs.stdout

    released = cli("release", str(handle))
    assert released.returncode == 0, released.stderr
    assert "released" in released.stdout
    assert not handle.exists() and not alive(pid)
    assert ports_free(spec)
    gone = cli("status", str(handle))
    assert gone.returncode == 2 and "no reservation handle" in gone.stderr


def test_master_with_remote_is_refused_before_anything_starts(connect_server, tmp_path):
    url, _ = connect_server
    refused = cli("reserve", "--remote", url, "--master", "local-cluster[2,1,1024]", "--num-executors", "2",
                  "--handle", str(tmp_path / "x.handle"), cwd=tmp_path)
    assert refused.returncode == 2
    assert "a Spark Connect server runs its own Spark application" in refused.stderr
    assert "start-connect-server.sh --master URL" in refused.stderr
    assert not (tmp_path / "x.handle").exists()


def _log(handle) -> str:
    try:
        return "\nreserve log:\n" + open(f"{handle}.log").read()[-5000:]
    except OSError:
        return ""
