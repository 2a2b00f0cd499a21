#!/usr/bin/env bash
# Set up a virtual environment (if needed) and run the end-to-end demo on built-in data:
# train a baseline, prune, prune+quantize, export, benchmark and print the results table.
# Usage: bash scripts/demo.sh [sparseyolo demo args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e .
export ORT_DISABLE_TELEMETRY=1 NM_DISABLE_ANALYTICS=1 MPLBACKEND=Agg
exec .venv/bin/sparseyolo demo "$@"
