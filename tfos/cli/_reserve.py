"""``tfos reserve / status / run / logs / release`` (driver machine): a cluster held like Slurm's salloc.

``reserve`` starts a Spark application whose executors each hold one TensorFlow node
(``--master``), or holds them from a Spark Connect session (``--remote sc://HOST:PORT``),
writes a handle file (mode 0600) and stays until Ctrl-C, SIGTERM or ``tfos release``
(or returns once the cluster is up with ``--detach``, leaving it to a background
process). The other commands read the handle and talk to that process.

Exit codes: 0 done, 1 failed (a run failed, the reservation is gone), 2 bad input or
settings, 3 wrong key (a handle of another reservation), 4 too few executors within the reservation timeout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from tfos.errors import AuthError, ReservationTimeoutError, TFOSConfigError, TFOSError

log = logging.getLogger(__name__)

OK, FAILED, BAD_INPUT, BAD_SECRET, TOO_FEW_EXECUTORS = 0, 1, 2, 3, 4
DEFAULT_HANDLE = "tfos.handle"


def add_commands(commands: Any) -> None:
    """Adds the reservation commands to the ``tfos`` parser."""
    reserve = commands.add_parser(
        "reserve", help="hold a TensorFlow cluster on Spark executors (like salloc)",
        description="Starts a Spark application holding one TensorFlow node per executor, writes a handle file "
                    "and stays until Ctrl-C, SIGTERM or `tfos release HANDLE`.")
    where = reserve.add_argument_group("where (one of)")
    where.add_argument("--master", help="Spark master URL (spark://host:7077, local-cluster[...]): tfos starts the "
                                        "Spark application")
    where.add_argument("--remote", metavar="sc://HOST:PORT",
                       help="a Spark Connect server: tfos holds its executors from a Connect session; the server's "
                            "own settings apply (no --master, no --conf)")
    reserve.add_argument("--num-executors", type=int, required=True, metavar="N", help="nodes, one per executor")
    reserve.add_argument("--num-ps", type=int, default=0, metavar="P", help="parameter servers among them")
    reserve.add_argument("--eval-node", action="store_true", help="make one node an evaluator")
    reserve.add_argument("--gpus", type=int, default=0, metavar="G", help="GPUs per node (not ps)")
    reserve.add_argument("--tensorboard", action="store_true", help="run TensorBoard on the chief")
    reserve.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                         help="a Spark setting (with --master only)")
    reserve.add_argument("--name", default="tfos", help="name of the reservation and its Spark application")
    reserve.add_argument("--handle", default=DEFAULT_HANDLE, metavar="FILE", help=f"default: ./{DEFAULT_HANDLE}")
    reserve.add_argument("--reservation-timeout", type=float, default=120, metavar="SECS",
                         help="seconds to wait for every executor and node (default 120)")
    reserve.add_argument("--detach", action="store_true", help="return once the cluster is up; it keeps running")
    status = commands.add_parser("status", help="show a reserved cluster's nodes (like squeue)")
    status.add_argument("handle", metavar="HANDLE")
    status.add_argument("--json", action="store_true", help="print JSON")
    run = commands.add_parser("run", help="run SCRIPT's main_fun(args, ctx) on every node (like srun)",
                              description="Imports SCRIPT.py, which defines main_fun(args, ctx), and runs it on "
                                          "every node of the reservation with args = the list of ARGS.")
    run.add_argument("--keras", type=int, choices=(2, 3), help="tf.keras on the nodes: 2 (tf-keras, default) or 3")
    run.add_argument("handle", metavar="HANDLE")
    run.add_argument("script", metavar="SCRIPT.py")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
    logs = commands.add_parser("logs", help="print what the nodes printed")
    logs.add_argument("handle", metavar="HANDLE")
    logs.add_argument("--role", metavar="JOB:INDEX", help="only this node, e.g. worker:0")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until release")
    release = commands.add_parser("release", help="give the cluster back (like scancel)")
    release.add_argument("handle", metavar="HANDLE")


def run_command(args: argparse.Namespace) -> int:
    """Runs one reservation command; turns tfos errors into a message and an exit code."""
    commands = {"reserve": reserve, "status": status, "run": run_script, "logs": logs, "release": release}
    try:
        return commands[args.command](args)
    except TFOSConfigError as exc:
        print(f"tfos {args.command}: {exc}", file=sys.stderr)
        return BAD_INPUT
    except AuthError as exc:
        print(f"tfos {args.command}: {exc}", file=sys.stderr)
        return BAD_SECRET
    except ReservationTimeoutError as exc:
        print(f"tfos {args.command}: {exc}", file=sys.stderr)
        return TOO_FEW_EXECUTORS
    except TFOSError as exc:
        print(f"tfos {args.command}: {exc}", file=sys.stderr)
        return FAILED


# ---- reserve ------------------------------------------------------------------------------------
def reserve(args: argparse.Namespace) -> int:
    if args.num_executors < 1:
        raise TFOSConfigError(f"--num-executors must be >= 1; got {args.num_executors}")
    if args.remote is None and args.master is None:
        args.remote = os.environ.get("SPARK_REMOTE") or None  # as a PySpark client reads it
    if args.remote is not None:
        check_remote(args)
    else:
        if args.master is None:
            raise TFOSConfigError("say where to reserve: --master URL (tfos starts a Spark application) or "
                                  "--remote sc://HOST:PORT (a Spark Connect server; or set SPARK_REMOTE)")
        conf = spark_settings(args)
        check_master(args.master)
    _refuse_live_handle(args.handle)
    if args.detach:
        return _detach(args)
    from tfos.driver import _spark
    from tfos.driver._attach import Handle, write_handle
    from tfos.driver._reservation import Reservation
    from tfos.driver._supervisor import ClusterState

    if args.remote is not None:
        sc: Any = _spark.connect(args.remote)
        where = f"{redact_remote(args.remote)} (Spark Connect)"
    else:
        sc, where = _spark.start(conf), args.master
    app_id = _spark.backend(sc).application_id()
    reservation = None
    stop = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["signal"] = signum
        if reservation is None or reservation.state is ClusterState.STARTING:
            raise KeyboardInterrupt  # ends the wait for executors; the finally below cleans up
        reservation.release_requested.set()
        reservation._supervisor.server.wake()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        reservation = Reservation(sc, args.num_executors, num_ps=args.num_ps, eval_node=args.eval_node,
                                  num_gpus=args.gpus, tensorboard=args.tensorboard, name=args.name,
                                  reservation_timeout=args.reservation_timeout)
        if stop["signal"] is None:  # a signal while Spark started: release at once
            reservation.start()
            write_handle(args.handle, Handle(name=args.name, address=reservation.address,
                                             tls=reservation.credential.to_json(),
                                             run_key=reservation.signer.private_pem.decode(),
                                             cluster_spec=reservation.cluster_spec,
                                             master=where, app_id=app_id,
                                             host=socket.gethostname(), pid=os.getpid()))
            print(f"tfos reservation {args.name!r} up: {len(reservation.template)} nodes on {where}")
            print(f"cluster spec: {json.dumps(reservation.cluster_spec)}")
            print(f"handle: {os.path.abspath(args.handle)}   (tfos run {args.handle} SCRIPT.py; "
                  f"tfos release {args.handle})", flush=True)
            while stop["signal"] is None and not reservation.wait(timeout=1.0):
                pass
        return FAILED if reservation.failure is not None else OK
    except KeyboardInterrupt:
        print("tfos reserve: interrupted while the cluster was starting", file=sys.stderr)
        return 128 + (stop["signal"] or signal.SIGINT)
    finally:
        if reservation is not None:
            reservation.release("reservation released")
            if reservation.failure is not None:
                print(f"tfos reserve: the reservation failed: {reservation.failure}", file=sys.stderr)
        _remove(args.handle)
        sc.stop()  # a Connect session only closes its channel: the server and its executors stay
        for s, handler in previous.items():
            signal.signal(s, handler)
        print(f"tfos reservation {args.name!r} released", flush=True)


def spark_settings(args: argparse.Namespace) -> dict[str, str]:
    """The Spark settings of a reservation's application: tfos's needs, then the user's ``--conf``."""
    settings = {"spark.master": args.master, "spark.app.name": f"tfos-reserve-{args.name}",
                "spark.dynamicAllocation.enabled": "false", "spark.pyspark.python": sys.executable,
                "spark.pyspark.driver.python": sys.executable, "spark.ui.showConsoleProgress": "false",
                "spark.executor.instances": str(args.num_executors), "spark.task.maxFailures": "1"}
    if args.master.startswith("spark://"):
        # Standalone gives an executor all of a worker's cores unless told: one node per executor needs
        # one task slot per executor, so one core each (unless --conf says otherwise).
        settings.update({"spark.executor.cores": "1", "spark.cores.max": str(args.num_executors)})
    for item in args.conf:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TFOSConfigError(f"--conf {item!r} is not KEY=VALUE")
        settings[key.strip()] = value
    if "spark.executor.cores" in settings:
        settings.setdefault("spark.task.cpus", settings["spark.executor.cores"])
    return settings


def check_master(master: str) -> None:
    """A clear error for a master URL Spark would not take, or a standalone master that does not answer."""
    if not re.match(r"^(local(\[[^]]*\])?|local-cluster\[[^]]*\]|spark://.+|yarn|k8s://.+)$", master):
        raise TFOSConfigError(f"--master {master!r} is not a Spark master URL (spark://HOST:PORT, yarn, "
                              "k8s://..., local-cluster[N,CORES,MB] or local[N])")
    if master.startswith("spark://"):
        for address in master[len("spark://"):].split(","):
            host, _, port = address.rpartition(":")
            try:
                with socket.create_connection((host, int(port)), timeout=5):
                    return
            except (OSError, ValueError) as exc:
                reason = exc
        raise TFOSConfigError(f"cannot reach the Spark master {master}: {reason}. Is it running? Start one with "
                              "scripts/start_spark.sh, or check the host and port.")


def check_remote(args: argparse.Namespace) -> None:
    """Refuses what a Spark Connect client cannot set, and a Connect server that does not answer."""
    if args.master is not None:
        raise TFOSConfigError(f"--master {args.master} and --remote {redact_remote(args.remote)}: a Spark Connect "
                              "server runs its own Spark application, so its master is the server's setting. Drop "
                              "--master (start the server with it: sbin/start-connect-server.sh --master URL), or "
                              "drop --remote to have tfos start an application on that master")
    if args.conf:
        raise TFOSConfigError(f"--conf {args.conf[0]} with --remote: Spark settings belong to the Spark Connect "
                              "server, not to its clients. Give them to the server (sbin/start-connect-server.sh "
                              "--conf KEY=VALUE), or reserve with --master instead")
    url = urlsplit(args.remote.split(";", 1)[0])
    if url.scheme != "sc" or not url.hostname:
        raise TFOSConfigError(f"--remote {redact_remote(args.remote)} is not a Spark Connect URL "
                              "(sc://HOST:PORT, optionally followed by ;use_ssl=true;token=...)")
    try:
        port = url.port or 15002
        with socket.create_connection((url.hostname, port), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise TFOSConfigError(f"cannot reach the Spark Connect server {redact_remote(args.remote)}: {exc}. Is it "
                              "running? Start one with $SPARK_HOME/sbin/start-connect-server.sh, or check the host "
                              "and port.") from None


def redact_remote(url: str) -> str:
    """A Connect URL fit to print: a ``token=`` parameter is a password."""
    return re.sub(r"(;\s*token=)[^;]*", r"\1***", url)


def _refuse_live_handle(path: str) -> None:
    if not os.path.exists(path):
        return
    from tfos.driver._attach import attach
    from tfos.errors import ReservationGoneError

    try:
        with attach(path) as cluster:
            cluster.status()
    except (ReservationGoneError, AuthError, TFOSConfigError):
        return  # a stale handle: the new reservation replaces it
    raise TFOSConfigError(f"{path} is the handle of a reservation that is still up; release it "
                          f"(tfos release {path}) or choose another --handle")


def _detach(args: argparse.Namespace) -> int:
    """Runs this reservation in a background process and returns once its handle is written."""
    argv, env = _reserve_argv(args)
    log_path = f"{os.path.abspath(args.handle)}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tfos.cli", *argv], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.monotonic() + args.reservation_timeout + 120
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            print(f"tfos reserve: the reservation ended before it was up (exit {code}); its log, {log_path}:\n"
                  f"{_tail(log_path)}", file=sys.stderr)
            return code or FAILED
        handle = _read_own_handle(args.handle, proc.pid)
        if handle is not None:
            print(f"tfos reservation {args.name!r} up (pid {proc.pid}, log {log_path}): "
                  f"{len(sum(handle.cluster_spec.values(), []))} nodes on {handle.master}")
            print(f"cluster spec: {json.dumps(handle.cluster_spec)}")
            print(f"handle: {os.path.abspath(args.handle)}   (tfos release {args.handle} to give it back)")
            return OK
        time.sleep(0.2)
    proc.terminate()
    print(f"tfos reserve: no cluster after {args.reservation_timeout + 120:.0f}s; stopped it. Its log:\n"
          f"{_tail(log_path)}", file=sys.stderr)
    return TOO_FEW_EXECUTORS


def _reserve_argv(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The background reservation's command line and environment. A Connect URL goes in SPARK_REMOTE: any
    token in it stays off the command line, which every user of the host can read."""
    env = dict(os.environ)
    env.pop("SPARK_REMOTE", None)
    if args.remote is not None:
        env["SPARK_REMOTE"], where = args.remote, []
    else:
        where = ["--master", args.master]
    argv = ["reserve", *where, "--num-executors", str(args.num_executors), "--num-ps",
            str(args.num_ps), "--gpus", str(args.gpus), "--name", args.name, "--handle", args.handle,
            "--reservation-timeout", str(args.reservation_timeout)]
    argv += ["--eval-node"] * args.eval_node + ["--tensorboard"] * args.tensorboard
    for item in args.conf:
        argv += ["--conf", item]
    return argv, env


def _read_own_handle(path: str, pid: int) -> Any:
    from tfos.driver._attach import read_handle

    try:
        handle = read_handle(path)
    except TFOSConfigError:
        return None
    return handle if handle.pid == pid else None


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---- status / run / logs / release ---------------------------------------------------------------
def status(args: argparse.Namespace) -> int:
    from tfos.driver._attach import attach

    with attach(args.handle) as cluster:
        info = cluster.status()
    if args.json:
        print(json.dumps(info, indent=2))
        return OK
    run = info["run"]
    last = "none yet"
    if run is not None:
        last = f"{run['id']} ({'failed' if run['failed'] else 'done' if run['done'] else 'running'})"
    print(f"reservation {info['name']!r}: {info['state']}; last run: {last}")
    print(format_nodes(info["nodes"]))
    return OK


def format_nodes(nodes: list[dict[str, Any]]) -> str:
    """The node table of ``tfos status``: one line per node."""
    from tfos.driver._progress import format_metrics

    header = ("ROLE", "HOST", "PID", "STATE", "HEARTBEAT", "RSS", "GPUS", "ROWS", "ROWS/S", "METRICS", "TENSORBOARD")
    table = [header]
    for n in nodes:
        table.append((n["role"], n["host"], str(n["pid"]), n["state"], f"{n['heartbeat_age']:.1f}s",
                      f"{n['rss'] / 2**20:.0f}MiB" if n.get("rss") else "-", n.get("gpus") or "-", str(n["rows"]),
                      f"{n['rows_per_sec']:.0f}", format_metrics(n["metrics"]) or "-", n.get("tensorboard") or "-"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def run_script(args: argparse.Namespace) -> int:
    from tfos.driver._attach import attach

    main_fun = load_main_fun(args.script)
    with attach(args.handle) as cluster:
        started = time.monotonic()
        cluster.run(main_fun, list(args.args), keras=args.keras)
    print(f"tfos run: {args.script} finished on every node in {time.monotonic() - started:.1f}s")
    return OK


def load_main_fun(path: str) -> Any:
    """``main_fun`` of a script, imported under its own name and pickled by value (nodes need not have it)."""
    import cloudpickle

    if not os.path.isfile(path):
        raise TFOSConfigError(f"no script {path}")
    name = "tfos_run_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TFOSConfigError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    main_fun = getattr(module, "main_fun", None)
    if not callable(main_fun):
        raise TFOSConfigError(f"{path} defines no main_fun(args, ctx): tfos run calls that function on every node")
    cloudpickle.register_pickle_by_value(module)
    return main_fun


def logs(args: argparse.Namespace) -> int:
    from tfos.driver._attach import attach

    with attach(args.handle) as cluster:
        if args.follow:
            for role, line in cluster.follow_logs(args.role):
                print(f"[{role}] {line}", flush=True)
        else:
            for role, lines in sorted(cluster.logs(args.role).items()):
                for line in lines:
                    print(f"[{role}] {line}")
    return OK


def release(args: argparse.Namespace) -> int:
    from tfos.driver._attach import attach

    cluster = attach(args.handle)
    cluster.release()
    print(f"tfos release: reservation {cluster.handle.name!r} released")
    return OK
