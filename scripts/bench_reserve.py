"""Benchmark: a run on a held reservation vs a fresh ``tfos.run`` in a new Spark application.

Both measure the same span: from the call (a new driver process starting, or
``AttachedCluster.run``) to ``main_fun`` starting on every node (the latest of the
nodes' start times). The fresh start pays Spark application start-up, executor
launch, reservation and node start; a run on a reservation pays only the node
processes' start. Runs side by side on one machine, medians of several rounds::

    python scripts/bench_reserve.py [--rounds 5] [--master local-cluster[2,1,1024]]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FRESH = textwrap.dedent("""
    import sys, time
    t0 = time.time()
    from pyspark import SparkConf, SparkContext
    import tfos
    sys.path.insert(0, {scripts!r})
    import cloudpickle
    import bench_reserve
    from bench_reserve import record_start

    cloudpickle.register_pickle_by_value(bench_reserve)  # executors need not find scripts/

    conf = (SparkConf().setMaster({master!r}).setAppName("bench-fresh").set("spark.ui.enabled", "false")
            .set("spark.driver.host", "127.0.0.1").set("spark.driver.bindAddress", "127.0.0.1")
            .set("spark.pyspark.python", sys.executable))
    sc = SparkContext(conf=conf)
    tfos.run(sc, record_start, {out!r}, 2, progress=False).shutdown()
    sc.stop()
    print("T0", t0)
""")


def record_start(out: str, ctx: object) -> None:
    """main_fun: notes when it started on this node."""
    with open(os.path.join(out, f"{os.getpid()}.start"), "w") as f:
        f.write(repr(time.time()))


def latest_start(out: str) -> float:
    starts = [float(open(p).read()) for p in glob.glob(os.path.join(out, "*.start"))]
    assert len(starts) == 2, starts
    return max(starts)


def fresh_start(master: str) -> float:
    out = tempfile.mkdtemp(prefix="bench-fresh-")
    code = FRESH.format(scripts=os.path.join(ROOT, "scripts"), master=master, out=out)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=out)
    if result.returncode:
        raise SystemExit(f"the fresh driver failed:\n{result.stderr[-3000:]}")
    t0 = float(result.stdout.split("T0")[-1].split()[0])
    return latest_start(out) - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--master", default="local-cluster[2,1,1024]")
    opts = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import cloudpickle

    import tfos

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    work = tempfile.mkdtemp(prefix="bench-reserve-")
    handle = os.path.join(work, "bench.handle")
    subprocess.run([sys.executable, "-m", "tfos.cli", "reserve", "--master", opts.master, "--num-executors", "2",
                    "--handle", handle, "--detach", "--conf", "spark.ui.enabled=false",
                    "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1"],
                   check=True, cwd=work, stdout=subprocess.DEVNULL)
    fresh, first, again = [], [], []
    try:
        cluster = tfos.attach(handle)
        for i in range(opts.rounds):
            fresh.append(fresh_start(opts.master))
            for series in (first, again) if i == 0 else (again,):
                out = tempfile.mkdtemp(prefix="bench-run-")
                called = time.time()
                cluster.run(record_start, out)
                series.append(latest_start(out) - called)
            print(f"round {i + 1}: fresh tfos.run {fresh[-1]:.2f}s, run on the reservation {again[-1]:.3f}s",
                  flush=True)
    finally:
        tfos.attach(handle).release()
    f, a = statistics.median(fresh), statistics.median(again)
    print(json.dumps({"fresh_tfos_run_s": round(f, 2), "first_run_on_reservation_s": round(first[0], 3),
                      "next_runs_on_reservation_s": round(a, 3), "ratio": round(a / f, 3)}))
    print(f"\n| call to main_fun on every node | seconds (median of {opts.rounds}) | vs fresh |")
    print("|---|---|---|")
    print(f"| fresh tfos.run in a new Spark application | {f:.2f} | 1.00 |")
    print(f"| first run on a reservation | {first[0]:.3f} | {first[0] / f:.3f} |")
    print(f"| next runs on the reservation | {a:.3f} | {a / f:.3f} |")


if __name__ == "__main__":
    main()
