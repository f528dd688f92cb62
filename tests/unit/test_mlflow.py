"""MLflow tracking without a server: the missing extra, settings, params, once-per-step logging.

The logging tests give :class:`tfos.driver._mlflow.Tracker` a recording stand-in for the
mlflow module and a supervisor whose nodes' reports the test sets, to pin down which
reports become which MLflow metrics; tests/integration/test_mlflow.py runs the real thing.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

import tfos
from tfos.cli._doctor import mlflow_check
from tfos.config import ClusterConfig
from tfos.driver import _mlflow
from tfos.driver._server import NodeStatus
from tfos.errors import TFOSConfigError


def main_fun(args, ctx):
    pass


@pytest.fixture
def no_mlflow(monkeypatch):
    """Makes ``import mlflow`` fail, as on a machine without the extra."""
    monkeypatch.setitem(sys.modules, "mlflow", None)


def test_mlflow_true_without_mlflow_names_the_extra_before_touching_spark(no_mlflow):
    for asked in ({"mlflow": True}, {"mlflow_run": "0123abcd"}):
        with pytest.raises(TFOSConfigError, match=r"pip install 'tfos\[mlflow\]'"):
            tfos.run(None, main_fun, None, 1, **asked)  # no SparkContext needed to fail


def test_mlflow_off_or_unasked_needs_no_mlflow(no_mlflow):
    assert _mlflow.tracker_for(ClusterConfig(main_fun=main_fun, num_executors=1), None, None) is None
    assert _mlflow.tracker_for(ClusterConfig(main_fun=main_fun, num_executors=1, mlflow=False), None, None) is None


def test_doctor_reports_mlflow(no_mlflow, monkeypatch):
    monkeypatch.setattr("tfos.cli._doctor._version", lambda dist: None)
    line, problem = mlflow_check()
    assert "not installed" in line and "pip install 'tfos[mlflow]'" in line and problem is None
    monkeypatch.setattr("tfos.cli._doctor._version", lambda dist: "3.17.2" if dist == "mlflow" else None)
    line, problem = mlflow_check()  # installed, but the import fails (sys.modules says so here)
    assert "does not import" in line and "pip install 'tfos[mlflow]'" in problem


@pytest.mark.parametrize("settings, message", [
    ({"mlflow": "yes"}, "mlflow must be True"),
    ({"mlflow": False, "mlflow_run": "abc"}, "contradicts"),
    ({"export_dir": ""}, "export_dir must be a path"),
])
def test_settings_are_checked(settings, message):
    with pytest.raises(TFOSConfigError, match=message):
        ClusterConfig(main_fun=main_fun, num_executors=2, **settings)


def test_mlflow_run_takes_an_id_or_a_run():
    assert _mlflow.run_id_of("abc") == "abc"
    assert _mlflow.run_id_of(SimpleNamespace(info=SimpleNamespace(run_id="def"))) == "def"
    with pytest.raises(TFOSConfigError, match="mlflow_run must be"):
        _mlflow.run_id_of(42)


def test_params_are_the_cluster_shape_and_plain_args():
    config = ClusterConfig(main_fun=main_fun, num_executors=3, num_ps=1, input_mode=tfos.InputMode.SPARK, keras=3)
    args = argparse.Namespace(lr=0.1, epochs=3, name="mnist", shuffle=True, layers=[64, 10], data=None)
    params = _mlflow.params_of(config, "chief + 1 worker + 1 ps", args)
    assert params["tfos.num_executors"] == "3" and params["tfos.num_ps"] == "1"
    assert params["tfos.input_mode"] == "SPARK" and params["tfos.keras"] == "keras3"
    assert params["tfos.roles"] == "chief + 1 worker + 1 ps"
    assert {k: v for k, v in params.items() if k.startswith("args.")} == {
        "args.lr": "0.1", "args.epochs": "3", "args.name": "mnist", "args.shuffle": "True"}
    assert not any(k.startswith("args.") for k in _mlflow.params_of(config, "", [1, 2]))


# ---- which reports become which metrics -------------------------------------------------------
class Recorder:
    """Stands in for MlflowClient: keeps what was logged."""

    def __init__(self) -> None:
        self.metrics: list[tuple[str, float, int]] = []
        self.tags: dict[str, str] = {}
        self.params: dict[str, str] = {}
        self.ended: str | None = None

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> Any:
        return SimpleNamespace(info=SimpleNamespace(run_id="run-1"))

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = ()) -> None:
        if any(self.params.get(p.key, p.value) != p.value for p in params):
            raise FakeMlflowError("Changing param values is not allowed")
        self.metrics += [(m.key, m.value, m.step) for m in metrics]
        self.params.update({p.key: p.value for p in params})
        self.tags.update({t.key: t.value for t in tags})

    def set_terminated(self, run_id: str, status: str) -> None:
        self.ended = status


class FakeMlflowError(Exception):
    pass


def fake_mlflow(recorder: Recorder) -> Any:
    def entity(*names: str) -> Any:
        return lambda *values: SimpleNamespace(**dict(zip(names, values)))

    return SimpleNamespace(
        MlflowClient=lambda: recorder, get_tracking_uri=lambda: "fake://",
        exceptions=SimpleNamespace(MlflowException=FakeMlflowError),
        tracking=SimpleNamespace(fluent=SimpleNamespace(_get_experiment_id=lambda: "0")),
        entities=SimpleNamespace(Metric=entity("key", "value", "timestamp", "step"), Param=entity("key", "value"),
                                 RunTag=entity("key", "value")))


class FakeServer:
    def __init__(self) -> None:
        self._nodes = {i: NodeStatus({"job_name": job, "task_index": 0, "host": "h", "pid": 1, "executor_id": i})
                       for i, job in enumerate(("chief", "worker"))}

    def nodes(self) -> dict[int, NodeStatus]:
        return self._nodes

    def cluster_spec(self) -> dict[str, list[str]]:
        return {"chief": ["h:1"], "worker": ["h:2"]}

    def report(self, executor_id: int, **metrics: Any) -> None:
        self._nodes[executor_id].stats = {"rss": 100 << 20, "metrics": metrics}


@dataclass
class FakeSupervisor:
    template: dict[int, tuple[str, int]] = field(default_factory=lambda: {0: ("chief", 0), 1: ("worker", 0)})
    generation: Any = field(default_factory=lambda: SimpleNamespace(number=1, server=FakeServer()))
    restarts: int = 0
    failure: Any = None
    state: Any = field(default_factory=lambda: SimpleNamespace(value="running"))
    on_failure: Any = None


def tracked(recorder: Recorder | None = None, user_run: str | None = None,
            tf_args: Any = None) -> tuple[_mlflow.Tracker, FakeSupervisor, Recorder]:
    recorder, sup = recorder or Recorder(), FakeSupervisor()
    tracker = _mlflow.Tracker(fake_mlflow(recorder), ClusterConfig(main_fun=main_fun, num_executors=2), tf_args,
                              None, user_run)
    tracker.start(sup, "chief + 1 worker")  # type: ignore[arg-type]
    tracker._stop.set()  # the test samples by hand
    tracker._thread.join()
    return tracker, sup, recorder


def logged(recorder: Recorder, key: str) -> list[tuple[int, float]]:
    return [(step, value) for name, value, step in recorder.metrics if name == key]


def test_each_reported_step_is_logged_once_chief_plain_others_prefixed():
    tracker, sup, recorder = tracked()
    server = sup.generation.server
    server.report(0, step=1, loss=0.5, phase="warmup")
    server.report(1, step=1, loss=0.6)
    tracker.sample()
    tracker.sample()  # nothing new: nothing logged twice
    server.report(0, step=2, loss=0.4)
    tracker.sample()
    assert logged(recorder, "loss") == [(1, 0.5), (2, 0.4)]
    assert logged(recorder, "worker_0/loss") == [(1, 0.6)]
    assert not logged(recorder, "phase") and not logged(recorder, "step")
    assert recorder.params["tfos.num_executors"] == "2"
    assert json.loads(recorder.tags["tfos.nodes"]) == server.cluster_spec()


def test_a_second_job_in_the_same_run_is_tracked_though_its_params_differ():
    recorder = Recorder()
    tracked(recorder, "user-run", {"lr": 0.1})
    tracker, sup, _ = tracked(recorder, "user-run", {"lr": 0.2})  # MLflow refuses to change args.lr
    assert recorder.params["args.lr"] == "0.1"
    sup.generation.server.report(0, step=1, loss=0.5)
    tracker.sample()
    assert logged(recorder, "loss") == [(1, 0.5)]


def test_an_unreachable_tracking_server_fails_the_start_naming_the_setting():
    recorder = Recorder()
    recorder.create_run = lambda *args, **kwargs: (_ for _ in ()).throw(ConnectionError("connection refused"))
    tracker = _mlflow.Tracker(fake_mlflow(recorder), ClusterConfig(main_fun=main_fun, num_executors=2), None, None,
                              None)
    with pytest.raises(TFOSConfigError, match="could not start an MLflow run at fake://: connection refused.*"
                                              "MLFLOW_TRACKING_URI.*mlflow=False"):
        tracker.start(FakeSupervisor(), "chief + 1 worker")  # type: ignore[arg-type]
    tracker.finish()  # the teardown that follows: nothing to end, nothing raised
    assert recorder.ended is None


def test_reports_without_a_step_are_counted_and_logged_when_they_change():
    tracker, sup, recorder = tracked()
    server = sup.generation.server
    for accuracy in (0.5, 0.5, 0.7):
        server.report(0, accuracy=accuracy)
        tracker.sample()
    assert logged(recorder, "accuracy") == [(1, 0.5), (2, 0.7)]


def test_a_restart_logs_the_old_generations_last_report_and_tags_failures():
    tracker, sup, recorder = tracked()
    sup.generation.server.report(0, step=7, loss=0.9)  # reported and failed before any sample
    sup.on_failure(tfos.NodeError("main_fun failed on chief:0: ValueError: boom\n--- traceback"))
    sup.generation, sup.restarts = SimpleNamespace(number=2, server=FakeServer()), 1
    sup.generation.server.report(0, step=7, loss=0.8)  # resumed from a checkpoint: the same step again
    tracker.sample()
    assert logged(recorder, "loss") == [(7, 0.9), (7, 0.8)]
    assert recorder.tags["tfos.restarts"] == "1" and recorder.tags["tfos.failures"] == "1"
    assert recorder.tags["tfos.failure.1"] == "main_fun failed on chief:0: ValueError: boom"


def test_finish_takes_a_last_sample_and_ends_the_run_it_started():
    tracker, sup, recorder = tracked()
    sup.generation.server.report(0, step=3, loss=0.2)
    sup.state = SimpleNamespace(value="stopped")
    tracker.finish()
    assert logged(recorder, "loss") == [(3, 0.2)]
    assert logged(recorder, "system/chief_0/rss_bytes") == [(1, float(100 << 20))]
    assert recorder.tags["tfos.state"] == "stopped" and recorder.ended == "FINISHED"


def test_the_chief_model_file_says_which_keras_saved_it(tmp_path):
    def keras_file(name: str, version: str) -> None:
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            archive.writestr("metadata.json", json.dumps({"keras_version": version}))

    keras_file("model.keras", "3.15.1")
    assert _mlflow.find_model(str(tmp_path)) == (str(tmp_path / "model.keras"), "keras")
    keras_file("model.keras", "2.21.0")
    assert _mlflow.find_model(str(tmp_path)) == (str(tmp_path / "model.keras"), "tensorflow")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    assert _mlflow.find_model(str(saved)) is None  # a plain SavedModel: logged as files
    (saved / "keras_metadata.pb").write_bytes(b"")
    assert _mlflow.find_model(str(saved)) == (str(saved), "tensorflow")


# ---- fitMultiple's trials as child runs ------------------------------------------------------------
class FakeTrialRuns:
    """Stands in for TrialRuns: records the runs started and how they ended."""

    def __init__(self) -> None:
        self.started: list[tuple[int, dict[str, str]]] = []
        self.ended: dict[str, bool] = {}

    def start(self, index: int, params: dict[str, str]) -> str:
        self.started.append((index, params))
        return f"child-{index}"

    def finish(self, run_id: str, failed: bool, metrics: Any = None, export_uri: Any = None) -> None:
        self.ended[run_id] = failed


class ClusterTrial:
    """A trial that needs a cluster: fit() sees the child run it should log to."""

    def __init__(self, fails: bool = False) -> None:
        self.fails, self.logged_to = fails, None

    def _parallel_trials(self) -> bool:
        return False

    def fit(self, dataset: Any) -> str:
        self.logged_to = getattr(self, "_mlflow_run", None)
        if self.fails:
            raise ValueError("trial failed")
        return f"model in {self.logged_to}"


def test_trials_on_clusters_log_to_child_runs_with_their_grid_point():
    from tfos.ml import _tuning

    runs, trials = FakeTrialRuns(), [ClusterTrial(), ClusterTrial()]
    grid = [{"learning_rate": 0.1, "cluster_size": 2}, {"learning_rate": 0.2, "cluster_size": 2}]
    assert list(_tuning._Trials("rows", trials, grid, runs)) == [(0, "model in child-0"), (1, "model in child-1")]
    assert runs.started == [(0, {"learning_rate": "0.1", "cluster_size": "2"}),
                            (1, {"learning_rate": "0.2", "cluster_size": "2"})]
    assert runs.ended == {"child-0": False, "child-1": False}


def test_a_failing_trial_fails_its_child_run_and_those_after_it():
    from tfos.ml import _tuning

    runs = FakeTrialRuns()
    trials = [ClusterTrial(), ClusterTrial(fails=True), ClusterTrial()]
    with pytest.raises(ValueError, match="trial failed"):
        list(_tuning._Trials("rows", trials, [{}, {}, {}], runs))
    assert runs.ended == {"child-0": False, "child-1": True, "child-2": True}
