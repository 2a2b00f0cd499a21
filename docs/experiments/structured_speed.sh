#!/usr/bin/env bash
# Speed of structured (channel) pruning + int8, YOLOv3-SPP at 512 (speed only: short coco128 runs at
# 128 px; the speed of a network depends on its layer widths, not on how well it was trained).
# Run from the repository root with the venv active; datasets/coco128.yaml points at ../shared/data/coco128.
set -euo pipefail
export ORT_DISABLE_TELEMETRY=1 NM_DISABLE_ANALYTICS=1
E=docs/experiments
C="--data datasets/coco128.yaml --img 128 --batch-size 16 --workers 2 --noval --noplots --project runs/spp --exist-ok"

# dense FP32 "baseline" (one epoch from scratch), dense int8 (one QAT epoch), channel-pruned int8
# (60% of the channels removed in multiples of 8 over one epoch, thinned, one QAT epoch)
sparseyolo train --cfg yolov3-spp --weights '' $C --epochs 1 --name base
sparseyolo train --weights runs/spp/base/weights/best.pt $C --recipe $E/spp-qat.yaml --name dense_int8
sparseyolo train --weights runs/spp/base/weights/best.pt $C --recipe $E/spp-channel-short.yaml --name channel_int8
for r in base dense_int8 channel_int8; do
    sparseyolo export --weights runs/spp/$r/weights/best.pt --img-size 512 512
done
sparseyolo analyze --weights runs/spp/channel_int8/weights/best.pt --img 512
sparseyolo benchmark runs/spp/base/weights/best.onnx runs/spp/dense_int8/weights/best.onnx \
    runs/spp/channel_int8/weights/best.onnx --engine onnxruntime,openvino --threads 2 --time 20 --warmup 3 \
    --json runs/spp/speed.json

# stop 24 (Zen 4, AVX-512 VNNI): the first conv in int8 against float, dense and half-channel YOLOv3-tiny at 416
# (random weights, seed 0; each built by stepping a 2-epoch recipe without data: a filter GMPruningModifier
# 0.2 -> 0.5 over epoch 0-1, round_to 8, for ch50; a QuantizationModifier from epoch 1, whose submodules are
# model.1 ... model.19 for the float-stem *_f0 builds; then `sparseyolo export --img-size 416 416`),
# three interleaved rounds, every other one reversed
for round in 1 2 3; do
    sparseyolo benchmark dense.onnx dense_int8.onnx dense_int8_f0.onnx ch50_int8.onnx ch50_int8_f0.onnx \
        --engine onnxruntime --threads 2 --time 10 --warmup 2 --exact-file
done
