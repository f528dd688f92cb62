"""Parameter-server training on scikit-learn's digits (driver script).

One parameter server, a chief that coordinates and two workers that compute, each a
tfos node on its own Spark executor (InputMode.TENSORFLOW): the chief runs Keras
``model.fit`` under ``ParameterServerStrategy``; the ps and worker nodes only serve
(``ctx.serve()``) until the cluster shuts down. The chief exports a SavedModel, which
this driver loads to report test accuracy.

    python scripts/train_digits_ps.py                 # starts local-cluster[4,1,1024] itself
    tfos submit --master local-cluster[4,1,1024] scripts/train_digits_ps.py --epochs 10
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
from train_digits import build_model, evaluate, load_digits_split, spark_context  # noqa: E402


def main_fun(args, ctx):
    """ps and workers serve; the chief coordinates the training and exports the model."""
    import tensorflow as tf

    if ctx.job_name in ("ps", "worker"):
        ctx.serve()
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    (x_train, y_train), _ = load_digits_split()

    def dataset_fn(input_context):
        batch = input_context.get_per_replica_batch_size(args.batch_size * ctx.num_workers)
        data = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(2048, seed=1).repeat()
        return data.shard(input_context.num_input_pipelines, input_context.input_pipeline_id).batch(batch)

    with strategy.scope():
        model = build_model()
    steps = len(x_train) // (args.batch_size * ctx.num_workers)
    model.fit(tf.keras.utils.experimental.DatasetCreator(dataset_fn), epochs=args.epochs, steps_per_epoch=steps,
              verbose=2)
    model.save(args.export_dir, save_format="tf")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=32, help="per-worker batch size")
    parser.add_argument("--export_dir", default=os.path.join(tempfile.gettempdir(), "tfos-digits-ps-model"))
    parser.add_argument("--master", default=None, help="Spark master when not run by spark-submit")
    return parser.parse_args(argv)


def main(argv=None) -> float:
    from pyspark import cloudpickle

    import tfos

    cloudpickle.register_pickle_by_value(train_digits)  # executors need not find scripts/
    args = parse_args(argv)
    sc = spark_context("tfos-digits-ps", args.master, "local-cluster[4,1,1024]")
    try:
        # 4 nodes: ps:0, chief:0, worker:0, worker:1; the with-block waits for the chief.
        with tfos.run(sc, main_fun, args, num_executors=4, num_ps=1, reservation_timeout=180):
            pass
        accuracy = evaluate(args.export_dir)
        print(f"test accuracy: {accuracy:.4f}", flush=True)
        return accuracy
    finally:
        sc.stop()


if __name__ == "__main__":
    main()
