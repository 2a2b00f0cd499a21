"""The recipe that ``recipe suggest`` writes: SparseML-format Markdown front matter, with the predicted
speed-up and the per-group and per-layer tables as comments."""

from __future__ import annotations

from collections.abc import Sequence

from sparseyolo.analysis.recipe_suggest import PROBE_SPARSITY, Suggestion


def recipe_text(s: Suggestion, epochs: int = 40, qat_epochs: int = 5, init_lr: float = 0.005) -> str:
    """A SparseML-format recipe (Markdown front matter) for the suggestion: filter pruning per group and
    weight sparsity per layer on a cubic schedule over the first 60% of the epochs, thinning, recovery,
    then int8 QAT with ``int8``."""
    pruning_end = max(1, round(0.6 * epochs))
    by_fraction: dict[float, list[str]] = {}
    for c in s.groups:
        if c.fraction > 0:
            by_fraction.setdefault(c.fraction, []).extend(c.params)
    by_sparsity: dict[float, list[str]] = {}
    for x in s.layers:
        if x.sparsity > 0:
            by_sparsity.setdefault(x.sparsity, []).append(x.param)
    mask = s.mask_type if isinstance(s.mask_type, str) else f"[{', '.join(str(v) for v in s.mask_type)}]"
    lines = [
        "---",
        f"# Suggested by `sparseyolo recipe suggest` for {s.engine}{' int8' if s.int8 else ''} at {s.img} px:",
        f"# predicted {s.predicted_speedup:.2f}x the dense FP32 model (target {s.target_speedup:g}x; measured on a",
        f"# planned copy: {s.predicted_ms:.1f} ms vs {s.fp32_ms:.1f} ms), predicted score loss "
        f"{s.predicted_score_loss:.3f} of {s.baseline_score:.3f}.",
        "#",
        *_fit_note("channel", s.channel_fit),
        "# score lost is as measured; the search used savings and losses made non-decreasing in the cut",
        "# group | channels | removed | kept | GFLOPs cut | fmap MB cut | timed ms | saving ms | score lost | layers",
    ]
    for c in s.groups:
        f = str(c.fraction)
        cut, elements = c.gflops_removed.get(f, 0.0), c.mbytes_removed.get(f, 0.0)
        timed, saving = c.measured_ms.get(f, 0.0), c.saving_ms.get(f, 0.0)
        lines.append(
            f"# {c.group:5d} | {c.channels:8d} | {c.fraction:7.0%} | {c.kept:4d} | {cut:10.3f} | {elements:11.3f} | "
            f"{timed:8.2f} | {saving:9.2f} | {c.damage.get(f, 0.0):10.3f} | {', '.join(c.params)}"
        )
    if s.sparsity_gain is not None:
        lines.append(
            f"# {s.engine} ran {s.sparsity_gain:.2f}x with {PROBE_SPARSITY:.0%} of the candidate weights zero"
            + ("; weight sparsity was measured:" if s.layers else "; weight sparsity was not considered")
        )
    if s.layers:
        lines += _fit_note("weight-sparsity", s.sparsity_fit)
        lines.append(f"# weight | elements | sparsity ({mask}) | timed ms | saving ms | score lost")
        for x in s.layers:
            f = str(x.sparsity)
            lines.append(
                f"# {x.param} | {x.weights:8d} | {x.sparsity:8.0%} | {x.measured_ms.get(f, 0.0):8.2f} | "
                f"{x.saving_ms.get(f, 0.0):9.2f} | {x.damage.get(f, 0.0):10.3f}"
            )
    # QAT after at least one epoch of recovery of the thinned model
    quant_start = max(epochs - qat_epochs, pruning_end + 1) if s.int8 else epochs
    sparse_note = f", and weights made sparse in {mask} units per layer," if by_sparsity else ""
    qat_note = f", then int8 QAT for the last {qat_epochs} epochs" if s.int8 else ""
    lines += [
        f"num_epochs: &num_epochs {epochs}",
        f"init_lr: &init_lr {init_lr}",
        f"pruning_end_epoch: &pruning_end_epoch {pruning_end}",
        f"quantization_start_epoch: &quantization_start_epoch {quant_start}",
        f"quantization_init_lr: &quantization_init_lr {init_lr / 10:g}",
        "",
        "training_modifiers:",
        "  - !EpochRangeModifier",
        "    start_epoch: 0.0",
        "    end_epoch: *num_epochs",
        "  - !SetLearningRateModifier",
        "    start_epoch: 0.0",
        "    learning_rate: *init_lr",
        "  - !LearningRateFunctionModifier",
        "    start_epoch: *pruning_end_epoch",
        "    end_epoch: *quantization_start_epoch",
        "    lr_func: cosine",
        "    init_lr: *init_lr",
        "    final_lr: *quantization_init_lr",
        "",
        "pruning_modifiers:",
    ]
    filters = [f"    round_to: {s.round_to}", "    importance: l1"]
    for fraction, params in sorted(by_fraction.items()):
        lines += _gmp_modifier(params, "filter", fraction, filters)
    for sparsity, params in sorted(by_sparsity.items()):
        lines += _gmp_modifier(params, mask, sparsity)
    if s.int8:
        lines += [
            "",
            "quantization_modifiers:",
            "  - !SetLearningRateModifier",
            "    start_epoch: *quantization_start_epoch",
            "    learning_rate: *quantization_init_lr",
            "  - !QuantizationModifier",
            "    start_epoch: *quantization_start_epoch",
            f"    freeze_bn_stats_epoch: {max(quant_start + 1, epochs - 2)}",
            f"    disable_quantization_observer_epoch: {max(quant_start + 1, epochs - 1)}",
            "    # 7-bit weights, one scale per channel: exact on ONNX Runtime with or without VNNI",
            "    weight_bits: 7",
            "    per_channel: true",
        ]
        if s.stem_ms:
            lines.append(
                f"    # the first conv {'in int8' if s.stem_int8 else 'in float'}: the dense int8 model took "
                f"{s.stem_ms['int8']:.1f} ms with it in int8, {s.stem_ms['float']:.1f} ms in float on {s.engine}"
            )
        if s.qat_submodules:
            lines.append(f"    submodules: [{', '.join(s.qat_submodules)}]")
    lines += [
        "---",
        "",
        "# Suggested pruning recipe",
        "",
        f"Channels removed per group{sparse_note} where {s.engine} measured the largest saving per lost score; "
        f"thinning at epoch {pruning_end}, recovery{qat_note}. "
        "Check the real speed-up after training with `sparseyolo recipe suggest --verify RUN_DIR`.",
        "",
    ]
    return "\n".join(lines)


def _gmp_modifier(params: list[str], mask: str, final: float, extra: Sequence[str] = ()) -> list[str]:
    """One ``!GMPruningModifier`` on the suggested schedule: cubic, from epoch 0 to the pruning end."""
    return [
        "  - !GMPruningModifier",
        f"    params: [{', '.join(params)}]",
        f"    mask_type: {mask}",
        "    init_sparsity: 0.05",
        f"    final_sparsity: {final}",
        *extra,
        "    inter_func: cubic",
        "    start_epoch: 0.0",
        "    end_epoch: *pruning_end_epoch",
        "    update_frequency: 0.5",
    ]


def _fit_note(kind: str, fit: dict | None) -> list[str]:
    """Comment lines on the latency line a table's savings come from."""
    if not fit:
        return []
    return [
        f"# {kind} savings: {fit['ms_per_gflop']:.2f} ms per GFLOP and {fit.get('ms_per_mbyte', 0.0):.2f} ms per "
        "feature-map MB removed,",
        f"# a plane fitted to every variant timed ({fit['rounds']} rounds: noise +/-{fit['noise_ms']:.2f} ms, real "
        f"deviation +/-{fit['spread_ms']:.2f} ms);",
        f"# each saving keeps {fit['weight']:.0%} of its variant's deviation from the plane",
    ]
