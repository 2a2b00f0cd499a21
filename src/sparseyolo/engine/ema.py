"""Exponential moving average of model weights (Polyak averaging with a warm-up ramp)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


def de_parallel(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel / DistributedDataParallel."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


class ModelEMA:
    """Keeps ``ema = d * ema + (1 - d) * model`` for parameters, with ``d = decay * (1 - exp(-updates / tau))``.

    The ramp makes early updates follow the model closely (an average over a random init is
    useless). Buffers (BatchNorm running statistics, counters, quantizer ranges) are *copied* from
    the model, not averaged: they are already running statistics, and integer buffers cannot be
    averaged at all.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.ema = copy.deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.decay_max, self.tau = decay, tau
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self, updates: int | None = None) -> float:
        x = self.updates if updates is None else updates
        return self.decay_max * (1 - math.exp(-x / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay()
        src = de_parallel(model)
        params = dict(src.named_parameters())
        for name, p in self.ema.named_parameters():
            p.mul_(d).add_(params[name].detach().to(p.dtype), alpha=1 - d)
        buffers = dict(src.named_buffers())
        for name, b in self.ema.named_buffers():
            if name in buffers:
                b.copy_(buffers[name])

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])
        self.updates = int(state["updates"])
