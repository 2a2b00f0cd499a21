#!/usr/bin/env bash
# Set up a virtual environment (if needed) and run the default test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test]"
export ORT_DISABLE_TELEMETRY=1 NM_DISABLE_ANALYTICS=1 MPLBACKEND=Agg
exec .venv/bin/python -m pytest "$@"
