"""One-shot pruning sensitivity: prune each layer alone to several sparsities (magnitude), score the
model, restore the weights; then suggest per-layer targets as a SparseML-format pruning recipe.

The analysis is generic: ``score_fn(model) -> float`` (mAP on a small validation subset, minus a loss,
accuracy of a toy model, ...), so it works with any ``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from sparseyolo.sparsity.masks import MaskType, magnitude_prune_
from sparseyolo.sparsity.params import prunable_param_names
from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.plotting import save_figure

DEFAULT_LEVELS = (0.4, 0.6, 0.75, 0.85, 0.95)
# recipe groups of the published YOLOv3 pruning recipes: none / low / mid / high target sparsity
RECIPE_TARGETS = (0.85, 0.8, 0.75)
FALLBACK_TARGET = 0.4


@dataclass
class SensitivityResult:
    baseline: float
    higher_is_better: bool
    levels: list[float]
    scores: dict[str, list[float]] = field(default_factory=dict)  # param name -> score per level
    params: dict[str, int] = field(default_factory=dict)  # param name -> element count

    def damage(self, name: str) -> np.ndarray:
        """Score lost at each level (>= 0 means worse than the unpruned model)."""
        s = np.asarray(self.scores[name], dtype=np.float64)
        return (self.baseline - s) if self.higher_is_better else (s - self.baseline)

    def ranking(self) -> list[str]:
        """Layers from most to least sensitive (mean damage over the levels)."""
        return sorted(self.scores, key=lambda n: float(self.damage(n).mean()), reverse=True)

    def to_dict(self) -> dict:
        return {
            "baseline": self.baseline,
            "higher_is_better": self.higher_is_better,
            "levels": self.levels,
            "layers": [
                {"name": n, "params": self.params.get(n), "scores": self.scores[n], "damage": self.damage(n).tolist()}
                for n in self.ranking()
            ],
        }


def sensitivity_analysis(
    model,
    score_fn: Callable[[object], float],
    params: Sequence[str] | None = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
    higher_is_better: bool = True,
    progress: bool = True,
    mask_type: MaskType | None = None,
) -> SensitivityResult:
    """Prune each parameter in ``params`` alone at each level (``mask_type`` units, unstructured by
    default), score, restore. Weights are unchanged after."""
    import torch
    from tqdm import tqdm

    named = dict(model.named_parameters())
    params = list(params) if params is not None else prunable_param_names(model)
    unknown = [p for p in params if p not in named]
    if unknown:
        raise SparseYoloError(f"unknown parameter names: {', '.join(unknown[:5])}")
    if not params:
        raise SparseYoloError("no prunable layers")
    levels = sorted(float(l) for l in levels)
    if any(not 0.0 < l < 1.0 for l in levels):
        raise SparseYoloError(f"sparsity levels must lie in (0, 1), got {levels}")
    result = SensitivityResult(float(score_fn(model)), higher_is_better, levels)
    bar = tqdm(total=len(params) * len(levels), desc="sensitivity", disable=not progress, leave=False)
    try:
        for name in params:
            w = named[name]
            original = w.detach().clone()
            scores = []
            try:
                for level in levels:
                    magnitude_prune_(w.data, level, mask_type)
                    scores.append(float(score_fn(model)))
                    with torch.no_grad():
                        w.copy_(original)
                    bar.update(1)
            finally:
                with torch.no_grad():
                    w.copy_(original)  # also restores after an exception or Ctrl-C
            result.scores[name] = scores
            result.params[name] = w.numel()
    finally:
        bar.close()
    return result


def suggest_targets(
    result: SensitivityResult,
    tolerance: float = 0.05,
    targets: Sequence[float] = RECIPE_TARGETS,
    fallback: float = FALLBACK_TARGET,
) -> dict[str, float]:
    """Per layer, the highest of ``targets`` whose (interpolated) damage stays within ``tolerance``
    (relative to |baseline|; absolute when the baseline is 0), else ``fallback``: sensitive layers
    get low sparsity, robust ones high sparsity."""
    limit = tolerance * abs(result.baseline) if result.baseline else tolerance
    chosen = {}
    for name in result.scores:
        dmg = result.damage(name)
        chosen[name] = fallback
        for t in sorted(targets, reverse=True):
            if float(np.interp(t, result.levels, dmg)) <= limit:
                chosen[name] = float(t)
                break
    return chosen


def recipe_text(
    targets: dict[str, float],
    num_epochs: int = 300,
    init_sparsity: float = 0.05,
    pruning_start_epoch: float = 0,
    pruning_end_epoch: float = 80,
    update_frequency: float = 0.5,
    note: str = "",
) -> str:
    """A SparseML-format pruning recipe (YAML front matter in Markdown): one GMPruningModifier per
    target sparsity, sparsities as variables like the published YOLOv3 recipes."""
    groups: dict[float, list[str]] = {}
    for name, t in targets.items():
        groups.setdefault(round(float(t), 4), []).append(name)
    lines = [
        "---",
        "# generated by `sparseyolo analyze --sensitivity`",
        f"num_epochs: &num_epochs {num_epochs}",
        "",
        f"init_sparsity: &init_sparsity {init_sparsity}",
        f"pruning_start_epoch: &pruning_start_epoch {pruning_start_epoch}",
        f"pruning_end_epoch: &pruning_end_epoch {pruning_end_epoch}",
        f"update_frequency: &pruning_update_frequency {update_frequency}",
        "",
    ]
    anchors = {}
    for t in sorted(groups):
        anchors[t] = f"target_sparsity_{int(round(t * 100))}"
        lines.append(f"{anchors[t]}: &{anchors[t]} {t}")
    lines += [
        "",
        "training_modifiers:",
        "  - !EpochRangeModifier",
        "    start_epoch: 0.0",
        "    end_epoch: *num_epochs",
        "",
        "pruning_modifiers:",
    ]
    for t in sorted(groups):
        lines += ["  - !GMPruningModifier", "    params:"]
        lines += [f"      - {name}" for name in groups[t]]
        lines += [
            "    init_sparsity: *init_sparsity",
            f"    final_sparsity: *{anchors[t]}",
            "    start_epoch: *pruning_start_epoch",
            "    end_epoch: *pruning_end_epoch",
            "    update_frequency: *pruning_update_frequency",
            "",
        ]
    lines.append("---")
    body = [
        "",
        "# Pruning recipe suggested by one-shot sensitivity analysis",
        "",
        "Each layer was pruned alone (magnitude) and the model re-scored; robust layers get the highest",
        "target sparsity whose loss stayed within the tolerance, sensitive layers get a low target.",
        "",
    ]
    if note:
        body += [note, ""]
    body += ["| target sparsity | layers |", "|---:|---:|"] + [f"| {t} | {len(groups[t])} |" for t in sorted(groups)]
    return "\n".join(lines + body) + "\n"


def plot_sensitivity(result: SensitivityResult, path, top: int = 60):
    """Heat map (layers x levels) of the damage, most sensitive layers first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result.ranking()[:top]
    data = np.stack([result.damage(n) for n in names]) if names else np.zeros((0, len(result.levels)))
    fig, ax = plt.subplots(figsize=(6.5, max(3.0, 0.18 * len(names) + 1.5)), dpi=120)
    vmax = max(float(np.abs(data).max()) if data.size else 0.0, 1e-9)
    im = ax.imshow(data, aspect="auto", cmap="RdYlGn_r", vmin=-vmax, vmax=vmax)
    ax.set_xticks(range(len(result.levels)))
    ax.set_xticklabels([f"{l:.0%}" for l in result.levels])
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([n.removesuffix(".weight") for n in names], fontsize=6)
    ax.set_xlabel("sparsity of the layer (others dense)")
    fig.colorbar(im, ax=ax, label="score lost vs. dense")
    ax.set_title(f"pruning sensitivity (baseline {result.baseline:.4g})")
    return save_figure(fig, path)
