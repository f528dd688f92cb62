"""Transfer learning with tfos.ml on scikit-learn's digits (driver script; Spark-fed training, then Spark ML).

1. A small CNN learns digits 0-4 on a two-node tfos cluster (MultiWorkerMirroredStrategy): the
   driver feeds (pixels, label) rows from a DataFrame (``tfos.run(..., input_mode=InputMode.SPARK)``
   + ``cluster.train``), the nodes train with ``tfos.keras.fit`` and the chief saves the model as a
   Keras file.
2. Digits 5-9 (never seen by the CNN) are written as 32x32 grayscale PNG files and read
   back with Spark's ``image`` source; the label comes from the file name.
3. ``DeepFeaturizer`` takes the CNN's penultimate layer as features and Spark ML's
   ``LogisticRegression`` learns 5-9 from at most 20% of those images; the rest measure it.
4. The whole ``PipelineModel`` is saved, loaded and checked to give the same predictions.

    python scripts/transfer_digits.py                 # starts local-cluster[2,1,1024] itself
    tfos submit --master local-cluster[2,1,1024] scripts/transfer_digits.py --epochs 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras = Keras 2: multi-worker fit works
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

SIDE = 32  # the 8x8 digits are upscaled 4x (nearest neighbour) to SIDE x SIDE grayscale


def digit_images(low: int, high: int):
    """Digits low..high as uint8 (n, SIDE, SIDE, 1) images in 0-255, and their labels."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = (digits.target >= low) & (digits.target <= high)
    small = np.clip(digits.images[keep] * (255.0 / 16.0), 0, 255).astype(np.uint8)
    big = small.repeat(SIDE // 8, axis=1).repeat(SIDE // 8, axis=2)
    return big[..., None], digits.target[keep].astype(np.int64)


def build_cnn(classes: int):
    """Two conv blocks whose flattened feature maps (the penultimate layer) feed the classifier directly.

    The classifier sits right on the conv features, with dropout before it, rather than behind a
    Dense embedding: a Dense layer trained on 0-4 specialises in those five classes, while the conv
    features (strokes, loops, corners) stay general enough for a linear model to tell 5-9 apart.
    """
    import tensorflow as tf

    model = tf.keras.Sequential([
        tf.keras.Input(shape=(SIDE, SIDE, 1), name="image"),
        tf.keras.layers.Rescaling(1 / 255),
        tf.keras.layers.Conv2D(32, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Conv2D(64, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Dropout(0.5),  # identity at inference: the features are the conv maps themselves
        tf.keras.layers.Flatten(name="embedding"),  # 6 x 6 x 64 = 2304 features
        tf.keras.layers.Dense(classes, name="logits"),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.003),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def train_fun(args, ctx):
    """Each node fits from the rows Spark feeds it (MultiWorkerMirroredStrategy); the chief saves the model."""
    import tensorflow as tf

    from tfos.keras import fit

    tf.keras.utils.set_random_seed(args.seed)  # the same initial weights and dropout masks on every run
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_cnn(5)
    # balanced epochs of a length Keras knows: every worker takes the same steps, none gets an empty batch
    dataset = ctx.get_data_feed().as_dataset(args.batch_size)  # rows per worker a step
    dataset = dataset.map(lambda x, y: (tf.reshape(x, (-1, SIDE, SIDE, 1)), y))
    fit(model, dataset, epochs=args.epochs, verbose=0)
    is_chief = ctx.job_name in ("chief", "master")
    scratch = None if is_chief else tempfile.mkdtemp(prefix="tfos-transfer-")
    model.save(args.model_path if is_chief else os.path.join(scratch, "model.keras"))  # every worker saves
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)


def write_pngs(root: str) -> int:
    """Digits 5-9 as PNG files named ``digit<label>-<index>.png``; returns how many."""
    import tensorflow as tf

    images, labels = digit_images(5, 9)
    os.makedirs(root, exist_ok=True)
    for k, (image, label) in enumerate(zip(images, labels)):
        with open(os.path.join(root, f"digit{label}-{k:04d}.png"), "wb") as f:
            f.write(tf.io.encode_png(image).numpy())
    return len(images)


def run(sc, args) -> dict:
    """The whole walk-through on ``sc``; returns the figures it prints."""
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    import tfos
    from tfos.ml import DeepFeaturizer

    started = time.monotonic()
    spark = SparkSession(sc)
    os.makedirs(args.work_dir, exist_ok=True)
    args.model_path = os.path.join(args.work_dir, "cnn-0-4.keras")

    # 1. the CNN on digits 0-4, fed by Spark
    images, labels = digit_images(0, 4)
    rows = [(image.reshape(-1).astype(float).tolist(), int(label)) for image, label in zip(images, labels)]
    train_df = spark.createDataFrame(rows, "features array<float>, label long").repartition(4)
    with tfos.run(sc, train_fun, args, args.cluster_size, input_mode=tfos.InputMode.SPARK,
                  reservation_timeout=120) as cluster:
        cluster.train(train_df, num_epochs=args.epochs)
    print(f"trained the CNN on {len(rows)} images of digits 0-4 in {time.monotonic() - started:.0f} s: "
          f"{args.model_path}", flush=True)

    # 2. digits 5-9 as files, read by Spark's image source
    png_dir = os.path.join(args.work_dir, "digits-5-9")
    shutil.rmtree(png_dir, ignore_errors=True)
    count = write_pngs(png_dir)
    # Small files come as dozens of partitions (each costs spark.sql.files.openCostInBytes): gather them, so
    # the featurizer gets full batches and each LogisticRegression iteration is a few tasks, not dozens.
    df = spark.read.format("image").load(png_dir).coalesce(sc.defaultParallelism)
    df = df.withColumn("label", F.regexp_extract("image.origin", r"digit(\d)-", 1).cast("double"))
    df = df.withColumn("index", F.regexp_extract("image.origin", r"-(\d+)\.png", 1).cast("int"))
    every = round(1 / args.train_fraction)  # every 5th file: exactly at most 20%, the same on every run
    labelled = df.where(F.col("index") % every == every - 1).cache()  # floor(n / every) files
    rest = df.where(F.col("index") % every != every - 1).cache()

    # 3. DeepFeaturizer (penultimate layer) + LogisticRegression on at most 20% of them
    featurizer = DeepFeaturizer(inputCol="image", outputCol="features", modelPath=args.model_path)
    # LogisticRegression standardises the features itself (standardization=True), so no StandardScaler
    # stage is needed; regParam keeps 2304 weights per class from memorising 179 images.
    lr = LogisticRegression(labelCol="label", featuresCol="features", maxIter=100, regParam=args.reg_param)
    model = Pipeline(stages=[featurizer, lr]).fit(labelled)
    predictions = model.transform(rest).select("image.origin", "label", "prediction").cache()
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(predictions)
    trained_on, scored = labelled.count(), predictions.count()
    print(f"transfer accuracy on digits 5-9: {accuracy:.4f} (logistic regression trained on {trained_on} of "
          f"{count} images, scored on {scored})", flush=True)

    # 4. the whole pipeline saved and loaded gives the same predictions
    saved = os.path.join(args.work_dir, "transfer-pipeline")
    model.write().overwrite().save(saved)
    again = PipelineModel.load(saved).transform(rest).select("image.origin", "prediction")
    before = {r.origin: r.prediction for r in predictions.collect()}
    after = {r.origin: r.prediction for r in again.collect()}
    same = before == after
    seconds = time.monotonic() - started
    print(f"saved pipeline {saved}: loaded copy gives the same predictions: {same} (all done in {seconds:.0f} s)",
          flush=True)
    return {"accuracy": accuracy, "trained_on": trained_on, "scored": scored, "images": count, "same": same,
            "seconds": seconds}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster_size", type=int, default=2, help="executors (tfos nodes training the CNN)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=32, help="per-worker batch size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the CNN's weights and dropout")
    parser.add_argument("--reg_param", type=float, default=0.01, help="the logistic regression's regParam")
    parser.add_argument("--train_fraction", type=float, default=0.2,
                        help="share of the 5-9 images the logistic regression learns from (at most 0.2)")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "tfos-transfer-digits"))
    parser.add_argument("--master", default=None, help="Spark master when not run by spark-submit")
    args = parser.parse_args(argv)
    if not 0 < args.train_fraction <= 0.2:
        parser.error("--train_fraction must be in (0, 0.2]")
    return args


def main(argv=None) -> dict:
    from pyspark import cloudpickle

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_digits import spark_context

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # executors need not find scripts/
    args = parse_args(argv)
    sc = spark_context("tfos-transfer-digits", args.master, f"local-cluster[{args.cluster_size},1,1024]")
    try:
        return run(sc, args)
    finally:
        sc.stop()


if __name__ == "__main__":
    main()
