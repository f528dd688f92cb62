import pytest

from tfos import InputMode, TFOSConfigError
from tfos._paths import absolute_path
from tfos._roles import cluster_spec, cluster_template, tf_config
from tfos.config import ClusterConfig


def main_fun(args, ctx):
    pass


def test_template_orders_ps_chief_evaluator_workers():
    template = cluster_template(6, num_ps=2, master_node="chief", eval_node=True)
    assert template == {0: ("ps", 0), 1: ("ps", 1), 2: ("chief", 0), 3: ("evaluator", 0),
                        4: ("worker", 0), 5: ("worker", 1)}


def test_template_without_chief():
    assert cluster_template(2, 0, None, False) == {0: ("worker", 0), 1: ("worker", 1)}


def test_cluster_spec_sorted_by_task_index():
    nodes = [{"job_name": "worker", "task_index": 1, "host": "b", "port": 2},
             {"job_name": "worker", "task_index": 0, "host": "a", "port": 1},
             {"job_name": "chief", "task_index": 0, "host": "c", "port": 3}]
    assert cluster_spec(nodes) == {"chief": ["c:3"], "worker": ["a:1", "b:2"]}


def test_tf_config_leaves_evaluator_out_of_the_training_cluster():
    spec = {"chief": ["c:1"], "worker": ["w:2"], "evaluator": ["e:3"]}
    config = tf_config(spec, "evaluator", 0)
    assert config["cluster"] == {"chief": ["c:1"], "worker": ["w:2"]}
    assert config["task"] == {"type": "evaluator", "index": 0}


@pytest.mark.parametrize("kwargs, message", [
    ({"main_fun": "not callable"}, "main_fun must be a function"),
    ({"num_executors": 0}, "num_executors must be an integer >= 1"),
    ({"num_executors": 2.5}, "num_executors must be an integer"),
    ({"num_ps": -1}, "num_ps must be an integer >= 0"),
    ({"num_executors": 2, "num_ps": 2}, "leaves no chief or worker"),
    ({"master_node": "boss"}, "master_node must be"),
    ({"input_mode": 7}, "input_mode must be"),
    ({"reservation_timeout": 0}, "reservation_timeout must be a positive"),
    ({"max_restarts": -1}, "max_restarts must be an integer >= 0"),
    ({"num_gpus": -1}, "num_gpus must be an integer >= 0"),
    ({"max_restarts": 1, "input_mode": 1}, "max_restarts needs input_mode=InputMode.TENSORFLOW"),
    ({"keras": 4}, r"keras must be 2 \(tf-keras\), 3 \(Keras 3\) or None"),
])
def test_config_rejects_bad_arguments(kwargs, message):
    args = {"main_fun": main_fun, "num_executors": 2, **kwargs}
    with pytest.raises(TFOSConfigError, match=message):
        ClusterConfig(**args)


def test_config_accepts_tfos_style_arguments():
    config = ClusterConfig(main_fun=main_fun, num_executors=3, num_ps=1, input_mode=1)
    assert config.input_mode is InputMode.SPARK


@pytest.mark.parametrize("path, fs, expected", [
    ("hdfs://nn/x", "file:///", "hdfs://nn/x"),
    ("gs://bucket/x", "hdfs://nn:8020", "gs://bucket/x"),
    ("/abs/x", "file:///", "file:///abs/x"),
    ("rel/x", "file:///", "file:///work/rel/x"),
    ("/abs/x", "hdfs://nn:8020", "hdfs://nn:8020/abs/x"),
])
def test_absolute_path(path, fs, expected):
    assert absolute_path(path, fs, "/work") == expected


def test_absolute_path_relative_on_hdfs_goes_to_home():
    import getpass

    assert absolute_path("data", "hdfs://nn:8020/", "/w") == f"hdfs://nn:8020/user/{getpass.getuser()}/data"
