"""Darknet ``.weights`` import and export for YAML-built YOLOv3-family models.

The file is a header (int32 major, minor, revision; images seen as int64 when
``major * 10 + minor >= 2``, else int32) followed by every ``[convolutional]`` layer in cfg order:
BN bias, BN scale, running mean, running variance, conv weights (with ``batch_normalize=1``) or conv
bias, conv weights (the linear detection convs).

The Darknet layer order is derived from the YAML model itself
(:mod:`sparseyolo.models.darknet_layout`), so a ``.cfg`` is optional. When a cfg is given every conv
shape, the class count and the anchors are checked against it (and the anchors taken from it).

A thinned model (structured pruning removed channels) exports its actual filter counts:
:func:`save_darknet` writes a ``.cfg`` generated from the model beside the ``.weights``, and
:func:`load_darknet_weights` with that cfg first resizes a full-width model to the cfg's filters.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparseyolo.models.darknet_cfg import DarknetCfg, parse_cfg
from sparseyolo.models.darknet_cfg_export import darknet_cfg_text
from sparseyolo.models.darknet_layout import DarknetConv, darknet_layout
from sparseyolo.models.yolo import STRIDE_PROBE
from sparseyolo.sparsity.thinning import resize_layers
from sparseyolo.utils.errors import SparseYoloError, WeightsError
from sparseyolo.utils.io import atomic_write_bytes, atomic_write_text
from sparseyolo.utils.logging import LOGGER

DEFAULT_HEADER = (0, 2, 0, 0)


def _reorder_blocks(w: torch.Tensor, blocks: int) -> torch.Tensor:
    """Reverse the order of ``blocks`` equal input-channel groups (an involution)."""
    o, c, kh, kw = w.shape
    return w.reshape(o, blocks, c // blocks, kh, kw).flip(1).reshape(o, c, kh, kw)


# ---------------------------------------------------------------------------------------------
# cfg validation


def check_against_cfg(model: nn.Module, layout: list[DarknetConv], cfg_path: str | os.PathLike | DarknetCfg) -> list:
    """Raise :class:`WeightsError` unless ``cfg_path`` (a path or a parsed cfg) describes the same
    convs and class count; return the cfg's anchors per Detect level (pixels)."""
    cfg = cfg_path if isinstance(cfg_path, DarknetCfg) else parse_cfg(cfg_path)
    cfg_path = cfg.path
    detect = model.model[-1]
    levels = [d.level for d in layout if d.level is not None]
    if len(cfg.yolos) != len(levels):
        raise WeightsError(f"{cfg_path}: {len(cfg.yolos)} [yolo] layers, the model has {len(levels)} levels")
    anchors = [None] * len(levels)
    for y, level in zip(cfg.yolos, levels, strict=False):
        if y.classes != detect.nc:
            raise WeightsError(f"{cfg_path}:{y.line}: [yolo] classes={y.classes}, but the model has " f"nc={detect.nc}")
        if len(y.anchors) != detect.na:
            raise WeightsError(f"{cfg_path}:{y.line}: [yolo] uses {len(y.anchors)} anchors, the model {detect.na}")
        anchors[level] = y.anchors
    if len(cfg.convs) != len(layout):
        raise WeightsError(
            f"{cfg_path}: {len(cfg.convs)} [convolutional] layers, but the model has "
            f"{len(layout)} Darknet-style convs; wrong --cfg for these weights?"
        )
    for k, (c, ours) in enumerate(zip(cfg.convs, layout, strict=False)):
        w = ours.conv.weight
        want = (c.filters, c.c_in // c.groups, c.size, c.size)
        if tuple(w.shape) != want or c.batch_normalize != (ours.bn is not None) or ours.conv.stride[0] != c.stride:
            raise WeightsError(
                f"{cfg_path}:{c.line}: [convolutional] #{k} is {'x'.join(map(str, want))} stride {c.stride}"
                f"{' with BN' if c.batch_normalize else ''}, but the model has {ours.describe()}"
            )
    return anchors


def cfg_decode(cfg: DarknetCfg) -> str:
    """The box decode a cfg's ``[yolo]`` sections ask for: ``"v5"`` (``new_coords=1``, ``scale_x_y=2``),
    ``"darknet"`` (neither); any other mix has no equivalent here and is refused with its line."""
    kinds = set()
    for y in cfg.yolos:
        if y.new_coords == 1 and y.scale_x_y == 2.0:
            kinds.add("v5")
        elif y.new_coords == 0 and y.scale_x_y == 1.0:
            kinds.add("darknet")
        else:
            raise WeightsError(
                f"{cfg.path}:{y.line}: [yolo] new_coords={y.new_coords}, scale_x_y={y.scale_x_y:g} is not a box "
                "decode sparseyolo runs (new_coords=1 with scale_x_y=2, or neither)"
            )
    if len(kinds) > 1:
        raise WeightsError(f"{cfg.path}: its [yolo] layers decode boxes in different ways")
    return kinds.pop() if kinds else "darknet"


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


def load_darknet_weights(
    model: nn.Module, weights_path: str | os.PathLike, cfg_path: str | os.PathLike | None = None
) -> tuple[int, int, int, int]:
    """Load a Darknet ``.weights`` file into ``model`` (in place); returns the header.

    Every float must be consumed: a short file raises :class:`WeightsError` naming the layer where
    data ran out, a long one the number of leftover floats. Nothing is changed on error. Sets
    ``model.decode`` (``"darknet"``, or ``"v5"`` for a cfg in AlexeyAB's ``new_coords=1``, ``scale_x_y=2`` form,
    as ``export --format darknet`` writes our trained models) and keeps the header in
    ``model.darknet_header`` for re-export.
    A cfg whose ``filters=`` are fewer than the model's (a thinned export of the same model) resizes
    the model's layers to them first; ``model.yaml["widths"]`` then records the new sizes.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise WeightsError(f"Darknet weights not found: {path}")
    cfg = parse_cfg(cfg_path) if cfg_path is not None else None
    replaced = resize_to_cfg(model, cfg) if cfg is not None else {}
    try:
        layout = darknet_layout(model)
        anchors = check_against_cfg(model, layout, cfg) if cfg is not None else None
        data = path.read_bytes()
        header, offset = read_header(data, path)
        staged, n_floats = _stage_floats(data, offset, layout, path, model.model[-1].nc, thinned_hint=cfg is None)
    except Exception:
        _put_modules(model, replaced)
        raise
    with torch.no_grad():
        for target, values, blocks in staged:
            t = torch.from_numpy(values.copy()).view_as(target)
            target.copy_(_reorder_blocks(t, blocks) if blocks else t)
        if anchors is not None:
            model.model[-1].anchors.copy_(torch.tensor(anchors, dtype=torch.float32))
    if replaced and hasattr(model, "record_widths"):
        model.record_widths()  # checkpoints saved from this model rebuild the thinned layout
    model.decode = cfg_decode(cfg) if cfg is not None else "darknet"
    model.darknet_header = header
    LOGGER.info(
        f"Loaded {n_floats:,} floats from {path} (Darknet {header[0]}.{header[1]}.{header[2]}, "
        f"{header[3]:,} images seen)"
    )
    return header


def _stage_floats(
    data: bytes, offset: int, layout: list[DarknetConv], path: Path, nc: int, thinned_hint: bool
) -> tuple[list[tuple[torch.Tensor, np.ndarray, int]], int]:
    """Pair every target tensor of ``layout`` with its slice of the file (nothing copied yet);
    returns ``([(target, values, reversed SPP blocks)], float count)``."""
    body = len(data) - offset
    if body % 4:
        raise WeightsError(
            f"{path}: weight data is {body} bytes, not a whole number of float32 values "
            "(the file is truncated or is not a Darknet .weights file)"
        )
    floats = np.frombuffer(data, "<f4", body // 4, offset)
    hint = "; a thinned export loads only with the .cfg written beside it" if thinned_hint else ""
    ptr = 0
    staged: list[tuple[torch.Tensor, np.ndarray, int]] = []
    for k, item in enumerate(layout):
        for what, target, blocks in _darknet_tensors(item):
            n = target.numel()
            if ptr + n > floats.size:
                need = sum(d.n_floats for d in layout)
                raise WeightsError(
                    f"{path}: data ran out at Darknet conv #{k} {item.describe()} reading {what}: needs {n} "
                    f"floats, {floats.size - ptr} left (file has {floats.size} floats, the model needs {need}){hint}"
                )
            staged.append((target, floats[ptr : ptr + n], blocks))
            ptr += n
    if ptr != floats.size:
        raise WeightsError(
            f"{path}: {floats.size - ptr} floats left over after the last layer "
            f"({layout[-1].name}); the file does not match this model (nc={nc}){hint}"
        )
    return staged, int(floats.size)


def _darknet_tensors(item: DarknetConv) -> list[tuple[str, torch.Tensor, int]]:
    """``(what, tensor, reversed input blocks)`` of one conv in ``.weights`` order."""
    if item.bn is not None:
        bn = item.bn
        first = [
            ("BN bias", bn.bias, 0),
            ("BN scale", bn.weight, 0),
            ("BN running mean", bn.running_mean, 0),
            ("BN running variance", bn.running_var, 0),
        ]
    else:
        first = [("conv bias", item.conv.bias, 0)]
    return first + [("conv weights", item.conv.weight, item.reverse_blocks)]


# ---------------------------------------------------------------------------------------------
# thinned models: sizes from a cfg's filter counts


def cfg_widths(layout: list[DarknetConv], cfg: DarknetCfg) -> dict[str, list[int]]:
    """Layer sizes (``{module name: [in, out]}`` for convs, ``[n]`` for BN, as in
    ``model.yaml["widths"]``) that ``cfg``'s ``[convolutional]`` sections give our convs, for the
    layers whose size differs. The detection convs keep their outputs (they follow ``nc``, which
    :func:`check_against_cfg` compares). ``{}`` unless the cfg is a thinned form of ``layout`` (same
    conv count, no layer wider): for any other cfg, that check reports the difference."""
    if len(cfg.convs) != len(layout):
        return {}
    widths: dict[str, list[int]] = {}
    for c, item in zip(cfg.convs, layout, strict=False):
        conv = item.conv
        size = [c.c_in, c.filters if item.bn is not None else conv.out_channels]
        if size[0] > conv.in_channels or size[1] > conv.out_channels:
            return {}  # thinning only removes channels: this cfg describes another model
        if [conv.in_channels, conv.out_channels] != size:
            widths[f"{item.name}.conv" if item.bn is not None else item.name] = size
        if item.bn is not None and item.bn.num_features != c.filters:
            widths[f"{item.name}.bn"] = [c.filters]
    return widths


def resize_to_cfg(model: nn.Module, cfg: DarknetCfg) -> dict[str, nn.Module]:
    """Resize ``model``'s layers (in place, fresh weights) to ``cfg``'s filter counts; returns the
    replaced modules by name, which :func:`_put_modules` puts back. Raises :class:`WeightsError`
    (model unchanged) when the sizes do not fit the model's layer graph."""
    widths = cfg_widths(darknet_layout(model), cfg)
    replaced = {name: model.get_submodule(name) for name in widths}
    if not replaced:
        return replaced
    try:
        resize_layers(model, widths, where=cfg.path)
        _probe_forward(model, cfg.convs[0].c_in)
    except (SparseYoloError, RuntimeError) as e:
        _put_modules(model, replaced)
        raise WeightsError(f"{cfg.path}: its filter counts do not fit this model ({e})") from None
    return replaced


def _put_modules(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    for name, module in modules.items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, module)


@torch.no_grad()
def _probe_forward(model: nn.Module, ch: int) -> None:
    """A small forward pass: a conv whose input size disagrees with its producer raises here."""
    was_training = model.training
    p = next(model.parameters())
    try:
        model.eval()
        model(torch.zeros(1, ch, STRIDE_PROBE, STRIDE_PROBE, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)


def darknet_bytes(model: nn.Module, header: tuple[int, int, int, int] | None = None) -> bytes:
    """Serialise ``model`` in Darknet ``.weights`` format."""
    major, minor, rev, seen = header or getattr(model, "darknet_header", DEFAULT_HEADER)
    parts = [
        np.array([major, minor, rev], "<i4").tobytes(),
        np.array([seen], "<i8" if major * 10 + minor >= 2 else "<i4").tobytes(),
    ]

    def f32(t: torch.Tensor) -> bytes:
        return t.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()

    for item in darknet_layout(model):
        for _, t, blocks in _darknet_tensors(item):
            parts.append(f32(_reorder_blocks(t.detach(), blocks) if blocks else t))
    return b"".join(parts)


def save_darknet_weights(
    model: nn.Module,
    path: str | os.PathLike,
    cfg_path: str | os.PathLike | None = None,
    header: tuple[int, int, int, int] | None = None,
) -> Path:
    """Write ``model`` as a Darknet ``.weights`` file (atomically). ``header`` = (major, minor,
    revision, images seen); defaults to the header the weights were loaded with, else 0.2.0, 0.
    With ``cfg_path`` the model is first checked against that cfg."""
    if cfg_path is not None:
        check_against_cfg(model, darknet_layout(model), cfg_path)
    return atomic_write_bytes(path, darknet_bytes(model, header))


def save_darknet(
    model: nn.Module,
    weights_path: str | os.PathLike,
    cfg_path: str | os.PathLike | None = None,
    header: tuple[int, int, int, int] | None = None,
    img_size: int = 416,
) -> tuple[Path, Path]:
    """Write ``model`` as a Darknet pair: a ``.cfg`` generated from the model, with its actual
    (thinned) filter counts (``cfg_path``, default ``weights_path`` with suffix ``.cfg``), and the
    ``.weights``, checked against that cfg. Returns ``(cfg path, weights path)``."""
    weights_path = Path(weights_path)
    cfg_file = atomic_write_text(
        Path(cfg_path) if cfg_path is not None else weights_path.with_suffix(".cfg"), darknet_cfg_text(model, img_size)
    )
    return cfg_file, save_darknet_weights(model, weights_path, cfg_file, header)
