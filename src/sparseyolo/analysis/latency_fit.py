"""Numeric helpers of ``recipe suggest``: making noisy per-cut measurements usable by its search."""

from __future__ import annotations

from collections.abc import Sequence


def non_decreasing(values: Sequence[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (pool adjacent violators). A bigger cut does
    not make a model slower or more accurate, so a dip between measured levels is timing or scoring noise."""
    blocks: list[list[float]] = []  # [sum, count] of pooled runs
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, n = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += n
    return [total / n for total, n in blocks for _ in range(int(n))]


def smoothed(measured: dict[str, float]) -> dict[float, float]:
    """Level -> value, made non-decreasing over the levels, with level 0 (no cut) at 0."""
    levels = sorted(float(k) for k in measured)
    values = non_decreasing([0.0] + [max(measured[str(f)], 0.0) for f in levels])
    return dict(zip([0.0, *levels], values, strict=True))
