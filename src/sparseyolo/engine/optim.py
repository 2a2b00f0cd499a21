"""Optimiser with YOLO parameter groups, warm-up and the linear / cosine LR schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

from sparseyolo.utils.errors import ConfigError
from sparseyolo.utils.logging import LOGGER

NOMINAL_BATCH = 64
OPTIMIZERS = ("SGD", "Adam", "AdamW")


def param_groups(model: nn.Module) -> tuple[list, list, list]:
    """(norm weights, conv/linear weights, biases): only the conv/linear weights get weight decay."""
    norm, weights, biases, seen = [], [], [], set()
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)

    def add(group: list, p: nn.Parameter | None) -> None:
        if isinstance(p, nn.Parameter) and id(p) not in seen:
            seen.add(id(p))
            group.append(p)

    for module in model.modules():
        add(biases, getattr(module, "bias", None))
        if isinstance(module, norm_types):
            add(norm, getattr(module, "weight", None))
        else:
            add(weights, getattr(module, "weight", None))
    for p in model.parameters():  # anything else (custom modules): treat as a weight
        add(weights, p)
    return norm, weights, biases


def build_optimizer(
    model: nn.Module, name: str = "SGD", lr: float = 0.01, momentum: float = 0.937, weight_decay: float = 5e-4
) -> torch.optim.Optimizer:
    """Three param groups named ``norm`` / ``weight`` / ``bias`` (the warm-up treats biases apart)."""
    norm, weights, biases = param_groups(model)
    if name == "SGD":
        opt: torch.optim.Optimizer = torch.optim.SGD(norm, lr=lr, momentum=momentum, nesterov=True)
    elif name == "Adam":
        opt = torch.optim.Adam(norm, lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        opt = torch.optim.AdamW(norm, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise ConfigError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    opt.param_groups[0]["name"] = "norm"
    opt.add_param_group({"params": weights, "weight_decay": weight_decay, "name": "weight"})
    opt.add_param_group({"params": biases, "weight_decay": 0.0, "name": "bias"})
    LOGGER.info(
        f"optimizer: {name}(lr={lr}) with parameter groups {len(norm)} norm weights (no decay), "
        f"{len(weights)} weights (decay {weight_decay:.3g}), {len(biases)} biases (no decay)"
    )
    return opt


def scaled_weight_decay(weight_decay: float, batch_size: int, accumulate: int, nominal: int = NOMINAL_BATCH) -> float:
    """Weight decay tuned for the nominal batch, scaled to the batch actually accumulated."""
    return weight_decay * batch_size * accumulate / nominal


def accumulate_steps(batch_size: int, nominal: int = NOMINAL_BATCH) -> int:
    """Optimizer steps every this many batches so that the effective batch is about ``nominal``."""
    return max(round(nominal / batch_size), 1)


def lr_lambda(epochs: int, lrf: float, cos: bool = False) -> Callable[[float], float]:
    """Multiplier of lr0 at a given epoch: linear or cosine from 1 to ``lrf`` over ``epochs``."""
    if cos:
        return lambda x: ((1 - math.cos(x * math.pi / max(epochs, 1))) / 2) * (lrf - 1) + 1
    return lambda x: (1 - x / max(epochs, 1)) * (1.0 - lrf) + lrf


def warmup_iterations(warmup_epochs: float, batches_per_epoch: int) -> int:
    """Warm-up length in iterations: ``warmup_epochs`` epochs but at least 100 iterations.

    With ``warmup_epochs == 0`` there is no warm-up.
    """
    if warmup_epochs <= 0:
        return 0
    return max(round(warmup_epochs * batches_per_epoch), 100)


def apply_lr(
    optimizer: torch.optim.Optimizer,
    hyp: dict[str, float],
    ni: int,
    nw: int,
    epoch: int,
    lf: Callable[[float], float],
    set_lr: bool = True,
    use_momentum: bool = True,
) -> None:
    """Set lr (and momentum during warm-up) of every group for global iteration ``ni``.

    During warm-up the bias lr falls from ``warmup_bias_lr`` while other lrs rise from 0, all
    towards ``lr0 * lf(epoch)``; momentum rises from ``warmup_momentum`` to ``momentum``.
    ``set_lr=False`` leaves the lr alone (a recipe LR modifier owns it) but still warms momentum.
    """
    target = hyp["lr0"] * lf(epoch)
    warm = ni < nw
    for g in optimizer.param_groups:
        if set_lr:
            if warm:
                start = hyp["warmup_bias_lr"] if g.get("name") == "bias" else 0.0
                g["lr"] = float(np.interp(ni, [0, nw], [start, target]))
            else:
                g["lr"] = target
        if use_momentum:
            m = float(np.interp(ni, [0, nw], [hyp["warmup_momentum"], hyp["momentum"]])) if warm else hyp["momentum"]
            if "momentum" in g:
                g["momentum"] = m
            elif "betas" in g:
                g["betas"] = (m, g["betas"][1])
