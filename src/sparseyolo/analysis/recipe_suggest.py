"""``recipe suggest``: a pruning recipe for a speed-up target, from what the engine measures.

Two kinds of cut are measured, each on the chosen engine, in the deployed precision (FP32 or int8),
interleaved with the unpruned model, so each saving is what that engine really gives, fixed costs and all:

1. *channels*, for each prunable channel group (channels that must go together, from the model's
   traced graph): the whole model with only that group thinned to a few kept fractions;
2. *weight sparsity* (unstructured in FP32, ``[1, 4]`` blocks in int8, the blocks int8 sparse kernels
   use), for each conv / linear weight: the whole model with only that weight magnitude-pruned to a few
   levels. Only engines that run zeros faster gain from this (DeepSparse; ONNX Runtime and OpenVINO
   multiply them), so a probe first times the model with every candidate weight 80% zero. Below a
   1.1x gain the per-layer levels are not measured and only channels are chosen (``--weight-sparsity``).

Each cut's *sensitivity* is the score (mAP@0.5 on a few validation images) with the cut applied to the
trained model: a group's channels (lowest L1 norm first) zeroed, or a weight magnitude-pruned.

Every variant is timed in two interleaved rounds (the second in reverse order). One variant's timing
moves by several ms between runs on a busy machine, as much as a group's real saving, so each saving
comes from a plane of latency against the FLOPs and the feature-map bytes the cut removes, fitted to all
variants of the run at once; a variant keeps the share of its own deviation from the plane that the
spread between rounds says is real (:func:`~sparseyolo.analysis.latency_fit.fit_savings`).

A greedy search (:mod:`~sparseyolo.analysis.recipe_suggest_search`) then takes the cut with the highest
saving per lost score, until the predicted latency meets the target; a weight is either thinned as a
channel producer or made sparse, never both. The plan is then built for real (a thinned, sparsified
copy) and timed against the dense FP32 model (medians of four interleaved rounds); savings are rescaled
and the search continued if it falls short or overshoots. The predicted speed-up is thus a measured one
of the planned architecture and sparsity (speed depends on widths and zeros, not on
the trained values); ``--verify`` compares it with the trained model's.
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

from sparseyolo.analysis import recipe_suggest_timing as timing
from sparseyolo.analysis.latency_fit import LatencyFit, fit_savings
from sparseyolo.analysis.recipe_suggest_search import search
from sparseyolo.analysis.recipe_suggest_timing import qat_submodules
from sparseyolo.sparsity.channel_graph import ChannelGraph, trace_channel_groups
from sparseyolo.sparsity.channel_pruner import ChannelPruner, kept_channels
from sparseyolo.sparsity.masks import MaskType, check_shape, magnitude_prune_, parse_mask_type
from sparseyolo.sparsity.params import prunable_param_names
from sparseyolo.sparsity.thinning import apply_thinning
from sparseyolo.utils.errors import ConfigError, SparseYoloError
from sparseyolo.utils.logging import LOGGER

FRACTIONS = (0.25, 0.5, 0.75)  # channel fractions removed, per group
LEVELS = (0.5, 0.7, 0.85)  # weight sparsities, per layer
PROBE_SPARSITY = 0.8  # every candidate weight at once: does the engine gain from zeros at all?
MIN_SPARSITY_GAIN = 1.1  # probe speed-up below which weight sparsity is not considered (auto)
MIN_LAYER_WEIGHTS = 2048  # smaller weights save nothing measurable
WEIGHT_SPARSITY_MODES = ("auto", "on", "off")


@dataclass
class GroupChoice:
    group: int
    params: list[str]
    channels: int
    saving_ms: dict[str, float] = field(default_factory=dict)  # fraction -> latency saving (fitted)
    measured_ms: dict[str, float] = field(default_factory=dict)  # fraction -> the raw timed saving
    gflops_removed: dict[str, float] = field(default_factory=dict)
    mbytes_removed: dict[str, float] = field(default_factory=dict)  # feature-map megabytes
    damage: dict[str, float] = field(default_factory=dict)  # fraction -> score lost
    fraction: float = 0.0
    kept: int = 0

    @property
    def key(self) -> str:
        return f"group {self.group}"


@dataclass
class LayerSparsity:
    param: str
    weights: int
    saving_ms: dict[str, float] = field(default_factory=dict)  # sparsity -> latency saving (fitted)
    measured_ms: dict[str, float] = field(default_factory=dict)  # sparsity -> the raw timed saving
    gflops_removed: dict[str, float] = field(default_factory=dict)  # FLOPs of the zeroed weights
    damage: dict[str, float] = field(default_factory=dict)  # sparsity -> score lost
    sparsity: float = 0.0

    @property
    def key(self) -> str:
        return self.param

    @property
    def params(self) -> list[str]:
        return [self.param]


Cut = GroupChoice | LayerSparsity


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
    qat_submodules: list[str] | None = None  # all but the Detect head (and the first conv if float is faster)
    stem_int8: bool = True  # int8 runs: the first conv quantized (timed both ways on the engine)
    stem_ms: dict[str, float] = field(default_factory=dict)  # dense int8 model, first conv "int8" / "float"
    groups: list[GroupChoice] = field(default_factory=list)
    mask_type: Any = "unstructured"  # of the weight sparsity, as a recipe writes it
    sparsity_gain: float | None = None  # the probe's speed-up with every candidate weight 80% zero
    layers: list[LayerSparsity] = field(default_factory=list)  # measured only where zeros pay
    channel_fit: dict[str, Any] | None = None  # the latency plane the channel savings come from
    sparsity_fit: dict[str, Any] | None = None  # ... and the weight-sparsity savings
    plans: list[dict[str, Any]] = field(default_factory=list)  # every plan the search timed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Suggestion:
        groups = [GroupChoice(**g) for g in d.get("groups", [])]
        layers = [LayerSparsity(**x) for x in d.get("layers", [])]
        if "stem_int8" not in d and d.get("qat_submodules"):  # written before the stem was timed
            d = {**d, "stem_int8": d["qat_submodules"][0] == "model.0"}
        return cls(**{**d, "groups": groups, "layers": layers})


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


def sparse_layers(model: nn.Module, mask_type: MaskType) -> list[LayerSparsity]:
    """Conv / linear weights that ``mask_type`` tiles and that are large enough to matter."""
    named = dict(model.named_parameters())
    out = []
    for name in prunable_param_names(model, min_numel=MIN_LAYER_WEIGHTS):
        try:
            check_shape(named[name].shape, mask_type, name)
        except ConfigError:
            continue  # e.g. a first conv with 3 input channels under [1, 4] blocks
        out.append(LayerSparsity(name, named[name].numel()))
    return out


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


def sparsified_(model: nn.Module, sparsities: dict[str, float], mask_type: MaskType) -> nn.Module:
    """Magnitude-prune each named weight of ``model`` to its sparsity, in place; returns ``model``."""
    named = dict(model.named_parameters())
    for name, s in sparsities.items():
        if s > 0:
            magnitude_prune_(named[name].data, s, mask_type)
    return model


def planned_copy(model: nn.Module, graph: ChannelGraph, s: Suggestion, chosen: dict[str, float]) -> nn.Module:
    """A copy of ``model`` with the ``chosen`` cuts (by :attr:`key`): groups thinned, then weights sparsified."""
    thin = thinned_copy(model, graph, {c.group: chosen.get(c.key, 0.0) for c in s.groups}, s.groups, s.round_to)
    sparsities = {x.param: chosen.get(x.key, 0.0) for x in s.layers}
    return sparsified_(thin, sparsities, parse_mask_type(s.mask_type))


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
    weight_sparsity: str = "auto",
    levels: Sequence[float] = LEVELS,
) -> Suggestion:
    """Per-group channel fractions and, where ``engine`` runs zeros faster, per-layer weight sparsities
    that meet ``target_speedup`` (vs. the dense FP32 model on ``engine``) at the least measured score
    loss. ``weight_sparsity``: ``auto`` (probe the engine), ``on`` (always measure), ``off`` (channels only)."""
    if target_speedup <= 1.0:
        raise SparseYoloError(f"--target-speedup must be above 1, got {target_speedup:g}")
    if weight_sparsity not in WEIGHT_SPARSITY_MODES:
        raise SparseYoloError(
            f"--weight-sparsity must be one of {', '.join(WEIGHT_SPARSITY_MODES)}, got {weight_sparsity!r}"
        )
    model = model.float().eval()
    graph = trace_channel_groups(model, torch.zeros(1, 3, 64, 64))
    groups = prunable_groups(model, graph)
    mask_type = MaskType("block", (1, 4)) if int8 else MaskType("unstructured")
    layers = sparse_layers(model, mask_type) if weight_sparsity != "off" else []
    if not groups and not layers:
        raise SparseYoloError(f"{weights}: no channel group can be removed (every one reaches an output or a fixed op)")
    if layers and mask_type.kind == "block" and round_to % mask_type.block[1]:
        raise SparseYoloError(f"--round-to {round_to}: thinned widths must stay multiples of 4 for [1, 4] blocks")
    result = Suggestion(weights, engine, int8, img, target_speedup, 0.0, 0.0, round_to=round_to)
    result.mask_type, result.groups = mask_type.to_recipe(), groups
    with tempfile.TemporaryDirectory(prefix="sparseyolo-suggest-") as tmp:
        tmp_dir = Path(tmp)
        if int8:
            _choose_stem(model, tmp_dir, result, threads, time_s)
        result.qat_submodules = qat_submodules(model, result.stem_int8)
        stem = result.stem_int8
        LOGGER.info(f"recipe suggest: timing {len(groups)} channel groups x {len(fractions)} widths on {engine}")
        files = [timing.export_variant(model, tmp_dir / "fp32.onnx", img, False, engine)]
        if int8:
            files.append(timing.export_variant(model, tmp_dir / "int8.onnx", img, True, engine, stem))
        if layers:
            probe = sparsified_(copy.deepcopy(model), {x.param: PROBE_SPARSITY for x in layers}, mask_type)
            files.append(timing.export_variant(probe, tmp_dir / "probe.onnx", img, int8, engine, stem))
        variants = []
        dense = timing.work(model, img, int8, stem_int8=stem)
        for c in groups:
            for f in fractions:
                if kept_channels(c.channels, f, round_to) >= 1:
                    thin = thinned_copy(model, graph, {c.group: f}, groups, round_to)
                    thin_work = timing.work(thin, img, int8, stem_int8=stem)
                    c.gflops_removed[str(f)] = dense[0] - thin_work[0]
                    c.mbytes_removed[str(f)] = dense[1] - thin_work[1]
                    variants.append(
                        (c, f, timing.export_variant(thin, tmp_dir / f"g{c.group}_{f}.onnx", img, int8, engine, stem))
                    )
        rounds = timing.time_rounds(files + [v[2] for v in variants], engine, img, threads, time_s)
        n_base = 1 + int8
        mean = [sum(r[i] for r in rounds) / len(rounds) for i in range(len(files))]
        result.fp32_ms, result.base_ms = mean[0], mean[n_base - 1]
        if variants:
            timed = [[r[n_base - 1], *r[len(files) :]] for r in rounds]
            savings, fit = fit_savings(
                timed,
                [0.0, *(c.gflops_removed[str(f)] for c, f, _ in variants)],
                [0.0, *(c.mbytes_removed[str(f)] for c, f, _ in variants)],
            )
            result.base_ms, result.channel_fit = fit.base_ms, asdict(fit)
            _log_fit("channel", fit)
            for (c, f, _), saving, *t in zip(variants, savings, *(r[len(files) :] for r in rounds), strict=True):
                c.saving_ms[str(f)] = max(saving, 0.0)
                c.measured_ms[str(f)] = mean[n_base - 1] - sum(t) / len(t)
        if layers:
            result.sparsity_gain = mean[n_base - 1] / mean[n_base]
            if weight_sparsity == "auto" and result.sparsity_gain < MIN_SPARSITY_GAIN:
                LOGGER.info(
                    f"recipe suggest: {engine} ran {result.sparsity_gain:.2f}x with {PROBE_SPARSITY:.0%} of the "
                    "weights zero: it does not reward weight sparsity, so only channels are chosen "
                    "(--weight-sparsity on measures it anyway)"
                )
                layers = []
            else:
                _time_layers(model, layers, levels, mask_type, files[n_base - 1], tmp_dir, result, threads, time_s)
        result.layers = layers
        n_cuts = len(variants) + len(layers) * len(levels)
        LOGGER.info(f"recipe suggest: scoring {n_cuts} pruned variants on the validation subset")
        result.baseline_score = float(score(model))
        for c, f, _ in variants:
            c.damage[str(f)] = max(result.baseline_score - _masked_score(model, graph, c, f, round_to, score), 0.0)
        if layers:
            from sparseyolo.analysis.sensitivity import sensitivity_analysis

            sens = sensitivity_analysis(
                model, score, [x.param for x in layers], levels, progress=False, mask_type=mask_type
            )
            for x in layers:
                for level, s in zip(sens.levels, sens.scores[x.param], strict=True):
                    x.damage[str(level)] = max(result.baseline_score - s, 0.0)
        search(result, lambda chosen: planned_copy(model, graph, result, chosen), tmp_dir, threads, time_s)
    return result


def _time_layers(
    model: nn.Module,
    layers: list[LayerSparsity],
    levels: Sequence[float],
    mask_type: MaskType,
    base_file: Path,
    tmp_dir: Path,
    result: Suggestion,
    threads: int | None,
    time_s: float,
) -> None:
    """Each layer's saving at each sparsity level, against the dense model timed again in the same run,
    fitted to the FLOPs its zeros would skip."""
    LOGGER.info(
        f"recipe suggest: {result.engine} ran {result.sparsity_gain:.2f}x with {PROBE_SPARSITY:.0%} of the weights "
        f"zero; timing {len(layers)} layers x {len(levels)} sparsities ({mask_type.to_recipe()})"
    )
    files, removed = [base_file], [0.0]
    dense_gflops = timing.work(model, result.img, result.int8, sparse=True, stem_int8=result.stem_int8)[0]
    for i, x in enumerate(layers):
        for level in levels:
            sparse = sparsified_(copy.deepcopy(model), {x.param: level}, mask_type)
            x.gflops_removed[str(level)] = (
                dense_gflops - timing.work(sparse, result.img, result.int8, sparse=True, stem_int8=result.stem_int8)[0]
            )
            removed.append(x.gflops_removed[str(level)])
            path = tmp_dir / f"w{i}_{level}.onnx"
            files.append(timing.export_variant(sparse, path, result.img, result.int8, result.engine, result.stem_int8))
    rounds = timing.time_rounds(files, result.engine, result.img, threads, time_s)
    savings, fit = fit_savings(rounds, removed)
    result.sparsity_fit = asdict(fit)
    _log_fit("weight-sparsity", fit)
    mean = [sum(r[i] for r in rounds) / len(rounds) for i in range(len(files))]
    it = iter(zip(savings, mean[1:], strict=True))
    for x in layers:
        for level in levels:
            saving, t = next(it)
            x.saving_ms[str(level)], x.measured_ms[str(level)] = max(saving, 0.0), mean[0] - t


def _choose_stem(model: nn.Module, tmp_dir: Path, result: Suggestion, threads: int | None, time_s: float) -> None:
    """Quantize the first conv or keep it in float, whichever runs the dense int8 model faster on the
    engine. Its 3 input channels suit int8 kernels badly; a float one costs float arithmetic at full
    resolution, and quantizing its output for the next layer (after the MaxPool, which the export runs
    before the activation). Which costs more depends on the engine and the CPU: on an AVX-512 VNNI Zen 4
    ONNX Runtime ran YOLOv3-tiny faster with it in float (docs/quantization.md, "the first conv")."""
    if qat_submodules(model) is None:
        return  # not a YOLO layer list: everything is quantized
    files = [
        timing.export_variant(model, tmp_dir / f"stem_{kind}.onnx", result.img, True, result.engine, kind == "int8")
        for kind in ("int8", "float")
    ]
    (int8_ms, float_ms), _ = timing.median_ms(files, result.engine, result.img, threads, time_s)
    result.stem_ms, result.stem_int8 = {"int8": int8_ms, "float": float_ms}, int8_ms <= float_ms
    LOGGER.info(
        f"recipe suggest: dense int8 model on {result.engine}: {int8_ms:.1f} ms with the first conv in int8, "
        f"{float_ms:.1f} ms with it in float: {'quantized' if result.stem_int8 else 'kept in float'}"
    )


def _log_fit(kind: str, fit: LatencyFit) -> None:
    LOGGER.info(
        f"recipe suggest: {kind} savings fitted at {fit.ms_per_gflop:.2f} ms per GFLOP and {fit.ms_per_mbyte:.2f} ms "
        f"per feature-map MB removed; timing noise "
        f"+/-{fit.noise_ms:.2f} ms, real deviation from the plane +/-{fit.spread_ms:.2f} ms, so each variant "
        f"keeps {fit.weight:.0%} of its own deviation"
    )
