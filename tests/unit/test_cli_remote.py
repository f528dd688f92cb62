"""``tfos reserve --remote``: what a Spark Connect client cannot set is refused before anything starts."""

from __future__ import annotations

import socket

import pytest

from tfos.cli import build_parser, main
from tfos.cli._reserve import _reserve_argv, redact_remote


@pytest.fixture
def listening():
    """A port that accepts connections, standing in for a Connect server (nothing talks to it)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"sc://127.0.0.1:{server.getsockname()[1]}"


def reserve(capsys, *argv):
    code = main(["reserve", "--num-executors", "2", *argv])
    return code, capsys.readouterr().err


def test_master_with_remote_is_refused_and_the_message_names_the_fix(capsys, listening, tmp_path):
    code, err = reserve(capsys, "--remote", listening, "--master", "local-cluster[2,1,1024]",
                        "--handle", str(tmp_path / "h"))
    assert code == 2
    assert "--master local-cluster[2,1,1024] and --remote sc://127.0.0.1:" in err
    assert "start-connect-server.sh --master URL" in err and "Drop --master" in err
    assert not (tmp_path / "h").exists()


def test_spark_settings_with_remote_are_refused(capsys, listening):
    code, err = reserve(capsys, "--remote", listening, "--conf", "spark.executor.memory=2g")
    assert code == 2
    assert "--conf spark.executor.memory=2g with --remote" in err
    assert "start-connect-server.sh --conf KEY=VALUE" in err


def test_neither_master_nor_remote_is_refused(capsys, monkeypatch):
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    code, err = reserve(capsys)
    assert code == 2 and "--master URL" in err and "--remote sc://HOST:PORT" in err and "SPARK_REMOTE" in err


def test_spark_remote_stands_for_remote_as_in_pyspark(capsys, monkeypatch):
    monkeypatch.setenv("SPARK_REMOTE", "http://127.0.0.1:15002")
    code, err = reserve(capsys)
    assert code == 2 and "--remote http://127.0.0.1:15002 is not a Spark Connect URL" in err


def test_a_bad_or_unreachable_remote_is_refused(capsys):
    code, err = reserve(capsys, "--remote", "http://127.0.0.1:15002")
    assert code == 2 and "is not a Spark Connect URL" in err

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    code, err = reserve(capsys, "--remote", f"sc://127.0.0.1:{port}/;token=s3cret")
    assert code == 2 and f"cannot reach the Spark Connect server sc://127.0.0.1:{port}/;token=***" in err
    assert "s3cret" not in err and "start-connect-server.sh" in err


def test_detach_passes_remote_to_the_background_process_off_its_command_line(monkeypatch):
    monkeypatch.setenv("SPARK_REMOTE", "sc://elsewhere:15002")
    url = "sc://h:15002/;token=s3cret"
    args = build_parser().parse_args(["reserve", "--remote", url, "--num-executors", "3", "--gpus", "1", "--detach"])
    argv, env = _reserve_argv(args)
    assert env["SPARK_REMOTE"] == url
    assert "s3cret" not in " ".join(argv) and "--remote" not in argv and "--master" not in argv
    assert argv[argv.index("--gpus") + 1] == "1"

    args = build_parser().parse_args(["reserve", "--master", "local-cluster[2,1,1024]", "--num-executors", "2"])
    argv, env = _reserve_argv(args)
    assert "SPARK_REMOTE" not in env and argv[1:3] == ["--master", "local-cluster[2,1,1024]"]


def test_a_token_is_not_printed():
    assert redact_remote("sc://h:443/;use_ssl=true;token=abc;user_id=u") == "sc://h:443/;use_ssl=true;token=***;user_id=u"


def test_submit_remote_adds_only_the_scripts_python_and_warns_about_executor_settings(capsys):
    import sys

    from tfos.cli._submit import submit_command

    cmd = submit_command(["--remote", "sc://h:15002", "--conf", "spark.sql.shuffle.partitions=4", "--conf",
                          "spark.executor.memory=2g", "--executor-cores", "2", "job.py", "--epochs", "3"])
    assert cmd[-3:] == ["job.py", "--epochs", "3"]
    joined = " ".join(cmd)
    assert f"spark.pyspark.driver.python={sys.executable}" in joined
    assert "dynamicAllocation" not in joined and "spark.task.cpus" not in joined and "locality" not in joined
    err = capsys.readouterr().err
    assert "--executor-cores, spark.executor.memory reach no executor with --remote" in err
    assert "shuffle" not in err


@pytest.mark.parametrize("option", [["--master", "local[2]"], ["--deploy-mode=cluster"]])
def test_submit_remote_refuses_the_servers_options(option):
    from tfos.cli._submit import submit_command

    name = option[0].split("=")[0]
    with pytest.raises(SystemExit, match=f"{name} with --remote: .* Drop {name}"):
        submit_command(["--remote=sc://h:15002", *option, "job.py"])


def test_submit_remote_sets_spark_remote_for_the_script(capsys):
    # spark-submit --remote alone leaves SparkSession.builder.getOrCreate() classic (MASTER_URL_NOT_SET).
    assert main(["submit", "--dry-run", "--remote", "sc://h:15002", "job.py"]) == 0
    assert capsys.readouterr().out.startswith("SPARK_REMOTE=sc://h:15002 ")
