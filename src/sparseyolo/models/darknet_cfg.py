"""Reader and writer for Darknet ``.cfg`` network definitions (enough of the format for YOLOv3-family
nets).

The parsed cfg validates an import, sizes a thinned model's layers (its ``filters=``) and counts
parameters: the layer layout itself is derived from our YAML model (see ``models/darknet.py``), so a
``.cfg`` file is optional. :func:`format_sections` writes sections back as cfg text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sparseyolo.utils.errors import ConfigError


@dataclass
class CfgSection:
    """One ``[type]`` block: its options (raw strings) and the line it starts on."""

    type: str
    line: int
    options: dict[str, str] = field(default_factory=dict)

    def get_int(self, key: str, default: int | None = None, path: str = "") -> int:
        if key not in self.options:
            if default is None:
                raise ConfigError(f"{path}:{self.line}: [{self.type}] needs {key}=")
            return default
        try:
            return int(self.options[key])
        except ValueError:
            raise ConfigError(
                f"{path}:{self.line}: [{self.type}] {key}={self.options[key]!r} is not an integer"
            ) from None

    def get_ints(self, key: str, path: str = "") -> list[int]:
        return [int(v) for v in self.get_floats(key, path)]

    def get_floats(self, key: str, path: str = "") -> list[float]:
        try:
            return [float(v) for v in self.options.get(key, "").split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"{path}:{self.line}: [{self.type}] {key} must be a list of numbers") from None


@dataclass
class CfgConv:
    """A ``[convolutional]`` layer with its resolved input channels."""

    index: int  # Darknet layer index (``[net]`` excluded)
    line: int
    filters: int
    c_in: int
    size: int
    stride: int
    groups: int
    batch_normalize: bool
    activation: str

    @property
    def n_params(self) -> int:
        """Trainable parameters as PyTorch counts them (BN affine, or the conv bias)."""
        w = self.filters * (self.c_in // self.groups) * self.size * self.size
        return w + (2 * self.filters if self.batch_normalize else self.filters)

    @property
    def n_floats(self) -> int:
        """Floats this layer occupies in a ``.weights`` file (BN running stats included)."""
        return self.n_params + (2 * self.filters if self.batch_normalize else 0)


@dataclass
class CfgYolo:
    index: int
    line: int
    mask: list[int]
    anchors: list[tuple[float, float]]  # this layer's anchors (w, h) in pixels (Darknet reads floats)
    classes: int
    # AlexeyAB Darknet's scaled-YOLOv4 decode: new_coords=1 (the conv's logistic output, xy = scale_x_y * t -
    # (scale_x_y - 1) / 2, wh = (2 t)^2 * anchor), scale_x_y 2 is our "v5" decode; 0 / 1.0: the classic one
    new_coords: int = 0
    scale_x_y: float = 1.0


@dataclass
class DarknetCfg:
    path: str
    net: CfgSection
    layers: list[CfgSection]
    convs: list[CfgConv]
    yolos: list[CfgYolo]
    channels: list[int]  # output channels per layer

    @property
    def n_params(self) -> int:
        return sum(c.n_params for c in self.convs)

    @property
    def n_floats(self) -> int:
        return sum(c.n_floats for c in self.convs)


def parse_sections(path: str | os.PathLike) -> list[CfgSection]:
    """Split a cfg into sections; ``#`` / ``;`` start comments, keys are ``key=value``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Darknet cfg not found: {path}")
    sections: list[CfgSection] = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"{path}:{n}: malformed section header {raw.strip()!r}")
            sections.append(CfgSection(line[1:-1].strip().lower(), n))
        elif "=" in line:
            if not sections:
                raise ConfigError(f"{path}:{n}: option outside any [section]")
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise ConfigError(f"{path}:{n}: expected key=value, got {raw.strip()!r}")
    if not sections or sections[0].type not in ("net", "network"):
        raise ConfigError(f"{path}: a Darknet cfg must start with [net]")
    return sections


def format_sections(sections: list[CfgSection], comment: str = "") -> str:
    """Cfg text for ``sections`` (the inverse of :func:`parse_sections`); ``comment`` lines go first."""
    blocks = ["\n".join(f"# {c}" for c in comment.splitlines())] if comment else []
    blocks += ["\n".join([f"[{sec.type}]"] + [f"{k}={v}" for k, v in sec.options.items()]) for sec in sections]
    return "\n\n".join(blocks) + "\n"


def _route_sources(sec: CfgSection, i: int, path: str) -> list[int]:
    out = []
    for v in sec.get_ints("layers", path):
        j = i + v if v < 0 else v
        if not 0 <= j < i:
            raise ConfigError(f"{path}:{sec.line}: [route] layer {v} does not name an earlier layer")
        out.append(j)
    return out


def parse_cfg(path: str | os.PathLike) -> DarknetCfg:
    """Parse a cfg and resolve every layer's channel count."""
    sections = parse_sections(path)
    p = str(path)
    net, layers = sections[0], sections[1:]
    ch_in = net.get_int("channels", 3, p)
    channels: list[int] = []
    convs: list[CfgConv] = []
    yolos: list[CfgYolo] = []
    for i, sec in enumerate(layers):
        prev = channels[-1] if channels else ch_in
        if sec.type in ("convolutional", "conv"):
            c = CfgConv(
                i,
                sec.line,
                sec.get_int("filters", path=p),
                prev,
                sec.get_int("size", 1, p),
                sec.get_int("stride", 1, p),
                sec.get_int("groups", 1, p),
                bool(sec.get_int("batch_normalize", 0, p)),
                sec.options.get("activation", "logistic"),
            )
            convs.append(c)
            channels.append(c.filters)
        elif sec.type == "route":
            channels.append(sum(channels[j] for j in _route_sources(sec, i, p)))
        elif sec.type in ("maxpool", "upsample", "shortcut", "dropout", "reorg"):
            if sec.type == "shortcut":
                frm = sec.get_int("from", path=p)
                j = i + frm if frm < 0 else frm
                if not 0 <= j < i or channels[j] != prev:
                    raise ConfigError(f"{p}:{sec.line}: [shortcut] from={frm} does not match layer {i - 1}")
            channels.append(prev * (sec.get_int("stride", 2, p) ** 2) if sec.type == "reorg" else prev)
        elif sec.type in ("yolo", "region"):
            anchors = sec.get_floats("anchors", p)
            pairs = list(zip(anchors[0::2], anchors[1::2], strict=False))
            mask = sec.get_ints("mask", p) or list(range(len(pairs)))
            if any(not 0 <= m < len(pairs) for m in mask):
                raise ConfigError(f"{p}:{sec.line}: [yolo] mask {mask} exceeds the {len(pairs)} anchors")
            yolos.append(
                CfgYolo(
                    i,
                    sec.line,
                    mask,
                    [pairs[m] for m in mask],
                    sec.get_int("classes", 80, p),
                    sec.get_int("new_coords", 0, p),
                    (sec.get_floats("scale_x_y", p) or [1.0])[0],
                )
            )
            channels.append(prev)
        else:
            raise ConfigError(f"{p}:{sec.line}: unsupported Darknet layer [{sec.type}]")
    return DarknetCfg(p, net, layers, convs, yolos, channels)
