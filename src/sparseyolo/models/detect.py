"""The anchor-based detection head shared by the YOLOv3 family."""

from __future__ import annotations

import math

import torch
from torch import nn

DECODES = ("v5", "darknet")


class Detect(nn.Module):
    """Per-level 1x1 convs predicting ``na * (5 + nc)`` values per cell, plus box decoding.

    ``anchors`` (buffer, ``(nl, na, 2)``) are in pixels at network input size; ``stride`` (buffer,
    ``(nl,)``) is set by the model with a dummy forward. ``decode`` selects the box parametrisation:
    ``"v5"`` (training default) or ``"darknet"`` (imported Darknet weights).
    """

    def __init__(self, nc: int = 80, anchors: list[list[float]] | tuple = (), ch: tuple[int, ...] = ()):
        super().__init__()
        if len(anchors) != len(ch):
            raise ValueError(f"Detect: {len(anchors)} anchor rows for {len(ch)} input levels")
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        a = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        self.register_buffer("anchors", a)
        self.register_buffer("stride", torch.zeros(self.nl))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.decode = "v5"
        self.export_raw = False

    # -- decoding ----------------------------------------------------------------------------
    def decode_xy_wh(
        self,
        t_xy: torch.Tensor,
        t_wh: torch.Tensor,
        grid: torch.Tensor,
        anchor_px: torch.Tensor,
        stride: torch.Tensor | float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw outputs -> box centre and size in input pixels (the only box-decoding code).

        ``grid`` holds the cell indices (x, y), ``anchor_px`` the anchor sizes in pixels; all
        broadcast against ``t_xy`` / ``t_wh``. ``darknet``: ``xy = (sigmoid(t) + c) * s``,
        ``wh = anchor * exp(t)``; ``v5``: ``xy = (2 sigmoid(t) - 0.5 + c) * s``,
        ``wh = (2 sigmoid(t))^2 * anchor``.
        """
        if self.decode == "darknet":
            xy = (t_xy.sigmoid() + grid) * stride
            wh = torch.exp(t_wh) * anchor_px
        elif self.decode == "v5":
            xy = (t_xy.sigmoid() * 2 - 0.5 + grid) * stride
            wh = (t_wh.sigmoid() * 2) ** 2 * anchor_px
        else:
            raise ValueError(f"Detect.decode must be one of {DECODES}, got {self.decode!r}")
        return xy, wh

    @staticmethod
    def make_grid(nx: int, ny: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """``(1, 1, ny, nx, 2)`` tensor of (x, y) cell indices."""
        yv, xv = torch.meshgrid(
            torch.arange(ny, device=device, dtype=dtype), torch.arange(nx, device=device, dtype=dtype), indexing="ij"
        )
        return torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: list[torch.Tensor]):
        raw = []
        for i in range(self.nl):
            t = self.m[i](x[i])
            bs, _, ny, nx = t.shape
            raw.append(t.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        if self.training or self.export_raw:
            return raw
        preds = []
        for i, t in enumerate(raw):
            bs, _, ny, nx, _ = t.shape
            grid = self.make_grid(nx, ny, t.device, t.dtype)
            anchor = self.anchors[i].view(1, self.na, 1, 1, 2).to(t.dtype)
            xy, wh = self.decode_xy_wh(t[..., :2], t[..., 2:4], grid, anchor, self.stride[i].to(t.dtype))
            preds.append(torch.cat((xy, wh, t[..., 4:].sigmoid()), -1).view(bs, -1, self.no))
        return torch.cat(preds, 1), raw

    # -- initialisation ----------------------------------------------------------------------
    @torch.no_grad()
    def initialize_biases(self, cf: torch.Tensor | None = None, strides: list[float] | None = None) -> None:
        """Set objectness / class bias priors (YOLOv5): ~8 objects per 640-px image, class
        probability ~0.6/nc, so early training is not swamped by the background.

        ``cf`` optionally gives class frequencies to start the class biases from instead;
        ``strides`` defaults to the ``stride`` buffer.
        """
        if strides is None:
            if not bool((self.stride > 0).all()):
                raise RuntimeError("Detect.stride must be set before initialize_biases()")
            strides = self.stride.tolist()
        for mi, s in zip(self.m, strides, strict=False):
            b = mi.bias.view(self.na, -1)
            b[:, 4] = math.log(8 / (640 / s) ** 2)
            if cf is None:
                b[:, 5:] = math.log(0.6 / (self.nc - 0.99))
            else:
                b[:, 5:] = torch.log(cf / cf.sum()).to(b)

    def extra_repr(self) -> str:
        return f"nc={self.nc}, na={self.na}, nl={self.nl}, decode={self.decode!r}"
