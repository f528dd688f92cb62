#!/usr/bin/env bash
# Starts a Spark standalone cluster on this machine: one master and N workers (1 core,
# 1 GiB each by default), with spark-class, since the pip pyspark ships no sbin scripts.
#
#   scripts/start_spark.sh [N]          # N workers (default 2); prints the master URL
#   scripts/stop_spark.sh               # stops them
#
# Settings (environment): TFOS_SPARK_DIR (state, logs; default /tmp/tfos-spark),
# TFOS_SPARK_MASTER_PORT (7077), TFOS_SPARK_UI_PORT (8080), TFOS_SPARK_WORKER_CORES (1),
# TFOS_SPARK_WORKER_MEMORY (1g), TFOS_SPARK_GPU_DISCOVERY (a GPU discovery script: each
# worker then offers the GPUs it lists, see conf/gpu_discovery.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
workers=${1:-2}
dir=${TFOS_SPARK_DIR:-/tmp/tfos-spark}
port=${TFOS_SPARK_MASTER_PORT:-7077}
ui_port=${TFOS_SPARK_UI_PORT:-8080}
spark_home=$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
class="$spark_home/bin/spark-class"
if [ -f "$dir/master.pid" ] && kill -0 "$(cat "$dir/master.pid")" 2>/dev/null; then
  echo "error: a cluster is already running from $dir; run scripts/stop_spark.sh first" >&2
  exit 1
fi
mkdir -p "$dir"
rm -f "$dir"/*.pid
export SPARK_LOG_DIR=$dir SPARK_LOCAL_IP=127.0.0.1
worker_opts=""
if [ -n "${TFOS_SPARK_GPU_DISCOVERY:-}" ]; then
  count=$("$TFOS_SPARK_GPU_DISCOVERY" | python -c 'import json, sys; print(len(json.load(sys.stdin)["addresses"]))')
  worker_opts="-Dspark.worker.resource.gpu.amount=$count -Dspark.worker.resource.gpu.discoveryScript=$TFOS_SPARK_GPU_DISCOVERY"
fi

nohup "$class" org.apache.spark.deploy.master.Master --host 127.0.0.1 --port "$port" --webui-port "$ui_port" \
  > "$dir/master.log" 2>&1 &
echo $! > "$dir/master.pid"
for i in $(seq 1 "$workers"); do
  mkdir -p "$dir/work-$i"
  SPARK_WORKER_OPTS="$worker_opts" nohup "$class" org.apache.spark.deploy.worker.Worker \
    --host 127.0.0.1 --cores "${TFOS_SPARK_WORKER_CORES:-1}" --memory "${TFOS_SPARK_WORKER_MEMORY:-1g}" \
    --work-dir "$dir/work-$i" --webui-port 0 "spark://127.0.0.1:$port" > "$dir/worker-$i.log" 2>&1 &
  echo $! > "$dir/worker-$i.pid"
done

# Ready when the master reports every worker alive (give up after 120 s).
python - "$ui_port" "$workers" "$dir" <<'PY'
import json, sys, time, urllib.request
ui_port, want, state = sys.argv[1], int(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as reply:
            if json.load(reply).get("aliveworkers", 0) >= want:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(f"error: the Spark master did not report {want} live workers within 120 s; see {state}/*.log")
PY
echo "spark://127.0.0.1:$port"
