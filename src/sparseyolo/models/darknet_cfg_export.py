"""A Darknet ``.cfg`` written from a YAML-built model, with each conv's actual (possibly thinned)
``filters=``: the mirror of :mod:`sparseyolo.models.darknet_layout`'s mapping."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from sparseyolo.models.common import SPP, Bottleneck, Concat, Conv
from sparseyolo.models.darknet_cfg import CfgSection, format_sections
from sparseyolo.models.darknet_layout import DarknetConv, block_convs, darknet_layout, detect_conv, detect_feeds
from sparseyolo.utils.errors import WeightsError

_ACTIVATIONS = {nn.LeakyReLU: "leaky", nn.ReLU: "relu", nn.SiLU: "swish", nn.Identity: "linear"}


class _CfgWriter:
    """Darknet sections in order; layer indices exclude ``[net]``, as in Darknet's routes."""

    def __init__(self) -> None:
        self.sections: list[CfgSection] = []

    @property
    def last(self) -> int:
        return len(self.sections) - 1

    def add(self, kind: str, **options: object) -> int:
        self.sections.append(CfgSection(kind, 0, {k: str(v) for k, v in options.items()}))
        return self.last

    def route(self, *sources: int) -> int:
        """``[route]`` to ``sources``: the previous layer as ``-1``, others by absolute index."""
        prev = self.last
        return self.add("route", layers=", ".join(str(-1 if s == prev else s) for s in sources))


def darknet_cfg_text(model: nn.Module, img_size: int = 416) -> str:
    """The Darknet ``.cfg`` of ``model`` (see :func:`darknet_cfg_sections`)."""
    name = Path(str(getattr(model, "yaml", {}).get("yaml_file", "model"))).stem
    return format_sections(
        darknet_cfg_sections(model, img_size),
        comment=f"{name}, written by sparseyolo: filters= are the model's actual layer widths",
    )


def darknet_cfg_sections(model: nn.Module, img_size: int = 416) -> list[CfgSection]:
    """``[net]`` and every layer of ``model`` as Darknet cfg sections, with each conv's actual
    (possibly thinned) ``filters=``; the convs come in :func:`darknet_layout` order, each Detect
    level's conv and ``[yolo]`` right after the layer feeding it."""
    w = _CfgWriter()
    feeds = detect_feeds(model)
    outs: dict[int, int] = {}  # our layer index -> Darknet index of its output (-1: the image)
    for layer in list(model.model)[:-1]:
        froms = [layer.f] if isinstance(layer.f, int) else list(layer.f)
        sources = [outs.get(f if f >= 0 else layer.i + f, -1) for f in froms]
        if isinstance(layer, Concat):
            w.route(*sources)
        elif len(sources) != 1:
            raise WeightsError(f"model.{layer.i}: {type(layer).__name__} with several inputs has no Darknet equivalent")
        else:
            if sources[0] != w.last:  # e.g. the branch after a [yolo] goes back to an earlier layer
                w.route(sources[0])
            _write_block(w, layer, f"model.{layer.i}")
        outs[layer.i] = w.last
        for level in feeds.get(layer.i, []):
            _write_detection(w, model, level)
    net = CfgSection(
        "net",
        0,
        {
            "batch": "1",
            "subdivisions": "1",
            "width": str(img_size),
            "height": str(img_size),
            "channels": str(darknet_layout(model)[0].conv.in_channels),
        },
    )
    return [net] + w.sections


def _write_block(w: _CfgWriter, module: nn.Module, prefix: str) -> None:
    """The sections of one YAML layer (the mirror of :func:`block_convs`)."""
    if isinstance(module, Conv):
        w.add("convolutional", **_conv_options(block_convs(module, prefix)[0], module.act))
    elif isinstance(module, Bottleneck):
        start = w.last
        _write_block(w, module.cv1, f"{prefix}.cv1")
        _write_block(w, module.cv2, f"{prefix}.cv2")
        if module.add:
            w.add("shortcut", **{"from": start - (w.last + 1), "activation": "linear"})
    elif isinstance(module, SPP):  # Darknet concatenates [pool13, pool9, pool5, x]
        _write_block(w, module.cv1, f"{prefix}.cv1")
        x, pools = w.last, []
        for j, pool in enumerate(module.m):
            if j:
                w.route(x)
            pools.append(w.add("maxpool", size=_square(pool.kernel_size, prefix), stride=1))
        w.route(*reversed(pools), x)
        _write_block(w, module.cv2, f"{prefix}.cv2")
    elif isinstance(module, nn.Sequential):
        for k, child in module.named_children():
            _write_block(w, child, f"{prefix}.{k}")
    elif isinstance(module, nn.MaxPool2d):
        size = _square(module.kernel_size, prefix)
        w.add("maxpool", size=size, stride=_square(module.stride or size, prefix))
    elif (
        isinstance(module, nn.Upsample)
        and module.mode == "nearest"
        and isinstance(module.scale_factor, (int, float))
        and float(module.scale_factor).is_integer()
    ):
        w.add("upsample", stride=int(module.scale_factor))
    elif not (isinstance(module, nn.ZeroPad2d) and tuple(module.padding) == (0, 1, 0, 1)):
        # (yolov3-tiny pads right / bottom before its stride-1 pool; Darknet's [maxpool] does that itself)
        raise WeightsError(f"{prefix}: layer {module} has no Darknet cfg equivalent")


def _write_detection(w: _CfgWriter, model: nn.Module, level: int) -> None:
    """Detect ``level``'s 1x1 conv and its ``[yolo]`` section (all anchors, this level's mask).

    A model that decodes boxes the classic Darknet way gets a linear conv and a plain ``[yolo]``. One that
    decodes them as trained here (``"v5"``: ``xy = 2 sigmoid(t) - 0.5``, ``wh = (2 sigmoid(t))^2 anchor``)
    gets AlexeyAB Darknet's form of that decode, as in its scaled-YOLOv4 cfgs: a logistic conv and
    ``new_coords=1``, ``scale_x_y=2``, so Darknet places the boxes as we do and the reader restores the decode.
    """
    detect = model.model[-1]
    options = _conv_options(detect_conv(model, level), None)
    v5 = getattr(model, "decode", "v5") == "v5"
    if v5:
        options["activation"] = "logistic"
    w.add("convolutional", **options)
    anchors = detect.anchors.reshape(-1, 2).tolist()
    yolo: dict[str, object] = {
        "mask": ",".join(str(level * detect.na + a) for a in range(detect.na)),
        "anchors": ",  ".join(f"{_number(aw)},{_number(ah)}" for aw, ah in anchors),
        "classes": detect.nc,
        "num": len(anchors),
    }
    if v5:
        yolo.update(scale_x_y="2.0", new_coords=1)
    w.add("yolo", **yolo)


def _conv_options(item: DarknetConv, act: nn.Module | None) -> dict[str, object]:
    """``[convolutional]`` options of one conv (``act`` None: the linear detection conv)."""
    c = item.conv
    k = _square(c.kernel_size, item.name)
    if _square(c.padding, item.name) != k // 2 or tuple(c.dilation) != (1, 1):
        raise WeightsError(f"{item.describe()}: Darknet convolutions use 'same' padding and no dilation")
    options: dict[str, object] = {"batch_normalize": 1} if item.bn is not None else {}
    options.update(filters=c.out_channels, size=k, stride=_square(c.stride, item.name), pad=1)
    if c.groups > 1:
        options["groups"] = c.groups
    options["activation"] = _activation(act, item.name)
    return options


def _activation(act: nn.Module | None, name: str) -> str:
    if act is None:
        return "linear"
    kind = _ACTIVATIONS.get(type(act))
    if kind is None or (kind == "leaky" and act.negative_slope != 0.1):
        raise WeightsError(f"{name}: activation {act} has no Darknet equivalent")
    return kind


def _square(value: int | tuple[int, ...], name: str) -> int:
    """``3`` or ``(3, 3)`` -> 3; Darknet layers are square."""
    values = {value} if isinstance(value, int) else set(value)
    if len(values) != 1:
        raise WeightsError(f"{name}: non-square size {value} has no Darknet equivalent")
    return int(values.pop())


def _number(v: float) -> str:
    """An anchor as Darknet text: ``116`` or the float's exact repr."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))
