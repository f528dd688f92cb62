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


TFOS_NAMES = {  # TensorFlowOnSpark 2.2.5's public names, module by module
    "TFCluster": ["InputMode", "TFCluster", "run"],
    "TFNode": ["DataFeed", "batch_results", "hdfs_path", "next_batch", "release_port", "terminate"],
    "TFManager": ["TFManager", "connect", "start"],
    "TFParallel": ["run"],
    "reservation": ["Client", "Reservations", "Server"],
    "pipeline": ["Namespace", "TFEstimator", "TFModel", "TFParams"],
    "dfutil": ["fromTFExample", "infer_schema", "isLoadedDF", "loadTFRecords", "saveAsTFRecords", "toTFExample"],
    "compat": ["disable_auto_shard", "export_saved_model", "is_gpu_available"],
}


def test_compat_has_every_tensorflowonspark_module_and_name():
    import importlib

    for module, names in TFOS_NAMES.items():
        mod = importlib.import_module(f"tfos.compat.{module}")
        assert [n for n in names if not hasattr(mod, n)] == [], module


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
