"""``recipe suggest``'s search: which cuts to make, from the measured savings and losses, and the timing
of each plan beside the dense models (the figures that decide what is written)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from sparseyolo.analysis import recipe_suggest_timing as timing
from sparseyolo.analysis.latency_fit import smoothed
from sparseyolo.sparsity.channel_pruner import kept_channels
from sparseyolo.utils.logging import LOGGER

if TYPE_CHECKING:
    from sparseyolo.analysis.recipe_suggest import Cut, Suggestion

PLAN_TIME = 2.0  # per round of a plan's timing, this many times --time per file: it decides what is written
TARGET_TOLERANCE = 0.02  # a plan within 2% of the target speed-up meets it: less than the timing noise


def top(cuts: Sequence[Cut]) -> float:
    """The largest cut level measured (a channel fraction or a sparsity)."""
    return max((float(f) for c in cuts for f in c.saving_ms), default=0.0)


def next_cut(
    cuts: list[Cut], chosen: dict[str, float], saving: dict[str, dict[float, float]], damage: dict[str, dict]
) -> tuple[Cut, float] | None:
    """The cut and level (any above its current one) that save the most time per score lost; a weight is
    either thinned (as a channel producer) or made sparse, never both."""
    taken = {p: cut.key for cut in cuts if chosen.get(cut.key, 0.0) > 0 for p in cut.params}
    best, best_rate = None, 0.0
    for cut in cuts:
        if any(taken.get(p, cut.key) != cut.key for p in cut.params):
            continue
        now = chosen.get(cut.key, 0.0)
        for level in (f for f in saving[cut.key] if f > now):
            gain = saving[cut.key][level] - saving[cut.key][now]
            cost = damage[cut.key][level] - damage[cut.key][now]
            rate = gain / (max(cost, 0.0) + 1e-3)
            if gain > 0 and rate > best_rate:
                best, best_rate = (cut, level), rate
    return best


def search(
    result: Suggestion,
    build_plan: Callable[[dict[str, float]], nn.Module],
    tmp_dir: Path,
    threads: int | None,
    time_s: float,
) -> None:
    """Greedy: take the best cut (:func:`next_cut`) until the predicted latency meets the target; then
    time the real plan beside the dense models (few files and long timings: the figures that decide). A
    plan that misses the target, or beats it by more than 10%, rescales the savings to what it measured and
    the search starts again from the dense latency just timed. Of the timed plans, the one that meets the
    target (within :data:`TARGET_TOLERANCE`) at the least predicted loss wins (else the fastest). Savings
    and damage are smoothed (non-decreasing in the cut) first; the suggestion keeps the raw measurements."""
    cuts: list[Cut] = [*result.groups, *result.layers]
    saving = {c.key: smoothed(c.saving_ms) for c in cuts}
    damage = {c.key: smoothed(c.damage) for c in cuts}

    def greedy(scale: float, target_ms: float) -> tuple[dict[str, float], float]:
        chosen: dict[str, float] = {}
        while True:
            predicted = result.base_ms - scale * fitted_saving(chosen)
            best = None if predicted <= target_ms else next_cut(cuts, chosen, saving, damage)
            if best is None:  # met, or nothing left that saves time
                return chosen, predicted
            chosen[best[0].key] = best[1]

    def loss(chosen: dict[str, float]) -> float:
        return sum(damage[c.key][chosen.get(c.key, 0.0)] for c in cuts)

    def fitted_saving(chosen: dict[str, float]) -> float:
        return sum(saving[c.key][chosen.get(c.key, 0.0)] for c in cuts)

    # the dense latencies the first plan starts from: a small, long run, like the plans' own (among dozens
    # of files the same model can time 40% slower, which shifts every prediction, not the savings)
    dense_files = [tmp_dir / "fp32.onnx", *([tmp_dir / "int8.onnx"] if result.int8 else [])]
    dense_ms, _ = timing.median_ms(dense_files, result.engine, result.img, threads, PLAN_TIME * time_s)
    result.base_ms, target_ms, scale = dense_ms[-1], dense_ms[0] / result.target_speedup, 1.0
    plans = result.plans  # each timed beside the dense models
    for attempt in range(4):
        chosen, predicted = greedy(scale, target_ms)
        if any(chosen == p["cuts"] for p in plans):
            break  # the same plan again: nothing new to learn
        plan_file = timing.export_variant(
            build_plan(chosen),
            tmp_dir / f"plan{attempt}.onnx",
            result.img,
            result.int8,
            result.engine,
            result.stem_int8,
        )
        (*dense_ms, plan_ms), _ = timing.median_ms(
            [*dense_files, plan_file], result.engine, result.img, threads, PLAN_TIME * time_s
        )
        fp32_ms = dense_ms[0]
        plans.append(
            {"cuts": dict(chosen), "predicted_ms": predicted, "fp32_ms": fp32_ms, "ms": plan_ms, "scale": scale}
        )
        LOGGER.info(
            f"recipe suggest: plan {attempt + 1}, {len(chosen)} cuts: predicted {predicted:.1f} ms, timed "
            f"{plan_ms:.1f} ms = {fp32_ms / plan_ms:.2f}x (target {result.target_speedup:g}x)"
        )
        # the next plan starts from the dense latency of this small, long run, not the big one's
        result.base_ms, target_ms = dense_ms[-1], fp32_ms / result.target_speedup
        if 0.9 * target_ms <= plan_ms <= (1 + TARGET_TOLERANCE) * target_ms or fitted_saving(chosen) <= 0:
            break
        scale = max(result.base_ms - plan_ms, 1e-6) / fitted_saving(chosen)
    meeting = [p for p in plans if p["ms"] * result.target_speedup <= (1 + TARGET_TOLERANCE) * p["fp32_ms"]]
    best = (
        min(meeting, key=lambda p: (loss(p["cuts"]), -p["ms"] / p["fp32_ms"]))
        if meeting
        else min(plans, key=lambda p: p["ms"] / p["fp32_ms"])
    )
    chosen, result.fp32_ms, result.predicted_ms = best["cuts"], best["fp32_ms"], best["ms"]
    result.predicted_speedup = result.fp32_ms / max(result.predicted_ms, 1e-9)
    for c in result.groups:
        c.fraction = chosen.get(c.key, 0.0)
        c.kept = kept_channels(c.channels, c.fraction, result.round_to) if c.fraction else c.channels
    for x in result.layers:
        x.sparsity = chosen.get(x.key, 0.0)
    result.predicted_score_loss = loss(chosen)
    if result.predicted_speedup * (1 + TARGET_TOLERANCE) < result.target_speedup:
        weights = f", {top(result.layers):.0%} of each weight" if result.layers else ""
        LOGGER.warning(
            f"recipe suggest: the fastest of the {len(plans)} plans timed reaches {result.predicted_speedup:.2f}x, "
            f"below the target {result.target_speedup:g}x (cuts measured up to {top(result.groups):.0%} of each "
            f"group's channels{weights}); timings on a busy machine are noisy: rerun it on an idle one, or with a "
            "longer --time"
        )
