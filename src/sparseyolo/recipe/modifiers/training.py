"""Training-schedule modifiers: epoch range, learning rate, weight decay.

SparseML 1.8 semantics (``sparseml.pytorch.sparsification.training.modifier_lr`` /
``modifier_regularizer``), step for step: tests/test_sparseml_parity.py checks the learning rate and
weight decay of every optimizer step against SparseML's own run. A modifier acts at the steps the
manager visits it (see :mod:`sparseyolo.recipe.manager`): its start step (the first step whose epoch
is ``>= start_epoch``), every step after that, and its end step (the first whose epoch is
``>= end_epoch``). When two learning-rate modifiers act at the same step, the one SparseML's manager
runs last wins (the one that ends later; one that never ends, last).

* ``SetLearningRateModifier``: sets ``learning_rate`` once, at its start step.
* ``LearningRateFunctionModifier``: from its start step to its end step, every step:
  ``linear``  lr = init + x * (final - init), x = (epoch - start) / (end - start);
  ``cosine``  lr = cos(pi * x + s) * r / 2 + r / 2 + b, with r = |init - final|, and (s, b) =
  (0, final) when decaying, (pi, init) when rising;
  ``cyclic_linear`` with ``cycle_epochs`` c (default 1.0, as in SparseML): s = steps since start
  mod (c * steps_per_epoch), lr = init - s / (c * steps_per_epoch - 1) * (init - final) (a linear
  ramp that restarts every cycle; a last partial cycle uses its own length).
  Its end step sets the value at ``end_epoch`` exactly (see "Where we differ" below).
* ``LearningRateModifier`` (``update_frequency`` must be -1: it acts every step) runs torch's
  scheduler the way SparseML does. At its start step every param group gets ``init_lr``; the
  scheduler starts counting there (a start of 0 counts from step 0). Epoch-based kwargs become
  optimizer steps: ``StepLR`` ``step_size`` -> round(step_size * steps_per_epoch) steps;
  ``MultiStepLR`` ``milestones`` -> round((m - start) * steps_per_epoch) steps after the start
  (milestones must lie inside (start, end)); ``ExponentialLR`` becomes a StepLR with a step of one
  epoch (so ``gamma`` applies once per epoch, not per batch). These are *chained* as in torch: at
  each boundary every group's current lr is multiplied by ``gamma`` (so a group another modifier
  changed in between keeps its own value and is decayed from there). ``CosineAnnealingWarmRestarts``
  is set from the fractional epoch since the start, so ``cycle_epochs`` (alias ``T_0``) stays in
  epochs and ``lr_min`` (alias ``eta_min``) is the floor. At ``end_epoch`` the scheduler takes no
  further step: the learning rate keeps its last value.
* ``SetWeightDecayModifier``: sets ``weight_decay`` once, at its start step.

Where we differ from SparseML on purpose (only off the step grid, where SparseML misbehaves): a
``LearningRateFunctionModifier`` whose ``end_epoch`` falls between two steps ends on the value at
``end_epoch`` (SparseML extrapolates past ``final_lr``, even below zero), and
``CosineAnnealingWarmRestarts`` always starts from ``init_lr`` (SparseML's starts from the lr of the
first torch scheduler the optimizer ever had).
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

from sparseyolo.recipe.modifiers.base import EPS, REQUIRED, Modifier, register
from sparseyolo.sparsity.schedule import first_step_at

if TYPE_CHECKING:
    from sparseyolo.recipe.manager import RecipeManager


@register
class EpochRangeModifier(Modifier):
    """Declares the training length: ``max_epochs`` is the largest epoch any modifier names."""

    tag = "EpochRangeModifier"
    FIELDS = {"start_epoch": -1.0, "end_epoch": -1.0}
    ORDER = 0


def _check_lr(mod: Modifier, key: str, value: Any, allow_zero: bool = False) -> float:
    v = mod._number(key, value)
    if v > 1.0 or v < 0.0 or (v == 0.0 and not allow_zero):
        raise mod.error(f"{key} must be in {'[0' if allow_zero else '(0'}, 1], got {v}")
    return v


def _check_groups(mod: Modifier, groups: Any) -> list[int] | None:
    if groups is None:
        return None
    if not isinstance(groups, list) or not all(isinstance(g, int) and not isinstance(g, bool) for g in groups):
        raise mod.error(f"param_groups must be a list of optimizer param-group indices, got {groups!r}")
    return groups


def _snap(x: float) -> float:
    """``x`` rounded to an integer when it is one up to float noise (a step count)."""
    r = round(x)
    return float(r) if abs(x - r) < 1e-9 else x


class LRModifier(Modifier):
    """Base of the modifiers that own the learning rate."""

    ORDER = 10
    controls_lr = True


@register
class SetLearningRateModifier(LRModifier):
    tag = "SetLearningRateModifier"
    FIELDS = {"learning_rate": REQUIRED, "param_groups": None, "start_epoch": -1.0, "end_epoch": -1.0}

    def validate(self) -> None:
        self.learning_rate = _check_lr(self, "learning_rate", self.learning_rate)
        self.param_groups = _check_groups(self, self.param_groups)
        self.end_epoch = -1.0  # SparseML: unused

    def on_start(self, manager: RecipeManager, epoch: float) -> None:
        manager.set_lr(self.learning_rate, self.param_groups)

    def lr_at(self, epoch: float, steps_per_epoch: int) -> float:
        return self.learning_rate


@register
class LearningRateFunctionModifier(LRModifier):
    tag = "LearningRateFunctionModifier"
    FIELDS = {
        "lr_func": REQUIRED,
        "init_lr": REQUIRED,
        "final_lr": REQUIRED,
        "start_epoch": REQUIRED,
        "end_epoch": REQUIRED,
        "cycle_epochs": 1.0,  # SparseML's default; <= 0: one cycle over the whole span (ours)
        "param_groups": None,
        "update_frequency": -1.0,
    }
    FUNCS = ("linear", "cosine", "cyclic_linear")

    def validate(self) -> None:
        super().validate()
        if self.lr_func not in self.FUNCS:
            raise self.error(f"lr_func {self.lr_func!r} is not one of {', '.join(self.FUNCS)}")
        self.init_lr = _check_lr(self, "init_lr", self.init_lr, allow_zero=True)
        self.final_lr = _check_lr(self, "final_lr", self.final_lr, allow_zero=True)
        if self.end_epoch <= max(self.start_epoch, 0.0):
            raise self.error("end_epoch must be after start_epoch")
        self.cycle_epochs = self._number("cycle_epochs", self.cycle_epochs)
        if self.cycle_epochs <= 0:
            self.cycle_epochs = self.end_epoch - max(self.start_epoch, 0.0)
        if self._number("update_frequency", self.update_frequency) != -1.0:
            raise self.error("update_frequency must be -1 (the learning rate is set every step)")
        self.param_groups = _check_groups(self, self.param_groups)

    def lr_at(self, epoch: float, steps_per_epoch: int) -> float:
        """The lr at ``epoch`` (clipped to the span), with SparseML's expressions in its order of
        evaluation, so that the values agree to the last bit."""
        start = max(self.start_epoch, 0.0)
        epoch = min(max(epoch, start), self.end_epoch)
        init, final = self.init_lr, self.final_lr
        x = (epoch - start) / (self.end_epoch - start)
        if self.lr_func == "linear":
            return init + x * (final - init)
        if self.lr_func == "cosine":
            if final < init:
                y_range, y_shift, x_shift = init - final, final, 0.0
            else:
                y_range, y_shift, x_shift = final - init, init, math.pi
            return math.cos(x * math.pi + x_shift) * y_range / 2 + y_range / 2 + y_shift
        # cyclic_linear, in (fractional) steps since the start
        start_step, end_step = start * steps_per_epoch, self.end_epoch * steps_per_epoch
        cycle = self.cycle_epochs * steps_per_epoch
        step = _snap((epoch - start) * steps_per_epoch)
        if step > int((end_step - start_step) / cycle) * cycle:
            cycle = (end_step - start_step) % cycle  # the last, partial cycle
        pos = step % cycle
        return init - (pos / max(cycle - 1, 1.0)) * (init - final)

    def on_update(self, manager: RecipeManager, epoch: float) -> None:
        manager.set_lr(self.lr_at(epoch, manager.steps_per_epoch), self.param_groups)

    def on_end(self, manager: RecipeManager, epoch: float) -> None:
        # SparseML updates once more at the step that reaches end_epoch; with end_epoch on that step
        # this is final_lr (cyclic: the cycle's start), between steps we stop at the end value
        manager.set_lr(self.lr_at(self.end_epoch, manager.steps_per_epoch), self.param_groups)


@register
class LearningRateModifier(LRModifier):
    tag = "LearningRateModifier"
    FIELDS = {
        "lr_class": REQUIRED,
        "lr_kwargs": REQUIRED,
        "init_lr": REQUIRED,
        "start_epoch": REQUIRED,
        "end_epoch": -1.0,
        "update_frequency": -1.0,
    }
    CLASSES = ("StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingWarmRestarts")
    KWARGS = {
        "StepLR": ({"step_size", "gamma"}, set()),
        "MultiStepLR": ({"milestones", "gamma"}, set()),
        "ExponentialLR": ({"gamma"}, set()),
        "CosineAnnealingWarmRestarts": (set(), {"lr_min", "eta_min", "cycle_epochs", "T_0", "T_mult"}),
    }

    def validate(self) -> None:
        super().validate()
        self._reset_scheduler()
        if self.lr_class not in self.CLASSES:
            raise self.error(f"lr_class {self.lr_class!r} is not one of {', '.join(self.CLASSES)}")
        if not isinstance(self.lr_kwargs, dict):
            raise self.error(f"lr_kwargs must be a mapping, got {self.lr_kwargs!r}")
        self.init_lr = _check_lr(self, "init_lr", self.init_lr)
        if self._number("update_frequency", self.update_frequency) != -1.0:
            raise self.error("update_frequency must be -1 (SparseML steps the schedule every batch)")
        required, optional = self.KWARGS[self.lr_class]
        kw = dict(self.lr_kwargs)
        unknown = set(kw) - required - optional
        if unknown:
            raise self.error(
                f"unknown lr_kwargs {sorted(unknown)} for {self.lr_class}; valid: {sorted(required | optional)}"
            )
        missing = required - set(kw)
        if missing:
            raise self.error(f"lr_kwargs for {self.lr_class} needs {sorted(missing)}")
        if self.lr_class == "CosineAnnealingWarmRestarts":
            if "cycle_epochs" not in kw and "T_0" not in kw:
                raise self.error("lr_kwargs for CosineAnnealingWarmRestarts needs cycle_epochs (or T_0)")
            self.t0 = self._number("cycle_epochs", kw.get("cycle_epochs", kw.get("T_0")))
            self.eta_min = self._number("lr_min", kw.get("lr_min", kw.get("eta_min", 0.0)))
            self.t_mult = int(kw.get("T_mult", 1))
            if self.t0 <= 0 or self.t_mult < 1:
                raise self.error("cycle_epochs (T_0) must be > 0 and T_mult >= 1")
        else:
            self.gamma = self._number("gamma", kw["gamma"])
        if self.lr_class == "StepLR" and self._number("step_size", kw["step_size"]) <= 0:
            raise self.error("step_size must be > 0")
        if self.lr_class == "MultiStepLR":
            miles = kw["milestones"]
            if not isinstance(miles, list) or not miles:
                raise self.error("milestones must be a non-empty list of epochs")
            for m in miles:
                m = self._number("milestones", m)
                if m <= self.start_epoch or (self.end_epoch >= 0 and m >= self.end_epoch):
                    raise self.error(f"milestones {miles} must lie strictly between start_epoch and end_epoch")

    def shift(self, offset: float) -> None:
        super().shift(offset)
        if self.lr_class == "MultiStepLR":  # milestones are absolute epochs
            self.lr_kwargs = dict(self.lr_kwargs, milestones=[float(m) + offset for m in self.lr_kwargs["milestones"]])
            self.given["lr_kwargs"] = self.lr_kwargs

    # --- SparseML's LearningRateModifier.update, step for step ------------------------------------
    def _reset_scheduler(self) -> None:
        self.sched_created = False  # SparseML builds its torch scheduler at the first step past epoch 0
        self.sched_steps = 0  # the global step the scheduler has been stepped up to
        self.sched_epoch = 0  # the torch scheduler's last_epoch (steps since it was built)
        self.steps_per_epoch = 0  # what sched_steps / sched_epoch count in

    def _step_size(self, steps_per_epoch: int) -> int:
        size = 1.0 if self.lr_class == "ExponentialLR" else float(self.lr_kwargs["step_size"])
        return max(round(size * steps_per_epoch), 1)

    def _milestones(self, steps_per_epoch: int) -> Counter:
        return Counter(round((float(m) - self.start_epoch) * steps_per_epoch) for m in self.lr_kwargs["milestones"])

    def _decay(self, steps_per_epoch: int) -> float | None:
        """The factor torch's chained StepLR / MultiStepLR applies at ``sched_epoch`` (None: none)."""
        n = self.sched_epoch
        if self.lr_class == "MultiStepLR":
            count = self._milestones(steps_per_epoch).get(n, 0)
            return self.gamma**count if count else None
        return self.gamma if n != 0 and n % self._step_size(steps_per_epoch) == 0 else None

    def _cosine_lr(self, t: float) -> float:
        """torch's CosineAnnealingWarmRestarts.step(t) from base lr ``init_lr``."""
        t_cur, t_i = t, self.t0
        if t >= self.t0:
            if self.t_mult == 1:
                t_cur = t % self.t0
            else:
                n = int(math.log(t / self.t0 * (self.t_mult - 1) + 1, self.t_mult))
                t_cur = t - self.t0 * (self.t_mult**n - 1) / (self.t_mult - 1)
                t_i = self.t0 * self.t_mult**n
        return self.eta_min + (self.init_lr - self.eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2

    def _update(self, manager: RecipeManager, epoch: float) -> None:
        spe = self.steps_per_epoch = manager.steps_per_epoch
        if not self.sched_created:
            manager.set_lr(self.init_lr, None)  # every group, at each step until the scheduler exists
        if epoch <= sys.float_info.epsilon:
            self.sched_steps -= 1  # so a schedule started at epoch 0 counts from step 0
            return
        if self.end_epoch >= 0 and abs(self.end_epoch - epoch) <= sys.float_info.epsilon:
            return  # no scheduler step at end_epoch
        if not self.sched_created:
            self.sched_created, self.sched_epoch = True, 0
            self.sched_steps += round(epoch * spe)
        if self.lr_class == "CosineAnnealingWarmRestarts":
            manager.set_lr(self._cosine_lr(epoch - self.start_epoch if self.start_epoch >= 0 else 0.0), None)
            return
        past_end = self.end_epoch >= 0 and epoch > self.end_epoch
        step = round((self.end_epoch if past_end else epoch) * spe)
        if step <= self.sched_steps:
            return
        groups = manager.optimizer.param_groups if manager.optimizer is not None else []
        for _ in range(step - self.sched_steps):
            self.sched_epoch += 1
            factor = self._decay(spe)
            if factor is not None:
                for g, group in enumerate(groups):
                    manager.set_lr(group["lr"] * factor, [g])
        self.sched_steps = step

    def on_update(self, manager: RecipeManager, epoch: float) -> None:
        self._update(manager, epoch)

    def on_end(self, manager: RecipeManager, epoch: float) -> None:
        self._update(manager, epoch)  # SparseML's end step: no scheduler step exactly at end_epoch

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            sched_created=self.sched_created,
            sched_steps=self.sched_steps,
            sched_epoch=self.sched_epoch,
            sched_steps_per_epoch=self.steps_per_epoch,
        )
        return state

    def load_state_dict(self, state: dict[str, Any], manager: RecipeManager) -> None:
        super().load_state_dict(state, manager)
        self._reset_scheduler()
        if "sched_steps" in state:
            self.sched_created = bool(state["sched_created"])
            self.sched_steps, self.sched_epoch = int(state["sched_steps"]), int(state["sched_epoch"])
            saved = int(state.get("sched_steps_per_epoch") or manager.steps_per_epoch)
            if saved != manager.steps_per_epoch:  # resumed with another batch size: keep the epoch position
                scale = manager.steps_per_epoch / saved
                self.sched_steps, self.sched_epoch = round(self.sched_steps * scale), round(self.sched_epoch * scale)
        elif self.started and manager.global_step > 0:  # a state saved before the scheduler was kept
            first = first_step_at(self.start_epoch, manager.steps_per_epoch)
            self.sched_created, self.sched_steps = True, manager.global_step
            self.sched_epoch = max(manager.global_step - first, 0)


@register
class SetWeightDecayModifier(Modifier):
    tag = "SetWeightDecayModifier"
    FIELDS = {"weight_decay": REQUIRED, "param_groups": None, "start_epoch": -1.0, "end_epoch": -1.0}
    ORDER = 20

    def validate(self) -> None:
        self.weight_decay = self._number("weight_decay", self.weight_decay)
        if self.weight_decay < 0:
            raise self.error("weight_decay must be >= 0")
        self.param_groups = _check_groups(self, self.param_groups)
        self.end_epoch = -1.0

    def on_start(self, manager: RecipeManager, epoch: float) -> None:
        manager.set_weight_decay(self.weight_decay, self.param_groups)


__all__ = [
    "EpochRangeModifier",
    "LRModifier",
    "LearningRateFunctionModifier",
    "LearningRateModifier",
    "SetLearningRateModifier",
    "SetWeightDecayModifier",
    "EPS",
]
