"""QAT layers. They are made by swapping the class of an existing module in place, so the
module object, its ``nn.Parameter`` objects, its hooks and its parameter names
(``model.6.3.cv2.conv.weight``) all stay the same; only quantizer submodules and buffers are added.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparseyolo.quantization.config import QATConfig
from sparseyolo.quantization.fake_quant import (
    ActivationQuantizer,
    WeightQuantizer,
    quantize_bias,
    quantize_input,
    untag,
)

# activations a quantized conv output can be clamped through without its own quantizer
_RELUS = (nn.ReLU, nn.ReLU6)


def activation_quantizer(cfg: QATConfig, device: torch.device | None = None) -> ActivationQuantizer:
    qmin, qmax = cfg.activation_range()
    return ActivationQuantizer(qmin, qmax, cfg.symmetric_activations, cfg.averaging_constant).to(device)


def weight_quantizer(cfg: QATConfig, channels: int, device: torch.device | None = None) -> WeightQuantizer:
    qmin, qmax = cfg.weight_range()
    return WeightQuantizer(qmin, qmax, cfg.per_channel, channels).to(device)


class QATConvBnAct(nn.Module):
    """A ``conv`` (Conv2d) + ``bn`` (BatchNorm2d) + ``act`` block with BN folded for QAT.

    Training (BN statistics not frozen): the conv runs with fake-quantized weights
    ``fq(w * gamma / sqrt(running_var + eps))``, its output is divided back by the same factor and
    batch-normalised with batch statistics (which keep updating the running ones). Eval or frozen:
    exactly the folded conv that is exported, ``conv(x, fq(w * s), beta - running_mean * s)``.
    """

    conv: nn.Conv2d
    bn: nn.BatchNorm2d

    def _qat_init(self, cfg: QATConfig, quantize_activations: bool) -> None:
        device = self.conv.weight.device
        act = getattr(self, "act", None)
        if act is None:
            self.act = nn.Identity()
            act = self.act
        self.weight_fake_quant = weight_quantizer(cfg, self.conv.out_channels, device)
        self.input_quant = activation_quantizer(cfg, device) if quantize_activations else None
        plain_act = isinstance(act, nn.Identity) or isinstance(act, _RELUS)
        act_excluded = cfg.excluded(type(act).__name__)
        # a non-ReLU activation (LeakyReLU, SiLU) runs on a quantized conv output and gets its own
        # output quantizer, as PyTorch/SparseML QAT do; ReLU folds into the conv's output range
        need_pre = quantize_activations and (not plain_act or act_excluded)
        self.conv_out_quant = activation_quantizer(cfg, device) if need_pre else None
        need_post = quantize_activations and not act_excluded
        self.out_quant = activation_quantizer(cfg, device) if need_post else None
        self.register_buffer("bn_frozen", torch.tensor(0, dtype=torch.uint8, device=device))

    def folded_scale(self) -> torch.Tensor:
        """``gamma / sqrt(running_var + eps)``: the per-channel factor BN folds into the conv."""
        bn = self.bn
        gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
        return gamma / torch.sqrt(bn.running_var + bn.eps)

    def folded_bias(self, scale: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        bias = beta - bn.running_mean * scale
        if self.conv.bias is not None:
            bias = bias + self.conv.bias * scale
        return bias

    def _batch_norm_train(self, y: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # cumulative moving average, as nn.BatchNorm2d does
                factor = 1.0 / float(bn.num_batches_tracked)
        return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, factor, bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = quantize_input(x, self.input_quant)
        scale = self.folded_scale()
        w = self.weight_fake_quant(self.conv.weight * scale.reshape(-1, 1, 1, 1))
        if self.training and not self.bn_frozen:
            y = self.conv._conv_forward(x, w, None)
            eps = torch.finfo(scale.dtype).eps
            safe = torch.where(scale.abs() < eps, torch.full_like(scale, eps), scale)
            y = y / safe.reshape(1, -1, 1, 1)  # back to the unscaled conv output
            if self.conv.bias is not None:
                y = y + self.conv.bias.reshape(1, -1, 1, 1)
            y = self._batch_norm_train(y)
        else:
            y = self.conv._conv_forward(x, w, quantize_bias(self.folded_bias(scale), x, self.weight_fake_quant))
        if self.conv_out_quant is not None:
            y = self.conv_out_quant(y)
        y = self.act(y)
        if self.out_quant is not None:
            y = self.out_quant(y)
        elif not isinstance(self.act, nn.Identity):
            untag(y)  # an in-place activation returns the tagged tensor, now off the grid
        return y


class QATConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same object, same parameters) with fake-quantized weights and activations."""

    def _qat_init(self, cfg: QATConfig, quantize_activations: bool) -> None:
        device = self.weight.device
        self.weight_fake_quant = weight_quantizer(cfg, self.out_channels, device)
        self.input_quant = activation_quantizer(cfg, device) if quantize_activations else None
        self.out_quant = activation_quantizer(cfg, device) if quantize_activations else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = quantize_input(x, self.input_quant)
        w = self.weight_fake_quant(self.weight)  # (updates the weight scale the bias grid uses)
        y = self._conv_forward(x, w, quantize_bias(self.bias, x, self.weight_fake_quant))
        return self.out_quant(y) if self.out_quant is not None else y


class QATLinear(nn.Linear):
    """An ``nn.Linear`` (same object, same parameters) with fake-quantized weights and activations."""

    def _qat_init(self, cfg: QATConfig, quantize_activations: bool) -> None:
        device = self.weight.device
        self.weight_fake_quant = weight_quantizer(cfg, self.out_features, device)
        self.input_quant = activation_quantizer(cfg, device) if quantize_activations else None
        self.out_quant = activation_quantizer(cfg, device) if quantize_activations else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = quantize_input(x, self.input_quant)
        y = F.linear(x, self.weight_fake_quant(self.weight), self.bias)
        return self.out_quant(y) if self.out_quant is not None else y


QAT_MODULE_TYPES = (QATConvBnAct, QATConv2d, QATLinear)
