"""Our YAML model's convs in Darknet order: each ``[convolutional]`` slot of a ``.cfg`` / ``.weights``
mapped onto our modules.

Convs appear in YAML order, except that each Detect 1x1 conv is placed right after the layer that
feeds it (Darknet puts a detection conv + ``[yolo]`` layer at the end of each branch, and routes
back with ``[route] -4``). This gives the cfg order for yolov3, yolov3-spp and yolov3-tiny, with
the large-stride level first.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from sparseyolo.models.common import SPP, Bottleneck, Conv
from sparseyolo.utils.errors import WeightsError


@dataclass
class DarknetConv:
    """One Darknet ``[convolutional]`` slot mapped onto our modules."""

    name: str  # our module name, e.g. ``model.12.cv2`` or ``model.28.m.2``
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None  # None for the linear Detect convs (they carry a bias)
    reverse_blocks: int = 0  # SPP cv2: Darknet concatenates [pool13, pool9, pool5, x]
    level: int | None = None  # Detect level for the detection convs

    @property
    def n_floats(self) -> int:
        n = self.conv.weight.numel()
        return n + (4 * self.bn.num_features if self.bn is not None else self.conv.out_channels)

    def describe(self) -> str:
        w = self.conv.weight
        return (
            f"{self.name} ({w.shape[0]}x{w.shape[1]}x{w.shape[2]}x{w.shape[3]}"
            f"{', BN' if self.bn is not None else ', bias'})"
        )


def block_convs(module: nn.Module, prefix: str) -> list[DarknetConv]:
    """The convs of one YAML layer in Darknet order."""
    if isinstance(module, Conv):
        if not isinstance(module.bn, nn.BatchNorm2d):
            raise WeightsError(f"{prefix}: a fused Conv has no Darknet equivalent; export before fuse()")
        return [DarknetConv(prefix, module.conv, module.bn)]
    if isinstance(module, Bottleneck):
        return block_convs(module.cv1, f"{prefix}.cv1") + block_convs(module.cv2, f"{prefix}.cv2")
    if isinstance(module, SPP):
        out = block_convs(module.cv1, f"{prefix}.cv1") + block_convs(module.cv2, f"{prefix}.cv2")
        out[-1].reverse_blocks = len(module.m) + 1
        return out
    if isinstance(module, nn.Sequential):
        return [c for k, child in module.named_children() for c in block_convs(child, f"{prefix}.{k}")]
    if any(True for _ in module.parameters()):
        raise WeightsError(f"{prefix}: layer type {type(module).__name__} has no Darknet equivalent")
    return []


def detect_feeds(model: nn.Module) -> dict[int, list[int]]:
    """``{layer index: [Detect levels it feeds]}``; Darknet puts each level's detection conv right
    after the layer feeding it."""
    detect = model.model[-1]
    froms = [detect.f] if isinstance(detect.f, int) else list(detect.f)
    feeds: dict[int, list[int]] = {}
    for level, f in enumerate(froms):
        feeds.setdefault(f % detect.i if f < 0 else f, []).append(level)
    return feeds


def detect_conv(model: nn.Module, level: int) -> DarknetConv:
    """The linear detection conv of Detect ``level``."""
    detect = model.model[-1]
    return DarknetConv(f"model.{detect.i}.m.{level}", detect.m[level], None, level=level)


def darknet_layout(model: nn.Module) -> list[DarknetConv]:
    """Our model's convs in Darknet ``.weights`` order (see the module docstring)."""
    feeds = detect_feeds(model)
    out: list[DarknetConv] = []
    for layer in list(model.model)[:-1]:
        out += block_convs(layer, f"model.{layer.i}")
        out += [detect_conv(model, level) for level in feeds.get(layer.i, [])]
    return out
