#!/usr/bin/env bash
# Set up a virtual environment (if needed) and run the default test suite (what CI runs).
# Usage: bash scripts/test.sh [pytest args...]   (e.g. -m slow for the long tests)
set -euo pipefail
cd "$(dirname "$0")/.."
SPARSEYOLO_EXTRAS="[test]" source scripts/_venv.sh
exec .venv/bin/python -m pytest "$@"
