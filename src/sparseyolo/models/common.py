"""Building blocks of the YOLOv3 family: Conv (+BN+LeakyReLU), Bottleneck, SPP, Concat.

Attribute names (``conv``, ``bn``, ``act``, ``cv1``, ``cv2``, ``m``) are part of the parameter
naming contract: SparseML recipes and our QAT / export code address layers by them.
"""

from __future__ import annotations

import torch
from torch import nn

# Darknet's BatchNorm epsilon; momentum 0.03 is the YOLOv5 training value (PyTorch convention).
BN_EPS = 1e-5
BN_MOMENTUM = 0.03

ACTIVATIONS = {
    "LeakyReLU": lambda: nn.LeakyReLU(0.1, inplace=True),
    "nn.LeakyReLU": lambda: nn.LeakyReLU(0.1, inplace=True),
    "ReLU": lambda: nn.ReLU(inplace=True),
    "nn.ReLU": lambda: nn.ReLU(inplace=True),
    "SiLU": lambda: nn.SiLU(inplace=True),
    "nn.SiLU": lambda: nn.SiLU(inplace=True),
}
DEFAULT_ACT = "LeakyReLU"


def autopad(k: int | list[int] | tuple[int, ...], p: int | None = None):
    """'Same' padding for odd kernels when ``p`` is not given."""
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def make_activation(name: str | bool | None) -> nn.Module:
    """Activation module by config name; ``True``/``None`` -> LeakyReLU(0.1), ``False`` -> identity."""
    if name is False:
        return nn.Identity()
    if name is True or name is None:
        name = DEFAULT_ACT
    return ACTIVATIONS[name]()


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation (LeakyReLU(0.1) by default)."""

    def __init__(
        self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, act: str | bool | None = True
    ):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Darknet residual block: 1x1 conv to ``c2 * e`` channels, 3x3 conv back to ``c2``."""

    def __init__(
        self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5, act: str | bool | None = True
    ):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1, act=act)
        self.cv2 = Conv(c_, c2, 3, 1, g=g, act=act)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class SPP(nn.Module):
    """Spatial pyramid pooling (YOLOv3-SPP): 1x1 reduce, parallel stride-1 max pools, concat, 1x1."""

    def __init__(self, c1: int, c2: int, k: tuple[int, ...] | list[int] = (5, 9, 13), act: str | bool | None = True):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1, act=act)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1, act=act)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension`` (channels by default)."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every ``conv``+``bn`` pair into the conv (in place; use on a copy). Zeros stay zeros."""
    n = 0
    for m in model.modules():
        conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
        if type(conv) is not nn.Conv2d or not isinstance(bn, nn.BatchNorm2d):
            continue
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Conv2d(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
                bias=True,
                padding_mode=conv.padding_mode,
            )
            fused = fused.to(conv.weight.device, conv.weight.dtype)
            fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            fused.bias.copy_(bias)
        m.conv, m.bn = fused, nn.Identity()
        n += 1
    return n
