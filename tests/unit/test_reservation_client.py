"""Reservation handles and run signatures, without Spark."""

from __future__ import annotations

import base64
import os
import stat

import pytest

import tfos
from tfos._security import Credential, RunSigner, new_run_id
from tfos.cli._reserve import format_nodes, spark_settings
from tfos.driver import _attach
from tfos.driver._attach import Handle, read_handle, write_handle
from tfos.executor._bootstrap import open_signed

CRED = Credential.make()
SIGNER = RunSigner.make()


def handle(tmp_path):
    return Handle(name="n", address="127.0.0.1:1", tls=CRED.to_json(), run_key=SIGNER.private_pem.decode(),
                  cluster_spec={"chief": ["h:1"]}, master="local-cluster[2,1,1024]", app_id="app-1", host="h", pid=1)


def test_handle_is_written_for_its_owner_only_and_read_back(tmp_path):
    path = str(tmp_path / "x.handle")
    write_handle(path, handle(tmp_path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    back = read_handle(path)
    assert Credential.from_json(back.tls) == CRED and back.run_key == SIGNER.private_pem.decode()
    assert back.cluster_spec == {"chief": ["h:1"]} and back.path == path
    assert os.listdir(tmp_path) == ["x.handle"]  # no temporary file left
    assert CRED.key_pem.decode() not in repr(back) and "PRIVATE" not in repr(back)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_handle_readable_by_others_is_refused_naming_chmod(tmp_path, mode):
    path = str(tmp_path / "x.handle")
    write_handle(path, handle(tmp_path))
    os.chmod(path, mode)
    with pytest.raises(tfos.TFOSConfigError, match=f"readable by others .*chmod 600 {path}"):
        tfos.attach(path)
    os.chmod(path, 0o600)
    assert read_handle(path).name == "n"


def test_handle_that_is_missing_unreadable_or_not_a_handle_names_the_fix(tmp_path, monkeypatch):
    with pytest.raises(tfos.TFOSConfigError, match="no reservation handle at .*tfos reserve"):
        tfos.attach(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text('{"name": 1}')
    bad.chmod(0o600)
    with pytest.raises(tfos.TFOSConfigError, match="is not a tfos reservation handle"):
        tfos.attach(bad)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_attach, "open", refuse, raising=False)
    with pytest.raises(tfos.TFOSConfigError, match="permission denied.*readable by the user who reserved"):
        tfos.attach(bad)


def test_a_launch_loads_only_a_main_signed_with_the_reservations_key_and_each_run_once():
    blob = b"pickled main_fun"
    data = base64.b64encode(blob).decode()
    run = new_run_id()
    seen: set[str] = set()

    def launch(run_id, sig, main=data):
        return {"type": "launch", "run": run_id, "main": main, "sig": sig}

    with pytest.raises(tfos.AuthError, match="not signed with this reservation's key"):
        open_signed(launch(run, RunSigner.make().sign(run, blob)), SIGNER.public, seen)  # another key
    with pytest.raises(tfos.AuthError, match="not signed"):
        open_signed(launch(run, SIGNER.sign(run, blob), base64.b64encode(b"tampered").decode()), SIGNER.public, seen)
    with pytest.raises(tfos.AuthError, match="not signed"):
        open_signed(launch(new_run_id(), SIGNER.sign(run, blob)), SIGNER.public, seen)  # signed for another run
    with pytest.raises(tfos.AuthError, match="not signed"):
        open_signed(launch(run, "bm90IGEgc2lnbmF0dXJl"), SIGNER.public, seen)
    assert not seen
    assert open_signed(launch(run, SIGNER.sign(run, blob)), SIGNER.public, seen) == blob
    with pytest.raises(tfos.AuthError, match="launched before"):
        open_signed(launch(run, SIGNER.sign(run, blob)), SIGNER.public, seen)  # a replayed launch


def test_spark_settings_give_each_standalone_executor_one_task_slot():
    class Args:
        master, num_executors, name, conf = "spark://m:7077", 3, "n", ["spark.executor.memory=2g"]

    settings = spark_settings(Args)
    assert settings["spark.cores.max"] == "3" and settings["spark.executor.cores"] == "1"
    assert settings["spark.task.cpus"] == "1" and settings["spark.dynamicAllocation.enabled"] == "false"
    assert settings["spark.executor.memory"] == "2g"
    Args.conf = ["nonsense"]
    with pytest.raises(tfos.TFOSConfigError, match="is not KEY=VALUE"):
        spark_settings(Args)


def test_status_table_has_one_line_per_node():
    node = {"role": "worker:0", "host": "10.0.0.2", "pid": 42, "state": "running", "heartbeat_age": 0.4,
            "rss": 300 << 20, "gpus": "0", "rows": 1200, "rows_per_sec": 400.0, "metrics": {"loss": 0.5},
            "tensorboard": None}
    lines = format_nodes([node, dict(node, role="chief:0", rss=None, metrics={})]).splitlines()
    assert lines[0].split() == ["ROLE", "HOST", "PID", "STATE", "HEARTBEAT", "RSS", "GPUS", "ROWS", "ROWS/S",
                                "METRICS", "TENSORBOARD"]
    assert lines[1].split() == ["worker:0", "10.0.0.2", "42", "running", "0.4s", "300MiB", "0", "1200", "400",
                                "loss=0.5", "-"]
    assert lines[2].split()[5] == "-"
