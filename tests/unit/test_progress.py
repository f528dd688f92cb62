"""Progress rows, rates and the log-line view, on an in-process control server."""

from __future__ import annotations

import logging

from tfos._roles import cluster_template
from tfos.driver._progress import ProgressView, Rates, format_metrics, node_rows, progress_mode
from tfos.driver._server import ControlServer


def server_with_nodes() -> ControlServer:
    server = ControlServer(cluster_template(2, 0, "chief", False), "s", local_mode=True)
    for eid, (job, index) in server.template.items():
        server._register({"executor_id": eid, "job_name": job, "task_index": index, "host": "10.0.0.1",
                          "port": 2000 + eid, "hostname": "h", "workdir": "/w", "pid": 10 + eid,
                          "tb_port": 6006 if eid == 0 else None})
    return server


def test_rows_show_state_rows_metrics_and_tensorboard():
    server = server_with_nodes()
    server._metrics({"executor_id": 1, "stats": {"consumed": {"input": 120, "eval": 30}, "rss": 5 << 20,
                                                 "pid": 99, "gpus": "1", "metrics": {"step": 4, "loss": 0.5}}})
    server._report({"executor_id": 0, "state": "running"})
    rows = {r["role"]: r for r in node_rows(server, Rates())}
    assert rows["worker:0"]["rows"] == 150 and rows["worker:0"]["pid"] == 99 and rows["worker:0"]["gpus"] == "1"
    assert rows["worker:0"]["metrics"] == {"step": 4, "loss": 0.5} and rows["worker:0"]["state"] == "registered"
    assert rows["chief:0"]["state"] == "running" and rows["chief:0"]["pid"] == 10
    assert rows["chief:0"]["tensorboard"] == "http://10.0.0.1:6006" and rows["worker:0"]["tensorboard"] is None


def test_rates_follow_the_row_count_and_restart_from_zero():
    rates = Rates()
    assert rates.rate("w", 0, 100.0) == 0.0
    assert rates.rate("w", 500, 101.0) == 500.0
    assert rates.rate("w", 600, 101.2) == 500.0  # too soon to measure again: the last rate stands
    assert rates.rate("w", 1500, 103.0) == 500.0
    assert rates.rate("w", 10, 104.0) == 0.0  # a new run counts from zero
    assert rates.rate("w", 110, 105.0) == 100.0


def test_modes_and_metric_formatting(monkeypatch):
    assert progress_mode(False) is None
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert progress_mode(None) == progress_mode(True) == "log"
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert progress_mode(None) == progress_mode(True) == "live"
    assert format_metrics({"loss": 0.123456, "step": 7, "phase": "eval"}) == "loss=0.1235 step=7 phase=eval"


def test_log_view_writes_a_summary_line_per_node(caplog):
    server = server_with_nodes()
    server._metrics({"executor_id": 0, "stats": {"metrics": {"loss": 0.25}}})
    view = ProgressView(lambda: server, "log", "tfos chief + 1 worker").start()
    with caplog.at_level(logging.INFO, logger="tfos.progress"):
        view.stop()
        view.stop()  # idempotent
    lines = [r.getMessage() for r in caplog.records if r.name == "tfos.progress"]
    assert lines == ["tfos chief + 1 worker summary: chief:0 registered rows=0 (0/s) loss=0.25",
                     "tfos chief + 1 worker summary: worker:0 registered rows=0 (0/s)"]
