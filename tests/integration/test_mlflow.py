"""MLflow tracking of whole clusters against a real tracking server (``tfos.run(mlflow=...)``).

The module's fixture starts ``mlflow server`` on 127.0.0.1 (a free port) with a SQLite
backend store and a local artifact destination, and stops it after. Each test logs to an
experiment of its own, so "one run per job" counts that experiment's runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

import tfos
from tests.integration.conftest import free_port

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with open(root / "server.log", "wb") as out:
        server = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--host", "127.0.0.1", "--port",
             str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts")],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn workers
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


@pytest.fixture
def experiment(tracking_uri, request, monkeypatch):
    """An experiment of this test's own on the test server; its id."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.set_experiment(f"{request.node.name}-{time.time_ns()}").experiment_id


def the_run(experiment_id):
    """The experiment's only run."""
    runs = mlflow.MlflowClient().search_runs([experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def history(run_id, key) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run_id, key))


# ---- metrics once per step, params, an active run -----------------------------------------------
def report_steps(args, ctx):
    import time

    for step in range(1, args["steps"] + 1):
        scale = 0.1 if ctx.job_name == "chief" else 0.01
        ctx.report(step=step, loss=step * scale, phase="train")
        time.sleep(0.7)  # past the node's 0.5 s report throttle: the driver sees every step


def test_active_run_gets_one_run_of_two_nodes_with_every_step_once(sc, experiment, no_leftovers):
    args = {"steps": 4, "lr": 0.05, "name": "digits", "layers": [64, 10]}
    with mlflow.start_run() as active:
        with tfos.run(sc, report_steps, args, 2, reservation_timeout=120) as cluster:
            assert cluster.mlflow_run_id == active.info.run_id
        # the user's run stays theirs: open, and active, after the cluster stopped
        assert mlflow.active_run().info.run_id == active.info.run_id
        assert mlflow.get_run(active.info.run_id).info.status == "RUNNING"
    run = the_run(experiment)
    assert run.info.run_id == active.info.run_id
    # the chief's metrics under their own names, the worker's under its node id, each step once
    assert history(run.info.run_id, "loss") == [(s, pytest.approx(s * 0.1)) for s in range(1, 5)]
    assert history(run.info.run_id, "worker_0/loss") == [(s, pytest.approx(s * 0.01)) for s in range(1, 5)]
    assert "phase" not in run.data.metrics  # strings are not metrics
    params = run.data.params
    assert params["tfos.num_executors"] == "2" and params["tfos.roles"] == "chief + 1 worker"
    assert params["tfos.input_mode"] == "TENSORFLOW" and params["tfos.keras"] == "default (tf-keras)"
    assert (params["args.lr"], params["args.name"], params["args.steps"]) == ("0.05", "digits", "4")
    assert "args.layers" not in params  # plain values only
    assert run.data.tags["tfos.state"] == "stopped" and "chief" in run.data.tags["tfos.nodes"]
    for node in ("chief_0", "worker_0"):
        assert run.data.metrics[f"system/{node}/rss_bytes"] > 10 << 20
        assert f"system/{node}/rows_per_sec" in run.data.metrics


def test_no_run_without_mlflow_asked_or_active(sc, experiment, no_leftovers):
    with tfos.run(sc, report_steps, {"steps": 1}, 2, reservation_timeout=120) as cluster:
        assert cluster.mlflow_run_id is None
    assert mlflow.MlflowClient().search_runs([experiment]) == []


# ---- restarts and failures as tags ----------------------------------------------------------------
def fail_on_chief(args, ctx):
    import os
    import time

    if ctx.job_name != "chief":
        time.sleep(60)  # stopped by the driver when the cluster fails
        return
    attempt = len(os.listdir(args["out"])) + 1
    open(os.path.join(args["out"], f"attempt-{attempt}"), "w").close()
    ctx.report(step=attempt, attempt=attempt)
    raise ValueError(f"boom on attempt {attempt}")


def test_restarts_and_failures_become_tags_of_a_failed_run(sc, experiment, tmp_path, no_leftovers):
    cluster = tfos.run(sc, fail_on_chief, {"out": str(tmp_path)}, 2, reservation_timeout=120, max_restarts=1,
                       mlflow=True)
    with pytest.raises(tfos.NodeError, match="boom on attempt 2"):
        cluster.shutdown()
    run = the_run(experiment)
    assert run.info.run_id == cluster.mlflow_run_id and run.info.status == "FAILED"
    tags = run.data.tags
    assert tags["tfos.restarts"] == "1" and tags["tfos.failures"] == "2" and tags["tfos.state"] == "failed"
    assert "boom on attempt 1" in tags["tfos.failure.1"] and "chief:0" in tags["tfos.failure.1"]
    assert "boom on attempt 2" in tags["tfos.failure.2"] and "boom on attempt 2" in tags["tfos.failure"]
    assert "tfos.model" not in tags  # a failed run logs no model
    assert history(run.info.run_id, "attempt") == [(1, 1.0), (2, 2.0)]  # a step per generation


# ---- the chief's model: Keras 3 and tf-keras, loaded back and scored by spark_udf -----------------
def toy_data(n: int = 512):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64") + (x[:, 2] > 1).astype("int64")
    return x, y


def keras3_fun(args, ctx):
    import os

    import keras
    import tensorflow as tf

    import tfos.keras

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(1)
    with strategy.scope():
        model = keras.Sequential([keras.Input(shape=(4,), name="features"), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(3, name="logits")])
        model.compile(optimizer=keras.optimizers.Adam(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    dataset = ctx.get_data_feed().as_dataset(32)
    tfos.keras.fit(model, dataset, epochs=args["epochs"], verbose=0,
                   callbacks=[tfos.keras.progress_callback(ctx, every_secs=0)])
    if ctx.job_name == "chief":
        model.save(os.path.join(ctx.export_dir, "model.keras"))


def tf_keras_fun(args, ctx):
    import os
    import tempfile

    import tensorflow as tf

    import tfos.keras

    x, y = args["data"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    tf.keras.utils.set_random_seed(1)
    with strategy.scope():
        model = tf.keras.Sequential([tf.keras.Input(shape=(4,), name="features"),
                                     tf.keras.layers.Dense(8, activation="relu"), tf.keras.layers.Dense(3)])
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    assert "tf_keras" in type(model).__module__, type(model).__module__
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    model.fit(dataset, epochs=args["epochs"], verbose=0, callbacks=[tfos.keras.progress_callback(ctx, every_secs=0)])
    if ctx.job_name == "chief":
        model.save(os.path.join(ctx.export_dir, "model.keras"))
    else:  # every worker saves under MultiWorkerMirroredStrategy; only the chief's copy is kept
        with tempfile.TemporaryDirectory() as tmp:
            model.save(os.path.join(tmp, "model.keras"))


def check_logged_model(sc, cluster, local_model, flavor: str) -> None:
    """The run's model loads back through pyfunc and scores a DataFrame through spark_udf, as the chief's file."""
    from pyspark.sql import SparkSession

    run = mlflow.get_run(cluster.mlflow_run_id)
    assert run.data.tags["tfos.model_flavor"] == flavor and run.data.tags["tfos.model"] == cluster.mlflow_model_uri
    x, _ = toy_data(64)
    expected = local_model.predict(x, verbose=0)
    model = mlflow.pyfunc.load_model(cluster.mlflow_model_uri)
    assert flavor in model.metadata.flavors
    inputs = model.metadata.get_input_schema().inputs
    assert [tuple(spec.shape) for spec in inputs] == [(-1, 4)]
    np.testing.assert_allclose(np.asarray(model.predict(x)), expected, atol=1e-5)
    spark = SparkSession(sc)
    df = spark.createDataFrame([(i, row.tolist()) for i, row in enumerate(x)], "id long, features array<float>")
    udf = mlflow.pyfunc.spark_udf(spark, cluster.mlflow_model_uri, result_type="array<float>")
    scored = sorted(df.withColumn("logits", udf("features")).select("id", "logits").collect())
    np.testing.assert_allclose(np.array([r.logits for r in scored]), expected, atol=1e-5)


def check_steps(cluster, last_step: int | None = None) -> None:
    """Every step the driver saw is logged once, in order, up to each node's last; the worker's under its id."""
    reported = cluster.metrics()
    last_step = last_step or reported["chief:0"]["step"]
    assert reported["chief:0"]["step"] == last_step
    for key in ("loss", "accuracy", "epoch", "worker_0/loss"):
        logged = history(cluster.mlflow_run_id, key)
        steps = [step for step, _ in logged]
        assert steps == sorted(set(steps)) and steps[-1] == last_step and len(steps) > 1, (key, steps)
    assert history(cluster.mlflow_run_id, "loss")[-1][1] == pytest.approx(reported["chief:0"]["loss"])


def test_keras3_spark_fed_model_is_logged_loaded_and_scored(sc, experiment, tmp_path, no_leftovers):
    import keras
    from pyspark.sql import SparkSession

    x, y = toy_data()
    df = SparkSession(sc).createDataFrame([(r.tolist(), int(t)) for r, t in zip(x, y)],
                                          "features array<float>, label long")
    epochs = 3
    with tfos.run(sc, keras3_fun, {"epochs": epochs}, 2, input_mode=tfos.InputMode.SPARK, keras=3,
                  reservation_timeout=120, export_dir=str(tmp_path / "export"), mlflow=True) as cluster:
        cluster.train(df, num_epochs=epochs)
    run = the_run(experiment)
    assert run.info.status == "FINISHED" and run.info.run_id == cluster.mlflow_run_id
    assert run.data.params["tfos.keras"] == "keras3" and run.data.params["tfos.input_mode"] == "SPARK"
    check_steps(cluster, last_step=epochs * (len(x) // 2 // 32))  # balanced epochs: 256 rows a worker
    assert run.data.metrics["system/chief_0/rows_fed"] > 0
    check_logged_model(sc, cluster, keras.saving.load_model(str(tmp_path / "export" / "model.keras")), "keras")


def test_tf_keras_model_is_logged_loaded_and_scored(sc, experiment, tmp_path, no_leftovers):
    import tf_keras

    epochs = 3
    with tfos.run(sc, tf_keras_fun, {"epochs": epochs, "data": toy_data()}, 2, keras=2, reservation_timeout=120,
                  export_dir=str(tmp_path / "export"), mlflow=True) as cluster:
        pass
    run = the_run(experiment)
    assert run.info.status == "FINISHED" and run.data.params["tfos.keras"] == "tf-keras"
    check_steps(cluster)
    local = tf_keras.models.load_model(str(tmp_path / "export" / "model.keras"), compile=False)
    check_logged_model(sc, cluster, local, "tensorflow")


# ---- TFEstimator.fit inside an active run ------------------------------------------------------------
def fit_linear(args, ctx):
    """A TensorFlowOnSpark-style train_fn: fits y = 2a - 3b + 1 and saves a SavedModel to args.export_dir."""
    import tempfile

    import tensorflow as tf

    import tfos.keras

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = tf.keras.Sequential([tf.keras.Input(shape=(2,), name="x"), tf.keras.layers.Dense(1, name="y")])
        model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    feed = ctx.get_data_feed(input_mapping=args.input_mapping)
    dataset = feed.as_dataset(args.batch_size * ctx.num_workers).map(lambda d: (d["x"], d["y_true"]))
    model.fit(dataset, epochs=args.epochs, verbose=0, callbacks=[tfos.keras.progress_callback(ctx, every_secs=0)])
    model.save(args.export_dir if ctx.job_name == "chief" else tempfile.mkdtemp(), save_format="tf")


def test_estimator_fit_logs_to_the_active_run(sc, experiment, tmp_path, no_leftovers):
    import tf_keras
    from pyspark.sql import SparkSession

    from tfos.ml import TFEstimator

    rng = np.random.default_rng(0)
    rows = [(float(a), float(b), float(2 * a - 3 * b + 1)) for a, b in rng.uniform(-1, 1, size=(400, 2))]
    df = SparkSession(sc).createDataFrame(rows, ["a", "b", "label"]).selectExpr("array(a, b) AS features", "label")
    estimator = (TFEstimator(fit_linear, {"note": "kept"}).setInputMapping({"features": "x", "label": "y_true"})
                 .setClusterSize(2).setEpochs(5).setBatchSize(16).setExportDir(str(tmp_path / "export"))
                 .setGraceSecs(0))
    with mlflow.start_run() as active:
        estimator.fit(df)
    run = the_run(experiment)
    assert run.info.run_id == active.info.run_id
    params = run.data.params
    assert (params["args.epochs"], params["args.batch_size"], params["args.note"]) == ("5", "16", "kept")
    assert params["tfos.input_mode"] == "SPARK" and params["tfos.num_executors"] == "2"
    steps = [step for step, _ in history(run.info.run_id, "loss")]
    assert steps and steps == sorted(set(steps))
    assert run.data.tags["tfos.model_flavor"] == "tensorflow"
    x = rng.uniform(-1, 1, size=(8, 2)).astype("float32")
    predicted = np.asarray(mlflow.pyfunc.load_model(run.data.tags["tfos.model"]).predict(x))
    local = tf_keras.models.load_model(str(tmp_path / "export"), compile=False).predict(x, verbose=0)
    np.testing.assert_allclose(predicted, local, atol=1e-5)  # the chief's SavedModel, as logged


# ---- CrossValidator: each trial a child run ----------------------------------------------------------
def cv_train_fn(args, ctx):
    """A linear fit reporting its last loss; saves its model where its trial's export_dir says."""
    import tensorflow as tf

    feed = ctx.get_data_feed(input_mapping=args.input_mapping)
    model = tf.keras.Sequential([tf.keras.Input(shape=(2,), name="x"), tf.keras.layers.Dense(1, name="y")])
    model.compile(optimizer=tf.keras.optimizers.SGD(args.learning_rate), loss="mse")
    history = model.fit(feed.as_dataset(16).map(lambda d: (d["x"], d["y"])), epochs=args.epochs, verbose=0)
    ctx.report(step=args.epochs, loss=history.history["loss"][-1])
    model.save(args.export_dir)


def test_cross_validator_trials_become_child_runs(sc, experiment, tmp_path, no_leftovers):
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
    from pyspark.sql import SparkSession

    from tests.integration.test_dlp_tuning import RMSE, frame
    from tfos.ml import TFEstimator

    est = (TFEstimator(cv_train_fn, {"learning_rate": 0.01}).setInputMapping({"x": "x", "y": "y"})
           .setModelInputMapping({"x": "x"}).setOutputMapping({"y": "prediction"})
           .setExportDir(str(tmp_path / "model.keras")).setEpochs(2))
    lr = est.argParam("learning_rate")
    grid = ParamGridBuilder().addGrid(lr, [0.01, 0.1]).build()
    cv = CrossValidator(estimator=est, estimatorParamMaps=grid, evaluator=RMSE.make(), numFolds=2, seed=1)
    with mlflow.start_run() as parent:
        cv.fit(frame(SparkSession(sc)))
    client = mlflow.MlflowClient()
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4  # 2 folds x 2 grid points, trained as parallel single-node trials
    assert len(client.search_runs([experiment])) == 5  # and nothing else but the parent
    assert sorted(r.data.params["learning_rate"] for r in children) == ["0.01", "0.01", "0.1", "0.1"]
    for child in children:
        assert child.info.status == "FINISHED" and child.data.params["args.epochs"] == "2"
        assert child.data.metrics["loss"] > 0 and child.data.tags["tfos.model_flavor"] == "tensorflow"
        assert child.data.tags["tfos.model"].startswith("models:/")
    # the best grid point's refit on all the data is a tfos cluster, tracked in the parent run itself
    refit = client.get_run(parent.info.run_id)
    assert refit.data.params["tfos.num_executors"] == "1" and "tfos.model" in refit.data.tags
    assert "loss" in refit.data.metrics
