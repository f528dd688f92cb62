#!/usr/bin/env bash
# Sets up .venv and runs the main job: Spark-fed distributed Keras training of
# scikit-learn's digits from a DataFrame on a local Spark cluster (2 executors), with
# tfos's live per-node progress view, then Spark-fed inference; prints the test accuracy.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
exec python scripts/train_digits_spark.py "$@"
