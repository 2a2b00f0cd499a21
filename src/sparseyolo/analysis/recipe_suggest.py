"""``recipe suggest``: a channel-pruning recipe for a speed-up target, from what the engine measures.

For each prunable channel group (channels that must go together, from the model's traced graph):

1. *latency*: the whole model, with only that group thinned to a few kept fractions, is exported and
   timed on the chosen engine (interleaved with the unpruned model, FP32 or int8), so the saving of
   each group is what that engine really gives, fixed costs and all;
2. *sensitivity*: the group's channels (lowest L1 norm first) are zeroed in the trained model, and
   the score (mAP@0.5 on a few validation images) is measured.

A greedy search then removes channels where the measured saving per lost score is highest, until the
predicted latency meets the target. The plan is then built for real (a thinned copy) and timed against
the dense FP32 model; savings are rescaled and the search continued if it falls short. The predicted
speed-up is thus a measured one of the thinned architecture (speed depends on layer widths, not on
the trained weights); ``--verify`` compares it with the trained model's.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparseyolo.sparsity.channel_graph import ChannelGraph, trace_channel_groups
from sparseyolo.sparsity.channel_pruner import ChannelPruner, kept_channels
from sparseyolo.sparsity.thinning import apply_thinning
from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.logging import LOGGER

FRACTIONS = (0.25, 0.5, 0.75)  # channel fractions removed, per group


@dataclass
class GroupChoice:
    group: int
    params: list[str]
    channels: int
    saving_ms: dict[str, float] = field(default_factory=dict)  # fraction -> measured latency saving
    damage: dict[str, float] = field(default_factory=dict)  # fraction -> score lost
    fraction: float = 0.0
    kept: int = 0


@dataclass
class Suggestion:
    weights: str
    engine: str
    int8: bool
    img: int
    target_speedup: float
    fp32_ms: float  # the dense FP32 model on the engine: what the speed-up is relative to
    base_ms: float  # the dense model in the deployed precision (int8 with --int8)
    predicted_ms: float = 0.0
    predicted_speedup: float = 0.0
    baseline_score: float = 0.0
    predicted_score_loss: float = 0.0
    round_to: int = 8
    qat_submodules: list[str] | None = None  # all but the first layer and the Detect head
    groups: list[GroupChoice] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Suggestion:
        groups = [GroupChoice(**g) for g in d.get("groups", [])]
        return cls(**{**d, "groups": groups})


def prunable_groups(model: nn.Module, graph: ChannelGraph) -> list[GroupChoice]:
    """Groups with removable channels produced by conv / linear layers (their weights name them)."""
    modules = dict(model.named_modules())
    out = []
    for g in graph.groups:
        producers = [m for m in g.producers if isinstance(modules.get(m), (nn.Conv2d, nn.Linear))]
        if g.fixed or not producers or g.size < 2:
            continue
        out.append(GroupChoice(g.index, [f"{m}.weight" for m in producers], g.size))
    return out


def qat_submodules(model: nn.Module) -> list[str] | None:
    """A YOLO model's layers but its first conv and its Detect head (the shipped recipes keep those in
    float); None (everything) for other models."""
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential) or len(layers) < 3:
        return None
    return [f"model.{i}" for i in range(1, len(layers) - 1)]


def _pruner(model: nn.Module, graph: ChannelGraph, choice: GroupChoice, round_to: int) -> ChannelPruner:
    return ChannelPruner(model, graph, choice.params, "filter", "l1", round_to, "recipe suggest", set())


def thinned_copy(
    model: nn.Module, graph: ChannelGraph, fractions: dict[int, float], groups: Sequence[GroupChoice], round_to: int
) -> nn.Module:
    """A copy of ``model`` with each group's lowest-L1 channels cut out at its fraction."""
    thin = copy.deepcopy(model).eval()
    for choice in groups:
        f = fractions.get(choice.group, 0.0)
        if f <= 0:
            continue
        pruner = _pruner(thin, graph, choice, round_to)
        pruner.update({p: f for p in choice.params})
        apply_thinning(thin, pruner.plan())
    return thin


@torch.no_grad()
def _masked_score(
    model: nn.Module, graph: ChannelGraph, choice: GroupChoice, fraction: float, round_to: int, score: Callable
) -> float:
    """The score with the group's channels zeroed (output, bias and norm entries): what thinning gives."""
    pruner = _pruner(model, graph, choice, round_to)
    pruner.update({p: fraction for p in choice.params})
    named = dict(model.named_parameters())
    saved = {}
    try:
        for name, keep in pruner.param_masks().items():
            saved[name] = named[name].detach().clone()
            named[name].masked_fill_(~keep, 0.0)  # masked_fill, not mul: NaN * 0 is NaN
        return float(score(model))
    finally:
        for name, value in saved.items():
            named[name].copy_(value)


def _export(model: nn.Module, path: Path, img: int, int8: bool, engine: str) -> Path:
    """An ONNX file of ``model`` in the deployed precision (int8: QDQ, or Conv-only QLinear for
    DeepSparse), with observer ranges from random inputs (latency does not depend on them)."""
    from sparseyolo.exporters.onnx import export_onnx

    model = model.float().eval()  # export_onnx folds BN on its own copy
    if int8:
        from sparseyolo.quantization import QATConfig, freeze_bn_stats, prepare_qat

        model = copy.deepcopy(model)  # prepare_qat works in place
        prepare_qat(model, qat_submodules(model), QATConfig(weight_bits=8, activation_bits=8, fuse="conv_bn_relus"))
        freeze_bn_stats(model)
        model.train()
        model(torch.rand(2, 3, img, img))
        model.eval()
    out = export_onnx(model, path, img_size=(img, img))
    if int8 and engine == "deepsparse":
        from sparseyolo.exporters.qlinear import export_qlinear

        out = export_qlinear(out, path.with_suffix(".qlinear.onnx"))
    return out


def _time(files: list[Path], engine: str, img: int, threads: int | None, time_s: float) -> list[float]:
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


def suggest(
    model: nn.Module,
    score: Callable[[nn.Module], float],
    weights: str,
    engine: str = "onnxruntime",
    target_speedup: float = 2.0,
    int8: bool = False,
    img: int = 416,
    round_to: int = 8,
    threads: int | None = None,
    time_s: float = 1.0,
    fractions: Sequence[float] = FRACTIONS,
) -> Suggestion:
    """Per-group channel fractions that meet ``target_speedup`` (vs. the dense FP32 model on
    ``engine``) at the least measured score loss."""
    if target_speedup <= 1.0:
        raise SparseYoloError(f"--target-speedup must be above 1, got {target_speedup:g}")
    model = model.float().eval()
    graph = trace_channel_groups(model, torch.zeros(1, 3, 64, 64))
    groups = prunable_groups(model, graph)
    if not groups:
        raise SparseYoloError(f"{weights}: no channel group can be removed (every one reaches an output or a fixed op)")
    with tempfile.TemporaryDirectory(prefix="sparseyolo-suggest-") as tmp:
        tmp_dir = Path(tmp)
        LOGGER.info(f"recipe suggest: timing {len(groups)} channel groups x {len(fractions)} widths on {engine}")
        files = [_export(model, tmp_dir / "fp32.onnx", img, False, engine)]
        if int8:
            files.append(_export(model, tmp_dir / "int8.onnx", img, True, engine))
        variants = []
        for c in groups:
            for f in fractions:
                if kept_channels(c.channels, f, round_to) >= 1:
                    thin = thinned_copy(model, graph, {c.group: f}, groups, round_to)
                    variants.append((c, f, _export(thin, tmp_dir / f"g{c.group}_{f}.onnx", img, int8, engine)))
        ms = _time(files + [v[2] for v in variants], engine, img, threads, time_s)
        fp32_ms, base_ms = ms[0], ms[len(files) - 1]
        for (c, f, _), t in zip(variants, ms[len(files) :], strict=True):
            c.saving_ms[str(f)] = max(base_ms - t, 0.0)
        result = Suggestion(weights, engine, int8, img, target_speedup, fp32_ms, base_ms, round_to=round_to)
        result.qat_submodules = qat_submodules(model)
        LOGGER.info(f"recipe suggest: scoring {len(variants)} pruned variants on the validation subset")
        result.baseline_score = float(score(model))
        for c, f, _ in variants:
            c.damage[str(f)] = max(result.baseline_score - _masked_score(model, graph, c, f, round_to, score), 0.0)
        _search(result, groups, model, graph, tmp_dir, threads, time_s)
    return result


def _search(result: Suggestion, groups: list[GroupChoice], model, graph, tmp_dir: Path, threads, time_s) -> None:
    """Greedy: raise the fraction of the group with the best measured saving per score lost, until the
    prediction meets the target; then time the real plan and continue if it falls short."""
    target_ms = result.fp32_ms / result.target_speedup
    scale = 1.0  # measured / predicted saving of the last checked plan
    chosen: dict[int, float] = {}
    for attempt in range(4):
        while True:
            predicted = result.base_ms - scale * sum(c.saving_ms.get(str(chosen.get(c.group)), 0.0) for c in groups)
            if predicted <= target_ms:
                break
            best, best_rate = None, 0.0
            for c in groups:
                levels = sorted(float(k) for k in c.saving_ms)
                now = chosen.get(c.group, 0.0)
                nxt = next((f for f in levels if f > now), None)
                if nxt is None:
                    continue
                gain = c.saving_ms[str(nxt)] - c.saving_ms.get(str(now), 0.0)
                cost = c.damage[str(nxt)] - c.damage.get(str(now), 0.0)
                rate = gain / (max(cost, 0.0) + 1e-3)
                if gain > 0 and rate > best_rate:
                    best, best_rate = (c, nxt), rate
            if best is None:
                break  # nothing left that saves time
            chosen[best[0].group] = best[1]
        thin = thinned_copy(model, graph, chosen, groups, result.round_to)
        plan_file = _export(thin, tmp_dir / f"plan{attempt}.onnx", result.img, result.int8, result.engine)
        fp32_file = tmp_dir / "fp32.onnx"
        fp32_ms, plan_ms = _time([fp32_file, plan_file], result.engine, result.img, threads, time_s * 3)
        result.fp32_ms, result.predicted_ms = fp32_ms, plan_ms
        target_ms = fp32_ms / result.target_speedup
        predicted_saving = result.base_ms - predicted
        if plan_ms <= target_ms or predicted_saving <= 0:
            break
        scale *= max(result.base_ms - plan_ms, 1e-6) / predicted_saving
    result.predicted_speedup = result.fp32_ms / max(result.predicted_ms, 1e-9)
    for c in groups:
        c.fraction = chosen.get(c.group, 0.0)
        c.kept = kept_channels(c.channels, c.fraction, result.round_to) if c.fraction else c.channels
    result.predicted_score_loss = sum(c.damage.get(str(c.fraction), 0.0) for c in groups if c.fraction)
    result.groups = groups
    if result.predicted_speedup < result.target_speedup:
        LOGGER.warning(
            f"recipe suggest: removing up to {max(FRACTIONS):.0%} of each group's channels reaches "
            f"{result.predicted_speedup:.2f}x, below the target {result.target_speedup:g}x"
        )


@dataclass
class Verification:
    predicted_speedup: float
    measured_speedup: float
    fp32_ms: float
    trained_ms: float

    @property
    def error(self) -> float:
        """Relative error of the prediction."""
        return self.predicted_speedup / self.measured_speedup - 1.0


def find_suggestion(run_dir: Path) -> Path:
    """The ``suggest.json`` beside the recipe a training run used (its ``opt.yaml`` names the recipe)."""
    import yaml

    opt = run_dir / "opt.yaml"
    if not opt.is_file():
        raise SparseYoloError(f"{run_dir}: not a training run folder (no opt.yaml)")
    recipe = (yaml.safe_load(opt.read_text()) or {}).get("recipe")
    candidate = Path(str(recipe)).parent / "suggest.json" if recipe else None
    if candidate is None or not candidate.is_file():
        raise SparseYoloError(f"{run_dir}: its recipe ({recipe}) has no suggest.json beside it; pass --suggestion FILE")
    return candidate


def verify(
    run_dir: str | Path, suggestion: Suggestion, threads: int | None = None, time_s: float = 5.0
) -> Verification:
    """Time the run's ``best.pt`` against the dense FP32 model the suggestion started from, interleaved,
    on the suggestion's engine and image size."""
    from sparseyolo.runtime.loading import load_torch_model

    best = Path(run_dir) / "weights" / "best.pt"
    if not best.is_file():
        raise SparseYoloError(f"{run_dir}: no weights/best.pt to verify")
    trained, _ = load_torch_model(best)
    dense, _ = load_torch_model(suggestion.weights)
    with tempfile.TemporaryDirectory(prefix="sparseyolo-verify-") as tmp:
        from sparseyolo.quantization import is_qat_model

        fp32 = _export_as_is(dense, Path(tmp) / "dense.onnx", suggestion)
        if suggestion.int8 and not is_qat_model(trained):
            LOGGER.warning(f"{best} is not quantized, though the suggestion was for int8")
        ours = _export_as_is(trained, Path(tmp) / "trained.onnx", suggestion)
        fp32_ms, trained_ms = _time([fp32, ours], suggestion.engine, suggestion.img, threads, time_s)
    return Verification(suggestion.predicted_speedup, fp32_ms / trained_ms, fp32_ms, trained_ms)


def _export_as_is(model: nn.Module, path: Path, s: Suggestion) -> Path:
    """``model`` exported in its own precision (a QAT model as QDQ, Conv-only QLinear for DeepSparse)."""
    from sparseyolo.exporters.onnx import export_onnx
    from sparseyolo.quantization import is_qat_model

    out = export_onnx(model.float().eval(), path, img_size=(s.img, s.img))
    if is_qat_model(model) and s.engine == "deepsparse":
        from sparseyolo.exporters.qlinear import export_qlinear

        out = export_qlinear(out, path.with_suffix(".qlinear.onnx"))
    return out
