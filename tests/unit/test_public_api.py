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
