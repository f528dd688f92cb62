"""Node-side parts without Spark: log shipping, port ranges, the node's child processes."""

import os
import socket
import subprocess
import sys

import psutil
import pytest

from tfos._rpc import NodeClient
from tfos.errors import TFOSError
from tfos.executor._bootstrap import _bind_tcp, set_keras
from tfos.executor._logs import LogShipper


class RecordingClient:
    def __init__(self, error=None):
        self.calls = []
        self.error = error

    def call(self, method, message, timeout):
        if self.error is not None:
            raise self.error
        self.calls.append((method, message))
        return {"ok": True}


def test_log_shipper_sends_only_new_complete_lines(tmp_path):
    path = tmp_path / "node.log"
    path.write_bytes(b"before the node started\n")
    client = RecordingClient()
    shipper = LogShipper(NodeClient(client), 3, str(path), offset=path.stat().st_size)
    with open(path, "ab") as f:
        f.write(b"first\nsecond\npart")
    shipper._ship(timeout=1)
    assert client.calls == [("Log", {"executor_id": 3, "lines": ["first", "second"]})]
    with open(path, "ab") as f:
        f.write(b"ial\r\n")
    shipper.flush()
    assert client.calls[-1][1]["lines"] == ["partial"]


@pytest.mark.parametrize("error", [TFOSError("driver unreachable"), RuntimeError("broken channel")])
def test_a_broken_log_channel_never_raises(tmp_path, error):
    path = tmp_path / "node.log"
    path.write_text("a\nb\n")
    shipper = LogShipper(NodeClient(RecordingClient(error)), 0, str(path), offset=0)
    shipper._ship(timeout=1)
    shipper.flush()
    if isinstance(error, TFOSError):
        assert shipper.dropped == 2


def busy_port_before_a_free_one() -> socket.socket:
    """A socket holding port P, where P + 1 was free a moment ago (another process may hold any port)."""
    for _ in range(100):
        busy = socket.socket()
        busy.bind(("", 0))
        with socket.socket() as probe:
            try:
                probe.bind(("", busy.getsockname()[1] + 1))
                return busy
            except OSError:
                busy.close()
    raise AssertionError("no port P with P + 1 free in 100 tries")


def test_port_range_skips_ports_in_use_and_names_the_setting_when_full():
    with busy_port_before_a_free_one() as busy:
        port = busy.getsockname()[1]
        with _bind_tcp(ports=range(port, port + 2)) as free:
            assert free.getsockname()[1] == port + 1
        with pytest.raises(TFOSError, match="TFOS_NODE_PORT"):
            _bind_tcp(ports=range(port, port + 1))
        with pytest.raises(TFOSError, match="TFOS_FEED_PORT"):
            _bind_tcp(ports=range(port, port + 1), setting=("TFOS_FEED_PORT", "0"))


@pytest.mark.parametrize("keras, executor_env, node_env", [
    (2, "0", "1"),  # tfos.run(keras=2) wins over the executors' own setting
    (3, "1", "0"),
    (3, None, "0"),
    (None, "0", "0"),  # no keras= : the executors' own setting
    (None, None, "1"),  # nothing anywhere: tf-keras, what TFoS programs (tfos.compat) are written for
])
def test_the_keras_setting_picks_what_tf_keras_is_on_the_node(keras, executor_env, node_env):
    env = {} if executor_env is None else {"TF_USE_LEGACY_KERAS": executor_env}
    set_keras(env, keras)
    assert env["TF_USE_LEGACY_KERAS"] == node_env


def run_script(code, *args):
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=60,
                          env=env)


def test_the_node_starts_children_without_forking_itself(tmp_path):
    # A fork of the node runs gRPC's fork handlers, which abort the child before it execs when a channel is
    # busy (grpc/grpc#43055: TensorBoard never started). Python runs its own fork hooks on the same path only.
    forked = tmp_path / "forked"
    result = run_script(
        "import os, subprocess, sys\n"
        "from tfos.executor._child import start_child\n"
        "os.register_at_fork(after_in_child=lambda: open(sys.argv[1], 'a').write('forked'))\n"
        "child = start_child([sys.executable, '-c', 'print(42)'], stdout=subprocess.PIPE, text=True)\n"
        "print(child.communicate()[0].strip(), child.returncode)\n", forked)
    assert result.stdout.split() == ["42", "0"], result.stderr
    assert not forked.exists()


def test_a_child_of_the_node_dies_with_it():
    result = run_script(
        "import sys\n"
        "from tfos.executor._child import start_child\n"
        "print(start_child(['sleep', '120']).pid)\n")
    try:
        child = psutil.Process(int(result.stdout))
    except psutil.NoSuchProcess:
        return
    try:
        child.wait(30)
    except psutil.TimeoutExpired:
        child.kill()
        pytest.fail(f"child {child.pid} outlived the process that started it")


def test_importing_tfos_keeps_grpc_out_of_forked_children():
    # With gRPC's fork handlers on, a fork of a process with live channels restarts gRPC's threads in the
    # child, and a child that then closes its descriptors to exec can abort (PySpark launches its JVM so).
    result = run_script(
        "import os, sys, time\n"
        "from concurrent import futures\n"
        "import tfos, grpc\n"
        "server = grpc.server(futures.ThreadPoolExecutor(2))\n"
        "port = server.add_insecure_port('127.0.0.1:0')\n"
        "server.start()\n"
        "try:\n"
        "    grpc.insecure_channel(f'127.0.0.1:{port}').unary_unary('/tfos/None')(b'', timeout=5)\n"
        "except grpc.RpcError:\n"
        "    pass\n"
        "read, write = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    time.sleep(0.5)\n"
        "    os.write(write, str(len(os.listdir('/proc/self/task'))).encode())\n"
        "    os._exit(0)\n"
        "print(os.read(read, 16).decode())\n")
    assert result.stdout.strip() == "1", result.stderr
