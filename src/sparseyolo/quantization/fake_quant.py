"""Fake-quantizers with min/max observers, built on ``torch.fake_quantize_per_*_affine``.

The fake-quantize ops have straight-through-estimator gradients built in and export to ONNX as
QuantizeLinear + DequantizeLinear. All state (observed ranges, scales, zero points, on/off flags)
lives in buffers, so a QAT model saves, loads and resumes through a plain ``state_dict``.

Tensors produced by a quantizer are tagged (a Python attribute on the tensor) so the next
quantized layer can tell whether its input already sits on an integer grid and which quantizer
made it: that is how quantizers are shared instead of stacked.
"""

from __future__ import annotations

import torch
from torch import nn

_TAG = "_sparseyolo_fq"  # (quantizer, direct) on tensors that lie on a quantizer's grid
_CACHE = "_sparseyolo_fq_out"  # (pass id, output) on tensors already quantized by a layer's input quantizer
_PASS = [0]  # forward-pass counter (bumped by a pre-hook on the prepared model) that scopes the cache


def new_forward_pass(*_args: object) -> None:
    """Forward pre-hook on a prepared model: input-quantizer reuse never crosses forward calls."""
    _PASS[0] += 1


def tag(t: torch.Tensor, quantizer: nn.Module, direct: bool = True) -> torch.Tensor:
    """Record that ``t`` lies on ``quantizer``'s grid; ``direct`` means it is that quantizer's output."""
    setattr(t, _TAG, (quantizer, direct))
    return t


def untag(t: torch.Tensor) -> torch.Tensor:
    """Forget a tensor's grid tag (after an in-place op changed its values)."""
    if hasattr(t, _TAG):
        delattr(t, _TAG)
    return t


def tag_of(t: object) -> tuple[nn.Module, bool] | None:
    """The ``(quantizer, direct)`` tag of a tensor, or None."""
    return getattr(t, _TAG, None)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    # the fake-quantize kernels want float32; AMP is switched off for QAT but stay safe
    return x if x.dtype == torch.float32 else x.float()


class ActivationQuantizer(nn.Module):
    """Per-tensor activation fake-quantizer with a moving-average min/max observer.

    Asymmetric (uint8, zero point chosen so that 0.0 is exact) or symmetric (int8, zero point 0).
    The observer updates in training mode only (and once in eval mode if it has never seen data),
    with ``min = min + c * (batch_min - min)``, ``c = averaging_constant`` (PyTorch's default 0.01).
    """

    def __init__(
        self, quant_min: int = 0, quant_max: int = 255, symmetric: bool = False, averaging_constant: float = 0.01
    ) -> None:
        super().__init__()
        self.quant_min, self.quant_max = int(quant_min), int(quant_max)
        self.symmetric = bool(symmetric)
        self.averaging_constant = float(averaging_constant)
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer(
            "zero_point", torch.tensor(0 if symmetric or quant_min < 0 else quant_min, dtype=torch.int32)
        )
        self.register_buffer("observer_enabled", torch.tensor(1, dtype=torch.uint8))
        self.register_buffer("fake_quant_enabled", torch.tensor(1, dtype=torch.uint8))

    @property
    def initialized(self) -> bool:
        return bool(self.min_val <= self.max_val)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        x = x.detach()
        if x.numel() == 0:
            return
        lo, hi = torch.aminmax(_as_float(x))
        if not self.initialized:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        else:
            c = self.averaging_constant
            self.min_val.add_(c * (lo - self.min_val))
            self.max_val.add_(c * (hi - self.max_val))
        scale, zero_point = qparams(self.min_val, self.max_val, self.quant_min, self.quant_max, self.symmetric)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize with the current parameters (no observation)."""
        y = fake_quantize(_as_float(x), self.scale, self.zero_point, self.quant_min, self.quant_max)
        return tag(y.to(x.dtype) if y.dtype != x.dtype else y, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer_enabled and (self.training or not self.initialized):
            self.observe(x)
        if not self.fake_quant_enabled:
            return x
        return self.fake_quant(x)

    def extra_repr(self) -> str:
        return (
            f"range=({self.quant_min}, {self.quant_max}), symmetric={self.symmetric}, "
            f"scale={float(self.scale):.4g}, zero_point={int(self.zero_point)}"
        )


class WeightQuantizer(nn.Module):
    """Symmetric signed weight fake-quantizer (zero point 0), per tensor or per output channel.

    The scale follows the current weights (``max|w| / quant_max``) while the observer is enabled,
    so it never lags behind the optimizer; ``disable_observers`` freezes it. Zero point 0 means a
    weight that is exactly 0.0 (a pruned weight) quantizes to exactly 0.0.
    """

    def __init__(
        self,
        quant_min: int = -128,
        quant_max: int = 127,
        per_channel: bool = False,
        channels: int = 1,
        ch_axis: int = 0,
    ) -> None:
        super().__init__()
        self.quant_min, self.quant_max = int(quant_min), int(quant_max)
        self.per_channel = bool(per_channel)
        self.ch_axis = int(ch_axis)
        n = int(channels) if per_channel else 1
        self.register_buffer("scale", torch.ones(n))
        self.register_buffer("zero_point", torch.zeros(n, dtype=torch.int32))
        self.register_buffer("observer_enabled", torch.tensor(1, dtype=torch.uint8))
        self.register_buffer("fake_quant_enabled", torch.tensor(1, dtype=torch.uint8))

    @torch.no_grad()
    def observe(self, w: torch.Tensor) -> None:
        w = _as_float(w.detach())
        if self.per_channel:
            dims = [d for d in range(w.dim()) if d != self.ch_axis]
            absmax = w.abs().amax(dim=dims) if dims else w.abs()
        else:
            absmax = w.abs().max().reshape(1)
        self.scale.copy_(torch.clamp(absmax / self.quant_max, min=torch.finfo(torch.float32).eps))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.observer_enabled:
            self.observe(w)
        if not self.fake_quant_enabled:
            return w
        x = _as_float(w)
        if self.per_channel:
            y = fake_quantize(x, self.scale, self.zero_point, self.quant_min, self.quant_max, self.ch_axis)
        else:
            y = fake_quantize(x, self.scale[0], self.zero_point[0], self.quant_min, self.quant_max)
        return y.to(w.dtype) if y.dtype != w.dtype else y

    def extra_repr(self) -> str:
        return f"range=({self.quant_min}, {self.quant_max}), per_channel={self.per_channel}"


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    axis: int | None = None,
) -> torch.Tensor:
    """Per-tensor (``axis=None``) or per-channel fake quantization.

    ONNX QuantizeLinear only knows the full 8-bit ranges, so while exporting, a narrower range
    (``reduce_range``, fewer bits) becomes a clamp to the range's end points (exact grid values)
    followed by a full-range quantizer: the same numbers, in ops ONNX has.
    """
    if torch.onnx.is_in_onnx_export() and (quant_min, quant_max) not in ((0, 255), (-128, 127)):
        if axis is None:
            lo, hi = (quant_min - zero_point) * scale, (quant_max - zero_point) * scale
        else:
            shape = [1] * x.dim()
            shape[axis] = -1
            lo = ((quant_min - zero_point) * scale).reshape(shape)
            hi = ((quant_max - zero_point) * scale).reshape(shape)
        x = torch.minimum(torch.maximum(x, lo), hi)
        quant_min, quant_max = (0, 255) if quant_min >= 0 else (-128, 127)
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, quant_min, quant_max)
    return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, quant_min, quant_max)


def qparams(
    min_val: torch.Tensor, max_val: torch.Tensor, quant_min: int, quant_max: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for the range [min_val, max_val] (widened to include 0.0 exactly)."""
    eps = torch.finfo(torch.float32).eps
    lo = torch.clamp(min_val, max=0.0)
    hi = torch.clamp(max_val, min=0.0)
    if symmetric:
        absmax = torch.maximum(-lo, hi)
        if quant_min < 0:
            scale = torch.clamp(absmax / quant_max, min=eps)
            zero_point = torch.zeros_like(scale, dtype=torch.int32)
        else:  # unsigned symmetric: zero point in the middle
            scale = torch.clamp(2 * absmax / (quant_max - quant_min), min=eps)
            zero_point = torch.full_like(scale, (quant_min + quant_max + 1) // 2, dtype=torch.int32)
        return scale, zero_point
    scale = torch.clamp((hi - lo) / float(quant_max - quant_min), min=eps)
    zero_point = torch.clamp(quant_min - torch.round(lo / scale), quant_min, quant_max).to(torch.int32)
    return scale, zero_point


def quantize_input(x: torch.Tensor, own: ActivationQuantizer | None) -> torch.Tensor:
    """Bring a layer input onto an integer grid, sharing quantizers where the graph allows.

    - the direct output of a quantizer: used as is (one Q/DQ pair in the exported graph);
    - a grid-preserving derivative of one (max-pool, nearest upsample, zero pad): the same
      quantizer is applied again without observing, a numerical no-op that gives the exported
      graph an explicit Q/DQ with the same scale (so runtimes keep the consumer in int8);
    - anything else (the image, a concat, an add): the layer's own input quantizer, reused when
      several layers consume the same tensor.
    """
    if own is None:
        return x
    info = tag_of(x)
    if info is not None:
        quantizer, direct = info
        return x if direct else quantizer.fake_quant(x)
    cached = getattr(x, _CACHE, None)
    if cached is not None and cached[0] == _PASS[0]:
        return cached[1]
    y = own(x)
    setattr(x, _CACHE, (_PASS[0], y))
    return y


def quantize_bias(bias: torch.Tensor | None, x: torch.Tensor, weight_quant: WeightQuantizer) -> torch.Tensor | None:
    """The conv bias on the int32 grid the export stores it on (scale = input scale x weight scale).

    Integer engines add ``round(bias / scale)`` to the int32 accumulator. A float bias instead shifts
    every output of a channel by up to half a step of that grid, which is enough to move values
    across the output quantizer's rounding boundaries: over a whole network the fake-quantized model
    and the exported one then disagree on a sizeable fraction of activations. The gradient passes
    straight through. Applies when the input lies on a quantizer's grid and the weight is quantized,
    the same condition under which the export quantizes the bias.
    """
    info = tag_of(x)
    if bias is None or info is None or not weight_quant.fake_quant_enabled or torch.onnx.is_in_onnx_export():
        return bias  # (while exporting, the graph pass quantizes the float bias itself)
    scale = (info[0].scale * weight_quant.scale).to(bias.dtype)
    grid = torch.clamp(torch.round(bias / scale), -(2**31), 2**31 - 1) * scale
    return bias + (grid - bias).detach()


def propagate_tag(module: nn.Module, inputs: tuple, output: object) -> None:
    """Forward hook for grid-preserving modules: their output lies on their input's grid."""
    if inputs and isinstance(output, torch.Tensor):
        info = tag_of(inputs[0])
        if info is not None:
            tag(output, info[0], direct=False)
