#!/usr/bin/env bash
# Create a separate virtual environment for DeepSparse 1.8.0 (its last installable release).
#
# DeepSparse 1.8.0 pins onnx<1.15, numpy<2 and needs setuptools<81 (pkg_resources), which clash with the
# main environment (numpy 2, current onnx). `sparseyolo benchmark --engine deepsparse` therefore runs
# DeepSparse in a worker subprocess using this venv's interpreter when `import deepsparse` fails in the
# current one. Point SPARSEYOLO_DEEPSPARSE_PYTHON at another interpreter to override the location.
#
# Usage: scripts/setup_deepsparse.sh [VENV_DIR]     (default: ./.venv-deepsparse)
# Env:   PYTHON=python3.11 (interpreter to build the venv with; DeepSparse 1.8 supports 3.8-3.11)
set -euo pipefail

VENV_DIR="${1:-.venv-deepsparse}"
PYTHON="${PYTHON:-python3.11}"
export NM_DISABLE_ANALYTICS=1

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "setup_deepsparse: error: '$PYTHON' not found; DeepSparse 1.8.0 needs Python 3.8-3.11 (set PYTHON=...)" >&2
    exit 2
fi
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$PYVER" in
    3.8|3.9|3.10|3.11) ;;
    *) echo "setup_deepsparse: error: $PYTHON is Python $PYVER; DeepSparse 1.8.0 supports 3.8-3.11" >&2; exit 2 ;;
esac
if [ "$(uname -s)" != "Linux" ]; then
    echo "setup_deepsparse: error: DeepSparse wheels exist only for Linux (x86_64 / aarch64)" >&2
    exit 2
fi

echo "setup_deepsparse: creating $VENV_DIR with $PYTHON ($PYVER)"
"$PYTHON" -m venv "$VENV_DIR"
PY="$VENV_DIR/bin/python"
"$PY" -m pip install --quiet --upgrade pip
# Pins first so the resolver never reaches for numpy 2 / new onnx / setuptools without pkg_resources.
"$PY" -m pip install --quiet "setuptools<81" "numpy<2" "onnx<1.15"
"$PY" -m pip install --quiet "deepsparse==1.8.0" "numpy<2" "onnx<1.15" "setuptools<81"

echo "setup_deepsparse: checking the install"
"$PY" - <<'PYCHECK'
import os
os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
import deepsparse, numpy, onnx
print(f"deepsparse {deepsparse.__version__}, numpy {numpy.__version__}, onnx {onnx.__version__}")
PYCHECK
echo "setup_deepsparse: done. Interpreter: $(cd "$VENV_DIR" && pwd)/bin/python"
