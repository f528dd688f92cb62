"""A TensorFlowOnSpark 2.x program on tfos.compat: Spark-fed training, then inference (driver script).

Written the way TFoS's Keras examples are (rows from ``TFNode.DataFeed`` through a
Python generator, ``compat.export_saved_model``, ``tf_feed.terminate()``); the only
change from TFoS is the import line. Uses scikit-learn's bundled digits (8x8 images).

    python scripts/compat_digits_spark.py               # starts local-cluster[2,1,1024] itself
    tfos submit --master 'local-cluster[2,1,1024]' scripts/compat_digits_spark.py --epochs 8
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

from tfos.compat import TFCluster, TFNode, compat  # was: from tensorflowonspark import ...  # noqa: E402


def main_fun(args, ctx):
    import numpy as np
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    tf_feed = TFNode.DataFeed(ctx.mgr, False)

    def rdd_generator():
        while not tf_feed.should_stop():
            batch = tf_feed.next_batch(1)
            if len(batch) == 0:
                return
            image, label = batch[0]
            yield np.asarray(image, dtype=np.float32), np.asarray([label], dtype=np.float32)

    ds = tf.data.Dataset.from_generator(rdd_generator, (tf.float32, tf.float32),
                                        (tf.TensorShape([64]), tf.TensorShape([1])))
    ds = ds.batch(args.batch_size)

    with strategy.scope():
        model = tf.keras.Sequential([
            tf.keras.Input(shape=(64,), name="features"),
            tf.keras.layers.Dense(64, activation="relu"),
            tf.keras.layers.Dense(10, name="logits"),
        ])
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    # TFoS's examples stop each epoch at 90% of the expected steps, so that no worker runs
    # out of rows while the others wait for it in a collective (tfos's as_dataset does not need this).
    steps_per_epoch_per_worker = args.train_rows / args.batch_size / ctx.num_workers
    model.fit(x=ds, epochs=args.epochs, steps_per_epoch=int(steps_per_epoch_per_worker * 0.9), verbose=2)

    compat.export_saved_model(model, args.export_dir, ctx.job_name == "chief")
    tf_feed.terminate()  # skip the rows still being fed


def inference_fun(args, ctx):
    import numpy as np
    import tensorflow as tf

    model = tf.keras.models.load_model(args.export_dir)
    tf_feed = TFNode.DataFeed(ctx.mgr, False)
    while not tf_feed.should_stop():
        batch = tf_feed.next_batch(args.batch_size)
        if len(batch) > 0:
            features = np.array([row[0] for row in batch], dtype=np.float32)
            tf_feed.batch_results(np.argmax(model.predict_on_batch(features), axis=1).tolist())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster_size", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--export_dir", default=os.path.join(tempfile.gettempdir(), "tfos-compat-digits-model"))
    parser.add_argument("--master", default=None, help="Spark master when not run by spark-submit")
    return parser.parse_args(argv)


def run(sc, args) -> float:
    """Trains, exports, runs inference on the test rows; returns the test accuracy."""
    (x_train, y_train), (x_test, y_test) = load_digits_split()
    args.train_rows = len(x_train)
    # One partition per node: every worker gets the same number of rows each epoch.
    images_labels = sc.parallelize([(x.tolist(), int(y)) for x, y in zip(x_train, y_train)], args.cluster_size)
    cluster = TFCluster.run(sc, main_fun, args, args.cluster_size, num_ps=0,
                            input_mode=TFCluster.InputMode.SPARK, master_node="chief")
    cluster.train(images_labels, args.epochs)
    cluster.shutdown()

    cluster = TFCluster.run(sc, inference_fun, args, args.cluster_size, num_ps=0,
                            input_mode=TFCluster.InputMode.SPARK)
    predictions = cluster.inference(sc.parallelize([(x.tolist(),) for x in x_test], 4)).collect()
    cluster.shutdown()
    accuracy = sum(int(p) == int(y) for p, y in zip(predictions, y_test)) / len(y_test)
    print(f"test accuracy: {accuracy:.4f}", flush=True)
    return accuracy


def main(argv=None) -> float:
    return run_example(run, parse_args(argv), "tfos-compat-digits")


if __name__ == "__main__":
    main()
