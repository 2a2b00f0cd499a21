"""Post-training calibration of a fake-quantized model (model-agnostic; utils only).

A model prepared with :func:`~sparseyolo.quantization.prepare_qat` holds an
:class:`ActivationQuantizer` at every point where the exported graph quantizes an activation.
:func:`calibrate` runs the float model (all quantizers bypassed) over calibration batches once,
and in that one pass

- records an exact streaming histogram of every activation quantizer's input
  (:class:`HistogramObserver`), from which a clipping range is chosen: ``minmax``, ``percentile``
  (e.g. the 0.01% / 99.99% quantiles) or ``mse`` (the range whose uint8 / int8 grid gives the least
  expected squared error over the histogram: clipping error outside, rounding noise inside);
- measures, for every fake-quantized convolution, the mean output shift that quantizing its weights
  causes on real inputs, ``E[conv(x, q(W)) - conv(x, W)]`` per output channel (empirical bias
  correction, Nagel et al. 2019, "Data-Free Quantization through Weight Equalization and Bias
  Correction"), which is then subtracted from the layer's bias.

The ranges are written into the quantizers and every observer is frozen, so the model exports
through the same QDQ / QLinear path as a quantization-aware-trained one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from sparseyolo.quantization.fake_quant import ActivationQuantizer, WeightQuantizer, fake_quantize, qparams
from sparseyolo.quantization.modules import QATConv2d, QATConvBnAct
from sparseyolo.quantization.prepare import disable_observers, freeze_bn_stats, quantizers_bypassed
from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.logging import LOGGER

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


def set_quantizer_range(quantizer: ActivationQuantizer, lo: float, hi: float) -> None:
    """Write the range ``[lo, hi]`` and its scale / zero point into ``quantizer`` and freeze its observer."""
    with torch.no_grad():
        quantizer.min_val.fill_(float(lo))
        quantizer.max_val.fill_(float(hi))
        scale, zero_point = qparams(
            quantizer.min_val, quantizer.max_val, quantizer.quant_min, quantizer.quant_max, quantizer.symmetric
        )
        quantizer.scale.copy_(scale)
        quantizer.zero_point.copy_(zero_point)
        quantizer.observer_enabled.fill_(0)


def quantized_weight(quantizer: WeightQuantizer, w: torch.Tensor) -> torch.Tensor:
    """``w`` fake-quantized with the quantizer's current scales (no observation, whatever its flags)."""
    w = w.float()
    q = quantizer
    if q.per_channel:
        return fake_quantize(w, q.scale, q.zero_point, q.quant_min, q.quant_max, q.ch_axis)
    return fake_quantize(w, q.scale[0], q.zero_point[0], q.quant_min, q.quant_max)


def _float_weight(module: nn.Module) -> torch.Tensor:
    """The float weight a QAT conv quantizes (BN folded in for a conv+bn block)."""
    if isinstance(module, QATConvBnAct):
        return module.conv.weight * module.folded_scale().reshape(-1, 1, 1, 1)
    return module.weight


@torch.no_grad()
def refresh_weight_scales(model: nn.Module, weight_quant_max: int | None = None) -> int:
    """Set every QAT conv / linear weight quantizer's scale from the current weights; returns the count.

    ``weight_quant_max``: the largest integer magnitude the weights may use, below the quantizer's
    own (e.g. 63: 7-bit values stored as int8, which x86 int8 kernels without VNNI multiply with uint8
    activations without saturating their 16-bit pair sums). The quantizer keeps its full integer
    range, so the exported graph is the plain 8-bit one: only the scales are larger.
    """
    n = 0
    for m in model.modules():
        q = getattr(m, "weight_fake_quant", None)
        if isinstance(q, WeightQuantizer):
            q.observe(_float_weight(m))
            if weight_quant_max is not None and 0 < weight_quant_max < q.quant_max:
                q.scale.mul_(q.quant_max / weight_quant_max)
            n += 1
    return n


@torch.no_grad()
def weight_error_shift(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(sum, n)``: per output channel, the sum over the ``n`` output positions (batch x height x
    width) of ``conv(x, q(W)) - conv(x, W)`` for a QAT conv (:class:`QATConvBnAct` or
    :class:`QATConv2d`) and its float input ``x``; ``sum / n`` is the mean output shift that bias
    correction removes.

    The conv is linear, so the sum is ``sum(dW * S)`` with the weight error ``dW = q(W) - W`` and
    ``S[c, kh, kw]`` the sum of the (zero-padded) input values each kernel tap reads over all output
    positions: a few slice sums of the batch-summed input instead of a second convolution.
    """
    conv = module.conv if isinstance(module, QATConvBnAct) else module
    w = _float_weight(module).float()
    dw = (quantized_weight(module.weight_fake_quant, w) - w).to(x.device)
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":  # the plain (slower) way
        y = conv._conv_forward(x.float(), dw, None)
        return y.sum(dim=(0, 2, 3)).double().cpu(), int(y.shape[0] * y.shape[2] * y.shape[3])
    (kh, kw), (sh, sw), (ph, pw), (dh, dwi) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    xs = torch.nn.functional.pad(x.float().sum(0).double(), (pw, pw, ph, ph))  # (C, H + 2ph, W + 2pw)
    ho = (xs.shape[1] - dh * (kh - 1) - 1) // sh + 1
    wo = (xs.shape[2] - dwi * (kw - 1) - 1) // sw + 1
    taps = torch.empty(xs.shape[0], kh, kw, dtype=torch.float64, device=xs.device)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
            cols = slice(j * dwi, j * dwi + sw * (wo - 1) + 1, sw)
            taps[:, i, j] = xs[:, rows, cols].sum(dim=(1, 2))
    g = conv.groups
    out, cin = dw.shape[0], dw.shape[1]
    shift = torch.einsum("goikl,gikl->go", dw.double().reshape(g, out // g, cin, kh, kw), taps.reshape(g, cin, kh, kw))
    return shift.reshape(-1).cpu(), int(x.shape[0] * ho * wo)


@torch.no_grad()
def correct_bias(module: nn.Module, shift: torch.Tensor) -> None:
    """Subtract ``shift`` (per output channel) from a QAT conv's effective bias.

    A conv+bn block takes it from the BatchNorm's ``bias`` (beta; the folded bias is
    ``beta - running_mean * s``); a plain conv without bias gets one.
    """
    if isinstance(module, QATConvBnAct):
        bn = module.bn
        delta = shift.to(bn.running_mean.device, bn.running_mean.dtype)
        if bn.bias is not None:
            bn.bias.sub_(delta.to(bn.bias.dtype))
        else:  # no affine BN: move the running mean instead (the folded bias is -running_mean * s)
            s = module.folded_scale()
            ok = s.abs() > torch.finfo(s.dtype).eps
            bn.running_mean.add_(torch.where(ok, delta / torch.where(ok, s, torch.ones_like(s)), 0.0))
    elif isinstance(module, QATConv2d):
        delta = shift.to(module.weight.device, module.weight.dtype)
        if module.bias is None:
            module.bias = nn.Parameter(-delta, requires_grad=module.weight.requires_grad)
        else:
            module.bias.sub_(delta)
    else:
        raise TypeError(f"correct_bias: {type(module).__name__} is not a QAT convolution")


@dataclass
class CalibrationReport:
    """What :func:`calibrate` did: per-quantizer ranges, per-conv bias shifts, batches and seconds."""

    method: str
    images: int = 0
    batches: int = 0
    seconds: float = 0.0
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # quantizer name -> (lo, hi)
    observed: dict[str, tuple[float, float]] = field(default_factory=dict)  # quantizer name -> (min, max)
    bias_shift: dict[str, float] = field(default_factory=dict)  # conv name -> max |mean output shift|
    unused: list[str] = field(default_factory=list)  # activation quantizers that saw no data
    input_quantizers: list[str] = field(default_factory=list)  # quantizers that read the model input


def _batch_size(batch: object) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return _batch_size(batch[0])
    return 1


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Iterable[object],
    method: str = "mse",
    percentile: float = DEFAULT_PERCENTILE,
    bias_correction: bool = True,
    bins: int = DEFAULT_BINS,
    input_range: tuple[float, float] | None = None,
    forward: Callable[[nn.Module, object], object] | None = None,
    weight_quant_max: int | None = None,
) -> CalibrationReport:
    """Calibrate a fake-quantized ``model`` in place on ``batches`` and freeze it.

    ``batches``: model inputs, one per forward call (``forward(model, batch)`` runs one; default
    ``model(batch)``). One pass runs the float model with every quantizer bypassed while hooks record
    activation histograms and, with ``bias_correction``, each QAT conv's mean output shift from weight
    quantization. Then each activation quantizer gets the range ``method`` picks (``minmax``,
    ``percentile`` with ``percentile``, ``mse``), each conv's bias is corrected, weight scales are set
    from the weights (symmetric, per channel if so configured) and every observer and BN statistic
    is frozen. ``input_range``: a fixed range for the quantizers that read the model input itself
    (e.g. ``(0.0, 1.0)`` for images, which keeps the uint8-input form exact). ``weight_quant_max``:
    see :func:`refresh_weight_scales`. The model should be in eval mode.
    """
    check_method(method, percentile)
    start = time.perf_counter()
    report = CalibrationReport(method=method)
    names = {id(m): n for n, m in model.named_modules()}
    act_quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    convs = [m for m in model.modules() if isinstance(m, (QATConvBnAct, QATConv2d))]
    observers = {id(q): HistogramObserver(bins) for q in act_quantizers}
    shifts: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    current: list[object] = [None]  # the batch being run (to spot quantizers that read it directly)
    reads_input: set[int] = set()
    refresh_weight_scales(model, weight_quant_max)

    def observe(q: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            if args[0] is current[0]:
                reads_input.add(id(q))
            observers[id(q)].update(args[0])

    def measure(m: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            s, n = weight_error_shift(m, args[0])
            shifts[id(m)] = shifts[id(m)] + s if id(m) in shifts else s
            counts[id(m)] = counts.get(id(m), 0) + n

    handles = [q.register_forward_pre_hook(observe) for q in act_quantizers]
    if bias_correction:
        handles += [m.register_forward_pre_hook(measure) for m in convs]
    run = forward or (lambda net, batch: net(batch))
    try:
        with quantizers_bypassed(model):
            for batch in batches:
                current[0] = batch
                run(model, batch)
                report.batches += 1
                report.images += _batch_size(batch)
    finally:
        current[0] = None
        for h in handles:
            h.remove()
    if report.batches == 0:
        raise CalibrationError("calibration got no batches (an empty calibration set?)")
    for q in act_quantizers:
        name = names.get(id(q), "?")
        obs = observers[id(q)]
        if obs.count == 0:
            report.unused.append(name)
            continue
        if input_range is not None and id(q) in reads_input:
            lo, hi = float(input_range[0]), float(input_range[1])
            report.input_quantizers.append(name)
        else:
            lo, hi = obs.range(method, q.quant_min, q.quant_max, q.symmetric, percentile)
        set_quantizer_range(q, lo, hi)
        report.ranges[name] = (lo, hi)
        report.observed[name] = (obs.min, obs.max)
    for m in convs:
        if id(m) in shifts and counts.get(id(m)):
            mean = shifts[id(m)] / counts[id(m)]
            correct_bias(m, mean)
            report.bias_shift[names.get(id(m), "?")] = float(mean.abs().max())
    disable_observers(model)  # weight scales (set above) and activation ranges stay as they are
    freeze_bn_stats(model)
    report.seconds = time.perf_counter() - start
    if report.unused:  # shadowed by a shared quantizer (the export warns if one is in the graph)
        LOGGER.debug(f"calibration: {len(report.unused)} activation quantizers saw no data: {report.unused}")
    return report
