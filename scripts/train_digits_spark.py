"""Spark-fed training and inference on scikit-learn's digits (driver script, InputMode.SPARK).

The driver turns the digits into a DataFrame of (features, label) rows and streams it
into two MultiWorkerMirroredStrategy nodes (``cluster.train``), which fit a Keras model
from ``DataFeed.as_dataset``, reporting their progress to the driver's live view; the
chief exports a SavedModel. A second cluster loads that model on each node and answers
``cluster.inference`` on the test rows; the driver computes the accuracy from the
returned predictions. This is the README's main job (``./scripts/demo.sh``).

    python scripts/train_digits_spark.py              # starts local-cluster[2,1,1024] itself
    tfos submit --master local-cluster[2,1,1024] scripts/train_digits_spark.py --epochs 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_digits  # noqa: E402
from train_digits import build_model, export, load_digits_split, spark_context  # noqa: E402


def train_fun(args, ctx):
    """Chief and workers fit from the rows Spark feeds them; the chief exports the model."""
    import tensorflow as tf

    from tfos.keras import fit, progress_callback

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_model()
    # One pass = one epoch fed by train(), of a length Keras knows; batch_size rows per worker a step.
    # tfos.keras.fit reads those epochs with no per-step "has every worker data?" all-reduce.
    dataset = ctx.get_data_feed().as_dataset(args.batch_size)
    fit(model, dataset, epochs=args.epochs, verbose=0, callbacks=[progress_callback(ctx)])
    export(model, ctx, args.export_dir)


def infer_fun(args, ctx):
    """Every node loads the model once and answers the rows fed to it, batch by batch."""
    import numpy as np
    import tensorflow as tf

    model = tf.keras.models.load_model(args.export_dir)
    feed = ctx.get_data_feed(train_mode=False)
    answered = 0
    while (batch := feed.next_batch_arrays(256)) is not None:
        features = batch[0]
        feed.batch_results(np.argmax(model.predict_on_batch(features), axis=1))
        answered += len(features)
        ctx.report(answered=answered)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster_size", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=32, help="per-worker batch size")
    parser.add_argument("--export_dir", default=os.path.join(tempfile.gettempdir(), "tfos-digits-spark-model"))
    parser.add_argument("--master", default=None, help="Spark master when not run by spark-submit")
    return parser.parse_args(argv)


def main(argv=None) -> float:
    from pyspark import cloudpickle
    from pyspark.sql import SparkSession

    import tfos

    cloudpickle.register_pickle_by_value(train_digits)  # executors need not find scripts/
    args = parse_args(argv)
    sc = spark_context("tfos-digits-spark", args.master, f"local-cluster[{args.cluster_size},1,1024]")
    spark = SparkSession(sc)
    (x_train, y_train), (x_test, y_test) = load_digits_split()
    train_df = spark.createDataFrame([(x.tolist(), int(y)) for x, y in zip(x_train, y_train)],
                                     "features array<float>, label long")
    test_df = spark.createDataFrame([(x.tolist(),) for x in x_test], "features array<float>")
    try:
        with tfos.run(sc, train_fun, args, args.cluster_size, input_mode=tfos.InputMode.SPARK,
                      reservation_timeout=120) as cluster:
            cluster.train(train_df, num_epochs=args.epochs)
        with tfos.run(sc, infer_fun, args, args.cluster_size, input_mode=tfos.InputMode.SPARK,
                      reservation_timeout=120) as cluster:
            predictions = cluster.inference(test_df).collect()  # one per row, in order
        accuracy = sum(int(p) == int(y) for p, y in zip(predictions, y_test)) / len(y_test)
        print(f"test accuracy: {accuracy:.4f}", flush=True)
        return accuracy
    finally:
        sc.stop()


if __name__ == "__main__":
    main()
