"""Calibration ranges from a streaming histogram of activation values: ``minmax``, ``percentile`` or
``mse`` (model-agnostic; utils only)."""

from __future__ import annotations

import math

import numpy as np
import torch

from sparseyolo.utils.errors import SparseYoloError

METHODS = ("minmax", "percentile", "mse")
DEFAULT_PERCENTILE = 99.99
DEFAULT_BINS = 2048
DEFAULT_MAX_SAMPLES = 1 << 18  # values per tensor added to a histogram (more are sampled)


class CalibrationError(SparseYoloError):
    """Calibration settings or data that cannot work (unknown method, bad percentile, no batches)."""


def check_method(method: str, percentile: float = DEFAULT_PERCENTILE) -> str:
    """``method`` if it is one of :data:`METHODS` and ``percentile`` is in (50, 100]; else a CalibrationError."""
    if method not in METHODS:
        raise CalibrationError(f"calibration method {method!r} is not one of {', '.join(METHODS)}")
    if not isinstance(percentile, (int, float)) or isinstance(percentile, bool) or not 50.0 < percentile <= 100.0:
        raise CalibrationError(f"--percentile must be a number in (50, 100], got {percentile!r}")
    return method


class HistogramObserver:
    """Streaming histogram of the values seen, plus their exact min and max.

    Bins have one width for the whole stream. When a batch falls outside the covered range, whole
    bins are added on that side; when there would be more than ``2 * bins`` of them, adjacent pairs
    are merged (the width doubles). Counts are never re-interpolated, so the histogram is exact at
    its resolution, which is at least ``(max - min) / (2 * bins)``. A tensor with more than
    ``max_samples`` values adds an evenly strided sample of about that many to the histogram (from a
    seeded random offset, so calibration is repeatable); min and max always come from all values.
    """

    def __init__(self, bins: int = DEFAULT_BINS, max_samples: int = DEFAULT_MAX_SAMPLES, seed: int = 0) -> None:
        if not isinstance(bins, int) or bins < 16:
            raise CalibrationError(f"histogram bins must be an integer >= 16, got {bins!r}")
        self.bins = bins
        self.max_samples = int(max_samples)
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self.counts: torch.Tensor | None = None  # float64, on the CPU
        self.origin = 0.0  # left edge of bin 0
        self.width = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.count = 0  # values in the histogram

    def _sample(self, x: torch.Tensor) -> torch.Tensor:
        """At most about ``max_samples`` values of ``x``: every ``step``-th (odd step) from a seeded random
        offset, so successive batches read different positions; cheaper than a random gather."""
        n = x.numel()
        if n <= self.max_samples:
            return x
        step = (n // self.max_samples) | 1
        offset = int(torch.randint(0, step, (1,), generator=self._generator))
        return x.reshape(-1)[offset::step]

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach()
        if x.numel() == 0:
            return
        x = x.float()
        lo, hi = (float(v) for v in torch.aminmax(x))
        if not (math.isfinite(lo) and math.isfinite(hi)):  # (rare) drop inf / nan values
            x = x[torch.isfinite(x)]
            if x.numel() == 0:
                return
            lo, hi = (float(v) for v in torch.aminmax(x))
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        if self.counts is None:
            span = hi - lo
            if span <= 0.0:  # a constant tensor: a small range around it
                span = max(abs(hi), 1e-6)
                lo -= span / 2
            self.origin, self.width = lo, span / self.bins
            self.counts = torch.zeros(self.bins, dtype=torch.float64)
        else:
            self._extend(lo, hi)
        n = self.counts.numel()
        top = self.origin + n * self.width
        x = self._sample(x)
        # values are inside [origin, top]; histc puts a value equal to ``top`` in the last bin
        hist = torch.histc(x, bins=n, min=self.origin, max=top)
        self.counts += hist.to("cpu", torch.float64)
        self.count += int(x.numel())

    def _extend(self, lo: float, hi: float) -> None:
        assert self.counts is not None
        while True:
            n = self.counts.numel()
            left = max(0, math.ceil((self.origin - lo) / self.width)) if lo < self.origin else 0
            top = self.origin + n * self.width
            right = max(0, math.ceil((hi - top) / self.width)) if hi > top else 0
            if n + left + right <= 2 * self.bins:
                break
            # merge adjacent pairs: the width doubles, the origin stays, so old edges remain edges
            counts = self.counts
            if n % 2:
                counts = torch.cat([counts, counts.new_zeros(1)])
            self.counts = counts.view(-1, 2).sum(1)
            self.width *= 2.0
        if left or right:
            zeros = self.counts.new_zeros
            self.counts = torch.cat([zeros(left), self.counts, zeros(right)])
            self.origin -= left * self.width

    def edges(self) -> np.ndarray:
        """Bin edges (``len(counts) + 1`` values)."""
        if self.counts is None:
            raise CalibrationError("histogram observer has seen no data")
        return self.origin + self.width * np.arange(self.counts.numel() + 1, dtype=np.float64)

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0..1) of the values seen, linear within a bin, clamped to [min, max]."""
        if self.counts is None or self.count == 0:
            raise CalibrationError("histogram observer has seen no data")
        counts = self.counts.numpy()
        cdf = np.concatenate([[0.0], np.cumsum(counts)])
        target = q * cdf[-1]
        i = int(np.searchsorted(cdf, target, side="left"))
        i = min(max(i, 1), len(counts))
        below, inside = cdf[i - 1], counts[i - 1]
        frac = 0.0 if inside <= 0 else (target - below) / inside
        value = self.origin + self.width * (i - 1 + frac)
        return float(min(max(value, self.min), self.max))

    def percentile_range(self, percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
        """``(lo, hi)``: the ``100 - p`` and ``p`` percentiles (``p = 100``: min and max)."""
        if percentile >= 100.0:
            return self.min, self.max
        p = percentile / 100.0
        return self.quantile(1.0 - p), self.quantile(p)

    def mse_range(self, quant_min: int, quant_max: int, symmetric: bool, candidates: int = 1000) -> tuple[float, float]:
        """``(lo, hi)`` minimising the expected squared quantization error over the histogram.

        The error of a candidate grid counts, per bin, the rounding noise ``scale**2 / 12`` for values
        inside the grid and ``(center - end)**2 + width**2 / 12`` for values clipped to one of its ends
        (prefix sums make each candidate O(log bins)). Asymmetric grids are searched in three 1-D
        steps: both ends shrunk by one factor, then the top end alone, then the bottom end alone. The
        grids are exactly those :func:`qparams` makes (0.0 exactly representable), so the error is
        that of the exported quantizer.
        """
        if self.counts is None or self.count == 0:
            raise CalibrationError("histogram observer has seen no data")
        counts = self.counts.numpy()
        keep = counts > 0
        centers = (self.edges()[:-1] + self.width / 2)[keep]
        counts = counts[keep]
        lo0, hi0 = min(self.min, 0.0), max(self.max, 0.0)
        if hi0 - lo0 <= 0.0:
            return self.min, self.max
        # prefix sums of n, n*c, n*c^2 (index k: the first k bins)
        s0 = np.concatenate([[0.0], np.cumsum(counts)])
        s1 = np.concatenate([[0.0], np.cumsum(counts * centers)])
        s2 = np.concatenate([[0.0], np.cumsum(counts * centers**2)])
        alphas = np.arange(1, candidates + 1, dtype=np.float64) / candidates
        levels = float(quant_max - quant_min)
        bin_var = self.width**2 / 12.0

        def error(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
            if symmetric:
                absmax = np.maximum(-lo, hi)
                zp = 0 if quant_min < 0 else (quant_min + quant_max + 1) // 2
                scale = np.maximum(absmax / quant_max if quant_min < 0 else 2 * absmax / levels, 1e-12)
            else:
                scale = np.maximum((hi - lo) / levels, np.finfo(np.float32).eps)
                zp = np.clip(quant_min - np.round(lo / scale), quant_min, quant_max)
            g_lo, g_hi = (quant_min - zp) * scale, (quant_max - zp) * scale
            a = np.searchsorted(centers, g_lo, side="left")  # bins [0, a) are clipped below
            b = np.searchsorted(centers, g_hi, side="right")  # bins [b, end) are clipped above
            below = s2[a] - 2 * g_lo * s1[a] + g_lo**2 * s0[a]
            n_above = s0[-1] - s0[b]
            above = (s2[-1] - s2[b]) - 2 * g_hi * (s1[-1] - s1[b]) + g_hi**2 * n_above
            inside = (s0[b] - s0[a]) * scale**2 / 12.0
            return below + above + inside + (s0[a] + n_above) * bin_var

        if symmetric:
            absmax = max(-lo0, hi0)
            best = float(alphas[int(np.argmin(error(-absmax * alphas, absmax * alphas)))] * absmax)
            return -best, best
        a = alphas[int(np.argmin(error(lo0 * alphas, hi0 * alphas)))]
        lo, hi = lo0 * a, hi0 * a
        hi_c = np.unique(np.concatenate([hi0 * alphas, [hi]]))
        hi = float(hi_c[int(np.argmin(error(np.full_like(hi_c, lo), hi_c)))])
        if lo < 0.0:
            lo_c = np.unique(np.concatenate([lo0 * alphas, [lo]]))
            lo = float(lo_c[int(np.argmin(error(lo_c, np.full_like(lo_c, hi))))])
        return float(lo), float(hi)

    def range(
        self,
        method: str,
        quant_min: int,
        quant_max: int,
        symmetric: bool = False,
        percentile: float = DEFAULT_PERCENTILE,
    ) -> tuple[float, float]:
        """The clipping range chosen by ``method`` (one of :data:`METHODS`)."""
        check_method(method, percentile)
        if self.count == 0:
            raise CalibrationError("histogram observer has seen no data")
        if method == "minmax":
            return self.min, self.max
        if method == "percentile":
            return self.percentile_range(percentile)
        return self.mse_range(quant_min, quant_max, symmetric)
