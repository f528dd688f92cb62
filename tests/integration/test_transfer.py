"""The transfer-learning example (scripts/transfer_digits.py) end to end on the session's local cluster."""

from __future__ import annotations

import os
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def load_example():
    """scripts/transfer_digits.py as a module, pickled by value so that the nodes need not find scripts/."""
    from pyspark import cloudpickle

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import transfer_digits
    finally:
        sys.path.pop(0)
    cloudpickle.register_pickle_by_value(transfer_digits)
    return transfer_digits


@pytest.mark.timeout(300)  # the suite-wide limit, spelled out: the example takes about 100 s alone
def test_transfer_digits_reaches_0_9_on_unseen_classes_and_the_saved_pipeline_agrees(sc, tmp_path, no_leftovers):
    """CNN on 0-4 (Spark-fed, tfos) -> DeepFeaturizer + LogisticRegression on <= 20% of 5-9 -> >= 0.9 on the rest."""
    example = load_example()
    report = example.run(sc, example.parse_args(["--work_dir", str(tmp_path)]))
    assert report["trained_on"] <= 0.2 * report["images"], report  # the labelled limit
    assert report["trained_on"] + report["scored"] == report["images"], report  # the test images are the others
    assert report["accuracy"] >= 0.9, report
    assert report["same"], "the saved and loaded PipelineModel gave other predictions"
    assert os.path.exists(tmp_path / "cnn-0-4.keras") and os.path.isdir(tmp_path / "transfer-pipeline")
