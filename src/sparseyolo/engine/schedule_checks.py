"""Checks of a recipe's schedule against the run's real optimizer steps, logged before training.

A pruning update every ``update_frequency`` epochs falls every ``update_frequency * steps_per_epoch``
optimizer steps. On a small dataset with gradient accumulation that can be about one step: masks then
change faster than the weights can adapt, and accuracy drops (docs/recipes.md, "Small datasets").
"""

from __future__ import annotations

from typing import Any

# fewer optimizer steps than this between two mask updates is warned about
MIN_STEPS_BETWEEN_UPDATES = 4


def schedule_warnings(
    manager: Any, steps_per_epoch: int, batches_per_epoch: int, accumulate: int, batch_size: int
) -> list[str]:
    """One line per update frequency at which pruning modifiers update their masks fewer than
    ``MIN_STEPS_BETWEEN_UPDATES`` optimizer steps apart, naming the modifiers, the numbers and the fix.
    Modifiers that share a frequency share a line (a recipe usually has one per layer group)."""
    by_frequency: dict[float, list[Any]] = {}
    for m in manager.pruning_modifiers:
        every = getattr(m, "update_frequency", None)
        if not every or every <= 0 or getattr(m, "start_epoch", 0) == getattr(m, "end_epoch", -1):
            continue  # one-shot pruning: no updates to space out
        if every * steps_per_epoch < MIN_STEPS_BETWEEN_UPDATES:
            by_frequency.setdefault(every, []).append(m)
    lines = []
    for every, modifiers in by_frequency.items():
        steps = every * steps_per_epoch
        if accumulate > 1:
            fix = f"One optimizer step per batch (--nbs {batch_size}) gives {every * batches_per_epoch:g}."
        else:
            fix = "A larger update_frequency, or more images per epoch, gives more."
        first = modifiers[0]
        who = f"{first.where}: !{first.tag} updates its masks"
        if len(modifiers) > 1:
            source = first.where.rsplit(":", 1)[0]
            at = ", ".join(m.where.rsplit(":", 1)[-1] for m in modifiers)
            who = f"{source}: {len(modifiers)} pruning modifiers (lines {at}) update their masks"
        lines.append(
            f"WARNING: {who} every {every:g} epochs = {steps:g} optimizer steps "
            f"({batches_per_epoch} batches per epoch, one optimizer step every {accumulate}); fewer than "
            f"{MIN_STEPS_BETWEEN_UPDATES} steps between updates leave the weights no time to recover. {fix}"
        )
    return lines


def recovery_note(manager: Any, steps_per_epoch: int, assumed_steps: int = 50) -> str | None:
    """A note when an epoch is much shorter than the shipped recipes assume: recovery is then short."""
    if steps_per_epoch >= assumed_steps or not manager.pruning_modifiers:
        return None
    return (
        f"this dataset gives {steps_per_epoch} optimizer steps per epoch; the shipped recipes assume about "
        f"{assumed_steps} or more. If accuracy does not recover after pruning, lengthen the recovery epochs "
        "without touching pruning through --recipe-args (each shipped recipe's notes name the variables, "
        "e.g. num_epochs=60 for yolov3-tiny.pruned.md)"
    )
