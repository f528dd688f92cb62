"""tfos.compat.TFNode.hdfs_path: TensorFlowOnSpark's path rules."""

import getpass
from types import SimpleNamespace

import pytest

from tfos.compat.TFNode import hdfs_path


@pytest.mark.parametrize("path, fs, expected", [
    ("s3a://bucket/data", "hdfs://nn:8020", "s3a://bucket/data"),
    ("viewfs://cluster/x", "file://", "viewfs://cluster/x"),
    ("/abs/model", "hdfs://nn:8020", "hdfs://nn:8020/abs/model"),
    ("rel/model", "hdfs://nn:8020", f"hdfs://nn:8020/user/{getpass.getuser()}/rel/model"),
    ("rel/model", "viewfs://cluster", f"viewfs://cluster/user/{getpass.getuser()}/rel/model"),
    ("rel/model", "file://", "file:///work/dir/rel/model"),
    ("rel/model", "gs://bucket", "gs://bucket/rel/model"),
])
def test_hdfs_path(path, fs, expected):
    assert hdfs_path(SimpleNamespace(defaultFS=fs, working_dir="/work/dir"), path) == expected
