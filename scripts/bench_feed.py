"""Feed benchmark: tfos's InputMode.SPARK against Spark's own delivery rate, in one run.

Rows are MNIST-shaped (784 float32 features + int label), batch 128, on
local-cluster[2,1,2048]. Prints, each against a reference measured in this run:
  (a) Spark's own drain rate of the cached RDD (mapPartitions counting rows)
  (b) tfos feed-only rate through next_batch and next_batch_arrays, one epoch a train() call,
      unbalanced (every row to its executor's node) and balanced (the default: a counting
      job, then equal known-length epochs)                                 target >= 0.8 x (a)
  (c) Spark-fed 2-worker MWMS Keras fit, balanced known-length cached epochs, through
      tfos.keras.fit and through model.fit, vs the same fit (same steps, BATCH rows per
      worker a step) from in-memory per-worker tf.data, in alternating rounds  target >= 0.95
  (d) inference rate with an identity model                                target >= 0.5 x (a)
  (b2) epochs 2..N served from the nodes' epoch caches, in order and shuffled   target >= 3 x (a)
  (e) node peak RSS; (e2) with a cache budget smaller than the node's share (it spills)
  (t) every row over the cross-executor TCP feed, TLS (the default) against plain
      (TFOS_FEED_TLS=0), in alternating rounds                        target TLS >= 0.9 x plain
plus cluster start (run() until all nodes registered) and shutdown() times. Each ratio
to (a) is the median over runs that each follow their own (a) run.

    python scripts/bench_feed.py [--rows 200000] [--parts b,b2,d,c,t]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

BATCH = 128
CACHE_BUDGET = 64 << 20  # per node, in memory; the rest of a node's cached share spills to local disk
FIT_ROUNDS = 3  # (c): rounds of in-memory, tfos.keras.fit and model.fit fits, 2 epochs each
CACHED_EPOCHS = 4  # (b2): the first from Spark, the rest from the caches
REPEATS = 5  # every rate is the median of this many warm runs: the machines are noisy


def drain(args, ctx):
    """Reads the feed to its end; notes when each epoch's rows (args["epoch_rows"], if given) were read."""
    feed = ctx.get_data_feed()
    rows, marks = 0, []  # marks: when the first rows came, then when each epoch's last rows were read
    anon = 0  # peak anonymous memory, sampled: VmHWM also counts the spilled cache's mapped file pages
    if args["api"] == "next_batch":
        while not feed.should_stop():
            rows += len(feed.next_batch(BATCH))
    else:
        while (batch := feed.next_batch_arrays(BATCH)) is not None:
            marks = marks or [time.monotonic()]
            rows += len(batch[0])
            if args.get("epoch_rows") and rows >= len(marks) * args["epoch_rows"]:  # an epoch's last rows
                marks.append(time.monotonic())
            if rows % (64 * BATCH) == 0:
                anon = max(anon, memory()["RssAnon"])
    with open(os.path.join(args["out"], f"rss-{ctx.job_name}"), "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    with open(os.path.join(args["out"], f"mem-{ctx.job_name}"), "w") as f:
        f.write(json.dumps({**memory(), "PeakAnon": max(anon, memory()["RssAnon"])}))
    with open(os.path.join(args["out"], f"epochs-{ctx.job_name}"), "w") as f:
        f.write(json.dumps(marks))


def memory():
    """This process's peak and current memory (KiB): VmHWM, RssAnon, RssFile."""
    with open("/proc/self/status") as status:
        return {line.split(":")[0]: int(line.split()[1]) for line in status
                if line.startswith(("VmHWM", "RssAnon", "RssFile"))}


def identity(args, ctx):
    feed = ctx.get_data_feed(train_mode=False)
    while True:
        batch = feed.next_batch_arrays(BATCH)
        if batch is None:
            break
        feed.batch_results(batch[1])


def build_model():
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.Input(shape=(784,)), tf.keras.layers.Dense(128, activation="relu"),
                                 tf.keras.layers.Dense(10)])
    model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def barrier(strategy):
    """Returns once every worker has called it: an all-reduce across them."""
    import tensorflow as tf

    strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)


def fit(args, ctx):
    """Times the same model's fit, round after round, on in-memory data and on the Spark feed's cached
    epochs (through tfos.keras.fit and through model.fit): each round compares neighbours."""
    import numpy as np
    import tensorflow as tf

    from tfos.keras import fit as tfos_fit

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_model()
    # the reference: each worker's own rows in memory, BATCH of them a step, as many steps as a fed epoch
    rng = np.random.default_rng(ctx.task_index)
    n = args["rows"] // ctx.num_workers
    x, y = rng.random((n, 784), np.float32), rng.integers(0, 10, n)
    own = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()
    memory, steps = strategy.distribute_datasets_from_function(lambda _: own), -(-n // BATCH)
    fed = ctx.get_data_feed().as_dataset(BATCH)  # balanced epochs of known length, BATCH rows per worker a step
    class Timer(tf.keras.callbacks.Callback):
        """From the start of training to its end: the steps, without what fit() does after them.
        (TensorFlow's distributed iterator can take 0-10 s to shut down when fit returns, whatever
        the data: a cost per fit() call, not per step, that would swamp the comparison.)"""

        def on_train_begin(self, logs=None):
            self.started = time.time()

        def on_train_end(self, logs=None):
            self.secs = time.time() - self.started

    epochs, timer = args["epochs"], Timer()
    runs = {"memory": lambda: model.fit(memory, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[timer]),
            "tfos.keras.fit": lambda: tfos_fit(model, fed, epochs=epochs, verbose=0, callbacks=[timer]),
            "model.fit": lambda: model.fit(fed, epochs=epochs, verbose=0, callbacks=[timer])}
    model.fit(memory, epochs=1, steps_per_epoch=steps, verbose=0)  # warm-up: graphs, collectives
    tfos_fit(model, fed, epochs=1, verbose=0)  # warm-up: the epoch streamed from Spark
    secs: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args["rounds"]):
        for name, run in runs.items():
            barrier(strategy)  # both workers start together; every step all-reduces, so they end together
            run()
            secs[name].append(timer.secs)
    with open(os.path.join(args["out"], f"fit-{ctx.job_name}"), "w") as f:
        json.dump(secs, f)


def main() -> None:
    import numpy as np
    from pyspark import SparkConf, SparkContext

    import tfos

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--parts", default="b,b2,d,c,t",
                        help="which measures to run, e.g. b2,c ((a) always runs)")
    opts = parser.parse_args()
    parts = set(opts.parts.split(","))
    conf = (SparkConf().setMaster("local-cluster[2,1,2048]").setAppName("tfos-bench")
            .set("spark.ui.enabled", "false").set("spark.ui.showConsoleProgress", "false")
            .set("spark.driver.host", "127.0.0.1").set("spark.driver.bindAddress", "127.0.0.1")
            .set("spark.driver.memory", "2g").set("spark.locality.wait", "0")
            .set("spark.executorEnv.TFOS_FEED_CACHE_BYTES", str(CACHE_BUDGET)))
    sc = SparkContext(conf=conf)
    sc.setLogLevel("ERROR")
    n = opts.rows
    rdd = sc.parallelize(range(n), opts.partitions).map(
        lambda i: (np.full(784, i % 255 / 255.0, np.float32), i % 10)).cache()
    rdd.count()
    out = tempfile.mkdtemp(prefix="tfos-bench-")

    def timed(fn):
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    def spark_drain():
        rdd.mapPartitions(lambda it: [sum(1 for _ in it)]).sum()

    def paired(fn):
        """Median rate of ``fn`` and median of its ratios to (a), each timed right after an (a) run:
        the host's speed drifts between minutes, so only neighbours compare fairly."""
        secs, ratios = [], []
        for _ in range(REPEATS):
            reference = timed(spark_drain)
            secs.append(timed(fn))
            ratios.append(reference / secs[-1])
        return n / statistics.median(secs), statistics.median(ratios)

    spark_rate = n / statistics.median(timed(spark_drain) for _ in range(REPEATS))
    print(f"(a) Spark drain of the cached RDD: {spark_rate:,.0f} rows/s")

    for api, balance in (("next_batch", False), ("next_batch_arrays", False), ("next_batch_arrays", True)) \
            if "b" in parts else ():
        started = time.perf_counter()
        cluster = tfos.run(sc, drain, {"api": api, "out": out}, 2, input_mode=tfos.InputMode.SPARK)
        start_secs = time.perf_counter() - started
        # The first epoch also pays one-time costs (node processes and Python workers
        # starting up); (a) is measured warm as well, so the ratio compares warm with warm.
        first_secs = timed(lambda c=cluster, b=balance: c.train(rdd, balance=b))
        rate, ratio = paired(lambda c=cluster, b=balance: c.train(rdd, balance=b))
        shutdown_secs = timed(cluster.shutdown)
        print(f"(b) feed-only via {api}, {'balanced' if balance else 'unbalanced'}: {rate:,.0f} rows/s = "
              f"{ratio:.2f} x (a)   "
              f"[first epoch {n / first_secs:,.0f} rows/s; cluster start {start_secs:.2f}s, "
              f"shutdown {shutdown_secs:.2f}s]")
    if "b" in parts:
        rss = max(int(open(os.path.join(out, name)).read()) for name in os.listdir(out) if name.startswith("rss-"))
        print(f"(e) node peak RSS after {(REPEATS + 1) * n * 3140 / 2**20:,.0f} MiB were fed: {rss / 1024:,.0f} MiB")
    for shuffle in (False, True) if "b2" in parts else ():
        # epochs served from the nodes' caches (budget: CACHE_BUDGET in memory, the rest spilled to disk)
        cluster = tfos.run(sc, drain, {"api": "next_batch_arrays", "out": out, "epoch_rows": n // 2}, 2,
                           input_mode=tfos.InputMode.SPARK)
        reference = timed(spark_drain)
        total = timed(lambda c=cluster, s=shuffle: c.train(rdd, num_epochs=CACHED_EPOCHS, shuffle=s, seed=0))
        cluster.shutdown()
        marks = [json.load(open(os.path.join(out, f"epochs-{job}"))) for job in ("chief", "worker")]
        cached = statistics.median(max(m[e + 1] - m[e] for m in marks) for e in range(1, CACHED_EPOCHS))  # slower node
        print(f"(b2) cached epochs, {'shuffled' if shuffle else 'in order'}: {n / cached:,.0f} rows/s = "
              f"{reference / cached:.2f} x (a)   [epoch 1 from Spark {n / (max(m[1] - m[0] for m in marks)):,.0f} "
              f"rows/s; train() of {CACHED_EPOCHS} epochs {total:.1f}s]")
    if "b2" in parts:
        mem = [json.load(open(os.path.join(out, f"mem-{job}"))) for job in ("chief", "worker")]
        print(f"(e2) node memory with a {CACHE_BUDGET >> 20} MiB cache budget and {n // 2 * 3140 / 2**20:,.0f} MiB "
              f"cached per node: peak anonymous memory {max(m['PeakAnon'] for m in mem) / 1024:,.0f} MiB (sampled); "
              f"peak RSS {max(m['VmHWM'] for m in mem) / 1024:,.0f} MiB, which also counts the spilled cache's "
              f"memory-mapped file pages (reclaimable: {max(m['RssFile'] for m in mem) / 1024:,.0f} MiB at the end)")
    if "d" in parts:
        with tfos.run(sc, identity, None, 2, input_mode=tfos.InputMode.SPARK) as cluster:
            results = cluster.inference(rdd)
            first_secs = timed(results.count)
            rate, ratio = paired(results.count)
        print(f"(d) inference (identity model): {rate:,.0f} rows/s = {ratio:.2f} x (a)   "
              f"[first pass {n / first_secs:,.0f} rows/s]")
    if "c" in parts:
        args = {"rows": n, "epochs": 2, "rounds": FIT_ROUNDS, "out": out}
        with tfos.run(sc, fit, args, 2, input_mode=tfos.InputMode.SPARK) as cluster:
            cluster.train(rdd, num_epochs=1 + FIT_ROUNDS * 2 * args["epochs"])  # warm-up, then 2 fits a round
        secs = [json.load(open(os.path.join(out, f"fit-{job}"))) for job in ("chief", "worker")]
        secs = {name: [max(s[name][r] for s in secs) for r in range(FIT_ROUNDS)] for name in secs[0]}
        for via in ("tfos.keras.fit", "model.fit"):
            ratio = statistics.median(m / s for m, s in zip(secs["memory"], secs[via]))
            print(f"(c) 2-worker MWMS Keras fit, Spark-fed (cached epochs) through {via}: "
                  f"{n * args['epochs'] / statistics.median(secs[via]):,.0f} rows/s, in-memory tf.data "
                  f"{n * args['epochs'] / statistics.median(secs['memory']):,.0f} rows/s, median ratio of "
                  f"{FIT_ROUNDS} rounds = {ratio:.2f}")
    if "t" in parts:
        tcp_feed(sc, rdd, out, n, paired)
    sc.stop()


def tcp_feed(sc, rdd, out, n, paired) -> None:
    """(t): a feeding task prefers the node on its own executor (a Unix socket); with that node's marker
    file gone it feeds by partition over TCP, so every row crosses the TCP feed."""
    import glob

    import tfos

    def forget_local_node(_):
        for path in glob.glob("tfos-*.node"):
            os.remove(path)
        return [os.getcwd()]

    ratios: dict[str, list[float]] = {"tls": [], "plain": []}
    rates: dict[str, list[float]] = {"tls": [], "plain": []}
    for _ in range(2):
        for mode in ("plain", "tls"):
            os.environ["TFOS_FEED_TLS"] = "1" if mode == "tls" else "0"  # read by tfos.run on the driver
            with tfos.run(sc, drain, {"api": "next_batch_arrays", "out": out}, 2,
                          input_mode=tfos.InputMode.SPARK) as cluster:
                workdirs = set(sc.parallelize(range(16), 16).flatMap(forget_local_node).collect())
                assert len(workdirs) == 2, f"both executors must forget their node: {workdirs}"
                cluster.train(rdd, balance=False)  # warm-up
                rate, ratio = paired(lambda c=cluster: c.train(rdd, balance=False))
            rates[mode].append(rate)
            ratios[mode].append(ratio)
    os.environ.pop("TFOS_FEED_TLS")
    tls, plain = statistics.median(ratios["tls"]), statistics.median(ratios["plain"])
    print(f"(t) every row over TCP: TLS {statistics.median(rates['tls']):,.0f} rows/s = {tls:.2f} x (a), plain "
          f"{statistics.median(rates['plain']):,.0f} rows/s = {plain:.2f} x (a); TLS / plain = {tls / plain:.2f}")


if __name__ == "__main__":
    main()
