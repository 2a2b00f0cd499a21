"""Post-training calibration of a fake-quantized model (model-agnostic; utils only).

A model prepared with :func:`~sparseyolo.quantization.prepare_qat` holds an
:class:`ActivationQuantizer` at every point where the exported graph quantizes an activation.
:func:`calibrate` runs the float model (all quantizers bypassed) over calibration batches once,
and in that one pass

- records an exact streaming histogram of every activation quantizer's input
  (:class:`~sparseyolo.quantization.histogram.HistogramObserver`), from which a clipping range is
  chosen: ``minmax``, ``percentile`` (e.g. the 0.01% / 99.99% quantiles) or ``mse`` (the range whose
  uint8 / int8 grid gives the least expected squared error over the histogram: clipping error
  outside, rounding noise inside);
- measures, for every fake-quantized convolution, the mean output shift that quantizing its weights
  causes on real inputs, ``E[conv(x, q(W)) - conv(x, W)]`` per output channel (empirical bias
  correction, Nagel et al. 2019, "Data-Free Quantization through Weight Equalization and Bias
  Correction"), which is then subtracted from the layer's bias.

The ranges are written into the quantizers and every observer is frozen, so the model exports
through the same QDQ / QLinear path as a quantization-aware-trained one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from sparseyolo.quantization.fake_quant import ActivationQuantizer, WeightQuantizer, fake_quantize, qparams
from sparseyolo.quantization.histogram import (
    DEFAULT_BINS,
    DEFAULT_PERCENTILE,
    CalibrationError,
    HistogramObserver,
    check_method,
)
from sparseyolo.quantization.modules import QATConv2d, QATConvBnAct
from sparseyolo.quantization.prepare import disable_observers, freeze_bn_stats, quantizers_bypassed
from sparseyolo.utils.logging import LOGGER


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
