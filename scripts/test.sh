#!/usr/bin/env bash
# Sets up .venv and runs lint and the test suite (unit tests, then real-Spark
# integration tests). Extra arguments go to pytest, e.g. ./scripts/test.sh -m "not spark".
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
ruff check --line-length 120 --select E,F,W,I,B,UP --ignore B905 --target-version py310 tfos tests scripts
set +e
python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$code"
