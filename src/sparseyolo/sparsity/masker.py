"""Keeping pruned weights at zero during training.

A :class:`ParamMasker` owns a boolean keep-mask for each of its parameters and enforces it:

* a gradient hook zeroes the gradient at pruned positions, so the optimizer sees no gradient there;
* when a mask changes, the weights and the optimizer state (momentum, Adam moments) at newly
  pruned positions are zeroed, so a buffer filled before pruning does not keep pushing on a pruned
  weight. With zero gradient, zero state and a zero weight, SGD (momentum, Nesterov, weight decay),
  Adam and AdamW (decoupled decay multiplies 0) all leave the weight at exactly 0;
* :meth:`apply` zeroes the weights again; the recipe manager calls it at epoch boundaries (and on
  request every step) as a safety net for code that writes to the weights directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from sparseyolo.sparsity.thinning import ThinningPlan


class ParamMasker:
    """Boolean keep-masks for named parameters, applied to weights and gradients."""

    def __init__(self, params: Iterable[tuple[str, nn.Parameter]]):
        self.params: dict[str, nn.Parameter] = dict(params)
        self.masks: dict[str, torch.Tensor] = {
            name: torch.ones_like(p, dtype=torch.bool) for name, p in self.params.items()
        }
        # inverted masks, cached: the gradient hooks and apply_to (EMA) run on every step
        self._pruned: dict[str, torch.Tensor] = {name: ~m for name, m in self.masks.items()}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        # bumped by every set_masks: lets a caller skip re-masking a copy whose zeros are still valid
        self.version = 0

    @property
    def enabled(self) -> bool:
        return bool(self._handles)

    def enable(self) -> None:
        """Register the gradient hooks (idempotent)."""
        if self._handles:
            return
        for name, p in self.params.items():
            self._handles.append(p.register_hook(self._grad_hook(name)))

    def _grad_hook(self, name: str):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad.masked_fill(self._pruned[name].to(grad.device), 0.0)

        return hook

    def disable(self) -> None:
        """Remove the gradient hooks; weights are no longer held at zero."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def thin(self, model: nn.Module, plan: ThinningPlan) -> None:
        """Follow a thinned ``model``: re-bind the parameters by name and slice the masks by ``plan``."""
        enabled = self.enabled
        self.disable()  # the hooks sit on the old parameter objects
        named = dict(model.named_parameters())
        self.params = {name: named[name] for name in self.params}
        self.masks = {name: plan.slice(name, m) for name, m in self.masks.items()}
        self._pruned = {name: ~m for name, m in self.masks.items()}
        self.version += 1
        if enabled:
            self.enable()

    def set_masks(self, masks: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Install new masks, zero the weights and the optimizer state at pruned positions."""
        for name, mask in masks.items():
            p = self.params[name]
            if mask.shape != p.shape:
                raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, parameter {tuple(p.shape)}")
            self.masks[name] = mask.to(device=p.device, dtype=torch.bool)
            self._pruned[name] = ~self.masks[name]
        self.version += 1
        self.apply()
        if optimizer is not None:
            self.mask_optimizer_state(optimizer)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned weights in place."""
        for name, p in self.params.items():
            p.masked_fill_(self._pruned[name], 0.0)  # masked_fill, not mul: NaN * 0 is NaN

    @torch.no_grad()
    def mask_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        for name, p in self.params.items():
            state = optimizer.state.get(p, {})
            for value in state.values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    value.masked_fill_(self._pruned[name], 0)

    @torch.no_grad()
    def apply_to(self, module: nn.Module) -> int:
        """Zero the same positions in another module holding parameters of the same names (EMA)."""
        named = dict(module.named_parameters())
        done = 0
        for name, pruned in self._pruned.items():
            target = named.get(name)
            if target is not None and target.shape == pruned.shape:
                # the cached inverted mask: this runs after every step on the EMA copy
                target.masked_fill_(pruned.to(target.device), 0.0)
                done += 1
        return done

    def sparsity(self, name: str) -> float:
        mask = self.masks[name]
        return 1.0 - float(mask.sum()) / max(mask.numel(), 1)
