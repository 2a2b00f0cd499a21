"""Darknet ``.weights`` import and export for YAML-built YOLOv3-family models.

The file is a header (int32 major, minor, revision; images seen as int64 when
``major * 10 + minor >= 2``, else int32) followed by every ``[convolutional]`` layer in cfg order:
BN bias, BN scale, running mean, running variance, conv weights (with ``batch_normalize=1``) or conv
bias, conv weights (the linear detection convs).

The Darknet layer order is derived from the YAML model itself, so a ``.cfg`` is optional:
convs appear in YAML order, except that each Detect 1x1 conv is placed right after the layer that
feeds it (Darknet puts a detection conv + ``[yolo]`` layer at the end of each branch, and routes
back with ``[route] -4``). This gives the cfg order for yolov3, yolov3-spp and yolov3-tiny, with
the large-stride level first. When a cfg is given every conv shape, the class count and the anchors
are checked against it (and the anchors taken from it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparseyolo.models.common import SPP, Bottleneck, Conv
from sparseyolo.models.darknet_cfg import parse_cfg
from sparseyolo.utils.errors import WeightsError
from sparseyolo.utils.io import atomic_write_bytes
from sparseyolo.utils.logging import LOGGER

DEFAULT_HEADER = (0, 2, 0, 0)


@dataclass
class DarknetConv:
    """One Darknet ``[convolutional]`` slot mapped onto our modules."""

    name: str                      # our module name, e.g. ``model.12.cv2`` or ``model.28.m.2``
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None      # None for the linear Detect convs (they carry a bias)
    reverse_blocks: int = 0        # SPP cv2: Darknet concatenates [pool13, pool9, pool5, x]
    level: int | None = None       # Detect level for the detection convs

    @property
    def n_floats(self) -> int:
        n = self.conv.weight.numel()
        return n + (4 * self.bn.num_features if self.bn is not None else self.conv.out_channels)

    def describe(self) -> str:
        w = self.conv.weight
        return (f"{self.name} ({w.shape[0]}x{w.shape[1]}x{w.shape[2]}x{w.shape[3]}"
                f"{', BN' if self.bn is not None else ', bias'})")


def _block_convs(module: nn.Module, prefix: str) -> list[DarknetConv]:
    """The convs of one YAML layer in Darknet order."""
    if isinstance(module, Conv):
        if not isinstance(module.bn, nn.BatchNorm2d):
            raise WeightsError(f"{prefix}: a fused Conv has no Darknet equivalent; export before fuse()")
        return [DarknetConv(prefix, module.conv, module.bn)]
    if isinstance(module, Bottleneck):
        return _block_convs(module.cv1, f"{prefix}.cv1") + _block_convs(module.cv2, f"{prefix}.cv2")
    if isinstance(module, SPP):
        out = _block_convs(module.cv1, f"{prefix}.cv1") + _block_convs(module.cv2, f"{prefix}.cv2")
        out[-1].reverse_blocks = len(module.m) + 1
        return out
    if isinstance(module, nn.Sequential):
        return [c for k, child in module.named_children() for c in _block_convs(child, f"{prefix}.{k}")]
    if any(True for _ in module.parameters()):
        raise WeightsError(f"{prefix}: layer type {type(module).__name__} has no Darknet equivalent")
    return []


def darknet_layout(model: nn.Module) -> list[DarknetConv]:
    """Our model's convs in Darknet ``.weights`` order (see the module docstring)."""
    layers = model.model
    detect = layers[-1]
    froms = [detect.f] if isinstance(detect.f, int) else list(detect.f)
    feeds: dict[int, list[int]] = {}
    for level, f in enumerate(froms):
        feeds.setdefault(f % detect.i if f < 0 else f, []).append(level)
    out: list[DarknetConv] = []
    for layer in list(layers)[:-1]:
        out += _block_convs(layer, f"model.{layer.i}")
        for level in feeds.get(layer.i, []):
            out.append(DarknetConv(f"model.{detect.i}.m.{level}", detect.m[level], None, level=level))
    return out


def _reorder_blocks(w: torch.Tensor, blocks: int) -> torch.Tensor:
    """Reverse the order of ``blocks`` equal input-channel groups (an involution)."""
    o, c, kh, kw = w.shape
    return w.reshape(o, blocks, c // blocks, kh, kw).flip(1).reshape(o, c, kh, kw)


# ---------------------------------------------------------------------------------------------
# cfg validation


def check_against_cfg(model: nn.Module, layout: list[DarknetConv], cfg_path: str | os.PathLike) -> list:
    """Raise :class:`WeightsError` unless ``cfg_path`` describes the same convs and class count;
    return the cfg's anchors per Detect level (pixels)."""
    cfg = parse_cfg(cfg_path)
    detect = model.model[-1]
    levels = [d.level for d in layout if d.level is not None]
    if len(cfg.yolos) != len(levels):
        raise WeightsError(f"{cfg_path}: {len(cfg.yolos)} [yolo] layers, the model has {len(levels)} levels")
    anchors = [None] * len(levels)
    for y, level in zip(cfg.yolos, levels):
        if y.classes != detect.nc:
            raise WeightsError(f"{cfg_path}:{y.line}: [yolo] classes={y.classes}, but the model has "
                               f"nc={detect.nc}")
        if len(y.anchors) != detect.na:
            raise WeightsError(f"{cfg_path}:{y.line}: [yolo] uses {len(y.anchors)} anchors, the model {detect.na}")
        anchors[level] = y.anchors
    if len(cfg.convs) != len(layout):
        raise WeightsError(f"{cfg_path}: {len(cfg.convs)} [convolutional] layers, but the model has "
                           f"{len(layout)} Darknet-style convs; wrong --cfg for these weights?")
    for k, (c, ours) in enumerate(zip(cfg.convs, layout)):
        w = ours.conv.weight
        want = (c.filters, c.c_in // c.groups, c.size, c.size)
        if tuple(w.shape) != want or c.batch_normalize != (ours.bn is not None) or \
                ours.conv.stride[0] != c.stride:
            raise WeightsError(
                f"{cfg_path}:{c.line}: [convolutional] #{k} is {'x'.join(map(str, want))} stride {c.stride}"
                f"{' with BN' if c.batch_normalize else ''}, but the model has {ours.describe()}")
    return anchors


# ---------------------------------------------------------------------------------------------
# load / save


def read_header(data: bytes, path: str | os.PathLike) -> tuple[tuple[int, int, int, int], int]:
    """Parse the header; returns ``((major, minor, revision, seen), header_bytes)``."""
    if len(data) < 12:
        raise WeightsError(f"{path}: too short for a Darknet weights header ({len(data)} bytes)")
    major, minor, rev = (int(v) for v in np.frombuffer(data, "<i4", 3))
    wide = major * 10 + minor >= 2
    n = 20 if wide else 16
    if len(data) < n:
        raise WeightsError(f"{path}: header cut short ({len(data)} bytes)")
    seen = int(np.frombuffer(data, "<i8" if wide else "<i4", 1, 12)[0])
    if major > 1000 or minor > 1000 or rev > 100000:
        raise WeightsError(f"{path}: not a Darknet weights file (header version {major}.{minor}.{rev})")
    return (major, minor, rev, seen), n


def load_darknet_weights(model: nn.Module, weights_path: str | os.PathLike,
                         cfg_path: str | os.PathLike | None = None) -> tuple[int, int, int, int]:
    """Load a Darknet ``.weights`` file into ``model`` (in place); returns the header.

    Every float must be consumed: a short file raises :class:`WeightsError` naming the layer where
    data ran out, a long one the number of leftover floats. Nothing is changed on error. Sets
    ``model.decode = "darknet"`` and keeps the header in ``model.darknet_header`` for re-export.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise WeightsError(f"Darknet weights not found: {path}")
    layout = darknet_layout(model)
    anchors = check_against_cfg(model, layout, cfg_path) if cfg_path is not None else None
    data = path.read_bytes()
    header, offset = read_header(data, path)
    body = len(data) - offset
    if body % 4:
        raise WeightsError(f"{path}: weight data is {body} bytes, not a whole number of float32 values "
                           "(the file is truncated or is not a Darknet .weights file)")
    floats = np.frombuffer(data, "<f4", body // 4, offset)
    ptr = 0
    staged: list[tuple[torch.Tensor, np.ndarray, int]] = []

    def take(k: int, item: DarknetConv, what: str, target: torch.Tensor, blocks: int = 0) -> None:
        nonlocal ptr
        n = target.numel()
        if ptr + n > floats.size:
            need = sum(d.n_floats for d in layout)
            raise WeightsError(
                f"{path}: data ran out at Darknet conv #{k} {item.describe()} reading {what}: needs {n} "
                f"floats, {floats.size - ptr} left (file has {floats.size} floats, the model needs {need})")
        staged.append((target, floats[ptr:ptr + n], blocks))
        ptr += n

    for k, item in enumerate(layout):
        if item.bn is not None:
            bn = item.bn
            for what, t in (("BN bias", bn.bias), ("BN scale", bn.weight), ("BN running mean", bn.running_mean),
                            ("BN running variance", bn.running_var)):
                take(k, item, what, t)
        else:
            take(k, item, "conv bias", item.conv.bias)
        take(k, item, "conv weights", item.conv.weight, item.reverse_blocks)
    if ptr != floats.size:
        raise WeightsError(f"{path}: {floats.size - ptr} floats left over after the last layer "
                           f"({layout[-1].name}); the file does not match this model (nc={model.model[-1].nc})")

    with torch.no_grad():
        for target, values, blocks in staged:
            t = torch.from_numpy(values.copy()).view_as(target)
            target.copy_(_reorder_blocks(t, blocks) if blocks else t)
        if anchors is not None:
            model.model[-1].anchors.copy_(torch.tensor(anchors, dtype=torch.float32))
    model.decode = "darknet"
    model.darknet_header = header
    LOGGER.info(f"Loaded {floats.size:,} floats from {path} (Darknet {header[0]}.{header[1]}.{header[2]}, "
                f"{header[3]:,} images seen)")
    return header


def darknet_bytes(model: nn.Module, header: tuple[int, int, int, int] | None = None) -> bytes:
    """Serialise ``model`` in Darknet ``.weights`` format."""
    major, minor, rev, seen = header or getattr(model, "darknet_header", DEFAULT_HEADER)
    parts = [np.array([major, minor, rev], "<i4").tobytes(),
             np.array([seen], "<i8" if major * 10 + minor >= 2 else "<i4").tobytes()]

    def f32(t: torch.Tensor) -> bytes:
        return t.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()

    for item in darknet_layout(model):
        if item.bn is not None:
            parts += [f32(item.bn.bias), f32(item.bn.weight), f32(item.bn.running_mean), f32(item.bn.running_var)]
        else:
            parts.append(f32(item.conv.bias))
        w = item.conv.weight.detach()
        parts.append(f32(_reorder_blocks(w, item.reverse_blocks) if item.reverse_blocks else w))
    return b"".join(parts)


def save_darknet_weights(model: nn.Module, path: str | os.PathLike, cfg_path: str | os.PathLike | None = None,
                         header: tuple[int, int, int, int] | None = None) -> Path:
    """Write ``model`` as a Darknet ``.weights`` file (atomically). ``header`` = (major, minor,
    revision, images seen); defaults to the header the weights were loaded with, else 0.2.0, 0.
    With ``cfg_path`` the model is first checked against that cfg."""
    if cfg_path is not None:
        check_against_cfg(model, darknet_layout(model), cfg_path)
    return atomic_write_bytes(path, darknet_bytes(model, header))
