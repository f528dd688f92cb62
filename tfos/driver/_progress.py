"""Live progress of a cluster (driver): per-node rows, rates, steps and reported metrics.

``node_rows`` turns the control server's node state into plain rows, shared by the
progress view, ``Cluster.metrics()``, ``tfos status`` and the Prometheus endpoint.
``ProgressView`` shows them as a live table (rich) when stderr is a terminal, or as a
log line per node every ``TFOS_PROGRESS_INTERVAL_SECS`` otherwise, and prints a summary
table when the cluster stops.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from tfos import _constants as C
from tfos._protocol import FINAL_STATES, NodeState
from tfos.driver._server import ControlServer, NodeStatus

log = logging.getLogger("tfos.progress")


class Rates:
    """Rows per second of each node, from the change in its fed-row count between two looks."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int, float]] = {}
        self._lock = threading.Lock()

    def rate(self, role: str, rows: int, now: float) -> float:
        with self._lock:
            then, before, rate = self._last.get(role, (now, rows, 0.0))
            if rows < before:  # a new generation or run counts from zero
                self._last[role] = (now, rows, 0.0)
                return 0.0
            if now - then >= 0.5:
                rate = (rows - before) / (now - then)
                self._last[role] = (now, rows, rate)
            elif role not in self._last:
                self._last[role] = (now, rows, 0.0)
            return rate


def node_state(node: NodeStatus) -> NodeState:
    if node.state in FINAL_STATES or not node.exited:
        return NodeState(node.state)
    return NodeState.EXITED


def node_rows(server: ControlServer, rates: Rates) -> list[dict[str, Any]]:
    """One plain dict per node, sorted by executor id (see the module docstring)."""
    now, rows = time.monotonic(), []
    for eid, node in sorted(server.nodes().items()):
        info, stats = node.info, node.stats
        role = f"{info['job_name']}:{info['task_index']}"
        fed = sum(int(v) for v in (stats.get("consumed") or {}).values())
        tb = f"http://{info['host']}:{info['tb_port']}" if info.get("tb_port") else None
        rows.append({
            "role": role, "executor_id": eid, "host": info["host"], "pid": stats.get("pid", info["pid"]),
            "state": node_state(node).value,
            "heartbeat_age": round(now - (node.agent_seen if node.idle_agent else node.last_seen), 1),
            "rss": stats.get("rss"), "gpus": stats.get("gpus"), "rows": fed,
            "rows_per_sec": round(rates.rate(role, fed, now), 1), "metrics": dict(stats.get("metrics") or {}),
            "consumed": dict(stats.get("consumed") or {}), "tensorboard": tb,
        })
    return rows


def format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for name, value in metrics.items():
        parts.append(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


def progress_mode(progress: bool | None) -> str | None:
    """``"live"``, ``"log"`` or None (off) for ``tfos.run(progress=...)``."""
    if progress is False:
        return None
    return "live" if sys.stderr.isatty() else "log"


class ProgressView:
    """Shows a supervised cluster's nodes while it runs; see the module docstring."""

    def __init__(self, server_of: Any, mode: str, title: str) -> None:
        self._server_of = server_of  # callable: the current control server (restarts replace it)
        self.mode = mode
        self.title = title
        self.rates = Rates()
        self._stop = threading.Event()
        self._live: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> ProgressView:
        if self.mode == "live":
            from rich.console import Console
            from rich.live import Live

            self._live = Live(get_renderable=self._table, console=Console(stderr=True), refresh_per_second=2,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        else:
            self._thread = threading.Thread(target=self._log_loop, name="tfos-progress", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Ends the view and shows the summary; idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._live is not None:
            self._live.stop()
            self._live.console.print(self._table(summary=True))
        else:
            if self._thread is not None:
                self._thread.join(timeout=2)
            for line in self._lines(summary=True):
                log.info("%s", line)

    def _rows(self) -> list[dict[str, Any]]:
        return node_rows(self._server_of(), self.rates)

    def _table(self, summary: bool = False) -> Any:
        from rich.table import Table

        table = Table(title=f"{self.title} ({'summary' if summary else 'live'})", title_justify="left")
        for name in ("node", "state", "rows fed", "rows/s", "step", "metrics"):
            table.add_column(name, justify="right" if name in ("rows fed", "rows/s", "step") else "left")
        for row in self._rows():
            metrics = dict(row["metrics"])
            step = metrics.pop("step", "")
            table.add_row(row["role"], row["state"], f"{row['rows']:,}", f"{row['rows_per_sec']:,.0f}", str(step),
                          format_metrics(metrics))
        return table

    def _lines(self, summary: bool = False) -> list[str]:
        head = f"{self.title} summary: " if summary else ""
        return [f"{head}{r['role']} {r['state']} rows={r['rows']:,} ({r['rows_per_sec']:,.0f}/s) "
                f"{format_metrics(r['metrics'])}".rstrip() for r in self._rows()]

    def _log_loop(self) -> None:
        interval = C.get_float(C.PROGRESS_INTERVAL_SECS)
        while not self._stop.wait(interval):
            for line in self._lines():
                log.info("%s", line)
