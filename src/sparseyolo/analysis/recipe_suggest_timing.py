"""How ``recipe suggest`` times a variant: exported in the deployed precision, timed interleaved on the
chosen engine, in rounds. Tests replace :func:`time_files` with a deterministic stand-in engine."""

from __future__ import annotations

import copy
import math
import statistics
from pathlib import Path

import torch
from torch import nn

from sparseyolo.utils.errors import SparseYoloError

ROUNDS = 2  # timing rounds per variant: their spread is the noise the latency fit weighs
# rounds for the figures that decide (dense models, plans, --verify): one 5 s timing of a plan beside the
# dense model read 2.16x where four rounds of the same files read 1.89-2.06x
DECIDING_ROUNDS = 4


def qat_submodules(model: nn.Module, stem_int8: bool = True) -> list[str] | None:
    """A YOLO model's layers but its Detect head (and its first conv, with ``stem_int8=False``); None
    (everything) for other models."""
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential) or len(layers) < 3:
        return None
    return [f"model.{i}" for i in range(0 if stem_int8 else 1, len(layers) - 1)]


def export_variant(model: nn.Module, path: Path, img: int, int8: bool, engine: str, stem_int8: bool = True) -> Path:
    """An ONNX file of ``model`` in the deployed precision (int8: QDQ, or Conv-only QLinear for
    DeepSparse; the layers of :func:`qat_submodules`), with observer ranges from random inputs (latency
    does not depend on them)."""
    from sparseyolo.exporters.onnx import export_onnx

    model = model.float().eval()  # export_onnx folds BN on its own copy
    if int8:
        from sparseyolo.quantization import QATConfig, freeze_bn_stats, prepare_qat

        model = copy.deepcopy(model)  # prepare_qat works in place
        prepare_qat(
            model, qat_submodules(model, stem_int8), QATConfig(weight_bits=8, activation_bits=8, fuse="conv_bn_relus")
        )
        freeze_bn_stats(model)
        model.train()
        model(torch.rand(2, 3, img, img))
        model.eval()
    out = export_onnx(model, path, img_size=(img, img))
    if int8 and engine == "deepsparse":
        from sparseyolo.exporters.qlinear import export_qlinear

        out = export_qlinear(out, path.with_suffix(".qlinear.onnx"))
    return out


def work(
    model: nn.Module, img: int, int8: bool = False, sparse: bool = False, stem_int8: bool = True
) -> tuple[float, float]:
    """GFLOPs of ``model``'s convs and linears at ``img`` (dense, or with ``sparse`` those left after zeros),
    and the megabytes of feature maps they write, which the memory-bound ops after them scale with: one
    byte per element of a layer the int8 model quantizes, four of a float one (the first conv's output at
    full resolution costs an int8 model more than all its quantized layers' outputs together)."""
    from sparseyolo.analysis.layers import analyze_module

    analysis = analyze_module(model, (img, img), source="recipe suggest")
    flops = analysis.totals()["sparse_flops" if sparse else "flops"] or 0.0
    quantized = qat_submodules(model, stem_int8) if int8 else []
    mbytes = 0.0
    for layer in analysis.layers:
        if layer.out_shape:
            in_int8 = quantized is None or any(layer.name.startswith(f"{q}.") for q in quantized)
            mbytes += math.prod(layer.out_shape) * (1 if in_int8 else 4) / 1e6
    return float(flops) / 1e9, mbytes


def time_rounds(
    files: list[Path], engine: str, img: int, threads: int | None, time_s: float, rounds: int = ROUNDS
) -> list[list[float]]:
    """``rounds`` interleaved timings of every file, every other round in reverse order (so a file's place
    in the run averages out); per round, the latencies in the order of ``files``."""
    out = []
    for r in range(rounds):
        order = list(range(len(files)))[:: -1 if r % 2 else 1]
        ms = time_files([files[i] for i in order], engine, img, threads, time_s)
        by_file = dict(zip(order, ms, strict=True))
        out.append([by_file[i] for i in range(len(files))])
    return out


def median_ms(
    files: list[Path], engine: str, img: int, threads: int | None, time_s: float, rounds: int = DECIDING_ROUNDS
) -> tuple[list[float], list[list[float]]]:
    """Each file's median latency over ``rounds`` interleaved rounds (:func:`time_rounds`), and the rounds."""
    timed = time_rounds(files, engine, img, threads, time_s, rounds)
    return [statistics.median(r[i] for r in timed) for i in range(len(files))], timed


def time_files(files: list[Path], engine: str, img: int, threads: int | None, time_s: float) -> list[float]:
    """Median latency (ms) of each file on ``engine``, timed interleaved."""
    from sparseyolo.timing.runner import benchmark

    results = benchmark(
        [str(f) for f in files],
        [engine],
        batch_size=1,
        img=(img, img),
        threads=threads,
        time_s=time_s,
        warmup_s=0.5,
        progress=False,
        exact_files=True,
    )
    bad = [r for r in results if r.status != "ok"]
    if bad:
        raise SparseYoloError(f"recipe suggest: {engine} could not time {bad[0].model}: {bad[0].message}")
    return [float(r.latency_ms["p50"]) for r in results]
