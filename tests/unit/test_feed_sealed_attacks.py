"""A cross-executor feed against an attacker on the path (a relay between a feeding task and a node): what the
TLS handshake and the sealed records that follow it must bind. Every node of a cluster holds the same
credential, so TLS alone proves "a node of this cluster", not "the node this feeder meant"."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from tests.unit.relay import Relay
from tests.unit.test_feed_hostile import CLUSTER, CRED, feeder, taken
from tfos.errors import TFOSError
from tfos.feed._hub import FeedHub


def node_hub(monkeypatch, tmp_path, name: str, executor_id: int, tls: bool):
    monkeypatch.setenv("TFOS_FEED_HELLO_TIMEOUT_SECS", "2")
    monkeypatch.setenv("TFOS_FEED_CACHE_DIR", str(tmp_path / "cache"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    node = SimpleNamespace(p=SimpleNamespace(credential=CRED, feed_tls=tls, cluster_id=CLUSTER,
                                             executor_id=executor_id), name=name)
    hub = FeedHub(node, [listener])
    hub.start()
    return hub, listener.getsockname()


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
def test_a_feed_redirected_to_another_node_of_the_cluster_is_refused(monkeypatch, tmp_path, tls):
    """A relay sends the connection meant for worker:0 to worker:1's feed port. Both nodes prove the cluster's
    key, so unless the handshake names the node the feeder meant (and one side checks it), worker:1 takes the
    partition and the feeder reports success: an attacker on the network decides which node trains on which
    rows (all of them on one node, none on another) and nothing anywhere says so."""
    worker0, address0 = node_hub(monkeypatch, tmp_path, "worker:0", 0, tls)
    worker1, address1 = node_hub(monkeypatch, tmp_path, "worker:1", 1, tls)
    relay = Relay(address1)  # the attacker: connections for worker:0 go to worker:1
    try:
        f = feeder(relay.address, tls)  # Consumer(executor_id=0, role="worker:0") at the relay's address
        with pytest.raises(TFOSError):
            consumer, sock, resume = f._connect(3)
            with sock:
                f._train(sock, consumer, 3, iter(range(100)), resume)
        assert taken(worker1) == [], "worker:1 took rows of a feed meant for worker:0"
        assert taken(worker0) == []
    finally:
        worker0.close()
        worker1.close()
