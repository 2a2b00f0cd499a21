"""Pruning modifiers: gradual magnitude pruning (per layer or global) and constant masks.

Semantics follow SparseML's ``GMPruningModifier`` / ``MagnitudePruningModifier`` /
``GlobalMagnitudePruningModifier`` / ``ConstantPruningModifier``:

* the target sparsity follows :func:`sparseyolo.sparsity.interpolate` from ``init_sparsity`` at
  ``start_epoch`` to ``final_sparsity`` at ``end_epoch``;
* masks are recomputed when ``start_epoch`` is reached, then at the first step whose epoch is
  ``>= last update's epoch + update_frequency`` (SparseML's rule: the grid follows the steps the
  updates actually ran at, see :mod:`sparseyolo.sparsity.schedule`), and at the step that reaches
  ``end_epoch`` (to ``final_sparsity``);
* scores are ``|w|`` (block mean for blocks), masks are monotone and hit the target count exactly;
* ``leave_enabled: False`` stops holding the zeros after ``end_epoch``.

``GMPruningModifier`` is the name SparseML's published recipes use; it is the same modifier as
``MagnitudePruningModifier`` (one class, two tags).

``mask_type: filter`` (whole output channels) or ``channel`` (whole input channels) makes any of
them a structured pruner (:mod:`sparseyolo.sparsity.channel_pruner`): ``final_sparsity`` is then
the fraction of channels removed, with our keys ``round_to``, ``importance`` (``l1``, ``l2``,
``bn_gamma``) and ``global``. When the schedule ends, the removed channels are cut out of the
model (``RecipeManager.thin``), unless a ``LayerThinningModifier`` does it later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from sparseyolo.recipe.modifiers.base import REQUIRED, Modifier, register
from sparseyolo.sparsity import (
    ParamMasker,
    interpolate,
    magnitude_masks,
    parse_mask_type,
    resolve_params,
    tensor_sparsity,
)
from sparseyolo.sparsity.channel_pruner import IMPORTANCES, STRUCTURES, ChannelPruner
from sparseyolo.sparsity.masks import MaskType, check_shape
from sparseyolo.sparsity.params import ALL_PRUNABLE_TOKEN, ALL_TOKEN
from sparseyolo.sparsity.schedule import check_inter_func, update_due
from sparseyolo.utils.errors import ConfigError

if TYPE_CHECKING:
    from sparseyolo.recipe.manager import RecipeManager

FROM_PARAM_TOKEN = "__FROM_PARAM__"


def _sparsity_value(mod: Modifier, key: str, value: Any) -> float:
    v = mod._number(key, value)
    if not 0.0 <= v < 1.0:
        raise mod.error(f"{key} must be in [0, 1), got {v}")
    return v


class PruningBase(Modifier):
    """Shared by all pruning modifiers: parameter resolution, the masker, state."""

    ORDER = 30
    is_pruning = True

    def __init__(self, *args: Any, **kwargs: Any):
        self.masker: ParamMasker | None = None
        super().__init__(*args, **kwargs)

    def _param_specs(self) -> list[str]:
        params = self.params
        if isinstance(params, str):
            return [params]
        if not isinstance(params, list):
            raise self.error(f"params must be a list of names, 're:' patterns or __ALL_PRUNABLE__, got {params!r}")
        return params

    def masks_active(self) -> bool:
        return self.masker is not None and self.masker.enabled

    def on_thinned(self, manager: RecipeManager, plan: Any) -> None:
        if getattr(self, "pruner", None) is not None and not self.started:
            self._build_pruner(manager)  # a later structured schedule: its groups are the thinned model's
        elif self.masker is not None:
            self.masker.thin(manager.model, plan)

    def apply_masks(self) -> None:
        if self.masks_active():
            self.masker.apply()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.masker is not None:
            state["masks"] = {n: m.detach().cpu().clone() for n, m in self.masker.masks.items()}
            state["enabled"] = self.masker.enabled
        return state

    def load_state_dict(self, state: dict[str, Any], manager: RecipeManager) -> None:
        super().load_state_dict(state, manager)
        if "masks" in state and self.masker is not None:
            missing = set(self.masker.params) ^ set(state["masks"])
            if missing:
                raise self.error(f"recipe state masks do not match the parameters: {sorted(missing)[:5]}")
            self.masker.set_masks(state["masks"])
            if state.get("enabled"):
                self.masker.enable()
            else:
                self.masker.disable()

    def report(self) -> list[dict[str, Any]]:
        if self.masker is None:
            return []
        rows = []
        for name, p in self.masker.params.items():
            rows.append(
                {
                    "name": name,
                    "shape": list(p.shape),
                    "numel": p.numel(),
                    "sparsity": tensor_sparsity(p.detach()),
                    "mask_sparsity": self.masker.sparsity(name),
                    "target": self.current_target(name),
                    "modifier": self.tag,
                }
            )
        return rows

    def current_target(self, name: str) -> float | None:
        return None


@register
class MagnitudePruningModifier(PruningBase):
    """Gradual magnitude pruning of each parameter to its own target."""

    tag = "MagnitudePruningModifier"
    FIELDS = {
        "init_sparsity": REQUIRED,
        "final_sparsity": REQUIRED,
        "start_epoch": REQUIRED,
        "end_epoch": REQUIRED,
        "update_frequency": REQUIRED,
        "params": None,
        "inter_func": "cubic",  # SparseML's default
        "leave_enabled": True,
        "mask_type": "unstructured",
        # legacy GMPruningModifier keys: one global threshold; the only score SparseML had here
        "global_sparsity": False,
        "score_type": "magnitude",
        # ours, for mask_type filter / channel: kept counts in multiples of round_to, the channel
        # score, and one ranking across layers (`global`, like GlobalMagnitudePruningModifier)
        "round_to": 1,
        "importance": "l1",
        "global": None,
    }
    STRUCTURED_KEYS = ("round_to", "importance")

    def validate(self) -> None:
        super().validate()
        if self.start_epoch < 0 or self.end_epoch < self.start_epoch:
            raise self.error("start_epoch must be >= 0 and end_epoch >= start_epoch")
        self.update_frequency = self._number("update_frequency", self.update_frequency)
        if self.update_frequency <= 0:
            raise self.error("update_frequency must be > 0")
        check_inter_func(self.inter_func, self.where)
        if not isinstance(self.global_sparsity, bool):
            raise self.error(f"global_sparsity must be true or false, got {self.global_sparsity!r}")
        if self.score_type != "magnitude":
            raise self.error(f"score_type {self.score_type!r} is not supported (only 'magnitude')")
        if not isinstance(self.leave_enabled, bool):
            raise self.error(f"leave_enabled must be true or false, got {self.leave_enabled!r}")
        glob = getattr(self, "global")
        if glob is not None:
            if not isinstance(glob, bool):
                raise self.error(f"global must be true or false, got {glob!r}")
            self.global_sparsity = self.global_sparsity or glob
        self.pruner: ChannelPruner | None = None
        self.thinned = False
        kind = self.mask_type.strip().lower() if isinstance(self.mask_type, str) else None
        self.structure = kind if kind in STRUCTURES else None
        if self.structure:
            self.mask = MaskType("unstructured")
            self._validate_structured()
        else:
            self.mask = parse_mask_type(self.mask_type, self.where)
            given = [k for k in self.STRUCTURED_KEYS if k in self.given]
            if given:
                raise ConfigError(
                    f"{self.where_key(given[0])}: !{self.tag}: {given[0]} applies to mask_type "
                    f"filter or channel, not {self.mask.to_recipe()!r}"
                )
        if self.init_sparsity != FROM_PARAM_TOKEN:
            self.init_sparsity = _sparsity_value(self, "init_sparsity", self.init_sparsity)
        # final_sparsity: a number, or {sparsity: [params]}
        self.targets: list[tuple[float, list[str]]] = []
        if isinstance(self.final_sparsity, dict):
            if self.global_sparsity:
                raise self.error("final_sparsity must be a single number for global pruning")
            if self.params:
                raise self.error("with a final_sparsity mapping {sparsity: [params]}, leave params empty")
            for key, names in self.final_sparsity.items():
                names = [names] if isinstance(names, str) else names
                if not isinstance(names, list):
                    raise self.error(f"final_sparsity {key}: expected a list of params, got {names!r}")
                self.targets.append((_sparsity_value(self, "final_sparsity", key), names))
        else:
            final = _sparsity_value(self, "final_sparsity", self.final_sparsity)
            if not self.params:
                raise self.error("params is required (names, 're:' patterns or __ALL_PRUNABLE__)")
            self.targets.append((final, self._param_specs()))
        for final, _ in self.targets:
            if final > self.mask.max_sparsity + 1e-12:
                raise self.error(
                    f"final_sparsity {final} is above what mask_type {self.mask.to_recipe()!r} allows "
                    f"({self.mask.max_sparsity})"
                )
        self.final_by_param: dict[str, float] = {}
        self.init_by_param: dict[str, float] = {}
        self.last_update: float | None = None  # epoch of the step the masks were last recomputed at

    def _validate_structured(self) -> None:
        rt = self.round_to
        if isinstance(rt, bool) or not isinstance(rt, int) or rt < 1:
            raise ConfigError(
                f"{self.where_key('round_to')}: !{self.tag}: round_to must be a positive integer, " f"got {rt!r}"
            )
        if self.importance not in IMPORTANCES:
            raise ConfigError(
                f"{self.where_key('importance')}: !{self.tag}: importance must be one of "
                f"{', '.join(IMPORTANCES)}, got {self.importance!r}"
            )
        if self.init_sparsity == FROM_PARAM_TOKEN:
            raise self.error(
                f"init_sparsity {FROM_PARAM_TOKEN} is for unstructured masks, not mask_type " f"{self.structure}"
            )
        if not self.leave_enabled:
            raise self.error(
                f"leave_enabled: false would let removed {self.structure}s grow back before "
                "they are cut out; structured masks stay until thinning"
            )

    # --- lifecycle -------------------------------------------------------------------------------
    def on_attach(self, manager: RecipeManager) -> None:
        named: list[tuple[str, torch.nn.Parameter]] = []
        explicit: set[str] = set()
        key = "params" if "params" in self.given else "final_sparsity"
        for final, specs in self.targets:
            explicit.update(
                s for s in specs if not s.startswith("re:") and s.upper() not in (ALL_PRUNABLE_TOKEN, ALL_TOKEN)
            )
            for name, p in resolve_params(manager.model, specs, self.where_key(key)):
                if name in self.final_by_param:
                    continue
                if not self.structure:
                    check_shape(p.shape, self.mask, name, self.where_key("mask_type"))
                self.final_by_param[name] = final
                named.append((name, p))
        if not self.structure:
            self.masker = ParamMasker(named)
        elif not self.thinned:  # a resumed run past thinning has nothing left to mask
            self._pruner_args = ([n for n, _ in named], self.where_key(key), explicit)
            self._build_pruner(manager)

    def _build_pruner(self, manager: RecipeManager) -> None:
        names, where, explicit = self._pruner_args
        self.pruner = ChannelPruner(
            manager.model,
            manager.channel_graph(),
            names,
            self.structure,
            self.importance,
            self.round_to,
            where,
            explicit,
        )
        self.pruner.check_final(self.final_by_param)
        self.masker = ParamMasker(self.pruner.mask_params())

    def on_start(self, manager: RecipeManager, epoch: float) -> None:
        assert self.masker is not None
        for name, p in self.masker.params.items():
            if self.init_sparsity == FROM_PARAM_TOKEN:
                # keep the zeros the parameter already has and start the schedule from there
                self.init_by_param[name] = tensor_sparsity(p.detach())
                self.masker.set_masks({name: p.detach() != 0})
            else:
                self.init_by_param[name] = float(self.init_sparsity)
        self.masker.enable()
        self._update_masks(manager, epoch)

    def on_update(self, manager: RecipeManager, epoch: float) -> None:
        # SparseML's ScheduledUpdateModifier.update_ready: due at the first step whose epoch is
        # >= the last update's epoch + update_frequency (exact floats, as SparseML compares them)
        if update_due(epoch, self.start_epoch, self.last_update, self.update_frequency):
            self._update_masks(manager, epoch)

    def on_end(self, manager: RecipeManager, epoch: float) -> None:
        self._update_masks(manager, epoch)  # epoch >= end_epoch: the target is final_sparsity
        if not self.leave_enabled and self.masker is not None:
            self.masker.disable()
        if self.pruner is not None and not manager.thinning_scheduled_after(self.end_epoch):
            manager.thin()

    def mark_thinned(self) -> None:
        """The removed channels were cut out: nothing is left to mask."""
        if self.masker is not None:
            self.masker.disable()
        self.masker, self.pruner, self.thinned = None, None, True

    def target_at(self, name: str, epoch: float) -> float:
        init = self.init_by_param.get(name, 0.0 if self.init_sparsity == FROM_PARAM_TOKEN else self.init_sparsity)
        return interpolate(epoch, self.start_epoch, self.end_epoch, init, self.final_by_param[name], self.inter_func)

    def current_target(self, name: str) -> float | None:
        if self.last_update is None or name not in self.final_by_param:
            return None
        return self.target_at(name, self.last_update)

    def _update_masks(self, manager: RecipeManager, epoch: float) -> None:
        if self.thinned:
            return
        assert self.masker is not None
        if self.pruner is not None:
            targets = {n: self.target_at(n, epoch) for n in self.final_by_param}
            glob = targets[next(iter(targets))] if self.global_sparsity and targets else None
            self.pruner.update(targets, glob)
            self.masker.set_masks(self.pruner.param_masks(), manager.optimizer)
            self.last_update = epoch
            return
        names = list(self.masker.params)
        weights = [self.masker.params[n] for n in names]
        old = [self.masker.masks[n] for n in names]
        targets = [self.target_at(n, epoch) for n in names]
        new = magnitude_masks(
            weights, old, targets if not self.global_sparsity else targets[0], self.mask, self.global_sparsity
        )
        self.masker.set_masks(dict(zip(names, new, strict=False)), manager.optimizer)
        self.last_update = epoch

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(last_update=self.last_update, init_by_param=dict(self.init_by_param))
        if self.structure:
            state["thinned"] = self.thinned
            if self.pruner is not None:
                state["channel_keep"] = {int(g): k.clone() for g, k in self.pruner.keep.items()}
        return state

    def preload_state(self, state: dict[str, Any]) -> None:
        """Flags needed before :meth:`on_attach` when resuming (a thinned model has no channel masks)."""
        self.thinned = bool(state.get("thinned", False))

    def load_state_dict(self, state: dict[str, Any], manager: RecipeManager) -> None:
        super().load_state_dict(state, manager)
        self.last_update = state.get("last_update")  # states from before the SparseML grid also had next_update
        self.init_by_param = dict(state.get("init_by_param", {}))
        if self.pruner is not None and "channel_keep" in state:
            for g, keep in state["channel_keep"].items():
                if int(g) in self.pruner.keep and keep.shape == self.pruner.keep[int(g)].shape:
                    self.pruner.keep[int(g)] = keep.to(torch.bool)


@register
class GMPruningModifier(MagnitudePruningModifier):
    """SparseML's name for gradual magnitude pruning (same behaviour as MagnitudePruningModifier)."""

    tag = "GMPruningModifier"


@register
class GlobalMagnitudePruningModifier(MagnitudePruningModifier):
    """Gradual magnitude pruning with one threshold across all its parameters."""

    tag = "GlobalMagnitudePruningModifier"
    FIELDS = {k: v for k, v in MagnitudePruningModifier.FIELDS.items() if k != "global_sparsity"}

    def validate(self) -> None:
        self.global_sparsity = True
        super().validate()


@register
class ConstantPruningModifier(PruningBase):
    """Holds the zeros the parameters have when it starts (e.g. fine-tuning a pruned model)."""

    tag = "ConstantPruningModifier"
    FIELDS = {"params": REQUIRED, "start_epoch": -1.0, "end_epoch": -1.0, "update_frequency": -1.0}

    def validate(self) -> None:
        super().validate()
        self._param_specs()

    def on_attach(self, manager: RecipeManager) -> None:
        self.masker = ParamMasker(resolve_params(manager.model, self._param_specs(), self.where_key("params")))

    def on_start(self, manager: RecipeManager, epoch: float) -> None:
        assert self.masker is not None
        masks = {n: p.detach() != 0 for n, p in self.masker.params.items()}
        self.masker.set_masks(masks, manager.optimizer)
        self.masker.enable()

    def on_end(self, manager: RecipeManager, epoch: float) -> None:
        if self.masker is not None:
            self.masker.disable()

    def current_target(self, name: str) -> float | None:
        return None if self.masker is None else self.masker.sparsity(name)
