"""Several "hosts" on one machine: Linux network namespaces on a bridge, with a standalone Spark cluster.

Runs in the test process (root namespace), as root. One namespace holds the Spark master and
the driver, one namespace per worker holds a Spark worker (and so its executors and their
tfos nodes); each has its own address in the benchmarking range 198.18.0.0/15, reached
through a veth pair plugged into a bridge in the root namespace (which has 198.18.0.1).
Processes of all namespaces share this machine's pid space and filesystem, so a test can
signal a node on any "host" and read the files it wrote; the network between them is real
(a link can be cut with ``ip link set VETH down``).

``Hosts`` makes and removes the namespaces; ``SparkCluster`` starts and stops the master and
workers in them. Both clean up everything they made, processes included, even after a
failure, and ``sweep()`` removes what a killed test run left behind. Used by
tests/multihost/conftest.py and scripts/chaos.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
#: tfos's source tree for every process on the hosts (PYTHONPATH): this checkout, or another one to compare with.
SOURCE = os.environ.get("TFOS_MULTIHOST_SOURCE", str(ROOT))
PREFIX = "tfosmh"
BRIDGE = "tfosmh-br"
NET = "198.18.0"
MASTER_PORT = 7077
UI_PORT = 8080


@dataclass(frozen=True)
class Host:
    """One namespace: ``name`` ("master", "w1", ...), its address and its state directory."""

    name: str
    ip: str
    home: Path

    @property
    def ns(self) -> str:
        return f"{PREFIX}-{self.name}"

    @property
    def veth(self) -> str:
        """The root-namespace end of this host's link (``ip link set VETH down`` cuts the host off)."""
        return f"{PREFIX}-{self.name}"[:15]

    @property
    def tmp(self) -> Path:
        """TMPDIR of every process on this host (tfos's Unix sockets, markers, caches go here)."""
        return self.home / "tmp"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a process on this host: Spark and tfos bind and advertise its address."""
        env = dict(os.environ, SPARK_LOCAL_IP=self.ip, SPARK_LOCAL_HOSTNAME=self.ip, SPARK_LOCAL_DIRS=str(self.home /
                   "local"), SPARK_LOG_DIR=str(self.home / "logs"), TMPDIR=str(self.tmp),
                   TFOS_FEED_CACHE_DIR=str(self.home / "cache"), PYSPARK_PYTHON=PYTHON,
                   PYSPARK_DRIVER_PYTHON=PYTHON, PYTHONPATH=SOURCE, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_USE_LEGACY_KERAS="1", PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}")
        env.pop("PYSPARK_GATEWAY_PORT", None)
        env.pop("PYSPARK_GATEWAY_SECRET", None)
        env.update(extra)
        return env

    def argv(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *command]

    def net_inode(self) -> int:
        return os.stat(f"/run/netns/{self.ns}").st_ino


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if os.name != "posix" or not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "making network namespaces needs root (run the multi-host tier as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    probe = f"{PREFIX}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()} (a container without CAP_SYS_ADMIN / CAP_NET_ADMIN?)"
    try:
        veth = _ip("link", "add", f"{PREFIX}-p0", "type", "veth", "peer", "name", f"{PREFIX}-p1", check=False)
        if veth.returncode != 0:
            return f"`ip link add ... type veth` failed: {veth.stderr.strip()}"
        _ip("link", "del", f"{PREFIX}-p0", check=False)
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def processes_in(inodes: set[int]) -> list[int]:
    """Pids of processes whose network namespace is one of ``inodes``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                found.append(int(entry))
        except OSError:
            pass
    return found


def host_of(pid: int, hosts: list[Host]) -> Host | None:
    try:
        inode = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None
    return next((h for h in hosts if h.net_inode() == inode), None)


def _kill_all(inodes: set[int], timeout: float = 10.0) -> None:
    for sig in (signal.SIGCONT, signal.SIGTERM):
        for pid in processes_in(inodes):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while processes_in(inodes) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in processes_in(inodes):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while processes_in(inodes) and time.monotonic() < deadline:
        time.sleep(0.1)


def sweep() -> None:
    """Removes every namespace, link and process this module made, left by a run that was killed."""
    names = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]
    ours = [n for n in names if n.startswith(f"{PREFIX}-")]
    inodes = set()
    for name in ours:
        with contextlib.suppress(OSError):
            inodes.add(os.stat(f"/run/netns/{name}").st_ino)
    _kill_all(inodes)
    for name in ours:
        _ip("netns", "del", name, check=False)
    links = _ip("-o", "link", "show", check=False).stdout
    for line in links.splitlines():
        link = line.split(":", 2)[1].strip().split("@")[0]
        if link.startswith(PREFIX):
            _ip("link", "del", link, check=False)


class Hosts:
    """The bridge and one namespace per host, made on ``__enter__`` and removed on ``__exit__``."""

    def __init__(self, base: Path, workers: int = 2) -> None:
        self.base = Path(base)
        self.master = Host("master", f"{NET}.10", self.base / "master")
        self.workers = [Host(f"w{i}", f"{NET}.{10 + i}", self.base / f"w{i}") for i in range(1, workers + 1)]

    @property
    def all(self) -> list[Host]:
        return [self.master, *self.workers]

    def __enter__(self) -> Hosts:
        sweep()
        try:
            _ip("link", "add", BRIDGE, "type", "bridge")
            _ip("addr", "add", f"{NET}.1/24", "dev", BRIDGE)
            _ip("link", "set", BRIDGE, "up")
            for host in self.all:
                for sub in ("tmp", "local", "logs", "cache", "work"):
                    (host.home / sub).mkdir(parents=True, exist_ok=True)
                peer = f"{PREFIX}-x{host.name}"[:15]
                _ip("netns", "add", host.ns)
                _ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
                _ip("link", "set", peer, "netns", host.ns)
                _ip("link", "set", host.veth, "master", BRIDGE, "up")
                for args in (("link", "set", "lo", "up"), ("link", "set", peer, "name", "eth0"),
                             ("addr", "add", f"{host.ip}/24", "dev", "eth0"), ("link", "set", "eth0", "up")):
                    _ip("-n", host.ns, *args)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        sweep()

    def link(self, host: Host, up: bool) -> None:
        _ip("link", "set", host.veth, "up" if up else "down")

    def inodes(self) -> set[int]:
        return {h.net_inode() for h in self.all}

    def run(self, host: Host, command: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(host.argv(*command), capture_output=True, text=True, timeout=timeout,
                              env=host.env(**env), cwd=str(host.home))


class SparkCluster:
    """A standalone master in the master's namespace and a 1-core, 1 GiB worker in each worker's."""

    def __init__(self, hosts: Hosts) -> None:
        self.hosts = hosts
        self.url = f"spark://{hosts.master.ip}:{MASTER_PORT}"
        self.ui = f"http://{hosts.master.ip}:{UI_PORT}"
        self.daemons: dict[str, subprocess.Popen] = {}

    def _start(self, host: Host, *args: str) -> None:
        spark_class = ROOT / ".venv" / "bin" / "spark-class"
        log = open(host.home / "logs" / f"{host.name}.out", "wb")  # noqa: SIM115 - the daemon keeps it
        self.daemons[host.name] = subprocess.Popen(host.argv(str(spark_class), *args), stdout=log,
                                                   stderr=subprocess.STDOUT, env=host.env(),
                                                   cwd=str(host.home), start_new_session=True)
        log.close()

    def __enter__(self) -> SparkCluster:
        master = self.hosts.master
        try:
            self._start(master, "org.apache.spark.deploy.master.Master", "--host", master.ip, "--port",
                        str(MASTER_PORT), "--webui-port", str(UI_PORT))
            for host in self.hosts.workers:
                self._start(host, "org.apache.spark.deploy.worker.Worker", self.url, "--host", host.ip,
                            "--cores", "1", "--memory", "1g", "--webui-port", "8081",
                            "--work-dir", str(host.home / "work"))
            self.wait_workers(len(self.hosts.workers), 120)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.ui}/json/", timeout=5) as reply:
            return json.load(reply)

    def wait_workers(self, want: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.daemons.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"Spark {name} exited with {proc.returncode}: {self.log(name)[-3000:]}")
            with contextlib.suppress(OSError, ValueError):
                if self.state().get("aliveworkers", 0) >= want:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"the Spark master did not report {want} live workers in {timeout:.0f} s: "
                           f"{self.log('master')[-3000:]}")

    def log(self, name: str) -> str:
        host = next(h for h in self.hosts.all if h.name == name)
        try:
            return (host.home / "logs" / f"{name}.out").read_text(errors="replace")
        except OSError:
            return ""

    def daemon_pids(self) -> set[int]:
        return {p.pid for p in self.daemons.values() if p.poll() is None}

    def __exit__(self, *exc: object) -> None:
        for proc in self.daemons.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.daemons.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        _kill_all(self.hosts.inodes())


def leftovers(hosts: Hosts, cluster: SparkCluster, timeout: float = 30.0) -> list[str]:
    """What a finished application left on any host: processes besides the Spark daemons, tfos files.

    Waits up to ``timeout`` for executors and nodes to exit (a worker kills an application's
    executors when it ends; a node exits with its executor).
    """
    def found() -> list[str]:
        daemons = cluster.daemon_pids()
        left = []
        for pid in processes_in(hosts.inodes()):
            if pid in daemons:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        argv = "(zombie) " + argv
            except OSError:
                continue
            host = host_of(pid, hosts.all)
            left.append(f"{host.name if host else '?'} pid {pid}: {argv[:300]}")
        for host in hosts.all:
            for folder in (host.tmp, host.home / "cache"):
                left += [f"{host.name} file {p}" for p in folder.glob("tfos-*")]
        return left

    deadline = time.monotonic() + timeout
    while (left := found()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left
