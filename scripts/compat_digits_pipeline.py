"""A TensorFlowOnSpark 2.x Spark ML pipeline on tfos.compat: TFEstimator.fit, TFModel.transform (driver script).

Written the way TFoS's pipeline examples are: ``train_fn`` reads dict batches from
``TFNode.DataFeed(ctx.mgr, input_mapping=args.input_mapping)`` and the chief exports a
SavedModel that ``TFModel`` runs on a DataFrame. The only change from TFoS is the
import lines. Uses scikit-learn's bundled digits; the training DataFrame goes through
TFRecords (``dfutil``) on the way, as TFoS users often did.

    python scripts/compat_digits_pipeline.py              # starts local-cluster[2,1,1024] itself
    tfos submit --master 'local-cluster[2,1,1024]' scripts/compat_digits_pipeline.py --epochs 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_digits import load_digits_split, run_example  # noqa: E402

from tfos.compat import TFNode, compat, dfutil  # was: from tensorflowonspark import ...  # noqa: E402
from tfos.compat.pipeline import TFEstimator, TFModel  # was: from tensorflowonspark.pipeline import ...  # noqa: E402


def main_fun(args, ctx):
    import numpy as np
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    tf_feed = TFNode.DataFeed(ctx.mgr, input_mapping=args.input_mapping)

    def rdd_generator():
        while not tf_feed.should_stop():
            batch = tf_feed.next_batch(args.batch_size)
            if len(batch["image"]) == 0:
                return
            yield np.asarray(batch["image"], dtype=np.float32), np.asarray(batch["label"], dtype=np.float32)

    ds = tf.data.Dataset.from_generator(rdd_generator, (tf.float32, tf.float32),
                                        (tf.TensorShape([None, 64]), tf.TensorShape([None])))
    with strategy.scope():
        model = tf.keras.Sequential([
            tf.keras.Input(shape=(64,), name="image"),
            tf.keras.layers.Dense(64, activation="relu"),
            tf.keras.layers.Dense(10, name="logits"),
        ])
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    steps_per_epoch_per_worker = args.train_rows / args.batch_size / ctx.num_workers
    model.fit(x=ds, epochs=args.epochs, steps_per_epoch=int(steps_per_epoch_per_worker * 0.9), verbose=2)
    compat.export_saved_model(model, args.export_dir, ctx.job_name == "chief")
    tf_feed.terminate()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster_size", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=32)
    work = os.path.join(tempfile.gettempdir(), "tfos-compat-pipeline")
    parser.add_argument("--export_dir", default=os.path.join(work, "model"))
    parser.add_argument("--tfrecord_dir", default=os.path.join(work, "tfrecords"))
    parser.add_argument("--master", default=None, help="Spark master when not run by spark-submit")
    return parser.parse_args(argv)


def run(sc, args) -> float:
    """Saves the digits as TFRecords, fits on them, transforms the test rows; returns the accuracy."""
    import shutil

    from pyspark.sql import SparkSession

    spark = SparkSession.builder.getOrCreate()
    (x_train, y_train), (x_test, y_test) = load_digits_split()
    args.train_rows = len(x_train)
    # One partition per node: every worker gets the same number of rows each epoch.
    rows = sc.parallelize([(x.tolist(), int(y)) for x, y in zip(x_train, y_train)], args.cluster_size)
    shutil.rmtree(args.tfrecord_dir, ignore_errors=True)
    dfutil.saveAsTFRecords(spark.createDataFrame(rows, ["image", "label"]), args.tfrecord_dir)
    train_df = dfutil.loadTFRecords(sc, args.tfrecord_dir).repartition(args.cluster_size)

    estimator = (TFEstimator(main_fun, args)
                 .setInputMapping({"image": "image", "label": "label"})
                 .setExportDir(args.export_dir)
                 .setClusterSize(args.cluster_size)
                 .setEpochs(args.epochs)
                 .setBatchSize(args.batch_size)
                 .setGraceSecs(0))
    estimator.fit(train_df)

    model = (TFModel(args)
             .setInputMapping({"image": "image"})
             .setOutputMapping({"logits": "prediction"})
             .setSignatureDefKey("serving_default")
             .setExportDir(args.export_dir)
             .setBatchSize(args.batch_size))
    test_df = spark.createDataFrame([(x.tolist(),) for x in x_test], ["image"])
    logits = [row.prediction for row in model.transform(test_df).collect()]
    accuracy = sum(max(range(10), key=scores.__getitem__) == int(y) for scores, y in zip(logits, y_test)) / len(y_test)
    print(f"test accuracy: {accuracy:.4f}", flush=True)
    return accuracy


def main(argv=None) -> float:
    return run_example(run, parse_args(argv), "tfos-compat-pipeline")


if __name__ == "__main__":
    main()
