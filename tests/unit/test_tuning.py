"""fitMultiple's choice between parallel single-node trials and one cluster per trial (no Spark)."""

from __future__ import annotations

from tfos.ml import _tuning


class FakeTrial:
    def __init__(self, parallel: bool, name: str) -> None:
        self.parallel, self.name, self.fitted_on = parallel, name, None

    def _parallel_trials(self) -> bool:
        return self.parallel

    def fit(self, dataset: object) -> str:
        self.fitted_on = dataset
        return f"model of {self.name}"


def refuse(*args: object) -> None:
    raise AssertionError("the trials ran in parallel")


def test_a_grid_point_that_needs_a_cluster_makes_every_trial_fit_on_its_own(monkeypatch):
    monkeypatch.setattr(_tuning, "run_trials", refuse)
    trials = [FakeTrial(True, "cluster_size=1"), FakeTrial(False, "cluster_size=2")]
    assert list(_tuning._Trials("rows", trials)) == [(0, "model of cluster_size=1"),
                                                          (1, "model of cluster_size=2")]
    assert [t.fitted_on for t in trials] == ["rows", "rows"]


def test_single_node_spark_fed_trials_run_in_parallel_once(monkeypatch):
    calls = []
    monkeypatch.setattr(_tuning, "run_trials", lambda dataset, trials: calls.append(dataset) or
                        [f"parallel {t.name}" for t in trials])
    trials = [FakeTrial(True, "a"), FakeTrial(True, "b")]
    assert list(_tuning._Trials("rows", trials)) == [(0, "parallel a"), (1, "parallel b")]
    assert calls == ["rows"]
