"""The multi-host scenarios and the chaos matrix (test process, root namespace).

Each scenario starts tests/multihost/driver.py in the master's namespace, waits for its
nodes, injects its fault from outside (a signal, a cut link) and returns an ``Outcome``:
whether the fault was detected within its bound (an error naming the node and its host), the
rows lost and doubled, and what was left on any host. tests/multihost/test_multihost.py
asserts on outcomes; scripts/chaos.py runs the matrix several times and tabulates them.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.multihost.hosts import PYTHON, ROOT, Host, Hosts, SparkCluster, host_of, leftovers, processes_in

DRIVER = str(ROOT / "tests" / "multihost" / "driver.py")
#: Seconds within which a fault must surface at the driver as an error naming node and host.
DETECT_BOUND = 10.0
#: TFOS_HEARTBEAT_TIMEOUT_SECS of the drivers here: low, so that a silent node is noticed quickly.
HEARTBEAT = "3"
ROWS = 4000


@dataclass
class Outcome:
    """What one scenario did: ``detected`` is None where the scenario expects no error."""

    fault: str
    ok: bool = False
    error: str | None = None
    message: str = ""
    host: str = ""  # address of the host the fault hit
    node: str = ""  # role:index of the node the fault hit
    detect_secs: float | None = None
    detected: bool | None = None
    lost: int | None = None
    doubled: int | None = None
    leftovers: list[str] = field(default_factory=list)
    result: dict = field(default_factory=dict)
    driver_log: str = ""

    def summary(self) -> str:
        return (f"{self.fault}: ok={self.ok} error={self.error} detect={self.detect_secs} lost={self.lost} "
                f"doubled={self.doubled} leftovers={self.leftovers}\nmessage: {self.message[:1500]}\n"
                f"driver log tail:\n{self.driver_log[-3000:]}")


class Driver:
    """One run of driver.py in the master's namespace."""

    def __init__(self, hosts: Hosts, base: Path, scenario: str, opts: dict | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.hosts, self.scenario = hosts, scenario
        self.out = Path(base) / f"{scenario}-{time.time_ns()}"
        self.out.mkdir(parents=True)
        self.out.chmod(0o777)
        self.log_path = self.out / "driver.log"
        master = hosts.master
        command = master.argv(PYTHON, DRIVER, scenario, str(self.out), f"spark://{master.ip}:7077",
                              json.dumps(opts or {}))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=str(master.home),
                                         env=master.env(TFOS_HEARTBEAT_TIMEOUT_SECS=HEARTBEAT, **(env or {})),
                                         start_new_session=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def ready(self, count: int = 2, timeout: float = 150) -> dict[str, dict]:
        """The nodes' ready files, ``{"worker:0": {...}}``, once ``count`` nodes wrote theirs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = {}
            for path in self.out.glob("ready-*.json"):
                info = json.loads(path.read_text())
                found[f"{info['job']}:{info['index']}"] = info
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                raise RuntimeError(f"driver exited ({self.proc.returncode}) before its nodes started:\n"
                                   f"{self.log()[-4000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"nodes not ready in {timeout} s:\n{self.log()[-4000:]}")

    def release(self) -> None:
        (self.out / "release").touch()

    def result(self, timeout: float = 150) -> dict:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            return {"ok": False, "error": "Timeout", "message": f"driver still running after {timeout} s"}
        path = self.out / "result.json"
        return json.loads(path.read_text()) if path.exists() else {"ok": False, "error": "NoResult",
                                                                     "message": self.log()[-3000:]}

    def node_ids(self) -> dict[str, list[int]]:
        return {p.stem[len("ids-"):]: json.loads(p.read_text())["ids"] for p in self.out.glob("ids-*.json")}


class Matrix:
    """Runs scenarios on one namespaced cluster."""

    def __init__(self, hosts: Hosts, cluster: SparkCluster, base: Path) -> None:
        self.hosts, self.cluster, self.base = hosts, cluster, Path(base)

    def driver(self, scenario: str, opts: dict | None = None, **env: str) -> Driver:
        return Driver(self.hosts, self.base, scenario, opts, env)

    def host(self, pid: int) -> Host:
        host = host_of(pid, self.hosts.all)
        assert host is not None, f"pid {pid} runs in none of the hosts' namespaces"
        return host

    def executor_jvm(self, host: Host) -> int:
        pids = [p for p in processes_in({host.net_inode()})
                if b"CoarseGrainedExecutorBackend" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(pids) == 1, f"{len(pids)} executor JVMs on {host.name}"
        return pids[0]

    def finish(self, outcome: Outcome, driver: Driver, t_fault: float | None = None, timeout: float = 150) -> Outcome:
        result = driver.result(timeout)
        outcome.result, outcome.ok = result, bool(result.get("ok"))
        outcome.error, outcome.message = result.get("error"), result.get("message", "")
        outcome.driver_log = driver.log()
        if t_fault is not None and result.get("t_error"):
            outcome.detect_secs = round(result["t_error"] - t_fault, 2)
            outcome.detected = (outcome.detect_secs <= DETECT_BOUND and outcome.node in outcome.message
                                and outcome.host in outcome.message)
        elif t_fault is not None:
            outcome.detected = False
        outcome.leftovers = leftovers(self.hosts, self.cluster)
        return outcome

    def _victim(self, driver: Driver, outcome: Outcome) -> dict:
        nodes = driver.ready()
        victim = nodes["worker:0"]
        outcome.node, outcome.host = "worker:0", self.host(victim["pid"]).ip
        return victim

    # ---- failures: the error must name the node and its host within DETECT_BOUND --------------
    def kill_node(self) -> Outcome:
        outcome, driver = Outcome("kill -9 a node"), self.driver("hold")
        victim = self._victim(driver, outcome)
        t_fault = time.time()
        os.kill(victim["pid"], signal.SIGKILL)
        return self.finish(outcome, driver, t_fault)

    def kill_executor(self) -> Outcome:
        outcome, driver = Outcome("kill -9 an executor JVM"), self.driver("hold")
        victim = self._victim(driver, outcome)
        jvm = self.executor_jvm(self.host(victim["pid"]))
        t_fault = time.time()
        os.kill(jvm, signal.SIGKILL)
        return self.finish(outcome, driver, t_fault)

    def cut_link(self) -> Outcome:
        outcome, driver = Outcome("cut a worker host's link"), self.driver("hold")
        victim = self._victim(driver, outcome)
        host = self.host(victim["pid"])
        t_fault = time.time()
        self.hosts.link(host, up=False)
        try:
            result = driver.result(60)
        finally:
            self.hosts.link(host, up=True)
        driver.result = lambda timeout=0: result  # type: ignore[method-assign] - already waited
        return self.finish(outcome, driver, t_fault)

    def stop_node(self) -> Outcome:
        outcome, driver = Outcome("SIGSTOP a node past the heartbeat timeout"), self.driver("hold")
        victim = self._victim(driver, outcome)
        t_fault = time.time()
        os.kill(victim["pid"], signal.SIGSTOP)
        try:
            result = driver.result(60)
        finally:
            try:
                os.kill(victim["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass
        driver.result = lambda timeout=0: result  # type: ignore[method-assign]
        return self.finish(outcome, driver, t_fault)

    # ---- recoveries: the run must finish, every row exactly once ---------------------------
    def stop_driver(self, secs: float = 10.0) -> Outcome:
        """SIGSTOPs the driver's Python process for ``secs``: the run must still succeed."""
        outcome, driver = Outcome(f"SIGSTOP the driver for {secs:.0f} s"), self.driver("hold")
        driver.ready()
        os.kill(driver.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(secs)
        finally:
            os.kill(driver.proc.pid, signal.SIGCONT)
        time.sleep(2 * float(HEARTBEAT))  # the monitor's next rounds, after the stall
        driver.release()
        return self.finish(outcome, driver)

    def task_retry(self) -> Outcome:
        """A feeding task fails after half its partition, Spark retries it (maxFailures=4)."""
        outcome, driver = Outcome("fail a feeding task mid-partition"), self.driver("task_retry", {"max_failures": 4})
        self.finish(outcome, driver)
        self.count_rows(outcome, driver, epochs=1)
        return outcome

    def early_reader(self) -> Outcome:
        """``inference(...).take(3)``, then a full inference on the same cluster."""
        outcome, driver = Outcome("stop an inference reader early"), self.driver("early_reader")
        self.finish(outcome, driver)
        answers = outcome.result.get("answers")
        if answers is not None:
            counts = collections.Counter(answers)
            want = {2 * i for i in range(ROWS)}
            outcome.lost = len(want - set(counts))
            outcome.doubled = sum(c - 1 for c in counts.values() if c > 1) + len(set(counts) - want)
        return outcome

    @staticmethod
    def count_rows(outcome: Outcome, driver: Driver, epochs: int) -> None:
        """Rows lost and doubled per epoch, from the ids each node wrote (its epochs in order)."""
        lost = doubled = 0
        taken = driver.node_ids()
        if not taken:
            return
        for epoch in range(epochs):
            counts: collections.Counter = collections.Counter()
            for ids in taken.values():
                share = len(ids) // epochs if epoch < epochs - 1 else len(ids) - (epochs - 1) * (len(ids) // epochs)
                counts.update(ids[epoch * (len(ids) // epochs):][:share])
            lost += sum(1 for i in range(ROWS) if not counts[i])
            doubled += sum(c - 1 for c in counts.values() if c > 1)
        outcome.lost, outcome.doubled = lost, doubled

    FAULTS = ("kill_node", "kill_executor", "cut_link", "stop_node", "stop_driver", "task_retry", "early_reader")
