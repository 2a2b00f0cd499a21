#!/usr/bin/env bash
# Issue #13 acceptance figure: DeepSparse on the default int8 export (.qlinear.onnx, Conv only) vs
# ONNX Runtime dense FP32, YOLOv3-SPP at 512, batch 1, 2 threads, one interleaved benchmark call.
#
# Speed depends on layer shapes and the sparsity pattern, not on how well the weights are trained,
# so the sparse-quantized model is built without training: the dense checkpoint of
# structured_speed.sh (runs/spp/base/weights/best.pt, EMA weights) is pruned one-shot to the
# published SparseML targets of yolov3-spp.test.md ([1,4] blocks, 40/75/80/85 % per layer) by
# stepping the recipe's manager to the epoch where its QuantizationModifier starts (QAT of
# model.0-27, Detect head in float), and the observers are fed random 512x512 batches.
# Results: docs/experiments/spp_deepsparse.md.
#
# Run from the repository root. DeepSparse 1.8 lives in .venv-deepsparse (scripts/setup_deepsparse.sh);
# `sparseyolo benchmark --engine deepsparse` reaches it through a worker process.
set -euo pipefail
export ORT_DISABLE_TELEMETRY=1 NM_DISABLE_ANALYTICS=1
PY=.venv/bin/python
SY=.venv/bin/sparseyolo
RECIPE=${RECIPE:-/work/shared/recipes/sparseml/yolov3-spp.test.md}
D=runs/spp/ds
mkdir -p $D

# 1-2. dense checkpoint (same weights the pruned model starts from) and the pruned + QAT checkpoint
$PY - "$RECIPE" "$D" <<'EOF'
import sys
from pathlib import Path

import torch

from sparseyolo.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from sparseyolo.quantization import freeze_bn_stats
from sparseyolo.recipe import Recipe

recipe_path, out = sys.argv[1], Path(sys.argv[2])
torch.manual_seed(0)
model = model_from_checkpoint(load_checkpoint("runs/spp/base/weights/best.pt"))  # EMA weights
save_checkpoint(out / "dense.pt", model=model)

recipe = Recipe.load(recipe_path)
manager = recipe.manager()
opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)  # the recipe's lr/wd modifiers need one
manager.attach(model, opt, steps_per_epoch=2)  # 2 steps/epoch: the pruning updates every 0.5 epoch
while not manager.qat_active:  # no optimizer steps: the masks follow the (fixed) weight magnitudes
    manager.step()
assert manager.pruning_done, manager
print(manager, "epoch", manager.epoch)
freeze_bn_stats(model)  # random data must not move the BN statistics
model.train()
with torch.no_grad():
    for _ in range(4):
        model(torch.rand(1, 3, 512, 512))
manager._apply_masks()
rows = manager.sparsity_report()
pruned = [r for r in rows if r["target"] is not None]
z = sum(r["sparsity"] * r["numel"] for r in pruned)
n = sum(r["numel"] for r in pruned)
zall = sum(r["sparsity"] * r["numel"] for r in rows)
nall = sum(r["numel"] for r in rows)
print(f"pruned tensors: {len(pruned)}  zeros {z / n:.4f} of their {n} weights; "
      f"all conv weights: {zall / nall:.4f} of {nall}")
state = manager.state_dict()
print("qat state:", state.get("qat"))
save_checkpoint(out / "pruned_qat.pt", model=model, recipe_state=state)
EOF

# 3. exports: dense FP32; int8 QDQ + default .qlinear.onnx (Conv only); all-ops .qlinear.onnx copy
$SY export --weights $D/dense.pt --img-size 512 512
$SY export --weights $D/pruned_qat.pt --img-size 512 512
mkdir -p $D/allops
cp $D/pruned_qat.pt $D/allops/pruned_qat_allops.pt
$SY export --weights $D/allops/pruned_qat_allops.pt --img-size 512 512 \
    --qlinear-ops Conv,Add,LeakyRelu,Concat,MaxPool,Resize,Pad
cp $D/allops/pruned_qat_allops.qlinear.onnx $D/pruned_qat_allops.qlinear.onnx
$SY analyze --weights $D/pruned_qat.pt --img 512 --no-plot --save-dir $D/analyze

# 4. one interleaved benchmark, each file as named (--exact-file)
uptime
$SY benchmark $D/dense.onnx $D/pruned_qat.onnx $D/pruned_qat.qlinear.onnx $D/pruned_qat_allops.qlinear.onnx \
    --engine onnxruntime,deepsparse --threads 2 --time 30 --warmup 5 --exact-file --json $D/spp_ds.json
uptime

# 5. follow-up (see the .md): why DeepSparse's int8 is slow here. The same masks without QAT (sparse
#    FP32), and DeepSparse's own view of each file (fraction of the graph it runs itself).
$PY - "$RECIPE" "$D" <<'EOF'
import sys
from pathlib import Path

import torch

from sparseyolo.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from sparseyolo.recipe import Recipe

recipe_path, out = sys.argv[1], Path(sys.argv[2])
model = model_from_checkpoint(load_checkpoint(out / "dense.pt"))
manager = Recipe.load(recipe_path).manager()
manager.attach(model, torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9), steps_per_epoch=2)
while not manager.pruning_done:
    manager.step()
assert not manager.qat_active, manager
print(manager)
save_checkpoint(out / "pruned_fp32.pt", model=model)  # no recipe_state: a plain float checkpoint
EOF
$SY export --weights $D/pruned_fp32.pt --img-size 512 512
for f in dense pruned_fp32 pruned_qat pruned_qat.qlinear pruned_qat_allops.qlinear; do
    .venv-deepsparse/bin/python -c "import sys, deepsparse; e = deepsparse.compile_model(sys.argv[1], 1, num_cores=2); \
print(sys.argv[1], 'fraction_of_supported_ops', e.fraction_of_supported_ops)" $D/$f.onnx 2>&1 | grep -E "fraction|VNNI"
done

# 6. repeat of the headline pair, plus sparse FP32 on both engines (default DeepSparse settings)
uptime
$SY benchmark $D/dense.onnx $D/pruned_fp32.onnx $D/pruned_qat.qlinear.onnx \
    --engine onnxruntime,deepsparse --threads 2 --time 30 --warmup 5 --exact-file --json $D/spp_ds_2.json
uptime
# 7. DeepSparse's faster (less exact) int8 emulation on CPUs without VNNI, as its compile warning suggests
uptime
NM_FAST_VNNI_EMULATION=1 $SY benchmark $D/dense.onnx $D/pruned_qat.qlinear.onnx $D/pruned_qat_allops.qlinear.onnx \
    --engine onnxruntime,deepsparse --threads 2 --time 30 --warmup 5 --exact-file --json $D/spp_ds_fastvnni.json
uptime
# 8. the step-6 set at 1 thread: no thread barriers, so contention from the busy machine weighs less
uptime
$SY benchmark $D/dense.onnx $D/pruned_fp32.onnx $D/pruned_qat.qlinear.onnx \
    --engine onnxruntime,deepsparse --threads 1 --time 30 --warmup 5 --exact-file --json $D/spp_ds_1thread.json
uptime
# 9. where DeepSparse spends the time (per-layer, 1 core, 3 iterations; approximate on a busy machine)
for f in pruned_fp32 pruned_qat.qlinear; do
    .venv-deepsparse/bin/deepsparse.debug_analysis $D/$f.onnx -ncores 1 -wi 1 -bi 3 -b 1 > $D/debug_analysis.$f.txt 2>&1
done
