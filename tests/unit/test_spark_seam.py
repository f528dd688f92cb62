"""The Spark seam's logic that needs no Spark: backend choice, Connect's refusals, result batches, preflight."""

from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import urlparse

import pyarrow as pa
import pytest

from tfos.driver import _spark
from tfos.errors import FeedDataError, TFOSConfigError


class FakeConf:
    def __init__(self, values):
        self.values = values

    def get(self, key, default=None):
        return self.values.get(key, default)


class FakeConnectSession:
    """Stands in for a Connect session: its conf and its client's channel builder are read."""

    def __init__(self, values, url="sc://127.0.0.1:15002", secure=False):
        self.conf = FakeConf(values)
        self.client = SimpleNamespace(_builder=SimpleNamespace(url=urlparse(url), secure=secure))


FakeConnectSession.__module__ = "pyspark.sql.connect.session"


class RDD:
    """Named like pyspark's, as the refusal reads the type's name."""


class FakeSparkContext:
    """What Classic.preflight reads of a SparkContext: its settings, master and Python."""

    def __init__(self, values, python_exec="python3"):
        self.values, self.master, self.pythonExec = values, values.get("spark.master", "local[1]"), python_exec

    def getConf(self):
        return FakeConf(self.values)


@pytest.mark.parametrize("env, setting, runs", [
    (None, None, "DRIVER"),  # neither: the driver's own Python
    (None, "/opt/venv/bin/python", "/opt/venv/bin/python"),  # the setting, which PySpark alone ignores here
    ("/env/python", "/opt/venv/bin/python", "/env/python"),  # spark-submit made the variable from it
])
def test_executors_run_the_python_the_user_named(monkeypatch, env, setting, runs):
    import sys

    if env is None:
        monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    else:
        monkeypatch.setenv("PYSPARK_PYTHON", env)
    sc = FakeSparkContext({"spark.pyspark.python": setting} if setting else {}, python_exec=env or "python3")
    _spark.Classic(sc).preflight(1)
    assert sc.pythonExec == (sys.executable if runs == "DRIVER" else runs)


def test_a_connect_session_gets_the_connect_backend_and_anything_else_is_named():
    assert isinstance(_spark.backend(FakeConnectSession({})), _spark.Connect)
    with pytest.raises(TFOSConfigError, match=r"expected a SparkSession .* got dict"):
        _spark.backend({})


def test_connect_refuses_rdds_and_lists_asking_for_a_dataframe():
    connect = _spark.Connect(FakeConnectSession({}))
    with pytest.raises(TFOSConfigError, match=r"has no RDDs: pass a DataFrame"):
        connect.check_data(RDD())
    with pytest.raises(TFOSConfigError, match=r"cannot feed a list: pass a DataFrame"):
        connect.check_data([(1, 2)])


@pytest.mark.parametrize("values, error", [
    ({"spark.dynamicAllocation.enabled": "true"}, r"spark.dynamicAllocation.enabled=false"),
    ({"spark.speculation": "TRUE"}, r"spark.speculation=false"),
    ({"spark.master": "spark://m:7077", "spark.executor.cores": "4"}, r"Set spark.task.cpus=4"),
    ({"spark.master": "local-cluster[2,1,1024]"}, r"num_executors=3 but the Spark application has only 2"),
])
def test_preflight_reads_connect_settings_through_spark_conf(values, error):
    with pytest.raises(TFOSConfigError, match=error):
        _spark.Connect(FakeConnectSession(values)).preflight(3)


def test_preflight_tells_local_mode_from_a_cluster():
    local = FakeConnectSession({"spark.master": "local[4]", "spark.task.cpus": "4"})
    assert _spark.Connect(local).preflight(1) is True
    assert _spark.Connect(FakeConnectSession({"spark.master": "local-cluster[2,1,1024]"})).preflight(2) is False


def test_a_plaintext_channel_off_this_host_is_warned_about(caplog):
    conf = {"spark.master": "spark://m:7077"}
    _spark.Connect(FakeConnectSession(conf, "sc://127.0.0.1:15002")).preflight(2)
    _spark.Connect(FakeConnectSession(conf, "sc://10.1.2.3:443", secure=True)).preflight(2)
    assert "not encrypted" not in caplog.text
    _spark.Connect(FakeConnectSession(conf, "sc://10.1.2.3:15002")).preflight(2)
    assert "channel to 10.1.2.3 is not encrypted" in caplog.text and "use_ssl=true" in caplog.text


def test_the_control_server_binds_the_address_that_reaches_the_connect_server(monkeypatch):
    monkeypatch.delenv("TFOS_SERVER_HOST", raising=False)
    assert _spark.Connect(FakeConnectSession({}, "sc://127.0.0.1:15002")).server_hosts() == ("127.0.0.1",) * 2
    monkeypatch.setenv("TFOS_SERVER_HOST", "10.9.8.7")
    assert _spark.Connect(FakeConnectSession({})).server_hosts() == ("10.9.8.7",) * 2


def test_job_tags_hold_no_commas():
    assert _spark._tag("tfos feed 'a,b' epoch 1/2") == "tfos feed 'a;b' epoch 1/2"


def test_result_rows_become_record_batches_of_the_schema():
    schema = pa.schema([("id", pa.int64()), ("p", pa.list_(pa.float32()))])
    import numpy as np

    batch = _spark._record_batch(pa, schema, [(1, np.array([0.5, 1.0], np.float32)), (2, np.zeros(2))], 0)
    assert batch.to_pylist() == [{"id": 1, "p": [0.5, 1.0]}, {"id": 2, "p": [0.0, 0.0]}]


def test_results_that_do_not_fit_the_schema_name_the_partition_and_column():
    schema = pa.schema([("id", pa.int64()), ("label", pa.string())])
    with pytest.raises(FeedDataError, match=r"partition 3: batch_results gave rows of 1 values for a schema of 2"):
        _spark._record_batch(pa, schema, [(1,)], 3)
    with pytest.raises(FeedDataError, match=r"partition 2: result column 'label' does not fit the schema's type"):
        _spark._record_batch(pa, schema, [(1, 2.5)], 2)
