"""A GAN on Spark-fed scikit-learn digits, trained by a Keras 3 custom loop on 2 tfos nodes (driver script).

Spark streams the 1,797 8x8 digits (InputMode.SPARK) into two MultiWorkerMirroredStrategy
nodes started with ``tfos.run(..., keras=3)``. Each step, every worker trains a
conditional GAN (the generator draws the digit it is asked for) on its own batch:
``strategy.run`` of a step with two ``tf.GradientTape``s, losses scaled to the global
batch, and Keras 3 Adam optimizers whose ``apply_gradients`` sums the gradients of both
workers, so the two copies stay identical. Epochs of unknown length end together: each
step reads with ``get_next_as_optional``, whose "has data" flag TensorFlow all-reduces.
After every epoch the chief writes ``epoch-NNN.png``, a 10x10 grid of generated digits
(row = digit asked for) made with ``tf.io.encode_png``.

At the end the driver trains a small classifier on the real digits and reports how
confidently it labels 200 generated samples (20 per digit) and how many classes appear.

    python scripts/gan_digits.py --epochs 150 --output_dir /tmp/tfos-gan
    tfos submit --master 'local-cluster[2,1,1024]' scripts/gan_digits.py --epochs 150
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

NOISE = 32
CLASSES = 10


def load_digits_scaled():
    """All 1797 digits as float32 in [-1, 1] (the generator's tanh range) and their labels."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 8.0 - 1.0).astype(np.float32), digits.target.astype(np.int64)


def build_generator():
    import keras

    noise, label = keras.Input((NOISE,)), keras.Input((), dtype="int64")
    h = keras.layers.Concatenate()([noise, keras.layers.CategoryEncoding(CLASSES, output_mode="one_hot")(label)])
    h = keras.layers.LeakyReLU(0.2)(keras.layers.Dense(128)(h))
    h = keras.layers.LeakyReLU(0.2)(keras.layers.Dense(256)(h))
    return keras.Model([noise, label], keras.layers.Dense(64, activation="tanh")(h), name="generator")


def build_discriminator():
    import keras

    image, label = keras.Input((64,)), keras.Input((), dtype="int64")
    h = keras.layers.Concatenate()([image, keras.layers.CategoryEncoding(CLASSES, output_mode="one_hot")(label)])
    h = keras.layers.LeakyReLU(0.2)(keras.layers.Dense(256)(h))
    h = keras.layers.Dropout(0.3)(h)
    h = keras.layers.LeakyReLU(0.2)(keras.layers.Dense(128)(h))
    return keras.Model([image, label], keras.layers.Dense(1)(h), name="discriminator")


def weights_digest(model) -> str:
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def grid_png(images, rows: int, cols: int, scale: int = 4) -> bytes:
    """A PNG of ``rows x cols`` 8x8 images in [-1, 1], each scaled up ``scale`` times, 2-pixel gaps."""
    import numpy as np
    import tensorflow as tf

    pixels = np.clip((np.asarray(images).reshape(-1, 8, 8) + 1.0) * 127.5, 0, 255).astype(np.uint8)
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    side, gap = 8 * scale, 2
    canvas = np.full((rows * (side + gap) + gap, cols * (side + gap) + gap), 255, np.uint8)
    for i, img in enumerate(pixels[:rows * cols]):
        top, left = gap + (i // cols) * (side + gap), gap + (i % cols) * (side + gap)
        canvas[top:top + side, left:left + side] = 255 - img  # dark digits on white
    return tf.io.encode_png(canvas[:, :, None]).numpy()


def main_fun(args, ctx):
    """Runs on both nodes: trains the GAN on the rows Spark feeds, the chief writes the PNGs and samples."""
    import keras
    import numpy as np
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(args.seed)
    with strategy.scope():
        generator, discriminator = build_generator(), build_discriminator()
        g_opt = keras.optimizers.Adam(args.lr, beta_1=0.5)
        d_opt = keras.optimizers.Adam(args.lr, beta_1=0.5)
        g_opt.build(generator.trainable_variables)
        d_opt.build(discriminator.trainable_variables)
    chief = ctx.job_name == "chief"
    global_batch = args.batch_size * ctx.num_workers
    bce = keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)

    def loss(labels, logits):
        # summed over this replica's rows and divided by the global batch: the all-reduced sum is the mean
        return tf.nn.compute_average_loss(bce(labels, logits), global_batch_size=global_batch)

    def replica_step(batch):
        images, digits = batch
        n = tf.shape(images)[0]
        noise = tf.random.normal((n, NOISE))
        with tf.GradientTape() as tape:
            fake = generator([noise, digits], training=True)
            real_logits = discriminator([images, digits], training=True)
            fake_logits = discriminator([fake, digits], training=True)
            d_loss = loss(tf.fill((n, 1), 0.9), real_logits) + loss(tf.zeros((n, 1)), fake_logits)
        d_opt.apply_gradients(zip(tape.gradient(d_loss, discriminator.trainable_variables),
                                  discriminator.trainable_variables))
        with tf.GradientTape() as tape:
            fake_logits = discriminator([generator([noise, digits], training=True), digits], training=True)
            g_loss = loss(tf.ones((n, 1)), fake_logits)
        g_opt.apply_gradients(zip(tape.gradient(g_loss, generator.trainable_variables),
                                  generator.trainable_variables))
        return tf.stack([d_loss, g_loss]) * ctx.num_workers  # this worker's losses, as means of its batch

    @tf.function
    def train_step(iterator):
        optional = iterator.get_next_as_optional()  # has_value() is agreed by every worker
        losses = tf.cond(optional.has_value(),
                         lambda: strategy.experimental_local_results(
                             strategy.run(replica_step, args=(optional.get_value(),)))[0],
                         lambda: tf.zeros(2))
        return optional.has_value(), losses

    dataset = strategy.experimental_distribute_dataset(ctx.get_data_feed().as_dataset(args.batch_size))
    fixed_noise = np.random.default_rng(0).normal(size=(CLASSES * CLASSES, NOISE)).astype(np.float32)
    fixed_digits = np.repeat(np.arange(CLASSES), CLASSES)
    os.makedirs(args.output_dir, exist_ok=True)
    for epoch in range(1, args.epochs + 1):
        iterator, steps, totals = iter(dataset), 0, np.zeros(2)
        while True:
            has_value, losses = train_step(iterator)
            if not bool(has_value):
                break
            steps, totals = steps + 1, totals + losses.numpy()
        d_loss, g_loss = totals / max(steps, 1)
        ctx.report(epoch=epoch, step=steps, d_loss=float(d_loss), g_loss=float(g_loss))
        if chief:
            png = grid_png(generator([fixed_noise, fixed_digits], training=False), CLASSES, CLASSES)
            with open(os.path.join(args.output_dir, f"epoch-{epoch:03d}.png"), "wb") as f:
                f.write(png)
            if epoch % 10 == 0 or epoch == args.epochs:
                print(f"epoch {epoch}: {steps} steps, d_loss {d_loss:.3f}, g_loss {g_loss:.3f}", flush=True)
    if chief:
        rng = np.random.default_rng(1)
        asked = np.repeat(np.arange(CLASSES), args.samples // CLASSES)
        samples = generator([rng.normal(size=(len(asked), NOISE)).astype(np.float32), asked], training=False)
        np.save(os.path.join(args.output_dir, "samples.npy"), np.asarray(samples))
        np.save(os.path.join(args.output_dir, "samples_asked.npy"), asked)
        generator.save(os.path.join(args.output_dir, "generator.keras"))
    with open(os.path.join(args.output_dir, f"digest-{ctx.job_name}-{ctx.task_index}.json"), "w") as f:
        json.dump({"generator": weights_digest(generator), "discriminator": weights_digest(discriminator)}, f)


def judge(samples, asked, seed: int = 0) -> dict:
    """Trains a small classifier on the real digits (driver) and judges the generated ones with it."""
    import keras
    import numpy as np

    x, y = load_digits_scaled()
    keras.utils.set_random_seed(seed)
    classifier = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                                   keras.layers.Dense(CLASSES, activation="softmax")])
    classifier.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy",
                       metrics=["accuracy"])
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    classifier.fit(x[order[:cut]], y[order[:cut]], epochs=40, batch_size=64, verbose=0)
    real_accuracy = classifier.evaluate(x[order[cut:]], y[order[cut:]], verbose=0)[1]
    probs = classifier.predict(samples, verbose=0)
    labels, confidence = probs.argmax(axis=1), probs.max(axis=1)
    return {"classifier_test_accuracy": float(real_accuracy),
            "confident_fraction": float(np.mean(confidence >= 0.9)),
            "classes": int(len(set(labels[confidence >= 0.9].tolist()) or set(labels.tolist()))),
            "classes_any_confidence": int(len(set(labels.tolist()))),
            "matches_asked": float(np.mean(labels == asked))}


def run(sc, args) -> dict:
    """Feeds the digits into 2 Keras 3 nodes for ``args.epochs`` epochs and judges the generated digits."""
    import numpy as np

    import tfos

    x, y = load_digits_scaled()
    rdd = sc.parallelize([(row, int(label)) for row, label in zip(x, y)], 4)
    started = time.monotonic()
    with tfos.run(sc, main_fun, args, args.cluster_size, input_mode=tfos.InputMode.SPARK,
                  reservation_timeout=120, keras=3) as cluster:
        cluster.train(rdd, num_epochs=args.epochs)
    train_secs = time.monotonic() - started
    digests = []
    for name in sorted(os.listdir(args.output_dir)):
        if name.startswith("digest-"):
            with open(os.path.join(args.output_dir, name)) as f:
                digests.append(json.load(f)["generator"])
    samples = np.load(os.path.join(args.output_dir, "samples.npy"))
    asked = np.load(os.path.join(args.output_dir, "samples_asked.npy"))
    report = {"generator_digests": digests, "train_secs": train_secs,
              "in_sync": len(set(digests)) == 1 and len(digests) == args.cluster_size,
              **judge(samples, asked)}
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--output_dir", default=os.path.join(tempfile.gettempdir(), "tfos-gan-digits"))
    parser.add_argument("--batch_size", type=int, default=32, help="per-worker batch size")
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--samples", type=int, default=200, help="generated digits judged at the end")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cluster_size", type=int, default=2)
    parser.add_argument("--master", default=None, help="Spark master when not run by spark-submit")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    from pyspark import cloudpickle

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_digits import spark_context  # spark-submit's context and settings, else a local cluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # executors need not find scripts/
    args = parse_args(argv)
    sc = spark_context("tfos-gan-digits", args.master, f"local-cluster[{args.cluster_size},1,1024]")
    try:
        report = run(sc, args)
    finally:
        sc.stop()
    print(f"PNG grids: {args.output_dir}/epoch-001.png ... epoch-{args.epochs:03d}.png", flush=True)
    print(f"cluster start to shutdown: {report['train_secs']:.1f} s for {args.epochs} epochs", flush=True)
    print(f"nodes in sync (identical generator weights): {report['in_sync']}", flush=True)
    print(f"classifier accuracy on real test digits: {report['classifier_test_accuracy']:.3f}", flush=True)
    print(f"generated samples labelled with probability >= 0.9: {report['confident_fraction']:.1%} "
          f"(goal >= 70%); classes among them: {report['classes']} of 10 (goal >= 8); "
          f"label = digit asked for: {report['matches_asked']:.1%}", flush=True)
    return report


if __name__ == "__main__":
    main()
