#!/usr/bin/env bash
# Sets up .venv and runs the main job: distributed Keras training of scikit-learn's
# digits on a local Spark cluster (2 executors), then prints the test accuracy.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
exec python scripts/train_digits.py "$@"
