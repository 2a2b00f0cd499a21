"""Model YAML loading and the layer builder (``[from, number, module, args]`` rows -> modules)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from sparseyolo.models.common import ACTIVATIONS, SPP, Bottleneck, Concat, Conv
from sparseyolo.models.detect import Detect
from sparseyolo.utils.errors import ConfigError
from sparseyolo.utils.registry import Registry, close_matches

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "models"

# Registered model names -> packaged config files (timm-style lookup with suggestions).
MODELS: Registry[Path] = Registry("model")
for _name in ("yolov3", "yolov3-spp", "yolov3-tiny"):
    MODELS.register(_name)(CONFIG_DIR / f"{_name}.yaml")

# Module names a config may use. A lookup table, never eval: configs are data.
MODULES: dict[str, type[nn.Module]] = {
    "Conv": Conv,
    "Bottleneck": Bottleneck,
    "SPP": SPP,
    "Concat": Concat,
    "Detect": Detect,
    "nn.Upsample": nn.Upsample,
    "nn.MaxPool2d": nn.MaxPool2d,
    "nn.ZeroPad2d": nn.ZeroPad2d,
}
CONV_MODULES = (Conv, Bottleneck, SPP)  # take (c1, c2, ...) and scale with width_multiple
REQUIRED_KEYS = ("nc", "anchors", "backbone", "head")


def make_divisible(x: float, divisor: int = 8) -> int:
    """Round a channel count up to a multiple of ``divisor`` (keeps width-scaled models fast)."""
    return int(math.ceil(x / divisor) * divisor)


def resolve_cfg_path(cfg: str | Path) -> Path:
    """A registered name (``yolov3-spp``, also ``yolov3-spp.yaml``) or a path to a YAML file."""
    text = str(cfg)
    if text in MODELS:
        return MODELS.get(text)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml") and path.stem in MODELS and len(path.parts) == 1:
        return MODELS.get(path.stem)
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise ConfigError(f"model config not found: {text}")
    return MODELS.get(text)  # raises with close names


def load_model_yaml(cfg: str | Path | dict) -> tuple[dict, str]:
    """Return a deep-copied, validated config dict and a label for messages (file or 'dict')."""
    if isinstance(cfg, dict):
        d, src = copy.deepcopy(cfg), str(cfg.get("yaml_file", "<model dict>"))
    else:
        path = resolve_cfg_path(cfg)
        src = str(path)
        try:
            d = yaml.safe_load(path.read_text())
        except yaml.MarkedYAMLError as e:
            line = e.problem_mark.line + 1 if e.problem_mark else "?"
            raise ConfigError(f"{path}:{line}: invalid YAML: {e.problem}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: a model config must be a mapping")
        d["yaml_file"] = path.name
    for key in REQUIRED_KEYS:
        if key not in d:
            raise ConfigError(f"{src}: missing key {key!r}")
    return d, src


def _resolve_arg(a: Any, d: dict) -> Any:
    """Config-level names inside args: ``nc``, ``anchors``; the string 'None' means None."""
    if isinstance(a, str):
        if a in ("nc", "anchors"):
            return d[a]
        if a == "None":
            return None
    return a


def _layer_error(src: str, i: int, msg: str) -> ConfigError:
    return ConfigError(f"{src}: layer {i}: {msg}")


def parse_model(d: dict, ch: list[int], src: str = "<model dict>") -> tuple[nn.Sequential, list[int]]:
    """Build the layer stack; returns ``(nn.Sequential, save)`` where ``save`` lists the layer
    indices whose outputs later layers read."""
    nc, gd, gw = d["nc"], d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0)
    act = d.get("act", True)
    if act not in ACTIVATIONS and act is not True:
        raise ConfigError(f"{src}: unknown act {act!r}; known: {', '.join(sorted(ACTIVATIONS))}")
    no = len(d["anchors"][0]) // 2 * (nc + 5)
    rows = list(d["backbone"]) + list(d["head"])
    layers, save, c2 = [], [], ch[-1]
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) != 4:
            raise _layer_error(src, i, f"expected [from, number, module, args], got {row!r}")
        f, n, name, args = row
        if name not in MODULES:
            hint = close_matches(str(name), tuple(MODULES))
            raise _layer_error(src, i, f"unknown module {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        mod = MODULES[name]
        args = [_resolve_arg(a, d) for a in (args or [])]
        froms = [f] if isinstance(f, int) else list(f)
        for x in froms:
            if not isinstance(x, int) or not (-len(ch) <= x < len(ch) if i else x == -1):
                raise _layer_error(src, i, f"'from' index {x!r} does not name an earlier layer")
        n = max(round(n * gd), 1) if n > 1 else n
        kwargs: dict[str, Any] = {}
        if mod in CONV_MODULES:
            c1, c2 = ch[f], args[0]
            c2 = make_divisible(c2 * gw, 8) if c2 != no else c2
            args = [c1, c2, *args[1:]]
            kwargs["act"] = act
        elif mod is Concat:
            c2 = sum(ch[x] for x in froms)
        elif mod is Detect:
            args = [args[0], args[1], [ch[x] for x in froms]]
        else:
            c2 = ch[f]
        try:
            if n > 1 and mod in CONV_MODULES:
                # repeats after the first take the block's own output width as input
                m_ = nn.Sequential(mod(*args, **kwargs), *(mod(c2, *args[1:], **kwargs) for _ in range(n - 1)))
            elif n > 1:
                m_ = nn.Sequential(*(mod(*args, **kwargs) for _ in range(n)))
            else:
                m_ = mod(*args, **kwargs)
        except (TypeError, ValueError) as e:
            raise _layer_error(src, i, f"cannot build {name}{args}: {e}") from None
        m_.i, m_.f, m_.type = i, f, name
        m_.np = sum(p.numel() for p in m_.parameters())
        save.extend(x % i for x in froms if x != -1)
        layers.append(m_)
        if i == 0:
            ch = []
        ch.append(c2)
    if not isinstance(layers[-1], Detect):
        raise ConfigError(f"{src}: the last layer must be Detect")
    return nn.Sequential(*layers), sorted(set(save))
