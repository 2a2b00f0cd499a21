"""Structured pruning's part of the :class:`~sparseyolo.recipe.manager.RecipeManager`: the channel
dependency graph, when removed channels are cut out, and the cut itself (``thin``), which the model,
the optimizer state, every modifier and the ``thinned`` subscribers follow."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparseyolo.sparsity.channel_graph import ChannelGraph, trace_channel_groups
from sparseyolo.sparsity.thinning import ThinningPlan, apply_thinning, plan_thinning, thin_optimizer
from sparseyolo.utils.errors import ConfigError, SparseYoloError
from sparseyolo.utils.logging import LOGGER


class ThinningMixin:
    """Mixed into the recipe manager; uses its ``model``, ``optimizer``, ``modifiers``,
    ``pruning_modifiers``, ``qat_active``, ``emit`` and ``_require_attached``."""

    model: nn.Module | None
    optimizer: torch.optim.Optimizer | None
    modifiers: list[Any]
    example_inputs: Any
    _graph: ChannelGraph | None

    def _check_thinning_order(self) -> None:
        """Thinning rebuilds layers, which QAT's wrapped layers do not survive: it must come first. And a
        thinning cuts the model under every structured schedule: none may be choosing channels then."""
        structured = [m for m in self.pruning_modifiers if getattr(m, "pruner", None) is not None]
        for a in structured:
            thin_at = self.thinning_epoch(a.end_epoch)
            for b in structured:
                if b is not a and b.start_epoch <= thin_at + 1e-9 < b.end_epoch:
                    raise ConfigError(
                        f"{b.where}: !{b.tag} chooses channels from epoch {b.start_epoch:g} to {b.end_epoch:g}, but "
                        f"the model is thinned at epoch {thin_at:g} (after !{a.tag} at {a.where} ends); end it by "
                        "then, or start it after that thinning"
                    )
        qat = [m.start_epoch for m in self.modifiers if m.tag == "QuantizationModifier"]
        if not qat:
            return
        for m in self.pruning_modifiers:
            if getattr(m, "pruner", None) is None:
                continue
            thin_at = self.thinning_epoch(m.end_epoch)
            if thin_at > max(min(qat), 0.0) + 1e-9:
                raise ConfigError(
                    f"{m.where}: !{m.tag} removes channels at epoch {thin_at:g}, after "
                    f"quantization-aware training starts (epoch {min(qat):g}); end structured "
                    "pruning (and thinning) before QuantizationModifier's start_epoch"
                )

    def _check_blocks_after_thinning(self) -> None:
        """Block masks (``[1, 4]``) that still update after thinning score the thinned weights in blocks, so
        every width a structured modifier leaves them must divide by the block: its ``round_to`` must."""
        for s in self.pruning_modifiers:
            if getattr(s, "pruner", None) is None:
                continue
            thin_at = self.thinning_epoch(s.end_epoch)
            cut = set(s.pruner.keep)  # the groups this modifier may cut
            graph = self.channel_graph()
            for b in self.pruning_modifiers:
                masker, mask = getattr(b, "masker", None), getattr(b, "mask", None)
                if getattr(b, "structure", None) or masker is None or mask is None or mask.kind == "unstructured":
                    continue
                if b.end_epoch <= thin_at + 1e-9:  # no mask update after thinning: nothing is scored in blocks
                    continue
                bo, bi = mask.block
                for name in masker.params:
                    module = name.rpartition(".")[0]
                    out_cut = graph.output_group.get(module) in cut
                    in_cut = any(gi in cut for gi in graph.input_groups.get(module, []))
                    side = bo if out_cut and s.round_to % bo else bi if in_cut and s.round_to % bi else 0
                    if side:
                        raise ConfigError(
                            f"{b.where_key('mask_type')}: !{b.tag} mask_type {mask.to_recipe()} still updates "
                            f"{name} after !{s.tag} ({s.where}) thins it at epoch {thin_at:g}, and the kept widths "
                            f"are multiples of round_to {s.round_to}, not of {side}: set that modifier's round_to "
                            f"to a multiple of {side}, or end the block pruning before thinning"
                        )

    def channel_graph(self) -> ChannelGraph:
        """The model's channel dependency groups (traced once, again after each thinning)."""
        self._require_attached()
        if self._graph is None:
            self._graph = trace_channel_groups(self.model, self.example_inputs)
        return self._graph

    def thinning_epoch(self, pruning_end: float) -> float:
        """When channels removed by a schedule ending at ``pruning_end`` are cut out: the first
        ``LayerThinningModifier`` epoch at or after it, else ``pruning_end`` itself."""
        return min(self._thinning_epochs_from(pruning_end), default=pruning_end)

    def thinning_scheduled_after(self, pruning_end: float) -> bool:
        return bool(self._thinning_epochs_from(pruning_end))

    def _thinning_epochs_from(self, epoch: float) -> list[float]:
        return [e for m in self.modifiers if m.tag == "LayerThinningModifier" for e in m.epochs if e + 1e-9 >= epoch]

    def thin(self) -> ThinningPlan:
        """Cut every channel that structured pruning has removed out of the model and optimizer.

        Other modifiers' masks follow (by parameter name), then subscribers of ``thinned`` get the
        plan. Returns the (possibly empty) plan.
        """
        self._require_attached()
        # only schedules that have ended are cut; one that has not started yet re-traces the thinned model
        # (``on_thinned``), and one in progress at a thinning is refused at attach (_check_thinning_order)
        pending = [
            m
            for m in self.pruning_modifiers
            if getattr(m, "pruner", None) is not None and m.end_epoch <= self.epoch + 1e-9
        ]
        if self.qat_active and pending:
            raise SparseYoloError("cannot thin a quantization-aware model; thinning must come before QAT starts")
        keep: dict[int, torch.Tensor] = {}
        for m in pending:
            for gi, k in m.pruner.keep.items():
                keep[gi] = keep[gi] & k if gi in keep else k.clone()
        plan = plan_thinning(self.model, self.channel_graph(), keep) if keep else ThinningPlan()
        if not plan:
            LOGGER.info("recipe: no removed channels to cut out")
            return plan
        replaced = apply_thinning(self.model, plan)
        self._graph = None  # the groups of the thinned model are traced again when next asked for
        if self.optimizer is not None:
            thin_optimizer(self.optimizer, self.model, plan, replaced)
        for m in pending:
            m.mark_thinned()
        for m in self.modifiers:
            m.on_thinned(self, plan)
        removed = sum(plan.removed.values())
        LOGGER.info(
            f"recipe: thinned the model, {removed} channels removed from {len(plan.removed)} groups "
            f"({len(plan.modules)} layers changed)"
        )
        self.emit("thinned", plan=plan)
        return plan
