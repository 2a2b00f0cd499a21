"""``DistillationModifier``: knowledge distillation from a teacher while the recipe prunes or quantizes.

Keys (SparseML 1.8's): ``start_epoch``, ``end_epoch``, ``hardness`` (weight of the distillation loss:
``total = (1 - hardness) * loss + hardness * distill``), ``temperature``, ``distill_output_keys``
(which of the model's outputs to distill: indices into a list/tuple output or keys of a dict; all
when omitted), ``teacher_input_keys`` (accepted for SparseML recipes; only ``null`` is supported,
since the teacher sees the student's inputs) and ``update_frequency`` (accepted, unused, as in
SparseML).

The distillation loss of one output is SparseML's: the KL divergence between the student's and the
teacher's softmax over the last dimension at ``temperature``, times ``temperature**2``, summed and
divided by the number of softmax rows; outputs are averaged. The teacher is handed to the manager
(:meth:`RecipeManager.set_teacher`); without one the student's own weights at the modifier's start
are frozen and used (self-distillation, as SparseML did). The teacher is never part of the model, so
checkpoints and the weight EMA never carry it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from sparseyolo.recipe.modifiers.base import Modifier, register

if TYPE_CHECKING:
    from sparseyolo.recipe.manager import RecipeManager


def kl_softmax_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the softmax over the last dimension at ``temperature``, times
    ``temperature**2``, per softmax row."""
    if student.shape != teacher.shape:
        raise ValueError(f"student and teacher outputs differ in shape: {list(student.shape)} vs {list(teacher.shape)}")
    rows = student.numel() / student.shape[-1]
    kl = F.kl_div(
        F.log_softmax(student.float() / temperature, dim=-1),
        F.log_softmax(teacher.float() / temperature, dim=-1),
        log_target=True,
        reduction="sum",
    )
    return kl * temperature**2 / rows


def _select(outputs: Any, keys: Sequence[Any] | None) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, Mapping):
        return [outputs[k] for k in (keys if keys else list(outputs))]
    return [outputs[k] for k in (keys if keys else range(len(outputs)))]


@register
class DistillationModifier(Modifier):
    tag = "DistillationModifier"
    FIELDS = {
        "start_epoch": -1.0,
        "end_epoch": -1.0,
        "hardness": 0.5,
        "temperature": 2.0,
        "distill_output_keys": None,
        "teacher_input_keys": None,
        "update_frequency": -1.0,
    }

    def validate(self) -> None:
        super().validate()
        self.hardness = self._number("hardness", self.hardness)
        self.temperature = self._number("temperature", self.temperature)
        if not 0.0 <= self.hardness <= 1.0:
            raise self.error(f"hardness must lie in [0, 1], got {self.hardness:g}")
        if self.temperature <= 0:
            raise self.error(f"temperature must be positive, got {self.temperature:g}")
        keys = self.distill_output_keys
        if keys is not None and not (isinstance(keys, list) and all(isinstance(k, (int, str)) for k in keys)):
            raise self.error(f"distill_output_keys must be a list of output indices or names, got {keys!r}")
        if self.teacher_input_keys not in (None, []):
            raise self.error("teacher_input_keys is not supported: the teacher sees the student's inputs")

    @property
    def active(self) -> bool:
        return self.started and not self.ended

    def on_start(self, manager: RecipeManager, epoch: float) -> None:
        if manager.teacher is None and manager.model is not None:  # self-distillation
            manager.set_teacher(copy.deepcopy(manager.model))

    def distillation_loss(self, student_outputs: Any, teacher_outputs: Any) -> torch.Tensor:
        students = _select(student_outputs, self.distill_output_keys)
        teachers = _select(teacher_outputs, self.distill_output_keys)
        losses = [kl_softmax_loss(s, t, self.temperature) for s, t in zip(students, teachers, strict=True)]
        return torch.stack(losses).mean()

    def total_loss(self, loss: torch.Tensor, distill: torch.Tensor) -> torch.Tensor:
        return (1.0 - self.hardness) * loss + self.hardness * distill


def frozen_teacher(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with gradients off: a teacher never trains."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
