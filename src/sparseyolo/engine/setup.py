"""Training setup helpers: the run config, model loading with class-count transfer, freezing."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
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
    nbs: int | None = None  # None: 64 (YOLOv3/v5), or one optimizer step per batch under a recipe
    teacher: str | None = None  # distillation teacher (a recipe's DistillationModifier); None: --weights
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
    rescale_pretrained: bool | None = None  # None: only for Darknet .weights (see rescale_to_init_norm)
    patience: int = 100
    save_period: int = -1
    resume: str | bool = False
    wandb: bool = False
    tensorboard: bool = True
    amp: bool = True  # only takes effect on CUDA

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """Reject values no run can use (raises :class:`ConfigError` naming the flag)."""
        minimum = {"epochs": 1, "batch_size": 1, "nbs": 1, "img_size": 1, "workers": 0, "freeze": 0, "patience": 0}
        for name, low in minimum.items():
            value = getattr(self, name)
            if name == "nbs" and value is None:
                continue
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if not 0.0 <= float(self.label_smoothing) < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")


# settings a resumed run may take from the resuming command: hardware and output only. Everything else
# shapes the training itself, so the resumed run keeps the saved value and refuses a different one.
RESUME_MAY_CHANGE = frozenset(
    {
        "resume",
        "device",
        "workers",
        "cache",
        "project",
        "name",
        "exist_ok",
        "noplots",
        "tensorboard",
        "wandb",
        "nosave",
        "save_period",
    }
)


def _flag(name: str) -> str:
    return {"img_size": "--img", "amp": "--no-amp"}.get(name, "--" + name.replace("_", "-"))


def _shown(name: str, value: Any) -> str:
    if name == "amp":
        value = not value
    if isinstance(value, bool):
        return _flag(name) if value else f"no {_flag(name)}"
    if isinstance(value, dict):
        import json

        value = json.dumps(value, sort_keys=True)
    return f"{_flag(name)} {value if value not in ('', None) else repr(value)}"


def _same_setting(name: str, new: Any, saved: Any) -> bool:
    if new == saved:
        return True
    if name == "img_size" and isinstance(new, int) and isinstance(saved, int):
        return max(math.ceil(new / 32) * 32, 32) == saved  # the saved size is the rounded one
    if name in ("data", "weights", "cfg", "hyp", "recipe") and new and saved:
        try:
            return os.path.samefile(str(new), str(saved))
        except OSError:
            return False
    return False


def merge_resume_config(
    saved: TrainConfig, new: TrainConfig, given: Iterable[str], checkpoint: str | Path
) -> TrainConfig:
    """The config of a resumed run: ``saved`` (from the checkpoint), with ``--device`` and the hardware /
    output settings among ``given`` (the flags the resuming command actually set) taken from ``new``.

    A given setting that would change the training (``--data``, ``--img``, ``--epochs``, the recipe...)
    and differs from the saved value raises :class:`ConfigError`, one line naming each flag with both
    values: a resumed run never mixes two configurations.
    """
    given = set(given)
    changed = [
        n
        for n in sorted(given - RESUME_MAY_CHANGE)
        if n in saved.__dataclass_fields__ and not _same_setting(n, getattr(new, n), getattr(saved, n))
    ]
    if changed:
        was = " and ".join(_shown(n, getattr(saved, n)) for n in changed)
        now = " and ".join(_shown(n, getattr(new, n)) for n in changed)
        flags = " and ".join(_flag(n) for n in changed)
        raise ConfigError(
            f"--resume {checkpoint}: the run was started with {was}, this command gives {now}; a "
            f"resumed run keeps its settings. Resume without {flags}, or start a new run from the "
            f"checkpoint with --weights {checkpoint}"
        )
    merged = TrainConfig.from_dict(saved.to_dict())
    # --device always comes from this command (its default picks what this machine has): the run may
    # resume on other hardware; the other hardware / output flags keep the run's value unless given
    for n in (given & RESUME_MAY_CHANGE) | {"device"}:
        setattr(merged, n, getattr(new, n))
    merged.resume = str(checkpoint)
    return merged


def given_fields(cfg: TrainConfig) -> set[str]:
    """The fields of ``cfg`` that differ from the defaults: what a caller that did not say which
    settings it gave (the Python API) is taken to have set."""
    default = TrainConfig()
    return {f.name for f in fields(TrainConfig) if getattr(cfg, f.name) != getattr(default, f.name)}


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
        rescale = cfg.rescale_pretrained if cfg.rescale_pretrained is not None else ckpt is None
        if rescale:  # (load_model returns no checkpoint for Darknet .weights)
            n = rescale_to_init_norm(model)
            why = "" if cfg.rescale_pretrained else " (default for Darknet .weights; --no-rescale-pretrained: off)"
            LOGGER.info(f"rescaled {n} pretrained conv weights to the RMS of a fresh initialisation{why}")
    else:
        if cfg.rescale_pretrained:
            raise ConfigError("--rescale-pretrained rescales the --weights it transfers; a scratch run has none")
        if not cfg.cfg:
            raise ConfigError(
                "train: give --weights (a checkpoint, .weights, URL or zoo: stub) or --cfg "
                "(yolov3, yolov3-spp, yolov3-tiny or a model YAML) to train from scratch"
            )
        model, ckpt = build_model(cfg.cfg, nc=nc), None
    model.names = list(names)
    return model, ckpt


def rescale_to_init_norm(model: nn.Module) -> int:
    """Scale each conv weight that a BatchNorm follows to the RMS of PyTorch's default conv init
    (``1 / sqrt(3 * fan_in)``), with the BN running statistics scaled to match; returns the count.

    The network computes the same function: BN divides the scale back out, and the BN weight absorbs
    the now larger relative eps, so eval mode is exact up to rounding (training mode, on batch
    statistics, differs by 0.3% of the output range for the yolov3-tiny COCO weights). What changes is
    how fast SGD moves the weight: under BN the relative step is ``lr / |w|^2``. Darknet's COCO weights
    are 1.7-7x larger than a fresh init, so at the same ``lr0`` they move 3-50x less than in a scratch
    run; 30 BCCD epochs changed them by 1-3%, and fine-tuning amounted to training a head on a frozen
    backbone. ``train`` applies this to Darknet ``.weights`` by default (``--[no-]rescale-pretrained``
    overrides); on BCCD it lifted 30-epoch transfer from 0.591 to 0.825 mAP@0.5.
    Modules are matched by their ``conv`` and ``bn`` attributes (the ``Conv`` block of our models).
    """
    count = 0
    with torch.no_grad():
        for module in model.modules():
            conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
            if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
                continue
            rms = conv.weight.pow(2).mean().sqrt()
            if not bool(rms > 0):
                continue
            factor = 1.0 / math.sqrt(3.0 * conv.weight[0].numel()) / rms
            conv.weight.mul_(factor)
            if bn.running_mean is not None:
                var = bn.running_var.clone()
                bn.running_mean.mul_(factor)
                bn.running_var.mul_(factor * factor)
                if bn.weight is not None:  # eps weighs more now: keep the eval-mode output exact
                    bn.weight.mul_(torch.sqrt(bn.running_var + bn.eps) / (factor * torch.sqrt(var + bn.eps)))
            if conv.bias is not None:
                conv.bias.mul_(factor)
            count += 1
    return count


def freeze_layers(model: nn.Module, n: int) -> list[str]:
    """Freeze the parameters of the first ``n`` layers (``model.0`` .. ``model.{n-1}``)."""
    if n <= 0:
        return []
    n_layers = len(getattr(model, "model", ()))
    if n_layers and n >= n_layers:  # the last layer is the Detect head: nothing would be left to train
        raise ConfigError(
            f"--freeze {n} would freeze every layer of this {n_layers}-layer model; " f"use at most {n_layers - 1}"
        )
    prefixes = tuple(f"model.{i}." for i in range(n))
    frozen = []
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(False)
            frozen.append(name)
    LOGGER.info(f"froze {len(frozen)} parameter tensors in the first {n} layers")
    return frozen


def nominal_batch(cfg: TrainConfig, has_recipe: bool, log: bool = True) -> int:
    """``--nbs``, else one optimizer step per batch under a recipe (mask updates then fall between
    real optimizer steps on small datasets: docs/recipes.md), else 64 as in YOLOv3/v5."""
    from sparseyolo.engine.optim import NOMINAL_BATCH

    if cfg.nbs is not None:
        return cfg.nbs
    if not has_recipe:
        return NOMINAL_BATCH
    if log:
        LOGGER.info(
            f"recipe run: one optimizer step per batch of {cfg.batch_size} (pass --nbs {NOMINAL_BATCH} to "
            "accumulate gradients as plain training does)"
        )
    return cfg.batch_size


def load_teacher(cfg: TrainConfig, nc: int, log: bool = True) -> torch.nn.Module | None:
    """The distillation teacher: ``--teacher``, else the ``--weights`` the run started from (the dense
    model a pruning run begins with). None from scratch: the modifier then self-distills."""
    path = cfg.teacher or cfg.weights
    if not path:
        LOGGER.warning(
            "DistillationModifier without --teacher or --weights: distilling from the model's own "
            "weights at the modifier's start (self-distillation)"
        )
        return None
    from sparseyolo.models import load_model

    teacher, _ = load_model(path, cfg=cfg.cfg or None)
    if int(getattr(teacher, "nc", -1)) != int(nc):
        raise ConfigError(
            f"--teacher {path} predicts {getattr(teacher, 'nc', '?')} classes, the model {nc}; "
            "pass --teacher with a model trained on this data"
        )
    if log:
        LOGGER.info(f"distillation teacher: {path} (not saved in checkpoints or the EMA)")
    return teacher.float()


def attach_recipe(
    recipe: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    *,
    state: dict | None,
    batches_per_epoch: int,
    accumulate: int,
    device: torch.device,
    log: bool = True,
) -> Any:
    """``recipe``'s manager, attached to ``model`` and ``optimizer`` (``state``: a resumed run's recipe
    state), with the distillation teacher loaded and, when ``log``, what the schedule means on this
    data: the epochs the recipe sets, too few optimizer steps between mask updates, short recovery."""
    from sparseyolo.engine.schedule_checks import recovery_note, schedule_warnings
    from sparseyolo.recipe.modifiers.distillation import DistillationModifier

    manager = recipe.manager()
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate)
    # structured pruning traces the model once: a small input of the right channel count
    probe = torch.zeros(1, int(model.yaml.get("ch", 3)), 64, 64, device=device)
    manager.attach(model, optimizer, steps_per_epoch=steps_per_epoch, state_dict=state or None, example_inputs=probe)
    if log:
        if int(manager.max_epochs) != cfg.epochs:
            n = int(manager.max_epochs)
            LOGGER.info(f"the recipe sets the number of epochs: {n} (--epochs {cfg.epochs} ignored)")
        for line in schedule_warnings(manager, steps_per_epoch, batches_per_epoch, accumulate, cfg.batch_size):
            LOGGER.warning(line)
        note = recovery_note(manager, steps_per_epoch)
        if note:
            LOGGER.info(note)
    if any(isinstance(m, DistillationModifier) for m in manager.modifiers):
        teacher = load_teacher(cfg, model.nc, log=log)
        if teacher is not None:
            manager.set_teacher(teacher.to(device))
    return manager
