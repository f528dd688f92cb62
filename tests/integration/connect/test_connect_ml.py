"""tfos.ml and SQL functions from a Spark Connect session: estimator, transformers, tuning, SQL, TFRecords."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from tests.integration import test_dlp_sql
from tests.integration.test_dlp_sql import local_outputs, write_pngs
from tests.integration.test_dlp_tuning import RMSE, frame
from tests.integration.test_ml import typed_frame

models = test_dlp_sql.models  # the same tiny classifier and head, as this module's fixture


def fit_on_chief(args, ctx):
    """Spark-fed train_fn: the chief fits y = 2a - 3b + 1 on its share (plain Keras, no strategy), the
    worker drains its own; the chief saves a .keras file."""
    import keras

    feed = ctx.get_data_feed(input_mapping=args.input_mapping)
    if ctx.job_name != "chief":
        while not feed.should_stop():
            feed.next_batch(64)
        return
    model = keras.Sequential([keras.Input(shape=(2,), name="x"), keras.layers.Dense(1, name="y")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(feed.as_dataset(16).map(lambda d: (d["x"], d["y_true"])), epochs=args.epochs, verbose=0)
    model.save(args.export_dir)


def mark_exported(args):
    open(os.path.join(args.out, "exported"), "w").close()


def test_estimator_pipeline_fits_transforms_and_persists(spark, tmp_path, no_leftovers):
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import VectorAssembler

    from tfos.ml import TFEstimator, TFModel

    rng = np.random.default_rng(0)
    ab = rng.uniform(-1, 1, size=(400, 2))
    df = spark.createDataFrame([(float(a), float(b), float(2 * a - 3 * b + 1)) for a, b in ab],
                               "a double, b double, label double").repartition(2)
    export = str(tmp_path / "model.keras")
    estimator = (TFEstimator(fit_on_chief, {"out": str(tmp_path)}, export_fn=mark_exported)
                 .setInputMapping({"features": "x", "label": "y_true"}).setClusterSize(2).setEpochs(20)
                 .setExportDir(export).setGraceSecs(0))
    assembler = VectorAssembler(inputCols=["a", "b"], outputCol="features")  # a vector column, fed as an array
    fitted = Pipeline(stages=[assembler, estimator]).fit(df)
    assert os.path.exists(tmp_path / "exported")  # export_fn ran in a one-task job
    model = fitted.stages[1]
    assert isinstance(model, TFModel) and model.getExportDir() == export
    model.setInputMapping({"features": "x"}).setOutputMapping({"y": "prediction"})

    predicted = fitted.transform(df)
    assert predicted.columns == ["a", "b", "label", "features", "prediction"]
    rows = predicted.collect()
    got = np.array([r.prediction[0] for r in rows])
    truth = np.array([2 * r.a - 3 * r.b + 1 for r in rows])
    np.testing.assert_allclose(got, truth, atol=0.15)  # the executors ran the model it learned

    fitted.write().overwrite().save(str(tmp_path / "pipeline"))
    fitted.write().overwrite().save(str(tmp_path / "pipeline"))  # overwrite works on Connect too
    assert os.path.isdir(tmp_path / "pipeline" / "stages")
    again = PipelineModel.load(str(tmp_path / "pipeline"))
    reloaded = {(r.a, r.b): r.prediction[0] for r in again.transform(df).collect()}  # repartition: any order
    np.testing.assert_allclose([reloaded[(r.a, r.b)] for r in rows], got, rtol=1e-6)
    estimator.save(str(tmp_path / "estimator"))
    loaded = TFEstimator.load(str(tmp_path / "estimator"))
    assert (loaded.uid, loaded.getEpochs(), loaded.args.out, loaded.export_fn.__name__) == \
        (estimator.uid, 20, str(tmp_path), "mark_exported")


def test_featurizer_and_predictor_on_binary_files_persist_with_their_functions(spark, models, tmp_path):
    from pyspark.ml.linalg import VectorUDT

    from tfos.ml import DeepFeaturizer, DeepPredictor

    root = str(tmp_path / "images")
    pixels = write_pngs(root, 0, 6)
    probs, flat, _ = local_outputs(models, pixels)
    files = spark.read.format("binaryFile").load(root).select("path", "content").repartition(2)

    featurizer = DeepFeaturizer(inputCol="content", outputCol="features", modelPath=models[0], layer="flat",
                                batchSize=4, preprocess=lambda b: b * 1.0)
    out = featurizer.transform(files)
    assert isinstance(out.schema["features"].dataType, VectorUDT)
    got = {os.path.basename(r.path): r.features.toArray() for r in out.collect()}
    np.testing.assert_allclose([got[f"img-{k:03d}.png"] for k in range(6)], flat, rtol=1e-4, atol=1e-5)

    predictor = DeepPredictor(inputCol="content", outputCol="probs", modelPath=models[0], topK=1,
                              labels=["a", "b", "c"])
    rows = {os.path.basename(r.path): r for r in predictor.transform(files).collect()}
    order = [rows[f"img-{k:03d}.png"] for k in range(6)]
    np.testing.assert_allclose([r.probs for r in order], probs, rtol=1e-4, atol=1e-6)
    assert [r.topK[0].label for r in order] == [["a", "b", "c"][i] for i in probs.argmax(axis=1)]

    featurizer.save(str(tmp_path / "featurizer"))
    loaded = DeepFeaturizer.load(str(tmp_path / "featurizer"))
    assert loaded.getPreprocess() is not None and loaded.getModelPath() == models[0]
    again = {os.path.basename(r.path): r.features.toArray() for r in loaded.transform(files).collect()}
    np.testing.assert_allclose([again[n] for n in sorted(again)], [got[n] for n in sorted(got)], rtol=1e-6)


def linear_trial(args, ctx):
    """A fitMultiple trial: fits a linear Keras model; waits for the other trials to show they ran together."""
    import tensorflow as tf

    feed = ctx.get_data_feed(input_mapping=args.input_mapping)
    model = tf.keras.Sequential([tf.keras.Input(shape=(2,), name="x"), tf.keras.layers.Dense(1, name="y")])
    model.compile(optimizer=tf.keras.optimizers.SGD(args.learning_rate), loss="mse")
    model.fit(feed.as_dataset(16).map(lambda d: (d["x"], d["y"])), epochs=args.epochs, verbose=0)
    model.save(args.export_dir)
    met = None
    if hasattr(ctx, "trial_index"):  # a parallel trial (the final refit runs on a tfos cluster)
        os.makedirs(args.rendezvous, exist_ok=True)
        open(os.path.join(args.rendezvous, f"{args.learning_rate}-{os.getpid()}"), "w").close()
        deadline = time.monotonic() + 60
        while len(os.listdir(args.rendezvous)) % 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        met = len(os.listdir(args.rendezvous)) % 2 == 0
    with open(args.export_dir + ".json", "w") as f:
        json.dump({"lr": args.learning_rate, "met": met}, f)


def test_cross_validator_trains_the_grid_in_parallel_tasks(spark, tmp_path, no_leftovers):
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder

    from tfos.ml import TFEstimator

    est = (TFEstimator(linear_trial, {"learning_rate": 0.01, "rendezvous": str(tmp_path / "met")})
           .setInputMapping({"x": "x", "y": "y"}).setModelInputMapping({"x": "x"})
           .setOutputMapping({"y": "prediction"}).setExportDir(str(tmp_path / "model.keras")).setEpochs(3))
    lr = est.argParam("learning_rate")
    grid = ParamGridBuilder().addGrid(lr, [0.001, 0.2]).build()
    cv = CrossValidator(estimator=est, estimatorParamMaps=grid, evaluator=RMSE.make(), numFolds=2, seed=1,
                        parallelism=2)
    model = cv.fit(frame(spark))

    files = sorted(f for f in os.listdir(tmp_path) if f.endswith(".keras"))
    assert len(files) == 2 * 2 + 1, files  # 2 folds x 2 grid points, then the best refit on all the data
    records = [json.load(open(tmp_path / (f + ".json"))) for f in files]
    assert [r["met"] for r in records].count(True) == 4  # each fold's two trials ran at the same time
    assert len(model.avgMetrics) == 2 and grid[int(np.argmin(model.avgMetrics))][lr] == 0.2
    assert model.bestModel.transform(frame(spark, rows=10)).count() == 10


def test_sql_function_from_a_path_and_from_a_shipped_model_object(spark, models, tmp_path):
    import keras

    from tfos.ml import register_model_udf

    root = str(tmp_path / "images")
    pixels = write_pngs(root, 40, 5)
    probs, _, heads = local_outputs(models, pixels)
    register_model_udf(spark, "connect_probs", models[0], input="binary", batch_size=2)
    register_model_udf(spark, "connect_head", keras.models.load_model(models[1]), input="array")  # shipped
    spark.read.format("binaryFile").load(root).createOrReplaceTempView("connect_files")

    rows = spark.sql("SELECT path, connect_probs(content) AS p, connect_head(connect_probs(content)) AS h "
                     "FROM connect_files").collect()
    by_name = {os.path.basename(r.path): r for r in rows}
    order = [by_name[f"img-{k:03d}.png"] for k in range(40, 45)]
    np.testing.assert_allclose([r.p for r in order], probs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([r.h for r in order], heads, rtol=1e-4, atol=1e-4)


def test_tfrecords_round_trip_and_refuse_bad_input(spark, tmp_path):
    from tfos.errors import TFOSConfigError
    from tfos.ml import load_tfrecords, loaded_from, save_tfrecords

    out = str(tmp_path / "records")
    assert save_tfrecords(typed_frame(spark), out) == 50
    assert sorted(os.listdir(out)) == ["_SUCCESS", "part-r-00000", "part-r-00001", "part-r-00002"]
    df = load_tfrecords(spark, out, binary_features=["bin"])
    assert loaded_from(df) == out
    assert dict(df.dtypes) == {"arr": "array<double>", "b": "bigint", "bin": "binary", "d": "double",
                               "f": "double", "i": "bigint", "iarr": "array<bigint>", "l": "bigint", "s": "string",
                               "v": "array<double>"}
    rows = sorted(df.collect(), key=lambda r: r.i)
    assert [r.i for r in rows] == list(range(50))
    row = rows[7]
    assert (row.l, row.b, row.s, bytes(row.bin), row.iarr, row.v) == (10 ** 12 + 7, 0, "row 7 é", bytes([7, 255]),
                                                                       [7, 49], [7, 1.5])
    assert row.d == pytest.approx(7 / 3, rel=1e-6) and row.arr == pytest.approx([7.5, -7, 2.0])

    with pytest.raises(TFOSConfigError, match="exists and is not empty"):
        save_tfrecords(spark.createDataFrame([(2,)], ["x"]), out)
    assert save_tfrecords(spark.createDataFrame([(2,), (3,)], ["x"]), out, overwrite=True) == 2
    assert sorted(r.x for r in load_tfrecords(spark, out).collect()) == [2, 3]
    with pytest.raises(Exception, match=r"partition 0 row 1: column 'x' is null"):
        save_tfrecords(spark.createDataFrame([(1.0,), (None,)], "x double").coalesce(1), str(tmp_path / "n"))
    with pytest.raises(TFOSConfigError, match="no TFRecord files found"):
        load_tfrecords(spark, str(tmp_path / "nothing-here"))
