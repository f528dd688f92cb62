"""Clients of a reservation (any machine that can reach its driver): handle files and ``tfos.attach``.

A handle file (JSON, mode 0600) holds what a client needs: the control server's
address, the cluster's TLS key and certificate (which the held nodes also hold), the
Ed25519 key that signs runs (found nowhere else), the cluster spec and where the
reserving process runs. Whoever reads it can run code on the held executors until the
reservation is released: a handle readable by group or others is refused.
``attach(handle)`` returns an :class:`AttachedCluster` that runs ``main_fun`` on the held
nodes, reads their status and logs, and releases them.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from tfos import errors
from tfos._protocol import Method
from tfos.errors import AuthError, ReservationGoneError, TFOSConfigError, TFOSError

#: Largest pickled main_fun + args a run can send (the control plane's messages are 4 MiB).
MAX_MAIN_BYTES = 3 << 20


@dataclass(frozen=True)
class Handle:
    """What a handle file holds."""

    name: str
    address: str
    tls: dict[str, str] = field(repr=False)
    run_key: str = field(repr=False)
    cluster_spec: dict[str, list[str]]
    master: str
    app_id: str
    host: str
    pid: int
    path: str = ""


def write_handle(path: str, handle: Handle) -> None:
    """Writes ``handle`` to ``path`` atomically, readable by its owner only."""
    path = os.path.abspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({k: v for k, v in asdict(handle).items() if k != "path"}, f, indent=2)
    os.replace(tmp, path)


def read_handle(path: str) -> Handle:
    """Reads a handle file; a clear TFOSConfigError when it is missing, unreadable or not a handle."""
    try:
        with open(path) as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o077:
                raise TFOSConfigError(f"reservation handle {path} is readable by others (mode {mode & 0o777:o}): it "
                                      f"holds the keys that run code on the reservation. Run `chmod 600 {path}`")
            data = json.load(f)
        return Handle(**data, path=os.path.abspath(path))
    except FileNotFoundError:
        raise TFOSConfigError(f"no reservation handle at {path}: reserve a cluster first with "
                              f"`tfos reserve --master URL --num-executors N --handle {path}` (or --remote "
                              "sc://HOST:PORT for a Spark Connect server)") from None
    except TFOSConfigError:
        raise
    except PermissionError:
        raise TFOSConfigError(f"cannot read reservation handle {path}: permission denied. A handle is readable "
                              "by the user who reserved the cluster only (mode 0600); run as that user") from None
    except (ValueError, TypeError) as exc:
        raise TFOSConfigError(f"{path} is not a tfos reservation handle ({exc})") from None


class AttachedCluster:
    """A reserved cluster seen from a client; see the module docstring."""

    def __init__(self, handle: Handle) -> None:
        from tfos._rpc import ControlClient
        from tfos._security import Credential

        self.handle = handle
        self._client = ControlClient(handle.address, Credential.from_json(handle.tls))

    @property
    def cluster_spec(self) -> dict[str, list[str]]:
        return self.handle.cluster_spec

    def run(self, main_fun: Callable[[Any, Any], Any], args: Any = None, timeout: float | None = None,
            keras: int | None = None) -> None:
        """Runs ``main_fun(args, ctx)`` on every node of the reservation and waits for it to end.

        Each run starts fresh node processes on the held executors, with the same roles,
        TF_CONFIG and ports as the first. The nodes read their own data (InputMode.TENSORFLOW).
        ``keras`` (2 or 3) chooses what ``tf.keras`` is on the nodes, as in ``tfos.run``.

        Raises:
            NodeError: main_fun raised on a node (with its role, host and remote traceback).
            NodeFailedError: a node process died or went silent.
            ReservationGoneError: the reservation no longer runs.
            TFOSError: another run is under way, or ``timeout`` seconds passed (the run goes on).
        """
        from tfos._security import RunSigner, new_run_id
        from tfos.driver._cluster import _pickle_main

        if keras not in (None, 2, 3):
            raise TFOSConfigError(f"keras must be 2, 3 or None; got {keras!r}")
        blob = _pickle_main(main_fun, args)
        if len(blob) > MAX_MAIN_BYTES:
            raise TFOSConfigError(f"main_fun and args pickle to {len(blob) >> 20} MiB; a run sends at most "
                                  f"{MAX_MAIN_BYTES >> 20} MiB: let main_fun read its data instead of capturing it")
        run_id = new_run_id()
        signature = RunSigner(self.handle.run_key.encode()).sign(run_id, blob)
        reply = self._call(Method.SUBMIT, {"main": base64.b64encode(blob).decode(), "run": run_id, "sig": signature,
                                      "keras": keras})
        if not reply.get("ok"):
            raise TFOSError(f"reservation {self.handle.name!r} refused the run: {reply.get('reason')}")
        run = reply["run"]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self._call(Method.RUN_STATE, {"run": run, "wait": 2.0}, timeout=30)
            if state.get("done"):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TFOSError(f"run {run} still running after timeout={timeout}s (it goes on; see tfos status)")
        if state.get("error"):
            raise _rebuild(state["error"])

    def status(self) -> dict[str, Any]:
        """The reservation's state, cluster spec, current run and one dict per node (see ``tfos status``)."""
        return self._call(Method.STATUS, {})

    def logs(self, role: str | None = None) -> dict[str, list[str]]:
        """The lines each node printed so far (kept per node: the last 5000), or only ``role``'s."""
        return self._call(Method.LOGS, {"role": role, "since": {}})["lines"]

    def follow_logs(self, role: str | None = None, interval: float = 0.5) -> Iterator[tuple[str, str]]:
        """Yields ``(role, line)`` for every line printed, then for new ones as they come, until release."""
        since: dict[str, int] = {}
        while True:
            try:
                reply = self._call(Method.LOGS, {"role": role, "since": since})
            except ReservationGoneError:
                return
            for name, lines in sorted(reply["lines"].items()):
                for line in lines:
                    yield name, line
            since = reply["next"]
            time.sleep(interval)

    def release(self, timeout: float = 120) -> None:
        """Releases the reservation and waits until its nodes, Spark application and handle are gone."""
        self._call(Method.RELEASE, {})
        deadline = time.monotonic() + timeout
        while os.path.exists(self.handle.path) or self._reserver_alive():
            if time.monotonic() > deadline:
                raise TFOSError(f"reservation {self.handle.name!r} was asked to release but its process "
                                f"(pid {self.handle.pid} on {self.handle.host}) is still up after {timeout}s")
            time.sleep(0.2)
        self._client.close()

    def _reserver_alive(self) -> bool:
        if self.handle.host != socket.gethostname():
            return False  # only the handle file's removal tells, from another machine
        import psutil

        try:
            return psutil.Process(self.handle.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def _call(self, method: Method, message: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        try:
            return self._client.call(method, message, timeout=timeout)
        except AuthError as exc:
            if not getattr(exc, "handshake", False):
                raise  # e.g. a run not signed with the reservation's key: the server said why
            raise AuthError(f"reservation {self.handle.name!r} at {self.handle.address} refused the keys in "
                            f"{self.handle.path}: the handle is from another reservation or was edited") from None
        except TFOSError as exc:
            if getattr(exc, "code", None) in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                raise ReservationGoneError(
                    f"reservation {self.handle.name!r} at {self.handle.address} does not answer: it was released "
                    f"or its `tfos reserve` process (pid {self.handle.pid} on {self.handle.host}) ended. Remove "
                    f"{self.handle.path} and reserve again.") from None
            raise

    def __enter__(self) -> AttachedCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._client.close()


def attach(handle: str | os.PathLike[str]) -> AttachedCluster:
    """Attaches to the cluster a ``tfos reserve`` handle file names (see :class:`AttachedCluster`)."""
    return AttachedCluster(read_handle(os.fspath(handle)))


def _rebuild(error: dict[str, Any]) -> TFOSError:
    kind = getattr(errors, str(error.get("kind")), TFOSError)
    if not (isinstance(kind, type) and issubclass(kind, TFOSError)):
        kind = TFOSError
    return kind(error.get("message", ""), **(error.get("fields") or {}))
