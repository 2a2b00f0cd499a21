"""Training-schedule modifiers: epoch range, learning rate, weight decay.

SparseML semantics (``sparseml.pytorch.sparsification.training.modifier_lr`` and
``sparseml.optim.learning_rate``), implemented as pure functions of the fractional epoch so that a
resumed run lands on exactly the same learning rate:

* ``SetLearningRateModifier``: sets ``learning_rate`` once, at ``start_epoch``.
* ``LearningRateFunctionModifier``: between ``start_epoch`` and ``end_epoch``, every step:
  ``linear``  lr = init + x * (final - init), x = (epoch - start) / (end - start);
  ``cosine``  lr = final + (init - final) * (1 + cos(pi * x)) / 2 (when init < final the curve
  rises: lr = init + (final - init) * (1 + cos(pi * (x + 1))) / 2);
  ``cyclic_linear`` with ``cycle_epochs`` c: s = steps since start mod (c * steps_per_epoch),
  lr = init - s / (c * steps_per_epoch - 1) * (init - final) (a linear ramp that restarts every
  cycle; a last partial cycle uses its own length).
* ``LearningRateModifier`` (``update_frequency`` must be -1: it updates every step). SparseML
  converts epoch-based kwargs to optimizer steps: ``StepLR`` ``step_size`` -> round(step_size *
  steps_per_epoch) steps; ``MultiStepLR`` ``milestones`` -> round((m - start) * steps_per_epoch)
  steps after the start (milestones must lie inside (start, end)); ``ExponentialLR`` becomes a
  StepLR with a step of one epoch (so ``gamma`` applies once per epoch, not per batch);
  ``CosineAnnealingWarmRestarts`` is stepped with the fractional epoch since the start, so
  ``cycle_epochs`` (alias ``T_0``) stays in epochs and ``lr_min`` (alias ``eta_min``) is the floor.
  lr = init_lr * gamma ** (number of step boundaries passed). At ``end_epoch`` the modifier stops
  and the learning rate keeps its last value (SparseML takes no extra scheduler step at the end).
* ``SetWeightDecayModifier``: sets ``weight_decay`` once, at ``start_epoch``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sparseyolo.recipe.modifiers.base import EPS, REQUIRED, Modifier, register

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
        "cycle_epochs": -1.0,
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
        start = max(self.start_epoch, 0.0)
        x = min(max((epoch - start) / (self.end_epoch - start), 0.0), 1.0)
        init, final = self.init_lr, self.final_lr
        if self.lr_func == "linear":
            return init + x * (final - init)
        if self.lr_func == "cosine":
            if init > final:
                return final + (init - final) * 0.5 * (1.0 + math.cos(math.pi * x))
            return init + (final - init) * 0.5 * (1.0 + math.cos(math.pi * (x + 1.0)))
        # cyclic_linear
        total = round((self.end_epoch - start) * steps_per_epoch)
        cycle = max(round(self.cycle_epochs * steps_per_epoch), 1)
        step = min(round((epoch - start) * steps_per_epoch), total)
        if step >= (total // cycle) * cycle and total % cycle:
            cycle = total % cycle  # the last, partial cycle
        pos = step % cycle
        return init - (pos / max(cycle - 1, 1)) * (init - final)

    def on_update(self, manager: RecipeManager, epoch: float) -> None:
        manager.set_lr(self.lr_at(epoch, manager.steps_per_epoch), self.param_groups)

    def on_end(self, manager: RecipeManager, epoch: float) -> None:
        # SparseML updates once more at end_epoch, leaving the lr at the schedule's end value
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

    def lr_at(self, epoch: float, steps_per_epoch: int) -> float:
        start = max(self.start_epoch, 0.0)
        if self.end_epoch >= 0:
            epoch = min(epoch, self.end_epoch)
        if self.lr_class == "CosineAnnealingWarmRestarts":
            t = max(epoch - start, 0.0)
            if self.t_mult == 1:
                t_cur, t_i = t % self.t0, self.t0
            else:
                n = int(math.log(t / self.t0 * (self.t_mult - 1) + 1, self.t_mult))
                t_cur = t - self.t0 * (self.t_mult**n - 1) / (self.t_mult - 1)
                t_i = self.t0 * self.t_mult**n
            return self.eta_min + (self.init_lr - self.eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
        steps = max(round(epoch * steps_per_epoch) - round(start * steps_per_epoch), 0)
        if self.lr_class == "MultiStepLR":
            miles = [round((m - start) * steps_per_epoch) for m in self.lr_kwargs["milestones"]]
            passed = sum(1 for m in miles if steps >= m)
        else:
            size_epochs = 1.0 if self.lr_class == "ExponentialLR" else float(self.lr_kwargs["step_size"])
            size = max(round(size_epochs * steps_per_epoch), 1)
            passed = steps // size
        return self.init_lr * self.gamma**passed

    def on_update(self, manager: RecipeManager, epoch: float) -> None:
        manager.set_lr(self.lr_at(epoch, manager.steps_per_epoch), None)


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
