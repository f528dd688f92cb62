"""A tfos driver program for the multi-host tier (driver: runs in the master's namespace).

    ip netns exec tfosmh-master python tests/multihost/driver.py SCENARIO OUT_DIR MASTER [JSON OPTIONS]

Runs one scenario on the standalone cluster at MASTER, lets its nodes write what they saw
(pids, TF_CONFIG, the row ids they took) into OUT_DIR, which every "host" shares, and
writes OUT_DIR/result.json: ``ok``, the error's type and message and the time it reached
this driver (``t_error``, seconds since the epoch, comparable with the test's own clock).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

ROWS = 4000  # per fed scenario, in PARTITIONS partitions
PARTITIONS = 3
PAYLOAD = 64  # float32s per row besides its id: rows big enough for several feed chunks a partition


def _write(out: str, name: str, data: object) -> None:
    tmp = os.path.join(out, f".{name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, os.path.join(out, name))


def _ready(args: dict, ctx) -> None:
    import psutil

    me = psutil.Process()
    connections = me.net_connections(kind="tcp") if hasattr(me, "net_connections") else me.connections(kind="tcp")
    _write(args["out"], f"ready-{ctx.job_name}-{ctx.task_index}.json",
           {"pid": os.getpid(), "job": ctx.job_name, "index": ctx.task_index,
            "tf_config": json.loads(os.environ.get("TF_CONFIG", "{}")),
            "listening": sorted(c.laddr[1] for c in connections if c.status == psutil.CONN_LISTEN),
            "tfos": sys.modules["tfos"].__file__})


# ---- node functions (run on executors, pickled by value with this script) --------------------
def hold_fun(args, ctx):
    """Idles (polling the driver, as every node does) until OUT/release appears or ``hold`` seconds pass."""
    _ready(args, ctx)
    deadline = time.monotonic() + args.get("hold", 60)
    while time.monotonic() < deadline and not os.path.exists(os.path.join(args["out"], "release")):
        time.sleep(0.2)


def mwms_fun(args, ctx):
    """MultiWorkerMirroredStrategy on data each node reads itself; writes its final weights' checksum."""
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    _ready(args, ctx)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    digits = load_digits()
    x, y = (digits.data / 16.0).astype("float32"), digits.target.astype("int64")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(2048, seed=ctx.task_index).repeat()
    dataset = dataset.batch(32 * ctx.num_workers)
    with strategy.scope():
        model = tf.keras.Sequential([tf.keras.Input(shape=(64,)), tf.keras.layers.Dense(32, activation="relu"),
                                     tf.keras.layers.Dense(10)])
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01), metrics=["accuracy"],
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(dataset, epochs=3, steps_per_epoch=25, verbose=0)
    checksum = float(sum(np.abs(w).sum() for w in model.get_weights()))
    _write(args["out"], f"trained-{ctx.job_name}-{ctx.task_index}.json",
           {"checksum": checksum, "accuracy": float(history.history["accuracy"][-1])})


def fed_fun(args, ctx):
    """Reads every row fed to it (all epochs) and writes the ids, in the order taken."""
    _ready(args, ctx)
    feed = ctx.get_data_feed()
    ids = []
    while (batch := feed.next_batch_arrays(97)) is not None:
        ids += [int(i) for i in batch[0]]
    _write(args["out"], f"ids-{ctx.job_name}-{ctx.task_index}.json", {"pid": os.getpid(), "ids": ids})


def infer_fun(args, ctx):
    """Answers every row with its id times two."""
    _ready(args, ctx)
    feed = ctx.get_data_feed(train_mode=False)
    while (batch := feed.next_batch_arrays(64)) is not None:
        feed.batch_results(batch[0] * 2)


# ---- data ------------------------------------------------------------------------------------
def rows(sc, fail_once: str = ""):
    """ROWS rows ``(id, payload)``; with ``fail_once`` (a folder) partition 0's first attempt fails after half its
    rows, leaving a file there that says so."""
    import numpy as np

    def partition(index, ids):
        from pyspark import TaskContext

        ids = list(ids)
        fail = fail_once and index == 0 and TaskContext.get().attemptNumber() == 0
        for n, i in enumerate(ids):
            if fail and n == len(ids) // 2:
                time.sleep(1.0)  # the rows before this have reached the node
                open(os.path.join(fail_once, f"injected-{TaskContext.get().stageId()}"), "w").close()
                raise RuntimeError(f"injected failure in partition {index} after {n} rows")
            yield (np.int64(i), np.full(PAYLOAD, i, dtype=np.float32))

    return sc.parallelize(range(ROWS), PARTITIONS).mapPartitionsWithIndex(partition)


# ---- scenarios -------------------------------------------------------------------------------
def scenario(name: str, sc, opts: dict, result: dict) -> None:
    import tfos

    args = {"out": opts["out"], "hold": opts.get("hold", 60)}
    spark_mode = name in ("fed", "task_retry", "inference", "early_reader")
    main_fun = {"mwms": mwms_fun, "fed": fed_fun, "task_retry": fed_fun, "inference": infer_fun,
                "early_reader": infer_fun}.get(name, hold_fun)
    mode = tfos.InputMode.SPARK if spark_mode else tfos.InputMode.TENSORFLOW
    with tfos.run(sc, main_fun, args, 2, input_mode=mode, reservation_timeout=120, progress=False) as cluster:
        result["cluster_spec"] = cluster.cluster_spec
        if name == "fed":
            cluster.train(rows(sc), num_epochs=2)
        elif name == "task_retry":
            cluster.train(rows(sc, fail_once=args["out"]), num_epochs=1)
        elif name in ("inference", "early_reader"):
            if name == "early_reader":
                result["first"] = [int(v) for v in cluster.inference(rows(sc).map(lambda r: r[0])).take(3)]
            answers = cluster.inference(rows(sc).map(lambda r: r[0])).collect()
            result["answers"] = [int(v) for v in answers]


def main(argv: list[str]) -> int:
    name, out, master = argv[:3]
    opts = dict(json.loads(argv[3]) if len(argv) > 3 else {}, out=out)
    result: dict = {"ok": False, "t_start": time.time()}
    from pyspark import SparkConf, SparkContext  # this script is __main__: its functions are pickled by value

    conf = (SparkConf().setMaster(master).setAppName(f"tfos-multihost-{name}")
            .set("spark.ui.enabled", "false").set("spark.ui.showConsoleProgress", "false")
            .set("spark.executor.cores", "1").set("spark.task.cpus", "1").set("spark.cores.max", "2")
            .set("spark.executor.memory", "768m").set("spark.locality.wait", "0")
            .set("spark.task.maxFailures", str(opts.get("max_failures", 1)))
            .set("spark.pyspark.python", sys.executable)
            .set("spark.executorEnv.TFOS_ORPHAN_TIMEOUT_SECS", "15")
            .set("spark.executorEnv.TFOS_FEED_CHUNK_BYTES", "8192"))
    for key, value in opts.get("executor_env", {}).items():
        conf.set(f"spark.executorEnv.{key}", value)
    sc = SparkContext(conf=conf)
    sc.setLogLevel("ERROR")
    try:
        sc.parallelize(range(2), 2).count()  # both executors up before the clock starts
        scenario(name, sc, opts, result)
        result["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - the test judges every outcome
        result.update(t_error=time.time(), error=type(exc).__name__, message=str(exc),
                      traceback=traceback.format_exc()[-4000:])
    finally:
        result["t_end"] = time.time()
        _write(out, "result.json", result)
        sc.stop()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
