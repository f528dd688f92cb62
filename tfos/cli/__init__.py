"""The ``tfos`` command (driver machine): checks, spark-submit, and clusters held like Slurm's salloc.

``build_parser()`` builds the argument parser; ``main(argv)`` runs a command and
returns its exit code. Only the CLI configures logging handlers.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tfos._version import __version__
from tfos.cli._doctor import doctor
from tfos.cli._reserve import add_commands, run_command
from tfos.cli._submit import submit

_RESERVATION_COMMANDS = ("reserve", "status", "run", "logs", "release")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfos", description="TensorFlow distributed training inside Apache Spark.")
    parser.add_argument("--version", action="version", version=f"tfos {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser("doctor", help="check Java, Python, Spark, TensorFlow and Spark settings",
                                description="Checks this machine and the Spark settings tfos relies on. "
                                            "Exits 1 and prints a fix for each problem found.")
    check.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                       help="a Spark setting to check as well (repeatable), as given to spark-submit")
    run = commands.add_parser("submit", help="spark-submit a tfos script with the settings tfos needs",
                              description="Runs spark-submit with tfos's required settings added unless given: "
                                          "dynamic allocation off, executors and driver on this Python, one task "
                                          "slot per executor. Options before SCRIPT go to spark-submit.")
    run.add_argument("--dry-run", action="store_true", help="print the spark-submit command instead of running it")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="[SPARK-SUBMIT OPTIONS] SCRIPT [ARGS]")
    add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # spark-submit's own options (--master ...) are unknown to argparse: keep them, in order.
    args, unknown = parser.parse_known_args(argv)
    if args.command != "submit" and unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if args.command == "doctor":
        return doctor(args.conf)
    if args.command in _RESERVATION_COMMANDS:
        return run_command(args)
    return submit(unknown + args.args, dry_run=args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
