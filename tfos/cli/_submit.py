"""``tfos submit`` (driver machine): spark-submit with the settings tfos needs."""

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


def submit_command(args: list[str]) -> list[str]:
    """The spark-submit command line for ``args``, with tfos's settings added unless given."""
    options, script = split_submit_args(args)
    if not script:
        raise SystemExit("tfos submit: no script given; usage: tfos submit [SPARK-SUBMIT OPTIONS] SCRIPT [ARGS]")
    given = {options[i + 1].split("=", 1)[0] for i, opt in enumerate(options[:-1]) if opt == "--conf"}
    given |= {opt.split("=", 1)[1].split("=", 1)[0] for opt in options if opt.startswith("--conf=")}
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


def submit(args: list[str], dry_run: bool = False) -> int:
    command = submit_command(args)
    if dry_run:
        print(shlex.join(command))
        return 0
    return subprocess.call(command)
