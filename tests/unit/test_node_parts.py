"""Node-side parts without Spark: log shipping and port ranges."""

import socket

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


def test_port_range_skips_ports_in_use_and_names_the_setting_when_full():
    with socket.socket() as busy:
        busy.bind(("", 0))
        port = busy.getsockname()[1]
        free = _bind_tcp(ports=range(port, port + 2)) if port < 65535 else None
        if free is not None:
            assert free.getsockname()[1] == port + 1
            free.close()
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
