"""Real Spark for integration tests: one local-cluster[2,1,1024] for the session.

local-cluster mode starts a standalone master, a worker and two executor JVMs, like a
real cluster. Test modules are pickled by value so that executors need not import them.
"""

from __future__ import annotations

import os
import sys
import time

import psutil
import pytest

NODE_MARK = "tfos.executor._node"
#: Where the nodes' epoch caches spill (each node keeps 8 MiB in memory): tests check it is left empty.
CACHE_DIR = os.path.join(os.environ.get("TMPDIR") or "/tmp", f"tfos-test-cache-{os.getpid()}")


def pytest_collection_modifyitems(items):
    from pyspark import cloudpickle

    modules = set()
    for item in items:
        if item.module is not None and "integration" in item.nodeid:
            item.add_marker(pytest.mark.spark)
            modules.add(item.module)
    # also the test modules a collected one imports its main_funs from (e.g. the Connect tier's)
    modules.update(m for name, m in sys.modules.items() if name.startswith("tests.integration.test_"))
    for module in modules:
        try:
            cloudpickle.register_pickle_by_value(module)
        except ValueError:
            pass


def spark_conf(master: str):
    from pyspark import SparkConf

    return (SparkConf().setMaster(master).setAppName("tfos-tests")
            .set("spark.ui.enabled", "false")
            .set("spark.ui.showConsoleProgress", "false")
            .set("spark.driver.host", "127.0.0.1")
            .set("spark.driver.bindAddress", "127.0.0.1")
            .set("spark.task.maxFailures", "1")
            .set("spark.executorEnv.TFOS_ORPHAN_TIMEOUT_SECS", "20")
            .set("spark.executorEnv.TFOS_FEED_CACHE_BYTES", str(8 << 20))
            .set("spark.executorEnv.TFOS_FEED_CACHE_DIR", CACHE_DIR)
            .set("spark.pyspark.python", sys.executable))


@pytest.fixture(scope="session")
def sc():
    from pyspark import SparkContext

    context = SparkContext(conf=spark_conf("local-cluster[2,1,1024]"))
    context.setLogLevel("ERROR")
    context.parallelize(range(2), 2).count()  # both executors up before the first test
    yield context
    context.stop()


def node_processes() -> list[psutil.Process]:
    """tfos node processes and TensorBoards of this checkout (this Python) alive on this machine."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        cmdline = " ".join(argv)
        if argv and argv[0] == sys.executable and (NODE_MARK in cmdline or "tensorboard.main" in cmdline):
            found.append(proc)
    return found


def _alive(proc: psutil.Process) -> bool:
    """Running, as opposed to gone or exited-but-not-yet-reaped (a zombie)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _exists(proc: psutil.Process) -> bool:
    try:
        return proc.is_running()
    except psutil.NoSuchProcess:
        return False


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server a test starts."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


@pytest.fixture
def no_leftovers():
    """Fails the test if a node or TensorBoard process outlives it, or exits and is never reaped.

    Waits up to 15 s for each: nodes stop within seconds of shutdown, and the process that
    started a node waits for it as soon as it exits.
    """
    before = {p.pid for p in node_processes()}
    yield
    leftover = [p for p in node_processes() if p.pid not in before]
    wait_until(lambda: not any(_alive(p) for p in leftover), timeout=15)
    alive = [p for p in leftover if _alive(p)]
    assert not alive, f"processes left behind: {[' '.join(p.cmdline()) for p in alive]}"
    wait_until(lambda: not any(_exists(p) for p in leftover), timeout=15)
    zombies = [f"pid {p.pid}: {' '.join(p.info['cmdline'])}" for p in leftover if _exists(p)]
    assert not zombies, f"node processes exited but were never reaped by their parent: {zombies}"
    wait_until(lambda: not cache_files(), timeout=15)
    assert not cache_files(), f"epoch cache files left behind: {cache_files()}"


def cache_files() -> list[str]:
    """Files (and directories) the nodes' epoch caches left in CACHE_DIR."""
    return [os.path.join(root, name) for root, dirs, files in os.walk(CACHE_DIR) for name in dirs + files]


@pytest.fixture
def export_dir(tmp_path):
    return os.path.join(str(tmp_path), "export")
