"""``tfos submit`` (driver machine): spark-submit with the settings tfos needs.

With ``--remote sc://HOST:PORT`` (spark-submit's own Spark Connect option) the script runs
on this machine as a Spark Connect client, with ``SPARK_REMOTE`` set so that
``SparkSession.builder.getOrCreate()`` in it returns a Connect session, and the executors
belong to the Connect server's application. Their settings are the server's, so tfos adds
none of them then, only the Python that runs the script, and refuses ``--master`` /
``--deploy-mode``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from tfos.cli._spark import spark_home

#: spark-submit options that take no value.
_FLAGS = {"--verbose", "-v", "--supervise", "--help", "-h", "--version"}


def split_submit_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Splits ``[spark-submit options] SCRIPT [script args]`` at the script."""
    i = 0
    while i < len(args):
        if not args[i].startswith("-"):
            return args[:i], args[i:]
        i += 1 if args[i] in _FLAGS or "=" in args[i] else 2
    return args, []


#: spark-submit options that shape the application's driver and executors: a Connect server's own.
_SERVER_OPTIONS = ("--master", "--deploy-mode")
_EXECUTOR_OPTIONS = ("--num-executors", "--executor-cores", "--executor-memory", "--total-executor-cores")
#: Settings a Spark Connect client applies itself: SQL settings go to its session, spark.pyspark.* choose the
#: script's Python.
_CLIENT_SETTINGS = ("spark.sql.", "spark.pyspark.", "spark.connect.")


def _option(options: list[str], name: str) -> str | None:
    """The value of ``name`` (``--name VALUE`` or ``--name=VALUE``) among spark-submit options, else None."""
    for i, opt in enumerate(options):
        if opt == name and i + 1 < len(options):
            return options[i + 1]
        if opt.startswith(f"{name}="):
            return opt.split("=", 1)[1]
    return None


def submit_command(args: list[str]) -> list[str]:
    """The spark-submit command line for ``args``, with tfos's settings added unless given."""
    options, script = split_submit_args(args)
    if not script:
        raise SystemExit("tfos submit: no script given; usage: tfos submit [SPARK-SUBMIT OPTIONS] SCRIPT [ARGS]")
    given = {options[i + 1].split("=", 1)[0] for i, opt in enumerate(options[:-1]) if opt == "--conf"}
    given |= {opt.split("=", 1)[1].split("=", 1)[0] for opt in options if opt.startswith("--conf=")}
    if _option(options, "--remote") is not None:
        return _remote_command(options, script, given)
    added: list[str] = []
    defaults = {"spark.dynamicAllocation.enabled": "false", "spark.pyspark.python": sys.executable,
                "spark.pyspark.driver.python": sys.executable, "spark.ui.showConsoleProgress": "false",
                # Feeding tasks wait while a node's buffer is full; delay scheduling would hold the
                # remaining partitions for that busy executor while the other nodes starve.
                "spark.locality.wait": "0"}
    if "--executor-cores" in options:
        defaults["spark.task.cpus"] = options[options.index("--executor-cores") + 1]
    for key, value in defaults.items():
        if key not in given:
            added += ["--conf", f"{key}={value}"]
    return [os.path.join(spark_home(), "bin", "spark-submit"), *options, *added, *script]


def _remote_command(options: list[str], script: list[str], given: set[str]) -> list[str]:
    """spark-submit --remote: the script is a Spark Connect client; only its own Python is tfos's to choose."""
    for name in _SERVER_OPTIONS:
        if _option(options, name) is not None:
            raise SystemExit(f"tfos submit: {name} with --remote: a Spark Connect server runs its own Spark "
                             f"application, so {name} is the server's setting. Drop {name} (start the server with "
                             f"it: sbin/start-connect-server.sh {name} ...), or drop --remote")
    ignored = [name for name in _EXECUTOR_OPTIONS if _option(options, name) is not None]
    ignored += sorted(key for key in given if not key.startswith(_CLIENT_SETTINGS))
    if ignored:
        print(f"tfos submit: warning: {', '.join(ignored)} reach no executor with --remote: the executors belong "
              "to the Spark Connect server, so give these to it (sbin/start-connect-server.sh --conf KEY=VALUE)",
              file=sys.stderr)
    added = [] if "spark.pyspark.driver.python" in given else ["--conf",
                                                                f"spark.pyspark.driver.python={sys.executable}"]
    return [os.path.join(spark_home(), "bin", "spark-submit"), *options, *added, *script]


def submit(args: list[str], dry_run: bool = False) -> int:
    command = submit_command(args)
    # spark-submit --remote hands the URL to a Python app only as PYSPARK_REMOTE_INIT_CONF, which a plain
    # SparkSession.builder.getOrCreate() ignores (measured, pyspark 4.3): SPARK_REMOTE is what it reads.
    remote = _option(split_submit_args(args)[0], "--remote")
    env = None if remote is None else dict(os.environ, SPARK_REMOTE=remote)
    if dry_run:
        print(("" if remote is None else f"SPARK_REMOTE={shlex.quote(remote)} ") + shlex.join(command))
        return 0
    return subprocess.call(command, env=env)
