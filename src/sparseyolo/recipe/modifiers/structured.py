"""SparseML's structured-pruning modifiers, and network slimming.

* ``StructuredPruningModifier``: gradual magnitude pruning of whole filters (or input channels),
  with SparseML's keys and defaults (``mask_type: filter``, ``inter_func: cubic``,
  ``params: __ALL_PRUNABLE__``) plus ``param_groups`` (lists of params whose channels are chosen
  together). Groups tied by the model's graph (residual adds) are always chosen together.
* ``LayerThinningModifier``: cuts the removed channels out at ``start_epoch`` (and at each of
  ``update_epochs``). SparseML needed ``param_group_dependency_map`` to know what to thin; here the
  dependencies come from the traced graph; the map, when given, must name parameters of the model and is
  otherwise unused (the graph decides what goes together);
  ``strict`` (default true) requires a filter / channel pruning schedule to end by its epochs.
* ``BatchNormL1Modifier`` (ours): network slimming's L1 penalty on BatchNorm scales over an epoch
  range, which drives unimportant channels' gammas towards zero before ``importance: bn_gamma``
  ranks them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sparseyolo.recipe.modifiers.base import EPS, REQUIRED, Modifier, register
from sparseyolo.recipe.modifiers.pruning import MagnitudePruningModifier
from sparseyolo.sparsity import resolve_params

if TYPE_CHECKING:
    from sparseyolo.recipe.manager import RecipeManager

ALL_NORM_TOKEN = "__ALL_BATCHNORM__"


@register
class StructuredPruningModifier(MagnitudePruningModifier):
    """SparseML's filter / channel pruning modifier (a magnitude pruner with structured masks)."""

    tag = "StructuredPruningModifier"
    FIELDS = {
        **MagnitudePruningModifier.FIELDS,
        "params": "__ALL_PRUNABLE__",
        "inter_func": "cubic",
        "mask_type": "filter",
        "param_groups": None,
    }

    def validate(self) -> None:
        if str(self.mask_type).strip().lower() not in ("filter", "channel"):
            raise self.error(f"mask_type must be 'filter' or 'channel', got {self.mask_type!r}")
        groups = self.param_groups
        if groups is not None and not (
            isinstance(groups, list) and all(isinstance(g, list) and all(isinstance(n, str) for n in g) for g in groups)
        ):
            raise self.error(f"param_groups must be a list of lists of parameter names, got {groups!r}")
        super().validate()
        if groups and self.global_sparsity:
            raise self.error("param_groups cannot be combined with global ranking")

    def on_attach(self, manager: RecipeManager) -> None:
        super().on_attach(manager)
        if self.pruner is None or not self.param_groups:
            return
        for names in self.param_groups:
            for n in names:
                if n not in self.final_by_param:
                    raise self.error(f"param_groups: {n} is not among this modifier's params")
            self.pruner.couple(names)


@register
class LayerThinningModifier(Modifier):
    """Cuts pruned channels out of the model at ``start_epoch`` and each of ``update_epochs``."""

    tag = "LayerThinningModifier"
    ORDER = 35  # after the pruning modifiers that end at the same epoch
    FIELDS = {
        "start_epoch": REQUIRED,
        "end_epoch": -1.0,
        "update_epochs": None,
        "param_group_dependency_map": None,
        "structure_type": "filter",
        "strict": True,
    }

    def validate(self) -> None:
        super().validate()
        if self.start_epoch < 0:
            raise self.error("start_epoch must be >= 0")
        if self.structure_type not in ("filter", "channel"):
            raise self.error(f"structure_type must be 'filter' or 'channel', got {self.structure_type!r}")
        if not isinstance(self.strict, bool):
            raise self.error(f"strict must be true or false, got {self.strict!r}")
        epochs = self.update_epochs or []
        if not isinstance(epochs, list):
            raise self.error(f"update_epochs must be a list of epochs, got {epochs!r}")
        self.epochs = sorted({self.start_epoch, *(self._number("update_epochs", e) for e in epochs)})
        dep = self.param_group_dependency_map
        if dep is not None and not (isinstance(dep, dict) and all(isinstance(v, list) for v in dep.values())):
            raise self.error("param_group_dependency_map must map 'param,param' strings to lists of params")
        self.done: list[float] = []

    def shift(self, offset: float) -> None:
        super().shift(offset)
        self.epochs = [e + offset for e in self.epochs]

    @property
    def last_epoch(self) -> float:
        return max(self.epochs + [self.end_epoch, 0.0])

    def on_attach(self, manager: RecipeManager) -> None:
        for key, deps in (self.param_group_dependency_map or {}).items():
            names = [n.strip() for n in str(key).split(",")] + list(deps)
            resolve_params(manager.model, names, self.where_key("param_group_dependency_map"))
        structured = [m for m in manager.pruning_modifiers if getattr(m, "structure", None)]
        if self.strict and not any(m.end_epoch <= max(self.epochs) + EPS for m in structured):
            raise self.error(
                "no filter or channel pruning ends by its epochs, so there is nothing to thin "
                "(strict: false allows this)"
            )

    def on_start(self, manager: RecipeManager, epoch: float) -> None:
        self._thin_due(manager, epoch)

    def on_update(self, manager: RecipeManager, epoch: float) -> None:
        self._thin_due(manager, epoch)

    def ends_by(self, epoch: float) -> bool:
        return epoch + EPS >= self.last_epoch and len(self.done) == len(self.epochs)

    def _thin_due(self, manager: RecipeManager, epoch: float) -> None:
        due = [e for e in self.epochs if e not in self.done and epoch + EPS >= e]
        if due:
            self.done.extend(due)
            manager.thin()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "done": list(self.done)}

    def load_state_dict(self, state: dict[str, Any], manager: RecipeManager) -> None:
        super().load_state_dict(state, manager)
        self.done = [float(e) for e in state.get("done", [])]


@register
class BatchNormL1Modifier(Modifier):
    """Network slimming: adds ``penalty * sign(gamma)`` to each BatchNorm scale's gradient."""

    tag = "BatchNormL1Modifier"
    ORDER = 25
    FIELDS = {"penalty": REQUIRED, "start_epoch": REQUIRED, "end_epoch": REQUIRED, "params": ALL_NORM_TOKEN}

    def validate(self) -> None:
        super().validate()
        self.penalty = self._number("penalty", self.penalty)
        if not 0 < self.penalty < 1:
            raise self.error(f"penalty must be in (0, 1), got {self.penalty}")
        if self.start_epoch < 0 or self.end_epoch < self.start_epoch:
            raise self.error("start_epoch must be >= 0 and end_epoch >= start_epoch")
        self._handles: list[Any] = []
        self.names: list[str] = []

    def on_attach(self, manager: RecipeManager) -> None:
        specs = self.params if isinstance(self.params, list) else [self.params]
        if [str(s).upper() for s in specs] == [ALL_NORM_TOKEN]:
            self.names = [
                f"{n}.weight"
                for n, m in manager.model.named_modules()
                if isinstance(m, nn.modules.batchnorm._NormBase) and m.weight is not None
            ]
            if not self.names:
                raise self.error("the model has no BatchNorm layer with a scale")
        else:
            self.names = [n for n, _ in resolve_params(manager.model, specs, self.where_key("params"))]

    def _hook(self) -> Any:
        penalty = self.penalty

        def hook(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
            return grad + penalty * torch.sign(param.detach())

        return hook

    def _register(self, manager: RecipeManager) -> None:
        self._remove()
        named = dict(manager.model.named_parameters())
        hook = self._hook()
        for n in self.names:
            p = named[n]
            self._handles.append(p.register_hook(lambda g, p=p: hook(g, p)))

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def on_start(self, manager: RecipeManager, epoch: float) -> None:
        self._register(manager)

    def on_end(self, manager: RecipeManager, epoch: float) -> None:
        self._remove()

    def on_thinned(self, manager: RecipeManager, plan: Any) -> None:
        if self._handles:
            self._register(manager)

    def load_state_dict(self, state: dict[str, Any], manager: RecipeManager) -> None:
        super().load_state_dict(state, manager)
        if self.started and not self.ended:
            self._register(manager)
