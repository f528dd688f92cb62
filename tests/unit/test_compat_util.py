"""tfos.compat's util, gpu_info, marker, TFSparkNode and pipeline helpers: TFoS semantics, no Spark, no TF."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import pickle
import sys
from importlib import metadata

import psutil
import pytest

from tfos.compat import TFManager, TFSparkNode, gpu_info, marker, pipeline, util
from tfos.compat._unsupported import UnsupportedNameError
from tfos.errors import TFOSConfigError, TFOSError

# index, memory.used (MiB), memory.total (MiB), as `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`
FOUR_FREE_GPUS = "0, 0, 16384\n1, 10, 16384\n2, 0, 16384\n3, 500, 16384\n"


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    """Puts an nvidia-smi on PATH that prints ``output`` (then ``later`` from its second run on, if given)."""

    def install(output, later=None):
        bindir = tmp_path / "bin"
        bindir.mkdir(exist_ok=True)
        count = tmp_path / "smi-runs"
        script = bindir / "nvidia-smi"
        script.write_text("#!/bin/sh\n"
                          f'n=$(cat "{count}" 2>/dev/null || echo 0); echo $((n+1)) > "{count}"\n'
                          f'if [ "$n" -gt 0 ] && [ -n "{later or ""}" ]; then\n'
                          f"cat <<'CSV'\n{later or ''}CSV\nelse\ncat <<'CSV'\n{output}CSV\nfi\n")
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
        return count

    return install


@pytest.fixture
def no_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))


@pytest.fixture
def cuda_env(monkeypatch):
    """single_node_env writes CUDA_VISIBLE_DEVICES / CLASSPATH; monkeypatch puts them back afterwards."""
    for name in ("CUDA_VISIBLE_DEVICES", "CLASSPATH", util.CLASSPATH_UPDATED, "HADOOP_PREFIX", "HADOOP_HOME"):
        monkeypatch.delenv(name, raising=False)


# ---- util ------------------------------------------------------------------------------------

def test_executor_id_round_trips_through_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    util.write_executor_id(7)
    assert (tmp_path / "executor_id").read_text() == "7"
    assert util.read_executor_id() == 7
    util.write_executor_id(2)
    assert util.read_executor_id() == 2


def test_read_executor_id_finds_the_node_tfos_started_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TFOSError, match="no executor_id file .* no tfos node marker. Call util.write_executor_id"):
        util.read_executor_id()
    (tmp_path / "tfos-abc123.node").write_text(json.dumps({"executor_id": 3}))
    (tmp_path / "tfos-abc123.node.tmp").write_text("partly written")
    assert util.read_executor_id() == 3
    (tmp_path / "tfos-def456.node").write_text(json.dumps({"executor_id": 1}))
    with pytest.raises(TFOSError, match="markers of 2 running tfos clusters"):
        util.read_executor_id()
    util.write_executor_id(5)  # the file wins, as in TFoS
    assert util.read_executor_id() == 5


def test_get_ip_address_is_an_address_of_this_host():
    address = util.get_ip_address()
    ip = ipaddress.ip_address(address)
    own = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    assert address in own or ip.is_loopback


def test_find_in_path_returns_the_first_file_or_false(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "tool").mkdir()  # a directory does not count
    (tmp_path / "b" / "tool").write_text("")
    path = os.pathsep.join([str(tmp_path / "missing"), str(tmp_path / "a"), str(tmp_path / "b")])
    assert util.find_in_path(path, "tool") == str(tmp_path / "b" / "tool")
    assert util.find_in_path(path, "other") is False


def test_single_node_env_without_gpus_hides_cuda(no_smi, cuda_env):
    os.environ["CUDA_VISIBLE_DEVICES"] = "0"
    util.single_node_env()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_single_node_env_takes_gpus_by_index_among_the_processes_of_this_host(fake_smi, cuda_env):
    fake_smi(FOUR_FREE_GPUS)
    util.single_node_env(num_gpus=1, worker_index=1)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    # node 3 is the second node on host h1 (h10 is another host), so it takes the second free GPU
    nodes = ["h1:2222", "h10:2222", "h2:2222", "h1:2223"]
    util.single_node_env(num_gpus=2, worker_index=3, nodes=nodes)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    util.single_node_env(num_gpus=0)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_single_node_env_adds_hadoop_jars_to_the_classpath_once(tmp_path, no_smi, cuda_env, monkeypatch):
    hadoop = tmp_path / "hadoop" / "bin" / "hadoop"
    hadoop.parent.mkdir(parents=True)
    runs = tmp_path / "runs"
    hadoop.write_text(f'#!/bin/sh\necho "$@" >> "{runs}"\necho "/opt/hadoop/share/a.jar:/opt/hadoop/share/b.jar"\n')
    hadoop.chmod(0o755)
    monkeypatch.setenv("HADOOP_PREFIX", str(tmp_path / "hadoop"))
    monkeypatch.setenv("CLASSPATH", "/app.jar")
    util.single_node_env()
    util.single_node_env()
    assert os.environ["CLASSPATH"] == f"/app.jar{os.pathsep}/opt/hadoop/share/a.jar:/opt/hadoop/share/b.jar"
    assert os.environ[util.CLASSPATH_UPDATED] == "1"
    assert runs.read_text() == "classpath --glob\n"


def test_single_node_env_names_a_broken_hadoop(tmp_path, no_smi, cuda_env, monkeypatch):
    monkeypatch.setenv("HADOOP_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(TFOSError, match="classpath --glob' failed .* HADOOP_PREFIX / HADOOP_HOME"):
        util.single_node_env()


# ---- gpu_info --------------------------------------------------------------------------------

def test_is_gpu_available_follows_nvidia_smi(fake_smi, tmp_path, monkeypatch):
    fake_smi(FOUR_FREE_GPUS)
    assert gpu_info.is_gpu_available() is True
    fake_smi("")  # nvidia-smi runs but lists no GPU
    assert gpu_info.is_gpu_available() is False
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert gpu_info.is_gpu_available() is False


def test_get_gpus_places_workers_on_groups_of_free_gpus(fake_smi):
    fake_smi("0, 0, 16384\n1, 9000, 16384\n2, 0, 16384\n3, 12, 16384\n4, 0, 16384\n")  # GPU 1 is busy
    assert gpu_info.get_gpus(1, 0) == "0"
    assert gpu_info.get_gpus(1, 2) == "3"
    assert gpu_info.get_gpus(1, 5) == "2"  # wraps around the 4 free GPUs
    assert gpu_info.get_gpus(2, 1) == "3,4"
    assert gpu_info.get_gpus(2, 3, format=gpu_info.AS_LIST) == ["3", "4"]  # TFoS gave [] here
    assert gpu_info.get_gpus(0, 2) == ""
    chosen = gpu_info.get_gpus(3, format=gpu_info.AS_LIST)  # worker_index -1: any free ones
    assert len(chosen) == 3 and set(chosen) <= {"0", "2", "3", "4"}
    with pytest.raises(TFOSConfigError, match="AS_STRING or gpu_info.AS_LIST"):
        gpu_info.get_gpus(1, 0, format="csv")


def test_get_gpus_asks_again_then_names_the_busy_gpus(fake_smi, monkeypatch):
    waits = []
    monkeypatch.setattr(gpu_info, "_sleep", waits.append)
    fake_smi("0, 15000, 16384\n1, 0, 16384\n")
    with pytest.raises(TFOSError, match=r"needed 2 free GPU\(s\) but found 1 of 2 after 3 retries; busy .*'0 "):
        gpu_info.get_gpus(2, 0)
    assert waits == [30, 60, 90]


def test_get_gpus_succeeds_when_a_gpu_frees_up(fake_smi, monkeypatch):
    waits = []
    monkeypatch.setattr(gpu_info, "_sleep", waits.append)
    runs = fake_smi("0, 15000, 16384\n", later="0, 0, 16384\n")
    assert gpu_info.get_gpus(1, 0) == "0"
    assert waits == [30] and runs.read_text().strip() == "2"


# ---- marker ----------------------------------------------------------------------------------

def test_markers_are_plain_classes_that_survive_pickling():
    end = marker.EndPartition()
    assert isinstance(end, marker.Marker) and not isinstance(marker.Marker(), marker.EndPartition)
    back = pickle.loads(pickle.dumps(end))
    assert back == end and type(back) is marker.EndPartition and back != marker.Marker()
    assert repr(end) == "EndPartition()" and len({end, back}) == 1


# ---- TFSparkNode -----------------------------------------------------------------------------

def test_tfsparknode_context_from_tfos_arguments_feeds_from_a_hand_driven_manager(tmp_path):
    mgr = TFManager.start(b"key", ["input", "output"])
    ctx = TFSparkNode.TFNodeContext(2, "worker", 1, {"chief": ["h:1"], "worker": ["h:2", "h:3"], "ps": ["h:4"]},
                                    "file://", str(tmp_path), mgr)
    assert (ctx.executor_id, ctx.worker_num, ctx.job_name, ctx.task_index, ctx.num_workers) == (2, 2, "worker", 1, 3)
    assert ctx.defaultFS == "file://" and ctx.mgr is mgr
    assert ctx.absolute_path("model") == f"file://{tmp_path}/model"
    for row in ((1.0,), (2.0,), (3.0,)):
        mgr.get_queue("input").put(row)
    mgr.get_queue("input").put(None)
    feed = ctx.get_data_feed()
    assert [float(r[0]) for r in feed.next_batch(10)] == [1.0, 2.0, 3.0]
    with pytest.raises(TFOSConfigError, match="DataFeed needs ctx.mgr"):
        TFSparkNode.TFNodeContext().get_data_feed()
    with pytest.raises(TFOSConfigError, match="start_cluster_server.*MultiWorkerMirroredStrategy"):
        ctx.start_cluster_server()
    with pytest.raises(TFOSConfigError, match="export_saved_model.*compat.export_saved_model"):
        ctx.export_saved_model(None, str(tmp_path), "serve", {})


@pytest.mark.parametrize(("call", "replacement"), [
    (lambda: TFSparkNode.run(print, [], {}, False, None, ["input"], False), "TFCluster.run"),
    (lambda: TFSparkNode.train([], {}), "cluster.train"),
    (lambda: TFSparkNode.inference([]), "cluster.inference"),
    (lambda: TFSparkNode.shutdown([]), "cluster.shutdown"),
    (lambda: TFSparkNode.TFSparkNode.mgr, "ctx.mgr"),
    (lambda: TFSparkNode.TFSparkNode.cluster_id, "TFCluster"),
])
def test_tfsparknode_internals_name_their_tfcluster_replacement(call, replacement):
    with pytest.raises(TFOSConfigError, match=replacement) as info:
        call()
    assert isinstance(info.value, UnsupportedNameError)
    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args  # it may cross from an executor


def test_tf_version_comes_from_package_metadata_without_importing_tensorflow():
    assert pipeline.TF_VERSION == TFSparkNode.TF_VERSION == metadata.version("tensorflow")


# ---- pipeline --------------------------------------------------------------------------------

def test_param_mixins_build_estimators_and_are_the_bases_of_tfoss_classes():
    class MyEstimator(pipeline.TFParams, pipeline.HasBatchSize, pipeline.HasSteps, pipeline.HasNumPS,
                      pipeline.HasSignatureDefKey):
        def __init__(self, args):
            super().__init__()
            self.args = pipeline.Namespace(args)
            self._setDefault(batch_size=100, steps=1000, num_ps=0, driver_ps_nodes=False)

    est = MyEstimator({"lr": 0.1}).setBatchSize(32).setSteps(5).setNumPS(1).setDriverPSNodes(False)
    merged = est.merge_args_params()
    assert (merged.lr, merged.batch_size, merged.steps, merged.num_ps, merged.signature_def_key) == \
        (0.1, 32, 5, 1, "serving_default")
    assert sorted(p.name for p in est.params) == ["batch_size", "driver_ps_nodes", "num_ps", "signature_def_key",
                                                  "steps"]
    for cls in (pipeline.HasInputMapping, pipeline.HasClusterSize, pipeline.HasEpochs, pipeline.HasReaders,
                pipeline.HasSteps, pipeline.HasTFRecordDir, pipeline.HasTensorboard, pipeline.HasGraceSecs):
        assert isinstance(pipeline.TFEstimator(print, {}), cls)
    for cls in (pipeline.HasOutputMapping, pipeline.HasSignatureDefKey, pipeline.HasTagSet, pipeline.HasExportDir):
        assert isinstance(pipeline.TFModel({}), cls)
    from tfos.ml import TFEstimator as NativeEstimator
    from tfos.ml import TFParams as NativeParams

    assert pipeline.HasBatchSize.batch_size is NativeParams.batch_size  # one definition of each param
    assert pipeline.HasSteps.steps is NativeEstimator.steps
    assert isinstance(pipeline.TFEstimator(print, {}), pipeline.TFParams) and not pipeline.TFParams().params
    assert pipeline.HasInputMode().setInputMode(1).getInputMode() == 1


def test_tf_type_converter_takes_dicts_only():
    assert pipeline.TFTypeConverters.toDict({"x": 1}) == {"x": 1}
    with pytest.raises(TypeError, match="to a dict"):
        pipeline.TFTypeConverters.toDict([("x", 1)])


def test_yield_batch_groups_rows_into_columns_and_stops_at_none():
    rows = [(i, bytearray(b"r%d" % i)) for i in range(5)] + [None, (9, b"late")]
    assert list(pipeline.yield_batch(rows, 2, 2)) == [
        [[0, 1], [b"r0", b"r1"]], [[2, 3], [b"r2", b"r3"]], [[4], [b"r4"]]]
    assert list(pipeline.yield_batch([], 3)) == []
    assert list(pipeline.yield_batch([(1,), (2,)], 2)) == [[[1, 2]]]


def test_pipeline_single_node_env_sets_argv_and_gpus(no_smi, cuda_env, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog"])
    pipeline.single_node_env(["train.py", "--epochs", "2"])
    assert sys.argv == ["train.py", "--epochs", "2"] and os.environ["CUDA_VISIBLE_DEVICES"] == ""
    pipeline.single_node_env(pipeline.Namespace(["other.py"]))
    assert sys.argv == ["other.py"]
    pipeline.single_node_env(argparse.Namespace(num_gpus=0))
    assert sys.argv == ["other.py"]


def test_pipeline_inference_cache_globals_name_the_replacement():
    for name in ("pred_fn", "global_model", "global_args", "global_sess"):
        assert name in dir(pipeline) and not hasattr(pipeline, name)
        with pytest.raises(TFOSConfigError, match=f"pipeline.{name}. .*tf.saved_model.load"):
            getattr(pipeline, name)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        pipeline.nonsense  # noqa: B018
