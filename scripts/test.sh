#!/usr/bin/env bash
# Sets up .venv and runs lint and the test suite (unit tests, then real-Spark
# integration tests). Extra arguments go to pytest, e.g. ./scripts/test.sh -m "not spark".
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
ruff check tfos tests scripts  # settings in .ruff.toml
set +e
python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$code"
