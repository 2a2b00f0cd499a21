"""What the dry run (:func:`~sparseyolo.analysis.recipe_check.check_recipe`) says about each modifier:
its settings in one line, what it matched, its events, and where it sits in the recipe."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from sparseyolo.analysis.recipe_check_result import CheckEvent


def format_epoch(e: float | None) -> str:
    return "-" if e is None or e < 0 else f"{e:g}"


def line_of(mod: Any) -> int:
    tail = str(mod.where).rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 10**9


def past_epoch_range(modifiers: list[Any]) -> list[str]:
    """A note per modifier that runs past every ``EpochRangeModifier``'s end: the training length is the
    largest epoch any modifier names (as in SparseML), so such a recipe trains longer than it declares."""
    ranges = [m.end_epoch for m in modifiers if m.tag == "EpochRangeModifier" and m.end_epoch > 0]
    if not ranges:
        return []
    declared = max(ranges)
    return [
        f"{m.where}: {m.tag} ends at epoch {format_epoch(m.last_epoch)}, after the EpochRangeModifier's end "
        f"{format_epoch(declared)}: training runs {format_epoch(m.last_epoch)} epochs, as SparseML's would"
        for m in sorted(modifiers, key=line_of)
        if m.tag != "EpochRangeModifier" and m.last_epoch > declared + 1e-9
    ]


def describe(m: Any) -> str:
    """One line of the settings that matter for ``m``."""
    tag = m.tag
    if hasattr(m, "target_at"):  # magnitude / structured pruning
        init = m.init_sparsity if isinstance(m.init_sparsity, str) else f"{m.init_sparsity:g}"
        finals = sorted({f"{v:g}" for v in (m.final_by_param or {}).values()}) or [str(m.final_sparsity)]
        kind = m.structure or m.mask.to_recipe()
        text = f"{init} -> {'/'.join(finals)} ({m.inter_func}), every {m.update_frequency:g} epochs, mask {kind}"
        if m.structure:
            text += f", round_to {m.round_to}, importance {m.importance}"
        if m.global_sparsity:
            text += ", global"
        if not m.leave_enabled:
            text += ", leave_enabled false"
        return text
    if tag == "ConstantPruningModifier":
        return "holds the zeros the weights have at start_epoch"
    if tag == "SetLearningRateModifier":
        return f"lr {m.learning_rate:g}"
    if tag == "LearningRateFunctionModifier":
        return f"{m.lr_func} {m.init_lr:g} -> {m.final_lr:g}"
    if tag == "LearningRateModifier":
        kw = ", ".join(f"{k} {v}" for k, v in m.lr_kwargs.items())
        return f"{m.lr_class}({kw}) from {m.init_lr:g}"
    if tag == "SetWeightDecayModifier":
        return f"weight_decay {m.weight_decay:g}"
    if tag == "QuantizationModifier":
        from sparseyolo.quantization import QATConfig

        per_channel = QATConfig(**m.config_dict()).per_channel  # the config decides (tensorrt implies it)
        return (
            f"fuse {m.model_fuse_fn_name or 'conv_bn_relus'}, weights {m.weight_bits} bit"
            f"{' per channel' if per_channel else ''}, activations "
            f"{m.activation_bits} bit; BN stats frozen at {format_epoch(m.freeze_bn_stats_epoch)}, "
            f"observers off at {format_epoch(m.disable_quantization_observer_epoch)}"
        )
    if tag == "LayerThinningModifier":
        return f"thins at epochs {', '.join(f'{e:g}' for e in m.epochs)}, strict {str(m.strict).lower()}"
    if tag == "BatchNormL1Modifier":
        return f"penalty {m.penalty:g}"
    if tag == "EpochRangeModifier":
        return "training length"
    if tag == "DistillationModifier":
        return f"hardness {m.hardness:g}, temperature {m.temperature:g}"
    return ""


def matched(m: Any, group_names: list[str], model: nn.Module) -> tuple[int, str, list[str], int | None]:
    """(count, what is counted, names, elements) of what ``m`` acts on, right after attach."""
    named = dict(model.named_parameters())

    def params(names: list[str]) -> tuple[int, str, list[str], int]:
        return len(names), "params", names, sum(named[n].numel() for n in names if n in named)

    if hasattr(m, "final_by_param"):  # magnitude / structured pruning
        return params(list(m.final_by_param))
    if m.tag == "ConstantPruningModifier":
        return params(list(m.masker.params) if m.masker is not None else [])
    if m.tag == "BatchNormL1Modifier":
        return params(list(m.names))
    if m.tag in ("SetLearningRateModifier", "LearningRateFunctionModifier", "SetWeightDecayModifier"):
        idx = m.param_groups if m.param_groups else list(range(len(group_names)))
        return len(idx), "param groups", [group_names[i] if i < len(group_names) else str(i) for i in idx], None
    if m.tag == "LearningRateModifier":
        return len(group_names), "param groups", list(group_names), None
    if m.tag == "QuantizationModifier":
        if m.submodules:
            return len(m.submodules), "submodules", list(m.submodules), None
        return 1, "submodules", ["(the whole model)"], None
    if m.tag == "LayerThinningModifier":
        deps = m.param_group_dependency_map or {}
        names = [n.strip() for k, v in deps.items() for n in [*str(k).split(","), *v]]
        return len(names), "params checked", names, None
    return 0, "", [], None


def held_sparsity(m: Any) -> float:
    """Fraction of zeros a ConstantPruningModifier holds over its parameters."""
    masks = m.masker.masks
    total = sum(mask.numel() for mask in masks.values())
    return sum(int((~mask).sum()) for mask in masks.values()) / total if total else 0.0


EVENT_TEXT = {
    "pruning_start": "pruning starts",
    "pruning_end": "pruning ends",
    "thinned": "thinned",
    "qat_start": "QAT starts",
    "bn_frozen": "BN statistics frozen",
    "observers_disabled": "QAT observers off",
}


def event_text(e: CheckEvent) -> str:
    text = EVENT_TEXT.get(e.event, e.event)
    if abs(e.epoch - round(e.epoch)) > 1e-6:
        text += f" at {e.epoch:.3g}"
    return f"{text}: {e.detail}" if e.detail else text


def pruning_group_summary(
    m: Any,
    named: dict[str, nn.Parameter],
    zeros: dict[str, int],
    channel_sizes: dict[int, int] | None,
    removed_by_group: dict[int, int],
) -> dict[str, Any]:
    """The end state of one pruning modifier's parameters: their sparsity and final target, or for
    filter / channel pruning (``channel_sizes``: channels per group it prunes) the channels removed."""
    if hasattr(m, "final_by_param"):
        names, target = [n for n in m.final_by_param if n in named], max(m.final_by_param.values(), default=None)
    else:
        names, target = [n for n in (m.masker.params if m.masker else {}) if n in named], None
    numel = sum(named[n].numel() for n in names)
    entry: dict[str, Any] = {
        "sparsity": sum(zeros.get(n, 0) for n in names) / numel if numel else None,
        "final_target": target,
    }
    if channel_sizes is not None:  # its target is a fraction of channels
        if getattr(m, "pruner", None) is not None:  # not cut out (yet)
            gone = sum(int((~m.pruner.keep[gi]).sum()) for gi in channel_sizes)
        else:
            gone = sum(min(removed_by_group.get(gi, 0), n) for gi, n in channel_sizes.items())
        total = sum(channel_sizes.values())
        share = gone / total if total else None
        entry.update(sparsity=None, channels=total, channels_removed=gone, channel_sparsity=share)
    return entry
