#!/usr/bin/env bash
# Stops the standalone cluster started by scripts/start_spark.sh: workers (and their
# executors) first, then the master. Waits up to 30 s for each process to exit.
set -euo pipefail
dir=${TFOS_SPARK_DIR:-/tmp/tfos-spark}
stop() {
  local pidfile=$1 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$pidfile"
}
for pidfile in "$dir"/worker-*.pid; do stop "$pidfile"; done
stop "$dir/master.pid"
echo "stopped the Spark cluster of $dir"
