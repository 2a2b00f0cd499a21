#!/usr/bin/env bash
# Resume exactness on real data: the same recipe run twice, once uninterrupted and once SIGKILLed and
# resumed; the final weights must be identical bit for bit.
#   bash docs/experiments/resume_check.sh [RECIPE [EPOCHS]]
# RECIPE (a file or a built-in recipe name) defaults to docs/experiments/resume-check.yaml (pruning,
# 4 epochs); the cut run is killed a few seconds into the epoch after checkpoint EPOCH (0-based, as the
# checkpoints' `epoch` counts) and resumed, for each EPOCH of the comma-separated EPOCHS (default 1), e.g.
#   bash docs/experiments/resume_check.sh docs/experiments/resume-check-qat.yaml 2
# kills it in the second QAT epoch, so that the resume rebuilds the QAT graph from the checkpoint.
# By default YOLOv3-tiny from the Darknet COCO weights on coco128 at 128 px (datasets/coco128.yaml pointing
# at a copy of ../shared/data/coco128); MODEL_ARGS replaces weights, data and size, e.g.
#   MODEL_ARGS="--weights runs/train/bccd-tiny-base29-stage2/weights/best.pt --data datasets/bccd/data.yaml --img 416"
# NAME names the two runs (default: the recipe's file name); KILL_AFTER is the seconds into the epoch
# (default 8). Loader workers 2. Repository root, venv active.
set -euo pipefail
export ORT_DISABLE_TELEMETRY=1 NM_DISABLE_ANALYTICS=1
RECIPE=${1:-docs/experiments/resume-check.yaml}
EPOCHS=${2:-1}
N=${NAME:-$(basename "${RECIPE%.md}" .yaml)}
MODEL_ARGS=${MODEL_ARGS:-"--weights ../shared/weights/yolov3-tiny.weights --cfg yolov3-tiny --data datasets/coco128.yaml --img 128"}
C="$MODEL_ARGS --batch-size 16 --nbs 16 --workers 2 --seed 0 --recipe $RECIPE --project runs/resume
   --noplots --no-tensorboard"
sparseyolo train $C --name "$N-ref"
LAST="runs/resume/$N-cut/weights/last.pt"
CMD="sparseyolo train $C --name $N-cut"
for EPOCH in ${EPOCHS//,/ }; do
    $CMD & pid=$!
    # kill -9 once the epoch after EPOCH (0-based, as checkpoints count) is under way
    while ! python -c "import sys, torch; sys.exit(torch.load('$LAST', weights_only=True, map_location='cpu')['epoch'] < $EPOCH)" 2>/dev/null; do
        kill -0 $pid 2>/dev/null || { echo "the cut run ended before epoch $EPOCH"; exit 1; }
        sleep 2
    done
    sleep "${KILL_AFTER:-8}"
    kill -0 $pid 2>/dev/null || { echo "the cut run finished before the kill after epoch $EPOCH: lower KILL_AFTER"; exit 1; }
    kill -9 $pid; wait $pid || true
    CMD="sparseyolo train --resume $LAST"
done
$CMD
python - "$N" <<'PY'
import sys
import torch
n = sys.argv[1]
a = torch.load(f"runs/resume/{n}-ref/weights/last.pt", weights_only=True, map_location="cpu")
b = torch.load(f"runs/resume/{n}-cut/weights/last.pt", weights_only=True, map_location="cpu")
diff = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
print(f"epochs {a['epoch']} / {b['epoch']}; tensors that differ: {len(diff)} of {len(a['model'])}", diff[:5])
PY
