"""Spark Connect against a classic SparkContext: the same DataFrame feed, side by side in one run.

Two Spark applications live through the whole run, each local-cluster[2,1,2048]: a classic
SparkContext in this process and a Spark Connect server in its own JVM, which this process
reaches as a notebook would (sc://127.0.0.1:PORT). Both read the same generated DataFrame
(MNIST-shaped rows: 784 float32 features + a label, cached), and the rounds alternate so
both see the same drift of the machine. Prints, per backend:
  (a) Spark's own drain of the cached DataFrame (a mapInArrow task counting rows)
  (b) a one-epoch train() of that DataFrame, feed only, unbalanced and balanced (balanced
      first counts each partition's rows; the rows themselves stay in the JVM for that)
  cluster start (run() until every node registered) and shutdown
and the Connect / classic ratios (target: feed >= 0.9 x, cluster start <= classic + 1 s).

    python scripts/bench_connect.py [--rows 200000] [--partitions 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

BATCH = 128
CONF = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1", "spark.driver.memory": "2g", "spark.locality.wait": "0",
        "spark.pyspark.python": sys.executable}


def drain(args, ctx):
    feed = ctx.get_data_feed()
    while (batch := feed.next_batch_arrays(BATCH)) is not None:
        del batch


def count_rows(batches):
    import pyarrow as pa

    yield pa.RecordBatch.from_pydict({"n": [sum(b.num_rows for b in batches)]})


def start_connect_server(log_path: str) -> tuple[subprocess.Popen, str]:
    import pyspark

    home = os.path.dirname(pyspark.__file__)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = {**CONF, "spark.master": "local-cluster[2,1,2048]", "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(port)}
    argv = [os.path.join(home, "bin", "spark-submit"), "--class",
            "org.apache.spark.sql.connect.service.SparkConnectServer"]
    for key, value in conf.items():
        argv += ["--conf", f"{key}={value}"]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, SPARK_HOME=home),
                                  start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"sc://127.0.0.1:{port}"
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Connect server did not start; see {log_path}") from None
            time.sleep(0.5)


def main() -> None:
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    import tfos

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    n = opts.rows
    server, url = start_connect_server(os.path.join(tempfile.mkdtemp(prefix="tfos-bench-connect-"), "server.log"))
    try:
        sc = SparkContext(conf=SparkConf().setMaster("local-cluster[2,1,2048]").setAppName("tfos-bench-classic")
                          .setAll(list(CONF.items())))
        sc.setLogLevel("ERROR")
        sessions = {"classic": SparkSession(sc), "connect": ConnectSession.builder.remote(url).getOrCreate()}
        frames = {}
        for name, spark in sessions.items():
            df = spark.range(0, n, 1, opts.partitions).selectExpr(
                "array_repeat(cast((id % 255) / 255.0 as float), 784) AS x", "id % 10 AS y").cache()
            df.count()
            frames[name] = df

        def timed(fn) -> float:
            started = time.perf_counter()
            fn()
            return time.perf_counter() - started

        secs: dict[str, dict[str, list[float]]] = {name: {} for name in sessions}
        for _ in range(opts.rounds):
            for name, spark in sessions.items():
                df, took = frames[name], secs[name]
                took.setdefault("drain", []).append(timed(lambda d=df: d.mapInArrow(count_rows, "n long").collect()))
                started = time.perf_counter()
                cluster = tfos.run(spark, drain, None, 2, input_mode=tfos.InputMode.SPARK, progress=False)
                took.setdefault("start", []).append(time.perf_counter() - started)
                for balance in (False, True):
                    cluster.train(df, balance=balance)  # warm: Python workers and connections up
                    took.setdefault(f"balance={balance}", []).append(
                        timed(lambda c=cluster, d=df, b=balance: c.train(d, balance=b)))
                took.setdefault("shutdown", []).append(timed(cluster.shutdown))
        med = {name: {key: statistics.median(values) for key, values in took.items()} for name, took in secs.items()}
        for name, m in med.items():
            print(f"{name}: (a) Spark drain {n / m['drain']:,.0f} rows/s; one-epoch train() unbalanced "
                  f"{n / m['balance=False']:,.0f} rows/s = {m['drain'] / m['balance=False']:.2f} x (a), balanced "
                  f"{n / m['balance=True']:,.0f} rows/s = {m['drain'] / m['balance=True']:.2f} x (a); cluster start "
                  f"{m['start']:.2f}s, shutdown {m['shutdown']:.2f}s")
        for key in ("balance=False", "balance=True"):
            ratios = [c / r for c, r in zip(secs["classic"][key], secs["connect"][key])]
            print(f"Connect / classic, one-epoch train() {key.replace('balance=', 'balanced=')}: median of "
                  f"{opts.rounds} rounds {statistics.median(ratios):.2f} x")
        print(f"cluster start: Connect {med['connect']['start']:.2f}s vs classic {med['classic']['start']:.2f}s "
              f"({med['connect']['start'] - med['classic']['start']:+.2f}s)")
        sessions["connect"].stop()
        sc.stop()
    finally:
        os.killpg(server.pid, 15)
        server.wait(60)


if __name__ == "__main__":
    main()
