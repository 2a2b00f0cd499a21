"""Numeric helpers of ``recipe suggest``: making noisy per-cut measurements usable by its search."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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


@dataclass
class LatencyFit:
    """Latency as a line in the work removed, fitted to every variant timed in one run.

    One variant's timing moves by several ms between runs on a shared 2-core machine, as much as a
    single group's real saving; the line, fitted to dozens of variants at once, does not. Each variant
    keeps the share ``weight`` of its own deviation from the line: the share the rounds say is real
    (empirical Bayes: deviation variance against the variance of a mean of ``rounds`` timings)."""

    ms_per_gflop: float  # latency saved per GFLOP removed
    base_ms: float  # the uncut model, on the line plus its share of its own deviation
    noise_ms: float  # standard error of one file's mean timing, from the spread between rounds
    spread_ms: float  # standard deviation of the variants' real deviations from the line
    weight: float  # spread^2 / (spread^2 + noise^2): 1 = trust each timing, 0 = trust the line
    rounds: int


def fit_savings(times: Sequence[Sequence[float]], gflops_removed: Sequence[float]) -> tuple[list[float], LatencyFit]:
    """Latency savings of each cut variant, and the fit they come from.

    ``times[r][i]`` is round ``r``'s median latency of file ``i``; file 0 is the uncut model
    (``gflops_removed[0] == 0``). Returns the saving of files 1.. against file 0: the line's saving plus
    each file's weighted deviation from it. With noiseless timings (equal rounds) these are the measured
    savings exactly."""
    t = np.asarray(times, dtype=float)
    x = np.asarray(gflops_removed, dtype=float)
    rounds, n = t.shape
    if n != len(x) or n < 2:
        raise ValueError(f"fit_savings: {n} timed files against {len(x)} FLOP figures")
    mean = t.mean(axis=0)
    keep = np.ones(n, dtype=bool)
    for _ in range(2):  # least squares, then again without gross outliers (a file hit by a stall)
        slope, intercept = _line(x[keep], mean[keep])
        residual = mean - (intercept + slope * x)
        mad = float(np.median(np.abs(residual[keep] - np.median(residual[keep]))))
        if mad == 0.0:
            break
        keep = np.abs(residual) <= 5.0 * 1.4826 * mad
    if slope > 0.0:  # removing work never makes a model slower: a flat line
        slope, intercept = 0.0, float(mean[keep].mean())
    residual = mean - (intercept + slope * x)
    noise2 = float(t.var(axis=0, ddof=1).mean() / rounds) if rounds > 1 else 0.0
    dof = max(int(keep.sum()) - 2, 1)
    spread2 = max(float((residual[keep] ** 2).sum()) / dof - noise2, 0.0)
    weight = 1.0 if noise2 == 0.0 else spread2 / (spread2 + noise2)
    latency = intercept + slope * x + weight * residual
    savings = [float(latency[0] - v) for v in latency[1:]]
    fit = LatencyFit(-slope, float(latency[0]), noise2**0.5, spread2**0.5, weight, rounds)
    return savings, fit


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept; a flat line through the mean when ``x`` does not vary."""
    dx = x - x.mean()
    var = float((dx**2).sum())
    slope = float((dx * (y - y.mean())).sum()) / var if var > 0 else 0.0
    return slope, float(y.mean() - slope * x.mean())
