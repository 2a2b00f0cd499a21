"""The :class:`RecipeManager`: drives a recipe's modifiers through a training run.

It is a stateful training hook (see docs/architecture.md)::

    manager = recipe.manager()
    manager.attach(model, optimizer, steps_per_epoch=len(loader))
    for epoch in range(manager.max_epochs):
        for batch in loader:
            loss.backward(); optimizer.step(); optimizer.zero_grad()
            manager.step()     # advance the schedule, reapply masks, set lr / weight decay
    manager.finalize()

The position is an integer step counter; the fractional epoch is computed from it exactly as
SparseML 1.8 computes it (:func:`~sparseyolo.sparsity.schedule.step_epoch`), so schedules are exact,
every start, end, mask update and learning-rate change happens at the same optimizer step as in
SparseML (tests/test_sparseml_parity.py), and a resumed run (``attach`` then ``load_state_dict``)
continues identically.

Timing, as in SparseML's optimizer wrapper: ``attach`` runs the update for step 0 (epoch 0), and
``step()`` after optimizer step ``s`` runs the update for step ``s + 1``; so the learning rate, weight
decay and masks that optimizer step ``s`` runs with are the ones SparseML's ``manager.update`` sets
just before its step ``s``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sparseyolo.recipe.manager_thinning import ThinningMixin
from sparseyolo.recipe.modifiers import LRModifier, Modifier, PruningBase
from sparseyolo.recipe.modifiers.distillation import DistillationModifier, frozen_teacher
from sparseyolo.sparsity import prunable_param_names, tensor_sparsity
from sparseyolo.sparsity.channel_graph import ChannelGraph
from sparseyolo.sparsity.schedule import step_epoch
from sparseyolo.utils.errors import ConfigError, SparseYoloError
from sparseyolo.utils.events import EventBus
from sparseyolo.utils.logging import LOGGER

if TYPE_CHECKING:
    from sparseyolo.recipe.recipe import Recipe

STATE_VERSION = 1

# phase changes the manager announces to subscribers (see RecipeManager.subscribe)
EVENTS = ("pruning_start", "pruning_end", "thinned", "qat_start")


class RecipeManager(ThinningMixin):
    """Sorts modifiers and calls their lifecycle hooks as training advances.

    Pruned weights stay exactly zero: the maskers' gradient hooks zero their gradients, a mask change
    zeroes the weights and the optimizer state there, and :meth:`step` re-applies the masks after
    every optimizer step (one cached in-place multiply per pruned tensor), so nothing that writes to
    the weights (momentum, weight decay, an optimizer with a non-zero update at zero gradient, user
    code) can revive them. ``reapply_masks_every_step = False`` re-applies only at epoch boundaries,
    for optimizers known to leave zero-gradient, zero-state weights alone (bench/recipe_overhead.py
    measures both).
    """

    reapply_masks_every_step: bool = True

    def __init__(self, modifiers: Sequence[Modifier], recipe: Recipe | None = None):
        # stable sort: by start epoch, then kind (epoch range, lr, wd, pruning, QAT), then recipe order
        self.modifiers: list[Modifier] = sorted(modifiers, key=lambda m: (max(m.start_epoch, -1.0), m.ORDER))
        self._tick_order = _tick_order(self.modifiers)
        self.recipe = recipe
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps_per_epoch = 0
        self.global_step = 0
        self.applied_lr: list[float | None] = []
        self.applied_wd: list[float | None] = []
        self.qat_state: dict[str, Any] | None = None
        self.finalized = False
        self.example_inputs: Any = None
        self._graph: ChannelGraph | None = None
        self._events = EventBus(EVENTS, owner="recipe event")
        self._phase_flags = (False, False, False)  # pruning active, pruning done, QAT active
        self.teacher: nn.Module | None = None  # distillation teacher: never part of the model or its state

    # --- events ---------------------------------------------------------------------------------------
    def subscribe(self, event: str, callback: Callable[..., None]) -> None:
        """Call ``callback(**info)`` when ``event`` happens: ``pruning_start``, ``pruning_end``,
        ``qat_start`` (no info) or ``thinned`` (``plan``: the :class:`ThinningPlan` that was applied
        to the model and optimizer; apply it to any copy of the model, such as an EMA)."""
        self._events.subscribe(event, callback)

    def emit(self, event: str, **info: Any) -> None:
        self._events.emit(event, **info)

    def _announce_phases(self) -> None:
        flags = (self.pruning_active, self.pruning_done, self.qat_active)
        for event, before, now in zip(
            ("pruning_start", "pruning_end", "qat_start"), self._phase_flags, flags, strict=False
        ):
            if now and not before:
                self.emit(event)
        self._phase_flags = flags

    # --- properties of the contract ---------------------------------------------------------------
    @property
    def max_epochs(self) -> int:
        """Number of whole epochs the recipe needs (largest epoch any modifier names, rounded up)."""
        return int(math.ceil(max((m.last_epoch for m in self.modifiers), default=0.0) - 1e-9))

    @property
    def epoch(self) -> float:
        return step_epoch(self.global_step, self.steps_per_epoch) if self.steps_per_epoch else 0.0

    # --- distillation -------------------------------------------------------------------------------
    def set_teacher(self, teacher: nn.Module) -> None:
        """The model a ``DistillationModifier`` distills from (frozen, eval mode). Without one the
        modifier freezes a copy of the student at its start (self-distillation)."""
        self.teacher = frozen_teacher(teacher)

    @property
    def distillation(self) -> DistillationModifier | None:
        """The distillation modifier in effect now, if any."""
        return next((m for m in self.modifiers if isinstance(m, DistillationModifier) and m.active), None)

    def loss_update(self, loss: torch.Tensor, student_outputs: Any, teacher_outputs: Any) -> torch.Tensor:
        """``loss`` mixed with the distillation loss while a ``DistillationModifier`` is active (call
        before ``backward``, with the teacher's outputs for the same inputs); ``loss`` otherwise."""
        modifier = self.distillation
        if modifier is None:
            return loss
        return modifier.total_loss(loss, modifier.distillation_loss(student_outputs, teacher_outputs))

    @property
    def pruning_modifiers(self) -> list[PruningBase]:
        return [m for m in self.modifiers if isinstance(m, PruningBase)]

    @property
    def pruning_active(self) -> bool:
        """A gradual pruning modifier has started and not ended."""
        return any(m.started and not m.ended and m.end_epoch >= 0 for m in self.pruning_modifiers)

    @property
    def pruning_done(self) -> bool:
        """The recipe prunes and every pruning schedule with an end has reached it."""
        scheduled = [m for m in self.pruning_modifiers if m.end_epoch >= 0]
        return bool(scheduled) and all(m.ended for m in scheduled)

    @property
    def qat_active(self) -> bool:
        return self.qat_state is not None

    @property
    def controls_lr(self) -> bool:
        """True once any learning-rate modifier has started: the trainer must not set the lr then."""
        return any(isinstance(m, LRModifier) and m.started for m in self.modifiers)

    @property
    def has_lr_modifiers(self) -> bool:
        return any(isinstance(m, LRModifier) for m in self.modifiers)

    @property
    def phase(self) -> str:
        """``qat``, ``pruning``, ``pruned`` (masks held after pruning), ``training`` or ``done``."""
        if self.finalized:
            return "done"
        if self.qat_active:
            return "qat"
        if self.pruning_active:
            return "pruning"
        if any(m.masks_active() for m in self.pruning_modifiers):
            return "pruned"
        return "training"

    # --- driving ------------------------------------------------------------------------------------
    def attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        steps_per_epoch: int,
        state_dict: dict[str, Any] | None = None,
        example_inputs: Any = None,
    ) -> RecipeManager:
        """Bind to a model/optimizer and apply everything due at the current epoch (epoch 0).

        Pass ``state_dict`` to resume instead (required when the saved run had already thinned the
        model). ``example_inputs`` (a tensor or tuple) is what structured pruning traces the model
        with; by default a zero input for its first conv / linear layer.
        """
        if self.model is not None:
            raise SparseYoloError("this recipe manager is already attached; build a new one with recipe.manager()")
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise SparseYoloError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
        self.model, self.optimizer, self.steps_per_epoch = model, optimizer, steps_per_epoch
        self.example_inputs = example_inputs
        groups = len(optimizer.param_groups) if optimizer is not None else 0
        self.applied_lr, self.applied_wd = [None] * groups, [None] * groups
        if state_dict is not None:
            for m, s in zip(self.modifiers, state_dict.get("modifiers") or [], strict=False):
                if hasattr(m, "preload_state") and isinstance(s, dict):
                    m.preload_state(s)
        for m in self.modifiers:
            m.on_attach(self)
        self._check_thinning_order()
        self._check_blocks_after_thinning()
        if state_dict is not None:
            self.load_state_dict(state_dict)
            self._phase_flags = (self.pruning_active, self.pruning_done, self.qat_active)
        else:
            self._advance()
        return self

    def step(self) -> None:
        """Call after every optimizer step: advance one step, update schedules, reapply masks."""
        self._require_attached()
        self.global_step += 1
        self._advance()

    def _advance(self) -> None:
        epoch = self.epoch
        for m in self._tick_order:
            if not m.started and m.starts_by(epoch):
                m.started = True
                m.on_start(self, epoch)
            if m.started and not m.ended:
                if m.ends_by(epoch):
                    m.ended = True
                    m.on_end(self, epoch)
                else:
                    m.on_update(self, epoch)
        if self.reapply_masks_every_step or self.global_step % self.steps_per_epoch == 0:
            self._apply_masks()
        self._announce_phases()

    def _apply_masks(self) -> None:
        for m in self.pruning_modifiers:
            m.apply_masks()

    def finalize(self) -> None:
        """End of training: finish modifiers; masks stay applied to the weights."""
        self._require_attached()
        for m in self.modifiers:
            if m.started:
                m.on_finalize(self)
        self._apply_masks()
        self.finalized = True

    def _require_attached(self) -> None:
        if self.model is None:
            raise SparseYoloError("call manager.attach(model, optimizer, steps_per_epoch) first")

    # --- services for modifiers ------------------------------------------------------------------------
    def _groups(self, groups: Sequence[int] | None, what: str) -> list[int]:
        if self.optimizer is None:
            raise SparseYoloError(f"the recipe sets the {what} but no optimizer was attached")
        n = len(self.optimizer.param_groups)
        chosen = list(range(n)) if not groups else list(groups)
        bad = [g for g in chosen if not 0 <= g < n]
        if bad:
            raise ConfigError(f"param_groups {bad} do not exist; the optimizer has {n} param groups")
        return chosen

    def set_lr(self, lr: float, groups: Sequence[int] | None = None) -> None:
        for g in self._groups(groups, "learning rate"):
            self.optimizer.param_groups[g]["lr"] = lr
            self.applied_lr[g] = lr

    def set_weight_decay(self, wd: float, groups: Sequence[int] | None = None) -> None:
        for g in self._groups(groups, "weight decay"):
            self.optimizer.param_groups[g]["weight_decay"] = wd
            self.applied_wd[g] = wd

    def record_qat(self, submodules: list[str] | None, config: dict[str, Any]) -> None:
        self.qat_state = {
            "submodules": list(submodules) if submodules else None,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        }

    # --- masks / reporting ---------------------------------------------------------------------------
    @property
    def masks_version(self) -> tuple:
        """A value that changes whenever any mask changes or a masker is switched on or off.

        An EMA copy updated as ``d * ema + (1 - d) * model`` keeps exact zeros where both are zero,
        so a caller may re-run :meth:`apply_masks` on it only when this value changed.
        """
        return tuple((m.masker.version, m.masker.enabled) for m in self.pruning_modifiers if m.masker is not None)

    def apply_masks(self, module: nn.Module) -> None:
        """Zero the pruned positions in another copy of the model (e.g. the EMA)."""
        for m in self.pruning_modifiers:
            if m.masks_active():
                m.masker.apply_to(module)

    def sparsity_report(self) -> list[dict[str, Any]]:
        """One row per prunable (conv/linear) weight and per pruned parameter:
        ``name, shape, numel, sparsity`` (zeros now), ``mask_sparsity``, ``target``, ``modifier``."""
        self._require_attached()
        rows: dict[str, dict[str, Any]] = {}
        named = dict(self.model.named_parameters())
        for name in prunable_param_names(self.model):
            p = named[name]
            rows[name] = {
                "name": name,
                "shape": list(p.shape),
                "numel": p.numel(),
                "sparsity": tensor_sparsity(p.detach()),
                "mask_sparsity": None,
                "target": None,
                "modifier": None,
            }
        for m in self.pruning_modifiers:
            for row in m.report():
                rows[row["name"]] = row
        return list(rows.values())

    # --- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain data (tensors, lists, numbers) that loads with ``torch.load(weights_only=True)``."""
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "global_step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "epoch": self.epoch,
            "applied_lr": list(self.applied_lr),
            "applied_wd": list(self.applied_wd),
            "modifiers": [m.state_dict() for m in self.modifiers],
        }
        if self.qat_state is not None:
            state["qat"] = self.qat_state
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position, masks, lr/wd and QAT state saved by :meth:`state_dict`."""
        self._require_attached()
        mods = state.get("modifiers")
        if not isinstance(mods, list) or len(mods) != len(self.modifiers):
            raise ConfigError(
                f"recipe state has {len(mods) if isinstance(mods, list) else 'no'} modifiers, the recipe "
                f"{len(self.modifiers)}: was the checkpoint trained with a different recipe?"
            )
        saved_spe = int(state.get("steps_per_epoch") or self.steps_per_epoch)
        step = int(state.get("global_step", 0))
        if saved_spe != self.steps_per_epoch:
            # a different batch size or dataset: keep the epoch position, rescale the step counter
            LOGGER.warning("recipe state: steps_per_epoch changed from %d to %d", saved_spe, self.steps_per_epoch)
            step = round(step / saved_spe * self.steps_per_epoch)
        self.global_step = step
        self.qat_state = state.get("qat")
        for m, s in zip(self.modifiers, mods, strict=False):
            m.load_state_dict(s, self)
        if self.optimizer is not None:
            for key, values in (("lr", state.get("applied_lr") or []), ("weight_decay", state.get("applied_wd") or [])):
                for g, value in enumerate(values[: len(self.optimizer.param_groups)]):
                    if value is not None:
                        self.optimizer.param_groups[g][key] = value
            self.applied_lr = list(state.get("applied_lr") or self.applied_lr)
            self.applied_wd = list(state.get("applied_wd") or self.applied_wd)
        self._apply_masks()

    def __repr__(self) -> str:
        return (
            f"RecipeManager({len(self.modifiers)} modifiers, epoch={self.epoch:.3f}, "
            f"max_epochs={self.max_epochs}, phase={self.phase!r})"
        )


def _tick_order(modifiers: list[Modifier]) -> list[Modifier]:
    """The order :meth:`RecipeManager._advance` visits modifiers in: ``modifiers`` (state order), with
    the learning-rate modifiers among themselves in SparseML's manager order (end epoch, a modifier
    that never ends last; then start epoch; then class name), so that when two of them set the lr
    at the same step, the same one wins as in SparseML. Nothing else reads the lr within a step."""
    slots = [i for i, m in enumerate(modifiers) if isinstance(m, LRModifier)]
    ordered = sorted(
        (modifiers[i] for i in slots),
        key=lambda m: (math.inf if m.end_epoch < 0 else m.end_epoch, m.start_epoch, type(m).__name__),
    )
    tick = list(modifiers)
    for i, m in zip(slots, ordered, strict=True):
        tick[i] = m
    return tick
