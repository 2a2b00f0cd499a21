# Sourced by scripts/test.sh and scripts/demo.sh: create .venv if needed and install the package
# with the extras given in SPARSEYOLO_EXTRAS (e.g. "[test]").
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".${SPARSEYOLO_EXTRAS:-}"
export ORT_DISABLE_TELEMETRY=1 NM_DISABLE_ANALYTICS=1 MPLBACKEND=Agg
