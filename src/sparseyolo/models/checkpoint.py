"""sparseyolo checkpoints: plain dicts of tensors and plain data (no pickled modules).

They load with ``torch.load(weights_only=True)``, so opening a checkpoint never runs code. The model
is rebuilt from ``model_yaml`` and, when the recipe state says QAT was active, re-prepared for
quantization-aware training before its state dict (which holds the observer ranges) is loaded.
"""

from __future__ import annotations

import datetime as _dt
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparseyolo import __version__
from sparseyolo.models.yolo import DetectionModel
from sparseyolo.utils.errors import WeightsError
from sparseyolo.utils.io import atomic_torch_save
from sparseyolo.utils.logging import LOGGER

FORMAT = "sparseyolo"
VERSION = 1
FIELDS: dict[str, Any] = {
    "model_yaml": None,
    "names": None,
    "model": None,
    "ema": None,
    "ema_updates": 0,
    "optimizer": None,
    "scaler": None,
    "epoch": -1,
    "best_fitness": None,
    "recipe": None,
    "recipe_args": None,
    "recipe_state": None,
    "train_args": None,
    "hyp": None,
    "rng": None,
    "metrics": None,
}
_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.Size, torch.device)


def _plain(value: Any, key: str) -> Any:
    """Convert to data that ``weights_only`` loading accepts, or raise naming the key."""
    if isinstance(value, np.generic):  # before _PLAIN: np.float64 subclasses float
        return value.item()
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        out = OrderedDict() if isinstance(value, OrderedDict) else {}
        for k, v in value.items():
            out[k] = _plain(v, f"{key}.{k}")
        if hasattr(value, "_metadata"):  # state dicts carry per-module versions
            out._metadata = value._metadata
        return out
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    raise TypeError(
        f"checkpoint field {key!r} holds a {type(value).__name__}, which cannot be loaded "
        f"with weights_only=True; store plain data (numbers, strings, lists, dicts, tensors)"
    )


def save_checkpoint(path: str | os.PathLike, **fields: Any) -> Path:
    """Write a checkpoint atomically and return its path.

    ``fields`` are the keys of the contract (``model_yaml``, ``names``, ``model``, ``ema``, ...);
    ``model`` / ``ema`` may also be given as a :class:`DetectionModel`, which fills ``model_yaml``
    and ``names`` from it. Missing keys get their defaults; extra keys are kept.
    """
    ckpt: dict[str, Any] = {"format": FORMAT, "version": VERSION, **FIELDS}
    for key in ("model", "ema"):
        module = fields.get(key)
        if isinstance(module, nn.Module):
            module = getattr(module, "module", module)  # unwrap DDP / DataParallel
            if key == "model" or fields.get("model_yaml") is None:
                fields.setdefault("model_yaml", getattr(module, "yaml", None))
                fields.setdefault("names", list(getattr(module, "names", []) or []))
            fields[key] = module.state_dict()
    ckpt.update(fields)
    if ckpt["model"] is None or ckpt["model_yaml"] is None:
        raise ValueError("save_checkpoint needs 'model' (a state dict or module) and 'model_yaml'")
    ckpt["date"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    ckpt["sparseyolo_version"] = __version__
    ckpt = {k: _plain(v, k) for k, v in ckpt.items()}
    return atomic_torch_save(ckpt, path)


def load_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict:
    """Load a checkpoint on the CPU without executing code; :class:`WeightsError` if ``path`` is
    missing, truncated, corrupt or not a sparseyolo checkpoint. ``mmap=True`` maps the tensors
    instead of reading them: cheap when only the metadata (epoch, metrics, recipe) is wanted."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        # torch.save has written zip archives since PyTorch 1.6; anything else is cut short or foreign
        raise WeightsError(
            f"{path}: truncated or corrupt checkpoint (not a PyTorch zip archive; "
            f"cut short, damaged, or a file of another format)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" (it needs {found.group(1)})" if found else ""
        raise WeightsError(
            f"{path}: contains pickled Python objects{what}, e.g. an Ultralytics/YOLOv5 "
            f"checkpoint; only plain-data sparseyolo checkpoints are loaded, so that loading "
            f"a file never runs code"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{path}: truncated or corrupt checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a sparseyolo checkpoint (no 'format': 'sparseyolo' entry)")
    if int(ckpt.get("version", 0)) > VERSION:
        raise WeightsError(
            f"{path}: checkpoint version {ckpt['version']} is newer than this sparseyolo "
            f"({__version__}) supports; upgrade sparseyolo"
        )
    for key in ("model_yaml", "model"):
        if not isinstance(ckpt.get(key), dict):
            raise WeightsError(f"{path}: checkpoint has no {key!r} dict")
    return ckpt


def qat_state(ckpt: dict) -> dict | None:
    """The ``{"submodules": [...] | None, "config": {...}}`` QAT record in ``recipe_state``, if any."""
    state = ckpt.get("recipe_state")
    qat = state.get("qat") if isinstance(state, dict) else None
    return qat if isinstance(qat, dict) else None


def apply_qat_structure(model: nn.Module, qat: dict) -> nn.Module:
    """Re-insert the fake-quantization modules recorded in a checkpoint (before loading weights)."""
    from sparseyolo.quantization import QATConfig, prepare_qat

    config = QATConfig.from_dict(dict(qat.get("config") or {}), where="checkpoint recipe_state['qat']")
    return prepare_qat(model, submodules=qat.get("submodules"), config=config)


def load_state(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with a :class:`WeightsError` that names the bad keys.

    Everything is checked before anything is copied, so a mismatch gives one line naming the tensor
    and both shapes instead of PyTorch's multi-line RuntimeError, and leaves the model untouched.
    """
    if not isinstance(state, dict):
        raise WeightsError(f"{source}: expected a state dict (tensor names -> tensors), got a {type(state).__name__}")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {[str(k)[:80] for k in unexpected[:3]]})")
        raise WeightsError(f"{source}: state dict does not match the model: {'; '.join(parts)}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{source}: {key} is a {type(value).__name__} in the file, not a tensor")
        if value.shape != own[key].shape:
            raise WeightsError(
                f"{source}: {key} has shape {list(value.shape)} in the file, " f"{list(own[key].shape)} in the model"
            )
        if value.is_complex() and not own[key].is_complex():
            raise WeightsError(f"{source}: {key} holds complex numbers in the file, {own[key].dtype} in the model")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # anything the checks above missed: still one line, naming the source
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) or (first[0] if first else type(e).__name__)
        raise WeightsError(f"{source}: state dict does not match the model ({detail})") from None


def model_from_checkpoint(ckpt: dict, use_ema: bool = True) -> DetectionModel:
    """Rebuild the :class:`DetectionModel` of a checkpoint (EMA weights when present and
    ``use_ema``), re-applying QAT first when ``recipe_state['qat']`` records it."""
    model = DetectionModel(ckpt["model_yaml"], ch=ckpt["model_yaml"].get("ch", 3), names=ckpt.get("names"))
    qat = qat_state(ckpt)
    if qat is not None:
        apply_qat_structure(model, qat)
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    load_state(model, state, source=f"checkpoint ({'ema' if state is ckpt.get('ema') else 'model'})")
    LOGGER.debug(f"rebuilt {model.yaml.get('yaml_file', 'model')} from checkpoint (epoch {ckpt.get('epoch')})")
    return model
