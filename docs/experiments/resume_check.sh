#!/usr/bin/env bash
# Resume exactness on real data: the same 4-epoch recipe run twice, once uninterrupted and once
# SIGKILLed during its third epoch and resumed; the final weights must be identical bit for bit.
# YOLOv3-tiny from the Darknet COCO weights, coco128 at 128 px, loader workers 2. Repository root, venv active.
set -euo pipefail
export ORT_DISABLE_TELEMETRY=1 NM_DISABLE_ANALYTICS=1
C="--weights ../shared/weights/yolov3-tiny.weights --cfg yolov3-tiny --data datasets/coco128.yaml --img 128
   --batch-size 16 --nbs 16 --workers 2 --seed 0 --recipe docs/experiments/resume-check.yaml --project runs/resume
   --noplots --no-tensorboard"
sparseyolo train $C --name ref
sparseyolo train $C --name cut & pid=$!
# kill -9 once the third epoch (index 2) is under way: epoch 1's checkpoint exists and has been replaced once
while ! python -c "import sys, torch; sys.exit(torch.load('runs/resume/cut/weights/last.pt', weights_only=True, map_location='cpu')['epoch'] < 1)" 2>/dev/null; do sleep 2; done
sleep 8; kill -9 $pid || true; wait $pid || true
sparseyolo train --resume runs/resume/cut/weights/last.pt
python - <<'PY'
import torch
a = torch.load("runs/resume/ref/weights/last.pt", weights_only=True, map_location="cpu")
b = torch.load("runs/resume/cut/weights/last.pt", weights_only=True, map_location="cpu")
diff = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
print(f"epochs {a['epoch']} / {b['epoch']}; tensors that differ: {len(diff)} of {len(a['model'])}", diff[:5])
PY
