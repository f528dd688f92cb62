"""A real Spark Connect server for the Connect tests: its own JVM, over local-cluster[2,1,1024].

The server runs the same settings as the classic tests' SparkContext; the tests connect
to it with ``SparkSession.builder.remote(...)`` as a notebook would, so the test process
holds no SparkContext and no JVM of its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import free_port, spark_conf


def _spark_home() -> str:
    import pyspark

    return os.path.dirname(pyspark.__file__)


@pytest.fixture(scope="package")
def connect_server(tmp_path_factory):
    """(URL, log path) of a Spark Connect server on 127.0.0.1, stopped after the package's tests."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("connect") / "server.log"
    conf = dict(spark_conf("local-cluster[2,1,1024]").getAll())
    conf.update({"spark.connect.grpc.binding.address": "127.0.0.1", "spark.connect.grpc.binding.port": str(port)})
    argv = [os.path.join(_spark_home(), "bin", "spark-submit"), "--class",
            "org.apache.spark.sql.connect.service.SparkConnectServer", "--name", "tfos-connect-tests"]
    for key, value in conf.items():
        argv += ["--conf", f"{key}={value}"]
    env = dict(os.environ, SPARK_HOME=_spark_home(), PYSPARK_PYTHON=sys.executable)
    with open(log_path, "wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the Spark Connect server exited: {log_path.read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Spark Connect server did not listen: {log_path.read_text()[-3000:]}") \
                        from None
                time.sleep(0.5)
        yield f"sc://127.0.0.1:{port}", log_path
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()


@pytest.fixture(scope="package")
def spark(connect_server):
    """A Spark Connect session, made as a user makes one; both executors up."""
    from pyspark.sql import SparkSession

    had_mode = "SPARK_CONNECT_MODE_ENABLED" in os.environ
    session = SparkSession.builder.remote(connect_server[0]).getOrCreate()
    session.range(0, 2, 1, 2).count()
    yield session
    session.stop()
    if not had_mode:  # the builder turns the whole process to Connect mode; later classic tests need it off
        os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)
