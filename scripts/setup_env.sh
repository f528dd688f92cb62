#!/usr/bin/env bash
# Creates .venv with tfos and its test tools installed (idempotent). Sourced by demo.sh
# and test.sh; needs only Python 3.11 and Java 17 or 21 on the machine.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if ! command -v java >/dev/null 2>&1 && [ -z "${JAVA_HOME:-}" ]; then
  echo "error: Java not found. Spark 4 needs Java 17 or 21: install it (e.g. apt-get install" \
       "openjdk-17-jre-headless) or set JAVA_HOME, then run this again." >&2
  exit 1
fi
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 10))'; then
  echo "error: $python is $("$python" --version 2>&1); tfos needs Python 3.10 or newer (3.11 tested)." >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.tfos-installed
want=$(cat setup.cfg setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing tfos and its dependencies into .venv (a few minutes the first time)..."
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  echo "$want" > "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
export PYSPARK_PYTHON="$root/.venv/bin/python"
export PYSPARK_DRIVER_PYTHON="$root/.venv/bin/python"
