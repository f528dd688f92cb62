"""GPU choice without a GPU: a fake nvidia-smi on PATH, lock files, two competing processes."""

import os
import subprocess
import sys
import textwrap

import pytest

from tfos.errors import TFOSError
from tfos.executor._gpus import claim_free_gpus, parse_gpus, query_gpus, spark_assigned_gpus

# index, memory.used (MiB), memory.total (MiB) - as `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`
THREE_GPUS = "0, 15000, 16384\n1, 300, 16384\n2, 0, 16384\n"


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    def install(output, code=0):
        script = tmp_path / "bin" / "nvidia-smi"
        script.parent.mkdir(exist_ok=True)
        script.write_text(f"#!/bin/sh\ncat <<'CSV'\n{output}CSV\nexit {code}\n")
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
        return script
    return install


def test_free_gpus_are_taken_least_used_first_and_busy_ones_skipped(fake_smi, tmp_path):
    fake_smi(THREE_GPUS)
    assert [g.index for g in query_gpus()] == [0, 1, 2]
    claim = claim_free_gpus(2, lock_dir=str(tmp_path / "locks"))
    try:
        assert claim.indices == [2, 1]
        assert claim.visible_devices == "2,1"
    finally:
        claim.release()


def test_not_enough_free_gpus_names_busy_and_claimed_ones(fake_smi, tmp_path):
    fake_smi(THREE_GPUS)
    locks = str(tmp_path / "locks")
    first = claim_free_gpus(1, lock_dir=locks)
    try:
        with pytest.raises(TFOSError, match=r"found only 1: 3 GPU\(s\), busy .*: \[0\], claimed by other tfos "
                                            r"nodes: \[2\]"):
            claim_free_gpus(2, lock_dir=locks)
    finally:
        first.release()
    again = claim_free_gpus(2, lock_dir=locks)  # released locks are free again
    assert again.indices == [2, 1]
    again.release()


def test_two_processes_on_one_host_never_share_a_gpu(fake_smi, tmp_path):
    fake_smi(THREE_GPUS)
    locks = str(tmp_path / "locks")
    child_code = textwrap.dedent(f"""
        import sys
        from tfos.executor._gpus import claim_free_gpus
        try:
            claim = claim_free_gpus(1, lock_dir={locks!r})
        except Exception as exc:
            print("error", exc, flush=True)
            sys.exit(0)
        print("got", claim.visible_devices, flush=True)
        sys.stdin.read()  # hold the lock until the test lets go
    """)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    children = [subprocess.Popen([sys.executable, "-c", child_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, env=env) for _ in range(3)]
    try:
        answers = [c.stdout.readline().split() for c in children]
    finally:
        for c in children:
            c.communicate("", timeout=30)
    got = sorted(a[1] for a in answers if a[0] == "got")
    assert got == ["1", "2"]  # GPU 0 is busy; the third process finds nothing free
    assert sum(a[0] == "error" for a in answers) == 1


def test_missing_or_broken_nvidia_smi_is_a_clear_error(fake_smi, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(TFOSError, match="nvidia-smi is not on this executor's PATH"):
        query_gpus()
    fake_smi("", code=9)
    with pytest.raises(TFOSError, match="nvidia-smi failed"):
        query_gpus()
    with pytest.raises(TFOSError, match="cannot read nvidia-smi output"):
        parse_gpus("0, lots, 16384")


def test_outside_a_spark_task_there_is_no_spark_assignment():
    assert spark_assigned_gpus() is None
