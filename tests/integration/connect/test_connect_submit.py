"""``tfos submit --remote``: a tfos script run by spark-submit as a Spark Connect client."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.integration.test_reservation import cli

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import json, os, sys

    from pyspark.sql import SparkSession

    import tfos

    def main_fun(out, ctx):
        with open(os.path.join(out, f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
            json.dump({"cluster": ctx.cluster_spec, "python": sys.executable}, f)

    if __name__ == "__main__":
        spark = SparkSession.builder.getOrCreate()
        print("session:", type(spark).__module__, flush=True)
        tfos.run(spark, main_fun, sys.argv[1], 2).shutdown()
""")


def test_submit_remote_runs_the_script_as_a_connect_client(connect_server, tmp_path, no_leftovers):
    url, _ = connect_server
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    ran = cli("submit", "--remote", url, str(script), str(out), cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-4000:] + ran.stdout
    assert "session: pyspark.sql.connect.session" in ran.stdout
    chief = json.loads((out / "chief-0.json").read_text())
    worker = json.loads((out / "worker-0.json").read_text())
    assert chief["cluster"] == worker["cluster"] and len(chief["cluster"]["worker"]) == 1


def test_submit_remote_refuses_master(connect_server, tmp_path):
    refused = cli("submit", "--remote", connect_server[0], "--master", "local[2]", str(tmp_path / "job.py"))
    assert refused.returncode == 1 and "--master with --remote" in refused.stderr
    assert "start-connect-server.sh --master" in refused.stderr
