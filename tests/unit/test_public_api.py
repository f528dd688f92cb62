import pickle
import subprocess
import sys

import tfos
from tfos import errors


def test_all_is_sorted_and_complete():
    assert tfos.__all__ == sorted(tfos.__all__)
    for name in tfos.__all__:
        assert hasattr(tfos, name), name


def test_import_tfos_does_not_import_tensorflow_or_spark():
    code = "import sys, tfos; print(sorted(m for m in ('tensorflow', 'pyspark', 'keras') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_errors_keep_fields_across_pickle():
    err = tfos.NodeError("main_fun failed on worker:1", job_name="worker", task_index=1, host="h",
                         remote_traceback="Traceback ...")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is tfos.NodeError
    assert str(back) == "main_fun failed on worker:1"
    assert (back.job_name, back.task_index, back.host, back.remote_traceback) == ("worker", 1, "h", "Traceback ...")


def test_error_tree():
    for cls in (errors.TFOSConfigError, errors.ReservationTimeoutError, errors.NodeError, errors.NodeFailedError,
                errors.FeedTimeoutError, errors.FeedDataError, errors.AuthError, errors.ProtocolError):
        assert issubclass(cls, tfos.TFOSError)
    assert issubclass(errors.TFOSConfigError, ValueError)
    assert issubclass(errors.ReservationTimeoutError, TimeoutError)
    assert issubclass(errors.FeedTimeoutError, TimeoutError)


# Every public module of TensorFlowOnSpark 2.2.5 and its public names (module-level names without a leading
# underscore that the module defines itself, read from the wheel on PyPI; its __init__ only sets __version__).
TFOS_NAMES = {
    "TFCluster": ["InputMode", "TFCluster", "logger", "run", "tf_status"],
    "TFManager": ["TFManager", "connect", "kdict", "mgr", "qdict", "start"],
    "TFNode": ["DataFeed", "TF_VERSION", "batch_results", "export_saved_model", "hdfs_path", "logger", "next_batch",
               "release_port", "start_cluster_server", "terminate"],
    "TFParallel": ["logger", "run"],
    "TFSparkNode": ["TFNodeContext", "TFSparkNode", "TF_VERSION", "inference", "logger", "run", "shutdown", "train"],
    "compat": ["disable_auto_shard", "export_saved_model", "is_gpu_available"],
    "dfutil": ["fromTFExample", "infer_schema", "isLoadedDF", "loadTFRecords", "loadedDF", "saveAsTFRecords",
               "toTFExample"],
    "gpu_info": ["AS_LIST", "AS_STRING", "MAX_RETRIES", "get_gpus", "is_gpu_available", "logger"],
    "marker": ["EndPartition", "Marker"],
    "pipeline": ["HasBatchSize", "HasClusterSize", "HasEpochs", "HasExportDir", "HasGraceSecs", "HasInputMapping",
                 "HasInputMode", "HasMasterNode", "HasModelDir", "HasNumPS", "HasOutputMapping", "HasProtocol",
                 "HasReaders", "HasSignatureDefKey", "HasSteps", "HasTFRecordDir", "HasTagSet", "HasTensorboard",
                 "Namespace", "TFEstimator", "TFModel", "TFParams", "TFTypeConverters", "TF_VERSION",
                 "get_meta_graph_def", "global_args", "global_model", "global_sess", "logger", "pred_fn",
                 "single_node_env", "yield_batch"],
    "reservation": ["BUFSIZE", "Client", "MAX_RETRIES", "MessageSocket", "Reservations", "Server",
                    "TFOS_SERVER_HOST", "TFOS_SERVER_PORT", "logger"],
    "util": ["find_in_path", "get_ip_address", "logger", "read_executor_id", "single_node_env", "write_executor_id"],
}

KNOWN_GAPS: dict[str, set[str]] = {}  # names a module still lacks


def test_compat_has_every_tensorflowonspark_module():
    import importlib
    import pkgutil

    import tfos.compat

    assert len(TFOS_NAMES) == 12
    present = {m.name for m in pkgutil.iter_modules(tfos.compat.__path__) if not m.name.startswith("_")}
    assert sorted(set(TFOS_NAMES) - present) == []
    for module in TFOS_NAMES:
        assert importlib.import_module(f"tfos.compat.{module}").__name__ == f"tfos.compat.{module}"


def test_compat_has_every_tensorflowonspark_name():
    """Each name exists: as a value, or (TFoS internals) refused on access with an error naming the replacement."""
    import importlib

    from tfos.compat._unsupported import UnsupportedNameError

    missing = {}
    for module, names in TFOS_NAMES.items():
        mod = importlib.import_module(f"tfos.compat.{module}")
        absent = {n for n in names if n not in dir(mod)}
        if absent:
            missing[module] = absent
        for name in set(names) - absent:
            try:
                getattr(mod, name)
            except UnsupportedNameError as exc:
                assert isinstance(exc, errors.TFOSConfigError) and "tfos" in str(exc), (module, name)
    assert missing == KNOWN_GAPS


# The public methods of TensorFlowOnSpark 2.2.5's public classes, with their own and inherited-from-TFoS methods (read
# from the wheel): required positional parameters, then "name=" for those with defaults. TFManager's are the ones
# TFoS registered on its BaseManager. reservation.MessageSocket itself is refused by name (above); the pickled
# receive / send that Server and Client inherited from it are refused by call.
_HAS = ("BatchSize", "ClusterSize", "Epochs", "ExportDir", "GraceSecs", "InputMapping", "InputMode", "MasterNode",
        "ModelDir", "NumPS", "OutputMapping", "Protocol", "Readers", "Steps", "Tensorboard", "TFRecordDir",
        "SignatureDefKey", "TagSet")
_ESTIMATOR = ("InputMapping", "ClusterSize", "NumPS", "DriverPSNodes", "InputMode", "MasterNode", "Protocol",
              "GraceSecs", "Tensorboard", "ModelDir", "ExportDir", "TFRecordDir", "BatchSize", "Epochs", "Readers",
              "Steps")
_MODEL = ("InputMapping", "OutputMapping", "BatchSize", "ModelDir", "ExportDir", "SignatureDefKey", "TagSet")


def _accessors(*suffixes: str) -> dict[str, str]:
    return {name: ("value" if name.startswith("set") else "") for s in suffixes for name in (f"set{s}", f"get{s}")}


TFOS_METHODS: dict[tuple[str, str], dict[str, str]] = {
    ("TFCluster", "TFCluster"): {"train": "dataRDD num_epochs= feed_timeout= qname=",
                                 "inference": "dataRDD feed_timeout= qname=", "shutdown": "ssc= grace_secs= timeout=",
                                 "tensorboard_url": ""},
    ("TFManager", "TFManager"): {"get_queue": "qname", "get": "key", "set": "key value"},
    ("TFNode", "DataFeed"): {"__init__": "mgr train_mode= qname_in= qname_out= input_mapping=",
                             "next_batch": "batch_size", "should_stop": "", "batch_results": "results",
                             "terminate": ""},
    ("TFSparkNode", "TFNodeContext"): {
        "__init__": "executor_id= job_name= task_index= cluster_spec= defaultFS= working_dir= mgr= tmp_socket=",
        "absolute_path": "path", "start_cluster_server": "num_gpus= rdma=",
        "export_saved_model": "sess export_dir tag_set signatures",
        "get_data_feed": "train_mode= qname_in= qname_out= input_mapping=", "release_port": ""},
    ("pipeline", "TFTypeConverters"): {"toDict": "value"},  # a staticmethod in TFoS (no self)
    **{("pipeline", f"Has{s}"): {"__init__": "", **_accessors(s, *(("DriverPSNodes",) if s == "NumPS" else ()))}
       for s in _HAS},
    ("pipeline", "Namespace"): {"__init__": "d"},
    ("pipeline", "TFParams"): {"merge_args_params": ""},
    ("pipeline", "TFEstimator"): {"__init__": "train_fn tf_args export_fn=", "merge_args_params": "",
                                  **_accessors(*_ESTIMATOR)},
    ("pipeline", "TFModel"): {"__init__": "tf_args", "merge_args_params": "", **_accessors(*_MODEL)},
    ("reservation", "Reservations"): {"__init__": "required", "add": "meta", "done": "", "get": "", "remaining": ""},
    ("reservation", "Server"): {"__init__": "count", "await_reservations": "sc status= timeout=", "start": "",
                                "get_server_ip": "", "get_server_ports": "", "start_listening_socket": "",
                                "stop": "", "receive": "sock", "send": "sock msg"},
    ("reservation", "Client"): {"__init__": "server_addr", "close": "", "register": "reservation",
                                "get_reservations": "", "await_reservations": "", "request_stop": "",
                                "receive": "sock", "send": "sock msg"},
}


def test_compat_classes_have_every_tensorflowonspark_method():
    """Each TFoS method exists and accepts TFoS's call, or (a refused one) raises an error naming the replacement."""
    import importlib
    import inspect

    from tfos.compat._unsupported import UnsupportedNameError

    assert len(TFOS_METHODS) == 30
    problems = []
    for (module, cls_name), methods in TFOS_METHODS.items():
        cls = getattr(importlib.import_module(f"tfos.compat.{module}"), cls_name)
        for name, params in methods.items():
            method = inspect.getattr_static(cls, name, None)
            if method is None or not callable(getattr(cls, name)):
                problems.append(f"{module}.{cls_name}.{name}: missing")
                continue
            positional = [p for p in params.split() if not p.endswith("=")]
            keywords = {p[:-1]: object() for p in params.split() if p.endswith("=")}
            args = [object() for _ in positional]
            if getattr(method, "tfos_refused", False):
                try:
                    method(object(), *args, **keywords)
                except UnsupportedNameError as exc:
                    assert "tfos" in str(exc), (module, cls_name, name)
                else:
                    problems.append(f"{module}.{cls_name}.{name}: a refused method that did not raise")
                continue
            bound = isinstance(method, staticmethod)
            try:
                inspect.signature(getattr(cls, name)).bind(*([] if bound else [object()]), *args, **keywords)
            except TypeError as exc:
                problems.append(f"{module}.{cls_name}.{name}({params}): {exc}")
    assert problems == []


def test_compat_classes_keep_tensorflowonspark_spark_bases():
    """TFoS's pipeline classes were Spark ML ones: their inherited methods (fit, transform, copy, ...) stay."""
    from pyspark.ml import Estimator, Model
    from pyspark.ml.param import Params

    from tfos.compat import pipeline

    assert issubclass(pipeline.TFEstimator, Estimator) and issubclass(pipeline.TFModel, Model)
    for name in ("TFParams", *(f"Has{s}" for s in _HAS)):
        assert issubclass(getattr(pipeline, name), Params), name


def test_compat_star_imports_and_no_tensorflow_at_import():
    code = ("import importlib, sys\n"
            f"for m in {sorted(TFOS_NAMES)!r}:\n"
            "    exec(f'from tfos.compat.{m} import *')\n"
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_compat_estimator_and_model_have_tensorflowonspark_setters():
    from tfos.compat.pipeline import TFEstimator, TFModel

    for suffix in ("BatchSize", "ClusterSize", "Epochs", "ExportDir", "GraceSecs", "InputMapping", "InputMode",
                   "MasterNode", "ModelDir", "NumPS", "DriverPSNodes", "Protocol", "Readers", "Steps", "Tensorboard",
                   "TFRecordDir"):
        assert callable(getattr(TFEstimator, f"set{suffix}")) and callable(getattr(TFEstimator, f"get{suffix}"))
    for suffix in ("BatchSize", "ExportDir", "InputMapping", "ModelDir", "OutputMapping", "SignatureDefKey", "TagSet"):
        assert callable(getattr(TFModel, f"set{suffix}")) and callable(getattr(TFModel, f"get{suffix}"))
    mode = TFEstimator(print, {}).setInputMode(tfos.InputMode.TENSORFLOW).getInputMode()
    assert mode == 0 and type(mode) is int  # the enum is accepted and stored as TFoS's plain int
    model = TFModel({"lr": 0.1}).setBatchSize(7).setOutputMapping({"y": "prediction"})
    args = model.merge_args_params()
    assert (args.lr, args.batch_size, args.output_mapping, args.signature_def_key) == \
        (0.1, 7, {"y": "prediction"}, "serving_default")
