"""Sparsity schedules: how the target moves from ``init`` to ``final`` between two epochs.

``x = (epoch - start) / (end - start)`` clipped to [0, 1], then

* ``linear``:        y = x
* ``cubic``:         y = 1 - (1 - x)^3        (fast early pruning, slow at the end)
* ``inverse_cubic``: y = 1 - (1 - x)^(1/3)    (SparseML's definition in ``sparseml.utils.interpolate``;
  it is *not* x^3: it rises steeply at first and flattens towards the end, even faster than cubic)

and ``sparsity = y * (final - init) + init`` (SparseML's expression, evaluated in the same order so
that ``round(sparsity * n)`` pruned weights agree to the element). Values within float epsilon of 0
or 1 snap to the end points so that the final update reaches ``final`` exactly, as in SparseML.

When updates happen (SparseML 1.8's ``ScheduledModifier`` / ``ScheduledUpdateModifier`` rules, which
the recipe manager follows step for step):

* the epoch at optimizer step ``s`` is :func:`step_epoch` (``s // spe + (s % spe) / spe`` in floats);
* a modifier starts at the first step whose epoch is ``>= start_epoch`` and ends at the first step
  whose epoch is ``>= end_epoch`` (exact float comparisons, no tolerance);
* in between, an update with ``update_frequency`` f is due at the first step whose epoch is
  ``>= last_update_epoch + f``, where ``last_update_epoch`` is the epoch of the *step* the previous
  update ran at (:func:`update_due`). With an epoch that falls between steps the grid therefore
  drifts: start 2.0, f 0.25, 10 steps per epoch updates at steps 20, 23, 26, 29, 32, 35 (2.3 + 0.25
  = 2.55 -> step 26), not at the rounded points 20 + 2.5k.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

from sparseyolo.utils.errors import ConfigError

INTER_FUNCS: dict[str, Callable[[float], float]] = {
    "linear": lambda x: x,
    "cubic": lambda x: 1.0 - (1.0 - x) ** 3,
    "inverse_cubic": lambda x: 1.0 - (1.0 - x) ** (1.0 / 3.0),
}


def check_inter_func(name: str, where: str = "recipe") -> str:
    if name not in INTER_FUNCS:
        raise ConfigError(f"{where}: inter_func {name!r} is not one of {', '.join(INTER_FUNCS)}")
    return name


def schedule_progress(epoch: float, start: float, end: float, inter_func: str = "linear") -> float:
    """The interpolation factor y in [0, 1] at ``epoch``."""
    if end <= start:
        return 1.0 if epoch >= start else 0.0
    x = min(max((epoch - start) / (end - start), 0.0), 1.0)
    y = INTER_FUNCS[inter_func](x)
    if y <= sys.float_info.epsilon:
        return 0.0
    if y >= 1.0 - sys.float_info.epsilon:
        return 1.0
    return y


def interpolate(epoch: float, start: float, end: float, y0: float, y1: float, inter_func: str = "linear") -> float:
    """``y * (y1 - y0) + y0`` with ``y = schedule_progress(...)``."""
    y = schedule_progress(epoch, start, end, inter_func)
    if y == 0.0:
        return y0
    if y == 1.0:
        return y1
    return y * (y1 - y0) + y0


def step_epoch(step: int, steps_per_epoch: int) -> float:
    """The fractional epoch at optimizer step ``step``, as SparseML computes it (its optimizer wrapper:
    ``float(step // spe) + float(step % spe) / float(spe)``). Every schedule comparison uses this
    float, so an epoch in a recipe is reached at the same step as in SparseML, to the last bit."""
    return float(step // steps_per_epoch) + float(step % steps_per_epoch) / float(steps_per_epoch)


def update_due(epoch: float, start: float, last_update: float | None, frequency: float) -> bool:
    """SparseML's ``ScheduledUpdateModifier.update_ready`` for a started modifier that has not ended:
    ``epoch > start`` and ``epoch >= last_update + frequency`` (``frequency`` -1: every step)."""
    if epoch <= start:
        return False
    if frequency == -1.0:
        return True
    return last_update is not None and last_update >= 0.0 and epoch >= last_update + frequency


def first_step_at(epoch: float, steps_per_epoch: int) -> int:
    """The first optimizer step whose :func:`step_epoch` is ``>= epoch`` (0 for a negative epoch)."""
    if epoch <= 0:
        return 0
    step = max(int(math.ceil(epoch * steps_per_epoch)) - 1, 0)
    while step_epoch(step, steps_per_epoch) < epoch:
        step += 1
    while step > 0 and step_epoch(step - 1, steps_per_epoch) >= epoch:
        step -= 1
    return step


def update_steps(start: float, end: float, frequency: float, steps_per_epoch: int) -> list[int]:
    """The optimizer steps at which a gradual schedule (start / end epoch, ``update_frequency``)
    recomputes its masks under :func:`update_due`: its start step, each due update, its end step."""
    first, last = first_step_at(start, steps_per_epoch), first_step_at(end, steps_per_epoch)
    steps, last_update = [first], step_epoch(first, steps_per_epoch)
    for step in range(first + 1, last):
        epoch = step_epoch(step, steps_per_epoch)
        if update_due(epoch, start, last_update, frequency):
            steps.append(step)
            last_update = epoch
    if last > first:
        steps.append(last)
    return steps
