"""The chaos matrix on namespaced hosts, N times, as a table (root, Linux; needs `ip netns`).

Makes a Spark master + driver host and two worker hosts (network namespaces on a bridge,
198.18.0.10-12), injects each fault of tests/multihost/scenarios.py N times and prints, per
fault: runs, detected within the bound (an error naming node and host within 10 s, for the
faults that must fail the run; a finished run for the ones tfos must survive), rows lost and
doubled (fed and inference runs, checked by row id), and runs that left a process or file
behind on any host. Removes every namespace, link and process it made, even on Ctrl-C.

    flock /tmp/tfos-spark.lock .venv/bin/python scripts/chaos.py --runs 5 [--faults kill_node,cut_link]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.multihost.hosts import Hosts, SparkCluster, unavailable  # noqa: E402
from tests.multihost.scenarios import DETECT_BOUND, Matrix  # noqa: E402

#: Faults tfos must survive (the run finishes); the others must fail it with an error naming node and host.
RECOVER = {"stop_driver", "task_retry", "early_reader"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each fault")
    parser.add_argument("--faults", default=",".join(Matrix.FAULTS), help="comma-separated subset of "
                        + ", ".join(Matrix.FAULTS))
    parser.add_argument("-v", "--verbose", action="store_true", help="print each run's outcome")
    args = parser.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(Matrix.FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; choose from {', '.join(Matrix.FAULTS)}")
    reason = unavailable()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    rows = []
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="tfos-chaos-"))
    os.chmod(base, 0o755)
    with Hosts(base) as hosts, SparkCluster(hosts) as cluster:
        matrix = Matrix(hosts, cluster, base)
        for fault in faults:
            outcomes = []
            for run in range(args.runs):
                outcome = getattr(matrix, fault)()
                outcomes.append(outcome)
                if args.verbose or (outcome.ok if fault not in RECOVER else not outcome.ok):
                    print(f"[{fault} run {run + 1}] {outcome.summary()[:2000]}", file=sys.stderr, flush=True)
                if fault == "cut_link":
                    cluster.wait_workers(len(hosts.workers), 120)
            rows.append(tabulate(fault, outcomes))
    print(f"\n{len(faults)} faults x {args.runs} runs on 3 namespaced hosts in {time.monotonic() - started:.0f} s "
          f"(detection bound {DETECT_BOUND:.0f} s)\n")
    header = ("fault", "runs", "detected within bound", "rows lost", "rows doubled", "leftovers")
    table = [header, *rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return 0


def tabulate(fault: str, outcomes: list) -> tuple:
    name = outcomes[0].fault
    if fault in RECOVER:
        good = sum(o.ok for o in outcomes)
        detected = f"{good}/{len(outcomes)} finished"
    else:
        good = sum(bool(o.detected) for o in outcomes)
        secs = [o.detect_secs for o in outcomes if o.detect_secs is not None]
        detected = f"{good}/{len(outcomes)}" + (f" ({min(secs):.1f}-{max(secs):.1f} s)" if secs else "")
    counted = [o for o in outcomes if o.lost is not None]
    lost = sum(o.lost for o in counted) if counted else "n/a"
    doubled = sum(o.doubled for o in counted) if counted else "n/a"
    left = sum(bool(o.leftovers) for o in outcomes)
    return name, len(outcomes), detected, lost, doubled, left


if __name__ == "__main__":
    sys.exit(main())
