"""Fixtures of the multi-host tier: one namespaced standalone Spark cluster for the session.

Needs root and iproute2 (``ip netns``); skipped with the reason otherwise. See hosts.py.
"""

from __future__ import annotations

import pytest

from tests.multihost import hosts as H
from tests.multihost.scenarios import Matrix


@pytest.fixture(scope="session")
def namespaced(tmp_path_factory):
    """(Hosts, SparkCluster): a master host and two worker hosts with their own addresses."""
    reason = H.unavailable()
    if reason:
        pytest.skip(f"multi-host tier skipped: {reason}")
    base = tmp_path_factory.mktemp("hosts")
    base.chmod(0o755)
    with H.Hosts(base) as hosts, H.SparkCluster(hosts) as cluster:
        yield hosts, cluster


@pytest.fixture
def matrix(namespaced, tmp_path):
    hosts, cluster = namespaced
    return Matrix(hosts, cluster, tmp_path)
