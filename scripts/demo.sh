#!/usr/bin/env bash
# Set up a virtual environment (if needed) and run the end-to-end demo on built-in data:
# train a baseline, prune, prune+quantize, export, benchmark and print the results table.
# Usage: bash scripts/demo.sh [sparseyolo demo args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
exec .venv/bin/sparseyolo demo "$@"
