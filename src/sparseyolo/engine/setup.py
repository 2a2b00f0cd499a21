"""Training setup helpers: the run config, model loading with class-count transfer, freezing."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch.nn as nn

from sparseyolo.utils.errors import ConfigError
from sparseyolo.utils.logging import LOGGER


@dataclass
class TrainConfig:
    """Everything ``sparseyolo train`` accepts (flag names follow the seed's train.py)."""

    weights: str = ""
    cfg: str = ""
    data: str = ""
    hyp: str = "scratch"
    recipe: str | None = None
    recipe_args: dict = field(default_factory=dict)
    epochs: int = 300
    batch_size: int = 16
    nbs: int = 64
    img_size: int = 640
    optimizer: str = "SGD"
    cos_lr: bool = False
    label_smoothing: float = 0.0
    noval: bool = False
    nosave: bool = False
    noplots: bool = False
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    device: str = ""
    sync_bn: bool = False
    workers: int = 8
    cache: str | None = None
    seed: int = 0
    freeze: int = 0
    patience: int = 100
    save_period: int = -1
    resume: str | bool = False
    wandb: bool = False
    tensorboard: bool = True
    amp: bool = True  # only takes effect on CUDA

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """Reject values no run can use (raises :class:`ConfigError` naming the flag)."""
        minimum = {"epochs": 1, "batch_size": 1, "nbs": 1, "img_size": 1, "workers": 0, "freeze": 0, "patience": 0}
        for name, low in minimum.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if not 0.0 <= float(self.label_smoothing) < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")


def check_img_size(img_size: int, stride: int) -> int:
    """Round up to a multiple of the model's largest stride, warning when it changes."""
    new = max(int(math.ceil(img_size / stride) * stride), stride)
    if new != img_size:
        LOGGER.warning(f"--img {img_size} is not a multiple of the max stride {stride}; using {new}")
    return new


def build_train_model(cfg: TrainConfig, nc: int, names: list[str]) -> tuple[nn.Module, dict | None]:
    """Model to train: from ``--weights`` (checkpoint, Darknet ``.weights``, URL or ``zoo:`` stub, read
    by ``models.load_model``) or from ``--cfg`` for a scratch run.

    Weights trained for another class count (or another ``--cfg``) are transferred into a model
    built for this dataset: every tensor whose name and shape match is copied, and the count is
    logged ("Transferred 120/130 items").
    """
    from sparseyolo.models import build_model, load_model

    if cfg.weights:
        model, ckpt = load_model(cfg.weights, cfg=cfg.cfg or None, nc=nc)
        if ckpt is not None and len(ckpt.get("names") or []) == nc and not cfg.cfg:  # nothing to transfer
            n = len(model.state_dict())
            LOGGER.info(f"Transferred {n}/{n} items from {cfg.weights}")
    else:
        if not cfg.cfg:
            raise ConfigError("train: give --weights (a checkpoint, .weights, URL or zoo: stub) or --cfg "
                              "(yolov3, yolov3-spp, yolov3-tiny or a model YAML) to train from scratch")
        model, ckpt = build_model(cfg.cfg, nc=nc), None
    model.names = list(names)
    return model, ckpt


def freeze_layers(model: nn.Module, n: int) -> list[str]:
    """Freeze the parameters of the first ``n`` layers (``model.0`` .. ``model.{n-1}``)."""
    if n <= 0:
        return []
    n_layers = len(getattr(model, "model", ()))
    if n_layers and n >= n_layers:  # the last layer is the Detect head: nothing would be left to train
        raise ConfigError(f"--freeze {n} would freeze every layer of this {n_layers}-layer model; "
                          f"use at most {n_layers - 1}")
    prefixes = tuple(f"model.{i}." for i in range(n))
    frozen = []
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(False)
            frozen.append(name)
    LOGGER.info(f"froze {len(frozen)} parameter tensors in the first {n} layers")
    return frozen
