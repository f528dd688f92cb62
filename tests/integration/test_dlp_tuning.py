"""TFEstimator under Spark ML tuning: CrossValidator / TrainValidationSplit and parallel fitMultiple trials."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest


@pytest.fixture(scope="module")
def spark(sc):
    from pyspark.sql import SparkSession

    return SparkSession.builder.getOrCreate()


def frame(spark, rows=80):
    """y = 2 x0 - x1 + noise, as array<float> features and a double label."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 2)).astype(np.float32)
    y = 2 * x[:, 0] - x[:, 1] + rng.normal(scale=0.05, size=rows)
    return spark.createDataFrame([(a.tolist(), float(b)) for a, b in zip(x, y)], "x array<float>, y double"
                                 ).repartition(2)


def train_fn(args, ctx):
    """Fits a linear Keras model; records where it ran (and whether it met the other trials) next to its export."""
    import tensorflow as tf

    feed = ctx.get_data_feed(input_mapping=args.input_mapping)
    model = tf.keras.Sequential([tf.keras.Input(shape=(2,), name="x"), tf.keras.layers.Dense(1, name="y")])
    model.compile(optimizer=tf.keras.optimizers.SGD(args.learning_rate), loss="mse")
    dataset = feed.as_dataset(16).map(lambda d: (d["x"], d["y"]))
    model.fit(dataset, epochs=args.epochs, verbose=0)
    model.save(args.export_dir)
    met = None
    if getattr(args, "rendezvous", None):  # every trial waits here for the others: only parallel ones meet
        open(os.path.join(args.rendezvous, str(args.learning_rate)), "w").close()
        deadline = time.monotonic() + 60
        while len(os.listdir(args.rendezvous)) < args.trials and time.monotonic() < deadline:
            time.sleep(0.05)
        met = len(os.listdir(args.rendezvous)) >= args.trials
    with open(args.export_dir + ".json", "w") as f:
        json.dump({"pid": os.getpid(), "lr": args.learning_rate, "epochs": args.epochs, "met": met}, f)


def estimator(tmp_path, **args):
    from tfos.ml import TFEstimator

    return (TFEstimator(train_fn, {"learning_rate": 0.01, **args})
            .setInputMapping({"x": "x", "y": "y"}).setModelInputMapping({"x": "x"})
            .setOutputMapping({"y": "prediction"})
            .setExportDir(str(tmp_path / "model.keras")).setEpochs(1))


class RMSE:
    """RegressionEvaluator on the model's output (a 1-wide array: Dense(1) gives rows of shape (1,))."""

    @staticmethod
    def make():
        from pyspark.ml.evaluation import Evaluator, RegressionEvaluator

        class FirstOutputRMSE(Evaluator):
            def _evaluate(self, dataset):
                from pyspark.sql import functions as F

                scalar = dataset.withColumn("prediction", F.col("prediction")[0])
                return RegressionEvaluator(labelCol="y", predictionCol="prediction").evaluate(scalar)

            def isLargerBetter(self):  # noqa: N802 - Spark ML's naming
                return False

        return FirstOutputRMSE()


def test_cross_validator_grids_params_and_args_each_fit_in_its_own_file(spark, tmp_path):
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder

    est = estimator(tmp_path)
    lr = est.argParam("learning_rate")  # a value of args, gridded like a param
    grid = ParamGridBuilder().addGrid(lr, [0.001, 0.2]).addGrid(est.epochs, [1, 4]).build()
    evaluator = RMSE.make()
    cv = CrossValidator(estimator=est, estimatorParamMaps=grid, evaluator=evaluator, numFolds=2, seed=1)
    model = cv.fit(frame(spark))

    files = sorted(f for f in os.listdir(tmp_path) if f.endswith(".keras"))
    assert len(files) == 2 * 4 + 1, files  # 2 folds x 4 grid points, then the best params refit on all the data
    assert "model.keras" in files
    records = [json.load(open(tmp_path / (f + ".json"))) for f in files]
    assert sorted((r["lr"], r["epochs"]) for r in records).count((0.2, 4)) == 3
    assert len(model.avgMetrics) == 4
    best = grid[int(np.argmin(model.avgMetrics))]
    assert (best[lr], best[est.epochs]) == (0.2, 4)  # the most steps at the usable rate
    assert model.bestModel.getExportDir() == str(tmp_path / "model.keras")
    assert model.bestModel.transform(frame(spark, rows=10)).count() == 10


def test_fit_multiple_runs_trials_in_parallel_on_both_executors(spark, tmp_path):
    from pyspark.ml.tuning import ParamGridBuilder

    (tmp_path / "rendezvous").mkdir()
    est = estimator(tmp_path, rendezvous=str(tmp_path / "rendezvous"), trials=2)
    lr = est.argParam("learning_rate")
    grid = ParamGridBuilder().addGrid(lr, [0.05, 0.1]).build()
    models = dict(est.fitMultiple(frame(spark), grid))
    assert sorted(models) == [0, 1]
    paths = [models[i].getExportDir() for i in (0, 1)]
    assert len(set(paths)) == 2 and all(os.path.isfile(p) for p in paths)
    runs = [json.load(open(p + ".json")) for p in paths]
    assert [r["lr"] for r in runs] == [0.05, 0.1]
    assert runs[0]["pid"] != runs[1]["pid"]  # two executors' Python workers
    assert [r["met"] for r in runs] == [True, True]  # both were running at once
    out = models[1].transform(frame(spark, rows=10))
    assert out.count() == 10 and "prediction" in out.columns


def test_train_validation_split_over_a_saved_and_loaded_estimator(spark, tmp_path):
    from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit

    from tfos.ml import TFEstimator

    est = estimator(tmp_path)
    est.argParam("learning_rate")
    est.write().overwrite().save(str(tmp_path / "est"))
    loaded = TFEstimator.load(str(tmp_path / "est"))
    assert loaded.hasParam("learning_rate") and loaded.getOrDefault("learning_rate") == 0.01
    grid = ParamGridBuilder().addGrid(loaded.argParam("learning_rate"), [0.001, 0.2]).addGrid(
        loaded.epochs, [3]).build()
    tvs = TrainValidationSplit(estimator=loaded, estimatorParamMaps=grid, trainRatio=0.75, seed=2,
                               evaluator=RMSE.make())
    model = tvs.fit(frame(spark))
    assert len(model.validationMetrics) == 2
    assert model.validationMetrics[1] < model.validationMetrics[0]

