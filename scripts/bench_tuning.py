"""Benchmark: a 4-point TFEstimator grid, trials in parallel (fitMultiple) vs one after another (driver script).

Both sides run the same trials on the same machinery (one Spark task per trial, data
broadcast, train_fn with a TrialContext), after a warm-up that loads TensorFlow in every
executor's Python worker; the sequential side submits one trial at a time. A third line
times the same grid as four plain ``fit`` calls (a one-node tfos cluster each) for
reference. Target: parallel <= 0.6 x sequential on 2 executors.

    python scripts/bench_tuning.py                    # local-cluster[2,1,1024]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def train_fn(args, ctx):
    """An MLP on 64 features, a few epochs: a small trial whose time is mostly Keras' own steps."""
    import tensorflow as tf

    feed = ctx.get_data_feed(input_mapping=args.input_mapping)
    dataset = feed.as_dataset(32).map(lambda d: (d["x"], d["y"]))
    model = tf.keras.Sequential([tf.keras.Input((64,), name="x"), tf.keras.layers.Dense(64, activation="relu"),
                                 tf.keras.layers.Dense(10, name="y")])
    model.compile(optimizer=tf.keras.optimizers.Adam(args.learning_rate),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(dataset, epochs=args.epochs, verbose=0)
    model.save(args.export_dir)


def main(argv=None) -> dict:
    import numpy as np
    from pyspark import SparkConf, SparkContext, cloudpickle
    from pyspark.ml.tuning import ParamGridBuilder
    from pyspark.sql import SparkSession
    from sklearn.datasets import load_digits

    from tfos.ml import TFEstimator
    from tfos.ml._tuning import run_trials, trial_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--master", default="local-cluster[2,1,1024]")
    args = parser.parse_args(argv)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    conf = (SparkConf().setMaster(args.master).setAppName("tfos-bench-tuning").set("spark.ui.enabled", "false")
            .set("spark.driver.host", "127.0.0.1").set("spark.driver.bindAddress", "127.0.0.1")
            .set("spark.locality.wait", "0").set("spark.ui.showConsoleProgress", "false"))
    sc = SparkContext.getOrCreate(conf)
    sc.setLogLevel("ERROR")
    spark = SparkSession(sc)
    work = tempfile.mkdtemp(prefix="tfos-bench-tuning-")
    try:
        digits = load_digits()
        rows = [((x / 16.0).astype(np.float32).tolist(), int(y)) for x, y in zip(digits.data, digits.target)]
        df = spark.createDataFrame(rows, "x array<float>, y long").repartition(2).cache()
        df.count()
        est = (TFEstimator(train_fn, {"learning_rate": 0.01}).setInputMapping({"x": "x", "y": "y"})
               .setExportDir(os.path.join(work, "model.keras")).setEpochs(args.epochs))
        lr = est.argParam("learning_rate")
        grid = ParamGridBuilder().addGrid(lr, [0.003, 0.01]).addGrid(est.epochs, [args.epochs, args.epochs]).build()

        def trials(tag: str) -> list:
            out = []
            for index, param_map in enumerate(grid):
                trial = est.copy(param_map)
                trial.setExportDir(trial_path(est.getExportDir(), index, tag))
                out.append(trial)
            return out

        warm = est.copy({est.epochs: 1})
        list(warm.fitMultiple(df, [{}, {}]))  # TensorFlow loaded in both executors' Python workers

        start = time.perf_counter()
        for trial in trials("seq"):
            run_trials(df, [trial])
        sequential = time.perf_counter() - start

        start = time.perf_counter()
        models = dict(est.fitMultiple(df, grid))
        parallel = time.perf_counter() - start
        assert sorted(models) == list(range(len(grid)))

        start = time.perf_counter()
        for index, param_map in enumerate(grid):
            est.copy({**param_map, est.export_dir: trial_path(est.getExportDir(), index, "fit")}).fit(df)
        clusters = time.perf_counter() - start

        ratio = parallel / sequential
        print(f"grid of {len(grid)} trials on {sc.defaultParallelism} executors, {args.epochs} epochs of "
              f"{len(rows)} rows each", flush=True)
        print(f"{'sequential (one trial at a time)':<40}{sequential:8.1f} s", flush=True)
        print(f"{'parallel (fitMultiple)':<40}{parallel:8.1f} s   ratio {ratio:.2f} (target <= 0.60)", flush=True)
        print(f"{'reference: 4 x fit (1-node tfos cluster)':<40}{clusters:8.1f} s", flush=True)
        return {"sequential": sequential, "parallel": parallel, "ratio": ratio, "clusters": clusters}
    finally:
        sc.stop()


if __name__ == "__main__":
    main()
