"""Training hyperparameters: the YOLOv3/v5 ``hyp.*.yaml`` keys, loaded and validated eagerly.

Every key has an effect:

- ``lr0, lrf, momentum, weight_decay, warmup_*``: optimiser and schedule (:mod:`engine.optim`);
- ``box, cls, cls_pw, obj, obj_pw, anchor_t, fl_gamma``: the loss (:mod:`engine.loss`);
- ``iou_t``: the minimum anchor/target *shape* IoU for an anchor match when the head uses the
  ``darknet`` decode (whose ``exp`` width/height is unbounded, so the ratio rule alone would let
  poorly fitting anchors learn boxes far from their prior). With the ``v5`` decode the ratio rule
  ``anchor_t`` is the whole criterion, as in YOLOv5, and ``iou_t`` is not used;
- ``hsv_*, degrees, translate, scale, shear, perspective, flipud, fliplr, mosaic, mixup``:
  training augmentation (passed to ``data.create_dataloader``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sparseyolo.utils.errors import ConfigError, where
from sparseyolo.utils.logging import LOGGER
from sparseyolo.utils.registry import close_matches

HYP_DIR = Path(__file__).resolve().parents[1] / "configs" / "hyps"

HYP_KEYS: tuple[str, ...] = (
    "lr0",
    "lrf",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "warmup_momentum",
    "warmup_bias_lr",
    "box",
    "cls",
    "cls_pw",
    "obj",
    "obj_pw",
    "iou_t",
    "anchor_t",
    "fl_gamma",
    "hsv_h",
    "hsv_s",
    "hsv_v",
    "degrees",
    "translate",
    "scale",
    "shear",
    "perspective",
    "flipud",
    "fliplr",
    "mosaic",
    "mixup",
)

# (low, high) inclusive bounds; None = unbounded on that side
_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "lr0": (0, None),
    "lrf": (0, None),
    "momentum": (0, 1),
    "weight_decay": (0, None),
    "warmup_epochs": (0, None),
    "warmup_momentum": (0, 1),
    "warmup_bias_lr": (0, None),
    "box": (0, None),
    "cls": (0, None),
    "cls_pw": (0, None),
    "obj": (0, None),
    "obj_pw": (0, None),
    "iou_t": (0, 1),
    "anchor_t": (1, None),
    "fl_gamma": (0, None),
    "hsv_h": (0, 1),
    "hsv_s": (0, 1),
    "hsv_v": (0, 1),
    "degrees": (0, 360),
    "translate": (0, 1),
    "scale": (0, None),
    "shear": (0, 90),
    "perspective": (0, 0.01),
    "flipud": (0, 1),
    "fliplr": (0, 1),
    "mosaic": (0, 1),
    "mixup": (0, 1),
}


def shipped_hyps() -> list[str]:
    """Names of the hyperparameter files that ship with sparseyolo (e.g. ``hyp.scratch``)."""
    return sorted(p.stem for p in HYP_DIR.glob("hyp.*.yaml"))


def resolve_hyp_path(spec: str | Path) -> Path:
    """A path, or a shipped name: ``scratch``, ``hyp.scratch`` or ``hyp.scratch.yaml``."""
    path = Path(spec)
    if path.is_file():
        return path
    name = str(spec)
    for candidate in (name, f"{name}.yaml", f"hyp.{name}.yaml"):
        if (HYP_DIR / candidate).is_file() and "/" not in name:
            return HYP_DIR / candidate
    shipped = shipped_hyps()
    raise ConfigError(f"hyperparameter file {spec!r} not found; shipped: {', '.join(shipped)}")


def _key_lines(text: str) -> dict[str, int]:
    """1-based line of each top-level key, for error messages."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def validate_hyp(
    hyp: dict[str, Any],
    source: str = "<hyp>",
    lines: dict[str, int] | None = None,
    defaults: dict[str, float] | None = None,
) -> dict[str, float]:
    """Check keys, types and ranges; fill missing keys from ``defaults`` (with a warning)."""
    lines = lines or {}
    valid = ", ".join(HYP_KEYS)
    for key in hyp:
        if key not in HYP_KEYS:
            hint = close_matches(str(key), HYP_KEYS, n=3)
            msg = f"{where(source, lines.get(key), key)}: unknown hyperparameter"
            msg += f"; did you mean {', '.join(map(repr, hint))}?" if hint else "."
            raise ConfigError(f"{msg} Valid keys: {valid}")
    out: dict[str, float] = {}
    missing = [k for k in HYP_KEYS if k not in hyp]
    if missing and defaults is None:
        raise ConfigError(f"{source}: missing hyperparameters: {', '.join(missing)}")
    if missing:
        LOGGER.warning(f"{source}: missing {', '.join(missing)}; using the hyp.scratch values")
    for key in HYP_KEYS:
        value = hyp[key] if key in hyp else defaults[key]  # type: ignore[index]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where(source, lines.get(key), key)}: expected a number, got {value!r}")
        lo, hi = _BOUNDS[key]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(
                f"{where(source, lines.get(key), key)}: {value} is outside " f"[{lo}, {'inf' if hi is None else hi}]"
            )
        out[key] = float(value)
    return out


def load_hyp(spec: str | Path | dict | None = "scratch") -> dict[str, float]:
    """Load and validate a hyperparameter file (path or shipped name) or dict.

    Unknown keys raise :class:`ConfigError` naming the file, line and valid keys; missing keys are
    taken from ``hyp.scratch.yaml`` with a warning.
    """
    defaults = _read(HYP_DIR / "hyp.scratch.yaml")[0]
    if spec is None:
        return validate_hyp(defaults)
    if isinstance(spec, dict):
        return validate_hyp(dict(spec), "<hyp dict>", defaults=defaults)
    path = resolve_hyp_path(spec)
    data, lines = _read(path)
    return validate_hyp(data, str(path), lines, defaults=defaults)


def _read(path: Path) -> tuple[dict, dict[str, int]]:
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"{where(path, mark.line + 1 if mark else None)}: invalid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of hyperparameters, got {type(data).__name__}")
    return data, _key_lines(text)
