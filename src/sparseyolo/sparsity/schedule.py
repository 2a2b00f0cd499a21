"""Sparsity schedules: how the target moves from ``init`` to ``final`` between two epochs.

``x = (epoch - start) / (end - start)`` clipped to [0, 1], then

* ``linear``:        y = x
* ``cubic``:         y = 1 - (1 - x)^3        (fast early pruning, slow at the end)
* ``inverse_cubic``: y = 1 - (1 - x)^(1/3)    (SparseML's definition in ``sparseml.utils.interpolate``;
  it is *not* x^3: it rises steeply at first and flattens towards the end, even faster than cubic)

and ``sparsity = init + y * (final - init)``. Values within float epsilon of 0 or 1 snap to the
end points so that the final update reaches ``final`` exactly, as in SparseML.
"""

from __future__ import annotations

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
    """``y0 + y * (y1 - y0)`` with ``y = schedule_progress(...)``."""
    y = schedule_progress(epoch, start, end, inter_func)
    if y == 0.0:
        return y0
    if y == 1.0:
        return y1
    return y0 + y * (y1 - y0)
