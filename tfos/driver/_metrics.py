"""Prometheus metrics of a cluster (driver), served when ``TFOS_METRICS_PORT`` is set.

The values are read from the control server at scrape time (prometheus-client's
custom collector), so nothing is kept twice and a scrape always sees the current
generation. Families, all labelled with the node's ``role``:

- ``tfos_node_up``: 1 while the node process runs
- ``tfos_node_rows_consumed_total{queue}``: rows the node has read from each fed queue
- ``tfos_node_heartbeat_age_seconds``, ``tfos_node_rss_bytes``
- ``tfos_node_metric{name}``: the last value of each number the node reported with ``ctx.report``
- ``tfos_cluster_restarts_total`` and ``tfos_cluster_state{state}``
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from tfos import _constants as C
from tfos._protocol import NodeState
from tfos.driver._progress import Rates, node_rows
from tfos.errors import TFOSError

log = logging.getLogger(__name__)

#: States of a node whose process is up (or about to be).
_UP = (NodeState.REGISTERED, NodeState.RUNNING, NodeState.SERVING)


class ClusterCollector:
    """A prometheus-client collector over ``describe()``: (server, state name, restarts)."""

    def __init__(self, describe: Callable[[], tuple[Any, str, int]]) -> None:
        self._describe = describe
        self._rates = Rates()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        server, state, restarts = self._describe()
        up = GaugeMetricFamily("tfos_node_up", "1 while the node process runs", labels=["role"])
        rows = CounterMetricFamily("tfos_node_rows_consumed", "Rows the node read from a fed queue",
                                   labels=["role", "queue"])
        age = GaugeMetricFamily("tfos_node_heartbeat_age_seconds", "Seconds since the node was last heard from",
                                labels=["role"])
        rss = GaugeMetricFamily("tfos_node_rss_bytes", "Resident memory of the node process", labels=["role"])
        metric = GaugeMetricFamily("tfos_node_metric", "Last value the node reported with ctx.report",
                                   labels=["role", "name"])
        for row in node_rows(server, self._rates):
            role = row["role"]
            up.add_metric([role], 1.0 if row["state"] in _UP else 0.0)
            for queue, count in row["consumed"].items():
                rows.add_metric([role, queue], float(count))
            age.add_metric([role], float(row["heartbeat_age"]))
            if row["rss"] is not None:
                rss.add_metric([role], float(row["rss"]))
            for name, value in row["metrics"].items():
                if isinstance(value, (int, float)):
                    metric.add_metric([role, name], float(value))
        states = GaugeMetricFamily("tfos_cluster_state", "1 for the cluster's current state", labels=["state"])
        states.add_metric([state], 1.0)
        total = CounterMetricFamily("tfos_cluster_restarts", "Times every node was restarted after a failure")
        total.add_metric([], float(restarts))
        yield from (up, rows, age, rss, metric, states, total)


class MetricsServer:
    """The HTTP endpoint; ``stop()`` frees its port."""

    def __init__(self, httpd: Any, thread: Any) -> None:
        self._httpd, self._thread = httpd, thread
        self.port = httpd.server_address[1]

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def serve_metrics(describe: Callable[[], tuple[Any, str, int]], default_host: str) -> MetricsServer | None:
    """Serves the cluster's metrics on the first free port of ``TFOS_METRICS_PORT``; None when unset.

    It binds ``TFOS_METRICS_HOST``, by default ``default_host`` (the address nodes reach the driver at).
    """
    if not C.get_str(C.METRICS_PORT).strip():
        return None
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(describe))
    ports = C.port_range(C.METRICS_PORT)
    host = C.get_str(C.METRICS_HOST) or default_host
    for port in ports:
        try:
            httpd, thread = start_http_server(port, addr=host, registry=registry)
        except OSError:
            continue
        server = MetricsServer(httpd, thread)
        log.info("tfos metrics for Prometheus at http://%s:%d/metrics", host, server.port)
        return server
    raise TFOSError(f"no free port for the tfos metrics endpoint in {ports.start}-{ports.stop - 1}; widen "
                    "TFOS_METRICS_PORT, set it to 0 (any free port) or unset it")
