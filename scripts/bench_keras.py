"""Keras 3 (tfos.keras.fit) against tf-keras (model.fit) on 2 tfos nodes: accuracy, speed, weights (driver script).

Trains the digits MLP and a small CNN under MultiWorkerMirroredStrategy on two nodes,
three ways, back to back: tf-keras with its own ``model.fit`` (``tfos.run(keras=2)``),
tf-keras through ``tfos.keras.fit`` (which hands it ``model.fit`` over known-length passes
with no per-step sync), and Keras 3 with ``tfos.keras.fit`` (``keras=3``): same data
pipeline, global batch, epochs, steps and seeds. Prints a table: test accuracy, median
seconds per epoch (the first epoch, which traces the step functions, left out), Keras 3's
time over each tf-keras run's, and whether the two workers ended with identical weights.
Goals: accuracy within 1 point, ratio <= 1.2, identical weights.

    python scripts/bench_keras.py                      # starts local-cluster[2,1,1024] itself
    python scripts/bench_keras.py --epochs 20 --batch_size 32 --models mlp cnn
    python scripts/bench_keras.py --unknown_length    # epochs of unknown length, as Spark-fed ones are

With a dataset of known length, tfos.keras.fit runs each epoch as that many steps with no
per-step coordination (for either Keras), while tf-keras' own model.fit agrees on "more
data?" with the other worker every step; --unknown_length hides the length from all three.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_digits  # noqa: E402
from train_digits import load_digits_split, spark_context  # noqa: E402

#: (Keras, fit) pairs timed for each model, in this order
FITS = [(2, "model.fit"), (2, "tfos.keras.fit"), (3, "tfos.keras.fit")]


def build(k, kind: str):
    """The model on Keras module ``k`` (``keras`` or ``tf.keras``): same layers, loss and optimizer on both."""
    if kind == "mlp":
        layers = [k.Input(shape=(64,)), k.layers.Dense(128, activation="relu"), k.layers.Dense(64, activation="relu"),
                  k.layers.Dense(10)]
    else:
        layers = [k.Input(shape=(64,)), k.layers.Reshape((8, 8, 1)),
                  k.layers.Conv2D(16, 3, padding="same", activation="relu"),
                  k.layers.Conv2D(32, 3, padding="same", activation="relu"), k.layers.MaxPooling2D(),
                  k.layers.Flatten(), k.layers.Dense(64, activation="relu"), k.layers.Dense(10)]
    model = k.Sequential(layers)
    model.compile(optimizer=k.optimizers.Adam(0.002), loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def main_fun(args, ctx):
    """Runs on both nodes: trains one model with one Keras and writes accuracy, epoch times and a weights hash."""
    import hashlib
    import time

    import numpy as np
    import tensorflow as tf

    import tfos.keras

    if args["keras"] == 3:
        import keras as k
    else:
        k = tf.keras
    assert k.__name__.startswith("keras" if args["keras"] == 3 else "tf_keras"), k.__name__
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    k.utils.set_random_seed(args["seed"])
    with strategy.scope():
        model = build(k, args["model"])
    (x_train, y_train), (x_test, y_test) = load_digits_split()
    dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(2048, seed=args["seed"])
    dataset = dataset.batch(args["batch_size"])  # a global batch, split across the workers by both fits
    if args["unknown_length"]:  # as a Spark feed is: both fits then agree on "more data?" every step
        dataset = dataset.filter(lambda x, y: True)
    times: list[float] = []

    class Timer(k.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    if args["fit"] == "tfos.keras.fit":
        history = tfos.keras.fit(model, dataset, epochs=args["epochs"], callbacks=[Timer()], verbose=0)
    else:
        history = model.fit(dataset, epochs=args["epochs"], callbacks=[Timer()], verbose=0)
    accuracy = float(np.mean(np.argmax(model(x_test, training=False).numpy(), axis=1) == y_test))
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    with open(os.path.join(args["out"], f"{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump({"accuracy": accuracy, "times": times, "digest": digest.hexdigest(),
                   "loss": history.history["loss"][-1]}, f)


def one_run(sc, model: str, keras: int, fit: str, args) -> dict:
    import tfos

    out = tempfile.mkdtemp(prefix=f"tfos-bench-keras-{model}-{keras}-")
    node_args = {"out": out, "model": model, "keras": keras, "fit": fit, "epochs": args.epochs,
                 "batch_size": args.batch_size, "seed": args.seed, "unknown_length": args.unknown_length}
    with tfos.run(sc, main_fun, node_args, 2, reservation_timeout=120, keras=keras):
        pass
    results = {}
    for name in sorted(os.listdir(out)):
        with open(os.path.join(out, name)) as f:
            results[name[:-5]] = json.load(f)
    chief = results["chief-0"]
    return {"accuracy": chief["accuracy"], "epoch_secs": statistics.median(chief["times"][1:]),
            "identical": len({r["digest"] for r in results.values()}) == 1 and len(results) == 2,
            "loss": chief["loss"]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=32, help="global batch (split across the 2 workers)")
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--unknown_length", action="store_true",
                        help="hide the dataset's length from TensorFlow, as a Spark feed's is")
    parser.add_argument("--master", default=None, help="Spark master when not run by spark-submit")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cloudpickle.register_pickle_by_value(train_digits)  # executors need not find scripts/
    args = parse_args(argv)
    sc = spark_context("tfos-bench-keras", args.master, "local-cluster[2,1,1024]")
    rows = []
    try:
        for model in args.models:
            # the three back to back: these machines drift in speed from minute to minute
            runs = [one_run(sc, model, keras, fit, args) for keras, fit in FITS]
            rows.append({"model": model, "runs": runs,
                         "ratios": [runs[-1]["epoch_secs"] / run["epoch_secs"] for run in runs[:-1]]})
    finally:
        sc.stop()
    steps = -(-1437 // args.batch_size)
    print(f"\n2 nodes, MultiWorkerMirroredStrategy, digits (1437 train / 360 test rows), global batch "
          f"{args.batch_size}, {steps} steps x {args.epochs} epochs, seed {args.seed}"
          f"{', length unknown to TensorFlow' if args.unknown_length else ''}\n")
    print("| model | Keras | fit | test accuracy | s / epoch | Keras 3's time / this | workers' weights identical |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        for (keras, fit), res, ratio in zip(FITS, row["runs"], [*row["ratios"], None]):
            label = "Keras 3" if keras == 3 else "tf-keras 2.21"
            shown = "" if ratio is None else f"{ratio:.2f}"
            print(f"| {row['model']} | {label} | {fit} | {res['accuracy']:.4f} | {res['epoch_secs']:.3f} | {shown} | "
                  f"{'yes' if res['identical'] else 'NO'} |")
    print()
    for row in rows:
        keras3 = row["runs"][-1]
        gap = max(abs(keras3["accuracy"] - run["accuracy"]) for run in row["runs"][:-1]) * 100
        print(f"{row['model']}: accuracy gap {gap:.2f} points (goal <= 1), time ratios "
              f"{' / '.join(f'{r:.2f}' for r in row['ratios'])} (goal <= 1.2), "
              f"identical weights {all(run['identical'] for run in row['runs'])}", flush=True)
    return rows


if __name__ == "__main__":
    main()
