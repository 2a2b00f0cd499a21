"""Dataset YAML files in the Ultralytics format.

Accepted layouts::

    path: ../datasets/coco128      # optional root; relative train/val/test resolve against it
    train: images/train2017        # a folder of images, a .txt list of image paths, or a list of those
    val: images/val2017
    test:                          # optional
    nc: 80                         # optional, must agree with names
    names: [person, bicycle, ...]  # or {0: person, 1: bicycle, ...}
    download: https://...          # accepted and ignored (kept as a string for callers that want it)

Without ``path``, relative entries resolve against the YAML's own folder. A relative ``path``
resolves against the YAML's folder, or against the working directory if only that exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from sparseyolo.utils.errors import ConfigError, where

SPLITS = ("train", "val", "test")


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"data YAML not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        # the parser's own text points at "<unicode string>"; keep only what is wrong, and where
        problem = getattr(e, "problem", None) or str(e)
        col = f" (column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{where(path, line)}: invalid YAML: {problem}{col}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (train, val, names, ...), got {type(data).__name__}")
    return data


def _parse_names(path: Path, data: dict) -> list[str]:
    if "names" not in data or data["names"] is None:
        raise ConfigError(f"{where(path, key='names')}: missing class names")
    names = data["names"]
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise ConfigError(f"{where(path, key='names')}: dict keys must be class ids 0..n-1") from None
        if ids != list(range(len(ids))):
            raise ConfigError(
                f"{where(path, key='names')}: class ids must be 0..{len(ids) - 1} without gaps, got {ids}"
            )
        names = [names[k] if k in names else names[str(k)] for k in ids]
    elif isinstance(names, str):
        # a names file (one class per line) next to the YAML, as Darknet's *.names
        p = Path(names) if Path(names).is_absolute() else path.parent / names
        if not p.is_file():
            raise ConfigError(f"{where(path, key='names')}: expected a list, a dict or a names file; {p} not found")
        names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    elif not isinstance(names, (list, tuple)):
        raise ConfigError(f"{where(path, key='names')}: expected a list or dict, got {type(names).__name__}")
    names = [str(n) for n in names]
    if not names:
        raise ConfigError(f"{where(path, key='names')}: empty list of class names")
    return names


def _root(path: Path, data: dict) -> Path:
    root = data.get("path")
    if not root:
        return path.parent.resolve()
    root = Path(os.path.expanduser(str(root)))
    if root.is_absolute():
        return root
    beside_yaml = (path.parent / root).resolve()
    if not beside_yaml.exists() and root.resolve().exists():
        return root.resolve()
    return beside_yaml


def _resolve(root: Path, entry: Any, path: Path, key: str) -> str | list[str] | None:
    if entry is None or entry == "":
        return None
    if isinstance(entry, (list, tuple)):
        out = [_resolve(root, e, path, key) for e in entry]
        return [e for e in out if e is not None]
    if not isinstance(entry, (str, os.PathLike)):
        raise ConfigError(f"{where(path, key=key)}: expected a path or a list of paths, got {entry!r}")
    p = Path(os.path.expanduser(str(entry)))
    return str(p if p.is_absolute() else (root / p).resolve())


def load_data_config(path: str | os.PathLike) -> dict:
    """Load a dataset YAML and return ``{path, train, val, test, nc, names, download}``.

    ``train`` / ``val`` / ``test`` become absolute path strings (or lists of them, or None).
    Raises :class:`ConfigError` naming the file and key for any problem.
    """
    path = Path(path)
    data = _read_yaml(path)
    names = _parse_names(path, data)
    nc = data.get("nc")
    if nc is not None:
        try:
            nc = int(nc)
        except (TypeError, ValueError):
            raise ConfigError(f"{where(path, key='nc')}: expected an integer, got {data['nc']!r}") from None
        if nc != len(names):
            raise ConfigError(f"{where(path, key='nc')}: nc={nc} but {len(names)} names are listed")
    for key in ("train", "val"):
        if not data.get(key):
            raise ConfigError(f"{where(path, key=key)}: missing (a folder of images, a .txt list, or a list of those)")
    root = _root(path, data)
    out = {
        "path": str(root),
        "nc": len(names),
        "names": names,
        "download": data.get("download"),
        "yaml_file": str(path.resolve()),
    }
    for key in SPLITS:
        out[key] = _resolve(root, data.get(key), path, key)
    return out
