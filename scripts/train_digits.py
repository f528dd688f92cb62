"""Distributed training on scikit-learn's bundled digits data (driver script).

Runs a Keras MultiWorkerMirroredStrategy job with one tfos node per Spark executor.
InputMode.TENSORFLOW: every node loads the data itself. The chief exports a SavedModel,
which this driver loads to report test accuracy.

    python scripts/train_digits.py                    # starts local-cluster[2,1,1024] itself
    tfos submit --master local-cluster[2,1,1024] scripts/train_digits.py --epochs 30
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras = Keras 2: multi-worker fit works
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def load_digits_split(seed: int = 0):
    """The 1797 8x8 digits as float32 in [0, 1], split 80/20 with a fixed seed."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def build_model():
    import tensorflow as tf

    model = tf.keras.Sequential([
        tf.keras.Input(shape=(64,)),
        tf.keras.layers.Dense(128, activation="relu"),
        tf.keras.layers.Dense(64, activation="relu"),
        tf.keras.layers.Dense(10),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.005),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def main_fun(args, ctx):
    """Runs on every node: each reads the training data itself (InputMode.TENSORFLOW)."""
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    (x_train, y_train), _ = load_digits_split()
    dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(2048, seed=1).repeat()
    dataset = dataset.batch(args.batch_size * ctx.num_workers)
    with strategy.scope():
        model = build_model()
    steps = len(x_train) // (args.batch_size * ctx.num_workers)
    model.fit(dataset, epochs=args.epochs, steps_per_epoch=steps, verbose=2)
    export(model, ctx, args.export_dir)


def export(model, ctx, export_dir: str) -> None:
    """Saves a MultiWorkerMirroredStrategy model: every worker must take part; the chief's copy is kept."""
    is_chief = ctx.job_name in ("chief", "master")
    path = export_dir if is_chief else tempfile.mkdtemp(prefix="tfos-export-")
    model.save(path, save_format="tf")
    if not is_chief:
        shutil.rmtree(path, ignore_errors=True)


def evaluate(export_dir: str) -> float:
    """Loads the exported SavedModel on the driver and returns test accuracy."""
    import numpy as np
    import tensorflow as tf

    _, (x_test, y_test) = load_digits_split()
    model = tf.keras.models.load_model(export_dir)
    predictions = np.argmax(model.predict(x_test, verbose=0), axis=1)
    return float(np.mean(predictions == y_test))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster_size", type=int, default=2, help="number of tfos nodes (executors)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=32, help="per-worker batch size")
    parser.add_argument("--export_dir", default=os.path.join(tempfile.gettempdir(), "tfos-digits-model"))
    parser.add_argument("--master", default=None, help="Spark master when not run by spark-submit")
    return parser.parse_args(argv)


def spark_context(app_name: str, master: str | None, default_master: str):
    """The SparkContext of spark-submit, or one on ``master`` (default: a local cluster) when run with python.

    Under spark-submit (``tfos submit``) the master and every ``--conf`` live in the JVM that
    spark-submit started, which this Python reaches through ``PYSPARK_GATEWAY_PORT``; a
    ``SparkConf`` made before Python has joined that JVM is empty, so join it first.
    """
    from pyspark import SparkConf, SparkContext

    if "PYSPARK_GATEWAY_PORT" in os.environ:
        SparkContext._ensure_initialized()  # joins spark-submit's JVM: SparkConf() now loads its settings
    conf = SparkConf()
    if master or not conf.contains("spark.master"):
        conf.setMaster(master or default_master)
    if conf.get("spark.master").startswith("local"):  # a cluster on this machine only: stay on loopback
        conf.setIfMissing("spark.driver.host", "127.0.0.1").setIfMissing("spark.driver.bindAddress", "127.0.0.1")
    conf.setIfMissing("spark.app.name", app_name)
    conf.setIfMissing("spark.ui.enabled", "false").setIfMissing("spark.locality.wait", "0")
    conf.setIfMissing("spark.ui.showConsoleProgress", "false")  # tfos's own progress view shows the nodes
    sc = SparkContext.getOrCreate(conf)
    sc.setLogLevel("ERROR")
    return sc


def run_example(run, args, app_name: str):
    """Runs an example's ``run(sc, args)`` on the spark-submit context or a local cluster, then stops Spark."""
    import sys

    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # executors need not find scripts/
    sc = spark_context(app_name, args.master, f"local-cluster[{args.cluster_size},1,1024]")
    try:
        return run(sc, args)
    finally:
        sc.stop()


def main(argv=None) -> float:
    import tfos

    args = parse_args(argv)
    sc = spark_context("tfos-digits", args.master, f"local-cluster[{args.cluster_size},1,1024]")
    try:
        with tfos.run(sc, main_fun, args, num_executors=args.cluster_size, reservation_timeout=120):
            pass  # the with-block waits for the chief and workers to finish training
        accuracy = evaluate(args.export_dir)
        print(f"test accuracy: {accuracy:.4f}", flush=True)
        return accuracy
    finally:
        sc.stop()


if __name__ == "__main__":
    main()
