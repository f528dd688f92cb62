"""Node bootstrap (executor, inside a Spark task): reserve ports, register, start the node.

``NodeLauncher`` is the function of the Spark job that hosts the cluster: one task per
executor. Each task reserves its ports, registers with the driver, waits for the
full cluster spec and starts the node process (``tfos.executor._node``) with
TF_CONFIG set. In InputMode.TENSORFLOW the task then waits for the node to finish;
in InputMode.SPARK it returns so that feeding tasks can use the executor's slot.

A held node (``tfos reserve``, ``hold=True``) keeps its task, and so its executor: an
agent loop waits for the driver to launch a run, starts a fresh node process for it on
the same ports, waits for it, and waits for the next run until the reservation is
released. The run's ``main_fun`` arrives as a pickle signed with the reservation's
Ed25519 key, bound to a fresh run id; the agent holds only the public key (from its task
closure), checks the signature and refuses a run id it has seen before the node loads it.

Failures are reported to the driver over the control plane rather than raised, so
Spark never retries a node task behind tfos's back.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from tfos import _constants as C
from tfos._paths import cache_dir, local_marker_path, log_path, unix_socket_path
from tfos._protocol import Event, NodeState, Registration
from tfos._roles import FEEDING_JOBS, Role, tf_config
from tfos._rpc import NodeClient
from tfos._security import Credential, verify_run
from tfos.config import InputMode
from tfos.errors import AuthError, TFOSError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodePayload:
    """Everything the node process needs; sent to it over a local pipe."""

    cluster_id: str
    server_address: str
    credential: Credential
    executor_id: int
    job_name: str
    task_index: int
    cluster_spec: dict[str, list[str]]
    cluster_info: list[dict[str, Any]]
    default_fs: str
    input_mode: int
    tensorboard: bool
    feed_tls: bool
    log_dir: str | None
    release_port: bool
    main: bytes = field(repr=False)
    fds: dict[str, int]
    executor_pid: int | None
    log_offset: int
    keras: int | None = None


@dataclass(frozen=True)
class NodeLauncher:
    """The Spark task function that boots one node per executor (see module docstring)."""

    cluster_id: str
    server_address: str
    credential: Credential
    template: dict[int, Role]
    input_mode: int
    tensorboard: bool
    log_dir: str | None
    release_port: bool
    reservation_timeout: float
    default_fs: str
    main: bytes = field(repr=False)
    num_gpus: int = 0
    hold: bool = False
    keras: int | None = None
    #: A held node's reservation: the public key its runs are signed with (see tfos._security.RunSigner).
    run_key: str = ""
    feed_tls: bool = True

    def __call__(self, partition: Iterator[Any]) -> Iterator[int]:
        from pyspark import TaskContext

        for _ in partition:
            pass  # a worker that leaves input unread is not reused: the next task would pay a fresh start
        task = TaskContext.get()
        executor_id = task.partitionId()
        if task.attemptNumber() > 0:
            # A retried node task would start a second node for the same role.
            log.warning("not restarting tfos node %d in Spark task attempt %d", executor_id, task.attemptNumber())
            return iter([executor_id])
        client = NodeClient.connect(self.server_address, self.credential)
        try:
            self._launch(client, executor_id)
        except Exception as exc:  # noqa: BLE001 - every failure goes to the driver
            _report_failure(client, executor_id, exc, lost=isinstance(exc, NodeKilledError))
        finally:
            client.close()
        return iter([executor_id])

    def _launch(self, client: NodeClient, executor_id: int) -> None:
        job_name, task_index = self.template[executor_id]
        # The address peers reach this node at; tfos's own ports (feed, TensorBoard) listen there only.
        host = C.get_str(C.NODE_HOST) or _local_ip(self.server_address.rsplit(":", 1)[0].strip("[]"))
        sockets = {"port": _bind_tcp(ports=C.port_range(C.NODE_PORT), setting=C.NODE_PORT)}
        chief_job = "chief" if any(j in ("chief", "master") for j, _ in self.template.values()) else "worker"
        if self.tensorboard and job_name in (chief_job, "master") and task_index == 0:
            sockets["tb"] = _bind_tcp(ports=C.port_range(C.TENSORBOARD_PORT), host=host, setting=C.TENSORBOARD_PORT)
        feeds = self.input_mode == InputMode.SPARK and job_name in FEEDING_JOBS
        if feeds:
            sockets["feed_tcp"] = _bind_tcp(listen=True, ports=C.port_range(C.FEED_PORT), host=host,
                                            setting=C.FEED_PORT)
            sockets["feed_unix"] = _bind_unix(unix_socket_path(self.cluster_id, executor_id))
        executor_pid = _executor_pid()
        registration: Registration = {
            "executor_id": executor_id, "job_name": job_name, "task_index": task_index, "host": host,
            "port": sockets["port"].getsockname()[1], "hostname": socket.gethostname(), "workdir": os.getcwd(),
            "pid": os.getpid(),
            "tb_port": sockets["tb"].getsockname()[1] if "tb" in sockets else None,
            "feed_port": sockets["feed_tcp"].getsockname()[1] if feeds else None,
            "executor_pid": executor_pid,
        }
        reply = client.register(registration)
        if not reply.get("ok"):
            raise TFOSError(reply.get("reason", "registration refused"))
        spec, info = self._await_spec(client, executor_id)
        if feeds:
            _write_local_marker(self.cluster_id, executor_id)
        payload = NodePayload(
            cluster_id=self.cluster_id, server_address=self.server_address, credential=self.credential,
            executor_id=executor_id, job_name=job_name, task_index=task_index, cluster_spec=spec,
            cluster_info=info, default_fs=self.default_fs, input_mode=self.input_mode,
            tensorboard="tb" in sockets, feed_tls=self.feed_tls, log_dir=self.log_dir,
            release_port=self.release_port, main=self.main,
            fds={}, executor_pid=executor_pid, log_offset=0, keras=self.keras,
        )
        if self.hold:
            self._hold(client, payload, sockets)
            return
        proc = self._start(payload, sockets)
        if self.input_mode == InputMode.TENSORFLOW:
            code = proc.wait()
            if code < 0:
                raise NodeKilledError(f"node process killed by signal {-code}\n{log_tail(job_name, task_index)}")
        else:
            reap_when_done(proc, cleanup=lambda code: self._reaped(payload, code))

    def _reaped(self, payload: NodePayload, code: int) -> None:
        """An InputMode.SPARK node's process ended. Killed by a signal (kill -9, the OOM killer) it could
        not say so itself: tell the driver now, rather than after its heartbeat timeout."""
        _delete_cache(payload.cluster_id, payload.executor_id)
        if code >= 0 or -code in (signal.SIGTERM, signal.SIGINT):  # exited, or stopped by tfos's own teardown
            return
        client = NodeClient.connect(self.server_address, self.credential)
        try:
            _report_failure(client, payload.executor_id, NodeKilledError(
                f"node process killed by signal {-code}\n{log_tail(payload.job_name, payload.task_index)}"),
                lost=True)
        finally:
            client.close()

    def _start(self, payload: NodePayload, sockets: dict[str, socket.socket]) -> subprocess.Popen:
        """Starts the node process on ``sockets`` (which it takes over) with ``payload``."""
        payload = replace(payload, fds={name: s.fileno() for name, s in sockets.items()},
                          log_offset=_size(log_path(payload.job_name, payload.task_index)))
        devices, claim = self._choose_gpus(payload.job_name)
        try:
            return _start_node(payload, tf_config(payload.cluster_spec, payload.job_name, payload.task_index),
                               devices, claim.fds() if claim is not None else [])
        finally:
            if claim is not None:
                claim.release()  # the node process holds the GPU locks from here on
            for s in sockets.values():
                s.close()

    def _hold(self, client: NodeClient, payload: NodePayload, sockets: dict[str, socket.socket]) -> None:
        """The agent of a held node: runs each launched run's node until the reservation is released."""
        ports = {name: s.getsockname()[:2] for name, s in sockets.items()}
        seq = 0
        seen_runs: set[str] = set()
        while True:
            reply = client.agent_poll(payload.executor_id, seq, timeout=C.get_float(C.POLL_HOLD_SECS) + 10)
            seq = reply["seq"]
            for event in reply["events"]:
                if event["type"] == Event.RELEASE:
                    for s in sockets.values():
                        s.close()
                    return
                if event["type"] == Event.LAUNCH:
                    try:
                        main = open_signed(event, self.run_key, seen_runs)
                        if not sockets:  # the last run's node had them; its ports are the cluster's
                            sockets = {name: _bind_tcp(ports=range(port, port + 1), reuse=True, host=bound)
                                       for name, (bound, port) in ports.items()}
                        proc = self._start(replace(payload, main=main, keras=event.get("keras")), sockets)
                    except (TFOSError, OSError) as exc:  # this run fails; the reservation holds on
                        for s in sockets.values():
                            s.close()
                        sockets = {}
                        _report_failure(client, payload.executor_id, exc)
                        client.agent_done(payload.executor_id, 1, f"{type(exc).__name__}: {exc}")
                        continue
                    sockets = {}
                    seq = self._await_node(client, payload, proc, seq)

    def _await_node(self, client: NodeClient, payload: NodePayload, proc: subprocess.Popen, seq: int) -> int:
        """Heartbeats while a run's node runs; kills it on release. Returns the mailbox position."""
        released = False
        while proc.poll() is None:
            reply = client.agent_poll(payload.executor_id, seq, timeout=10, hold=0.5)
            kinds = {e["type"] for e in reply["events"]}
            released = Event.RELEASE in kinds
            if not released:
                seq = reply["seq"]  # a release stays unread, so the agent loop sees it next
            if kinds & {Event.RELEASE, Event.KILL}:  # the run ended but this node did not stop when told
                _terminate(proc)
                break
        code = proc.wait()
        _delete_cache(payload.cluster_id, payload.executor_id)
        if not released:
            message = (f"node process killed by signal {-code}\n{log_tail(payload.job_name, payload.task_index)}"
                       if code < 0 else f"node process exited with code {code}")
            client.agent_done(payload.executor_id, code, message)
        return seq

    def _choose_gpus(self, job_name: str) -> tuple[str | None, Any]:
        """(CUDA_VISIBLE_DEVICES for the node or None to leave it alone, the GpuClaim holding locks)."""
        from tfos.executor._gpus import claim_free_gpus, spark_assigned_gpus

        assigned = spark_assigned_gpus()
        if assigned is not None:
            return ",".join(assigned), None
        if self.num_gpus and job_name != "ps":
            claim = claim_free_gpus(self.num_gpus)
            return claim.visible_devices, claim
        return None, None

    def _await_spec(self, client: NodeClient, executor_id: int) -> tuple[dict[str, list[str]], list[dict]]:
        deadline = time.monotonic() + self.reservation_timeout
        while time.monotonic() < deadline:
            reply = client.await_spec(executor_id)
            if reply.get("ready"):
                return reply["cluster_spec"], reply["cluster_info"]
            if reply.get("aborted"):
                raise TFOSError(f"reservation aborted by the driver: {reply['aborted']}")
        raise TFOSError(f"cluster spec not received within reservation_timeout={self.reservation_timeout}s")


def open_signed(event: dict[str, Any], run_key: str, seen: set[str]) -> bytes:
    """The pickled main_fun of a launch, once its signature and fresh run id check out (else AuthError)."""
    run_id = str(event.get("run", ""))
    if run_id in seen:
        raise AuthError(f"run {run_id} was launched before; refusing a replayed launch")
    try:
        blob = base64.b64decode(str(event["main"]), validate=True)
    except (KeyError, ValueError) as exc:
        raise AuthError("a launch carries no readable main_fun") from exc
    verify_run(run_key, run_id, blob, event.get("sig"))
    seen.add(run_id)
    return blob


def reap_when_done(proc: subprocess.Popen, cleanup: Callable[[int], None] | None = None) -> None:
    """Waits for ``proc`` in a daemon thread, so that it never lingers as a zombie, then runs
    ``cleanup(exit code)``.

    Spark reuses Python workers: a node whose task returned while it runs (InputMode.SPARK)
    is a child of a worker that lives on, and an exited child stays a zombie until waited for.
    """
    import threading

    def wait() -> None:
        code = proc.wait()
        if cleanup is not None:
            cleanup(code)

    threading.Thread(target=wait, name=f"tfos-reap-{proc.pid}", daemon=True).start()


def _delete_cache(cluster_id: str, executor_id: int) -> None:
    """Deletes a node's epoch cache once its process is gone, however it ended (a killed node cannot)."""
    import shutil

    shutil.rmtree(cache_dir(cluster_id, executor_id), ignore_errors=True)


def log_tail(job_name: str, task_index: int, lines: int = 30) -> str:
    """The last ``lines`` lines of a node's log on this executor, for error messages."""
    try:
        with open(log_path(job_name, task_index), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no node log)"
    return "last lines of the node log:\n" + "\n".join(text.splitlines()[-lines:])


def _write_local_marker(cluster_id: str, executor_id: int) -> None:
    # one temporary file per writer: with a local[N] master every node task shares this directory
    tmp = f"{local_marker_path(cluster_id)}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"executor_id": executor_id}, f)
    os.replace(tmp, local_marker_path(cluster_id))


def _local_ip(server_host: str) -> str:
    """The address of the interface this executor uses to reach the driver."""
    family = socket.AF_INET6 if ":" in server_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((server_host, 9))  # UDP connect sends nothing
            return probe.getsockname()[0]
        except OSError:
            return socket.gethostbyname(socket.gethostname())


def _bind_tcp(listen: bool = False, ports: range = range(0, 1), reuse: bool = False, host: str = "",
              setting: tuple[str, str] = C.NODE_PORT) -> socket.socket:
    """A TCP socket bound to ``host`` ("": every interface) on the first free port of ``ports`` (0: any).

    ``reuse`` binds a port that a finished node's connections still hold in TIME_WAIT.
    """
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host != "0.0.0.0" else "", port))
        except OSError:
            s.close()
            continue
        if listen:
            s.listen(64)
        return s
    raise TFOSError(f"no free port in {ports.start}-{ports.stop - 1} on {socket.gethostname()}; widen the range "
                    f"({setting[0]})")


def _executor_pid() -> int | None:
    """The pid of the Spark executor JVM running this task, which the node watches."""
    import psutil

    try:
        for proc in psutil.Process().parents():
            if "java" in proc.name().lower():
                return proc.pid
    except psutil.Error:
        pass
    return None


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _bind_unix(path: str) -> socket.socket:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chmod(path, 0o600)
    s.listen(64)
    return s


def set_keras(env: dict[str, str], keras: int | None) -> None:
    """What ``tf.keras`` is on the node: ``tfos.run(keras=2 | 3)``, else the executors' own
    ``TF_USE_LEGACY_KERAS``, else tf-keras."""
    if keras is not None:
        env["TF_USE_LEGACY_KERAS"] = "1" if keras == 2 else "0"
    env.setdefault("TF_USE_LEGACY_KERAS", "1")


def _start_node(payload: NodePayload, config: dict[str, Any], cuda_devices: str | None,
                keep_fds: list[int]) -> subprocess.Popen:
    env = dict(os.environ)
    if cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_devices
    env["TF_CONFIG"] = json.dumps(config)
    # The node imports the user's modules from the same places as this Python worker.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    set_keras(env, payload.keras)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    env["PYTHONUNBUFFERED"] = "1"  # print() lines reach the log, and the driver, as they happen
    with open(log_path(payload.job_name, payload.task_index), "ab") as logfile:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tfos.executor._node"], stdin=subprocess.PIPE, stdout=logfile,
            stderr=subprocess.STDOUT, env=env, pass_fds=(*payload.fds.values(), *keep_fds),
            start_new_session=True,
        )
    assert proc.stdin is not None
    with proc.stdin:
        proc.stdin.write(pickle.dumps(payload))
    return proc


def _terminate(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


class NodeKilledError(TFOSError):
    """The node process died from a signal (killed, out of memory)."""


def _report_failure(client: NodeClient, executor_id: int, exc: BaseException, lost: bool = False) -> None:
    try:
        # No node process runs after a launch failure: the node counts as exited.
        client.report(executor_id, NodeState.FAILED, exited=True, lost=lost, message=f"{type(exc).__name__}: {exc}",
                      traceback="".join(traceback.format_exception(exc)))
    except TFOSError:
        log.exception("could not report the failure of node %d to the driver", executor_id)
