import subprocess
import sys

import pytest

from tfos.cli import build_parser, main
from tfos.cli._doctor import settings_problems
from tfos.cli._submit import submit_command


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "tfos.cli", "--help"], capture_output=True, text=True, check=True)
    assert "doctor" in out.stdout and "submit" in out.stdout


def test_parser_requires_a_command():
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_doctor_flags_settings_that_break_reservation(capsys):
    code = main(["doctor", "--conf", "spark.dynamicAllocation.enabled=true", "--conf", "spark.executor.cores=4",
                 "--conf", "spark.speculation=true"])
    out = capsys.readouterr().out
    assert code == 1
    assert "Fix: --conf spark.dynamicAllocation.enabled=false" in out
    assert "Fix: --conf spark.speculation=false" in out
    assert "Fix: --conf spark.task.cpus=4" in out


def test_doctor_rejects_a_missing_pyspark_python():
    problems = settings_problems({"spark.pyspark.python": "/nonexistent/python"})
    assert any("/nonexistent/python" in p and "Fix" in p for p in problems)


def test_doctor_passes_on_good_settings():
    assert settings_problems({"spark.executor.cores": "2", "spark.task.cpus": "2"}) == []


def test_submit_adds_tfos_settings_unless_given():
    cmd = submit_command(["--master", "local-cluster[2,1,1024]", "--conf", "spark.pyspark.python=/py",
                          "--executor-cores", "2", "job.py", "--epochs", "3"])
    assert cmd[0].endswith("spark-submit")
    assert cmd[-3:] == ["job.py", "--epochs", "3"]
    joined = " ".join(cmd)
    assert "spark.dynamicAllocation.enabled=false" in joined
    assert "spark.task.cpus=2" in joined
    assert "spark.locality.wait=0" in joined
    assert f"spark.pyspark.python={sys.executable}" not in joined


def test_submit_without_script_fails_clearly():
    with pytest.raises(SystemExit, match="no script given"):
        submit_command(["--master", "local[2]"])


def test_doctor_checks_the_mutual_tls_tfos_needs(monkeypatch):
    from tfos import _security
    from tfos.cli._doctor import tls_check

    line, problem = tls_check()
    assert problem is None and "mutual TLSv1.3 handshake work" in line

    def broken(cls):
        raise ImportError("No module named 'cryptography'")

    monkeypatch.setattr(_security.Credential, "make", classmethod(broken))
    line, problem = tls_check()
    assert line == "TLS: failed" and "pip install 'cryptography" in problem
