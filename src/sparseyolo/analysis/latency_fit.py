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
    """Latency as a plane in the work a cut removes (conv FLOPs, and feature-map megabytes: the memory-bound
    activation, quantize and pooling ops scale with those, not with FLOPs), fitted to every variant timed
    in one run.

    One variant's timing moves by several ms between runs on a shared 2-core machine, as much as a
    single group's real saving; the plane, fitted to dozens of variants at once, does not. Each variant
    keeps the share ``weight`` of its own deviation from the plane: the share the rounds say is real
    (empirical Bayes: deviation variance against the variance of a mean of ``rounds`` timings)."""

    ms_per_gflop: float  # latency saved per GFLOP removed
    ms_per_mbyte: float  # latency saved per feature-map megabyte removed
    base_ms: float  # the uncut model, on the plane plus its share of its own deviation
    noise_ms: float  # standard error of one file's mean timing, from the spread between rounds
    spread_ms: float  # standard deviation of the variants' real deviations from the plane
    weight: float  # spread^2 / (spread^2 + noise^2): 1 = trust each timing, 0 = trust the plane
    rounds: int


def fit_savings(
    times: Sequence[Sequence[float]],
    gflops_removed: Sequence[float],
    mbytes_removed: Sequence[float] | None = None,
) -> tuple[list[float], LatencyFit]:
    """Latency savings of each cut variant, and the fit they come from.

    ``times[r][i]`` is round ``r``'s median latency of file ``i``; file 0 is the uncut model (it removes
    nothing). ``gflops_removed[i]`` and ``mbytes_removed[i]`` (optional: feature-map megabytes)
    are the work file ``i`` no longer does. Returns the saving of files 1.. against file 0: the plane's
    saving plus each file's weighted deviation from it. With noiseless timings (equal rounds) these are
    the measured savings exactly."""
    t = np.asarray(times, dtype=float)
    rounds, n = t.shape
    columns = [gflops_removed] if mbytes_removed is None else [gflops_removed, mbytes_removed]
    if n < 2 or any(len(c) != n for c in columns):
        raise ValueError(f"fit_savings: {n} timed files against {[len(c) for c in columns]} work figures")
    x = np.asarray(columns, dtype=float).T
    mean = t.mean(axis=0)
    keep = np.ones(n, dtype=bool)
    for _ in range(2):  # least squares, then again without gross outliers (a file hit by a stall)
        intercept, slopes = _plane(x[keep], mean[keep])
        residual = mean - (intercept + x @ slopes)
        mad = float(np.median(np.abs(residual[keep] - np.median(residual[keep]))))
        if mad == 0.0:
            break
        keep = np.abs(residual) <= 5.0 * 1.4826 * mad
    noise2 = float(t.var(axis=0, ddof=1).mean() / rounds) if rounds > 1 else 0.0
    dof = max(int(keep.sum()) - 1 - int((slopes != 0).sum()), 1)
    spread2 = max(float((residual[keep] ** 2).sum()) / dof - noise2, 0.0)
    weight = 1.0 if noise2 == 0.0 else spread2 / (spread2 + noise2)
    latency = intercept + x @ slopes + weight * residual
    savings = [float(latency[0] - v) for v in latency[1:]]
    per = [-float(v) for v in slopes] + [0.0]
    fit = LatencyFit(per[0], per[1], float(latency[0]), noise2**0.5, spread2**0.5, weight, rounds)
    return savings, fit


def _plane(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Least-squares intercept and slopes of ``y`` on the columns of ``x``, every slope <= 0 (removing work
    never makes a model slower): a column whose slope comes out positive is dropped and the rest refitted."""
    use = [j for j in range(x.shape[1]) if np.ptp(x[:, j]) > 0]
    while True:
        design = np.column_stack([np.ones(len(y)), x[:, use]])
        coef = np.linalg.lstsq(design, y, rcond=None)[0]
        slopes = np.zeros(x.shape[1])
        slopes[use] = coef[1:]
        if not use or slopes.max() <= 0.0:
            return float(coef[0]), slopes
        use.remove(int(np.argmax(slopes)))
