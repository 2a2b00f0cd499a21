"""Structured (channel) pruning on top of :mod:`~sparseyolo.sparsity.channel_graph`.

A :class:`ChannelPruner` turns recipe targets ("remove 50% of the filters of these layers") into
keep-masks over channel groups, and those into element masks for a
:class:`~sparseyolo.sparsity.masker.ParamMasker`: a pruned channel has its producing filters, their
biases and the per-channel scale and shift of the norm layers after them held at exactly zero, so
the masked model computes exactly what the thinned model will.

* ``filter`` mode: a named conv / linear weight selects the group of its output channels;
* ``channel`` mode: it selects the groups its *input* channels come from, scored by its columns.

Scores (``importance``): ``l1`` = mean ``|w|`` of a channel's weights, ``l2`` = their root mean
square, both summed over the group's producers (``filter``) or taken from the named layer's
columns (``channel``); ``bn_gamma`` = ``|gamma|`` of the norm layers on the group, summed.
Means rather than sums keep scores of layers with different fan-in comparable for ``global``
ranking. Masks are monotone: a removed channel stays removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from sparseyolo.sparsity.channel_graph import ChannelGraph, ChannelGroup
from sparseyolo.sparsity.thinning import ThinningPlan, plan_thinning
from sparseyolo.utils.errors import ConfigError

IMPORTANCES = ("l1", "l2", "bn_gamma")
STRUCTURES = ("filter", "channel")


@dataclass
class GroupTarget:
    group: ChannelGroup
    params: list[str]  # recipe params that chose this group
    consumer: str | None = None  # channel mode: the layer whose columns score the group


def kept_channels(size: int, sparsity: float, round_to: int = 1) -> int:
    """Channels kept of ``size`` at ``sparsity``: ``size - round(sparsity * size)``, rounded to the
    nearest multiple of ``round_to`` (never above ``size``). May be 0: the caller decides."""
    keep = size - round(sparsity * size)
    if round_to > 1 and keep < size:
        keep = min(int(round(keep / round_to)) * round_to, size)
    return keep


class ChannelPruner:
    """Channel keep-masks for the groups that a set of recipe params selects."""

    def __init__(
        self,
        model: nn.Module,
        graph: ChannelGraph,
        params: list[str],
        structure: str,
        importance: str,
        round_to: int,
        where: str,
        explicit: set[str],
    ):
        self.model, self.graph = model, graph
        self.structure, self.importance, self.round_to = structure, importance, round_to
        self.where = where
        self.targets: dict[int, GroupTarget] = {}
        self.skipped: list[str] = []
        modules = dict(model.named_modules())
        for pname in params:
            mod_name = pname.rpartition(".")[0]
            if not isinstance(
                modules.get(mod_name), (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
            ) or not pname.endswith(".weight"):
                if pname in explicit:
                    raise ConfigError(
                        f"{where}: {pname} is not the weight of a conv or linear layer; "
                        f"mask_type {structure} prunes those"
                    )
                continue
            groups = [graph.group_of_output(mod_name)] if structure == "filter" else graph.groups_of_input(mod_name)
            groups = [g for g in groups if g is not None]
            free = [g for g in groups if not g.fixed]
            if not free:
                why = groups[0].fixed if groups else "no traced channels"
                side = "output" if structure == "filter" else "input"
                if pname in explicit:
                    raise ConfigError(
                        f"{where}: mask_type {structure} on {pname}: the {side} channels of "
                        f"{mod_name} cannot be removed ({groups[0].describe() if groups else mod_name} "
                        f"reaches {why})"
                    )
                self.skipped.append(f"{pname} ({why})")
                continue
            for g in free:
                t = self.targets.setdefault(g.index, GroupTarget(g, [], mod_name if structure == "channel" else None))
                t.params.append(pname)
        if importance == "bn_gamma":
            for t in self.targets.values():
                if not t.group.modules("norm"):
                    raise ConfigError(
                        f"{where}: importance bn_gamma needs a norm layer after "
                        f"{', '.join(t.params)}; {t.group.describe()} has none"
                    )
        self.keep: dict[int, torch.Tensor] = {
            gi: torch.ones(t.group.size, dtype=torch.bool) for gi, t in self.targets.items()
        }
        self.coupled: list[list[int]] = []

    def couple(self, params: list[str]) -> None:
        """Choose the same channel indices in the groups of ``params`` (SparseML's ``param_groups``)."""
        gis = sorted({gi for gi, t in self.targets.items() if set(t.params) & set(params)})
        sizes = {self.targets[gi].group.size for gi in gis}
        if len(sizes) > 1:
            raise ConfigError(f"{self.where}: param_groups {params} have different channel counts {sorted(sizes)}")
        if len(gis) > 1:
            self.coupled = [c for c in self.coupled if not set(c) & set(gis)] + [gis]

    # -- checks ----------------------------------------------------------------------------------
    def check_final(self, final_of: dict[str, float]) -> None:
        """Raise if the final targets leave any group without channels."""
        for t in self.targets.values():
            final = max(final_of[p] for p in t.params)
            keep = kept_channels(t.group.size, final, self.round_to)
            if keep < 1:
                how = f" with round_to {self.round_to}" if self.round_to > 1 else ""
                raise ConfigError(
                    f"{self.where}: final_sparsity {final}{how} leaves {t.group.describe()} "
                    f"({', '.join(t.params[:3])}) with no channels ({t.group.size} * {1 - final:.3g} = "
                    f"{t.group.size * (1 - final):.3g} kept); lower the sparsity or round_to"
                )

    # -- scores and masks -------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, gi: int) -> torch.Tensor:
        t = self.targets[gi]
        modules = dict(self.model.named_modules())
        total = torch.zeros(t.group.size)
        if self.importance == "bn_gamma":
            for s in t.group.slices:
                if s.role == "norm" and modules[s.module].weight is not None:
                    g = modules[s.module].weight.detach().abs().float().cpu()
                    total[s.start : s.start + s.length] += g[s.offset : s.offset + s.length]
            return total
        if self.structure == "filter":
            picks = [(s, 0) for s in t.group.slices if s.role in ("out", "depthwise")]
        else:
            picks = [(s, 1) for s in t.group.slices if s.role == "in" and s.module == t.consumer]
        for s, dim in picks:
            w = modules[s.module].weight.detach().float().cpu()
            w = w.transpose(0, dim).reshape(w.shape[dim], -1)[s.offset : s.offset + s.length]
            per = w.abs().mean(1) if self.importance == "l1" else w.pow(2).mean(1).sqrt()
            total[s.start : s.start + s.length] += per
        return total

    def update(self, target_of: dict[str, float], global_target: float | None = None) -> None:
        """Recompute keep-masks: per group at the largest target of its params, or, with
        ``global_target``, one ranking over all groups (each group keeps at least ``round_to``)."""
        if not self.targets:
            return
        if global_target is None:
            sets = self.coupled + [[gi] for gi in self.targets if not any(gi in c for c in self.coupled)]
            for gis in sets:
                size = self.targets[gis[0]].group.size
                target = max(target_of[p] for gi in gis for p in self.targets[gi].params)
                n_keep = max(kept_channels(size, target, self.round_to), 1)
                keep = torch.stack([self.keep[gi] for gi in gis]).all(0)
                new = _select(sum(self.scores(gi) for gi in gis), keep, n_keep)
                for gi in gis:
                    self.keep[gi] = new.clone()
            return
        order = list(self.targets)
        scores = [self.scores(gi) for gi in order]
        flat = torch.cat(
            [torch.where(self.keep[gi], s, torch.full_like(s, -math.inf)) for gi, s in zip(order, scores, strict=False)]
        )
        k = round(global_target * flat.numel())
        pruned = torch.zeros(flat.numel(), dtype=torch.bool)
        pruned[torch.sort(flat, stable=True).indices[:k]] = True
        offset = 0
        for gi, s in zip(order, scores, strict=False):
            size = s.numel()
            target = float(pruned[offset : offset + size].sum()) / size
            n_keep = max(kept_channels(size, target, self.round_to), min(self.round_to, size), 1)
            self.keep[gi] = _select(s, self.keep[gi], n_keep)
            offset += size

    def param_masks(self) -> dict[str, torch.Tensor]:
        """Element keep-masks for every tensor that must read zero on a removed channel."""
        modules = dict(self.model.named_modules())
        masks: dict[str, torch.Tensor] = {}
        for gi, t in self.targets.items():
            keep = self.keep[gi]
            for s in t.group.slices:
                if s.role == "in":
                    continue  # a consumer's columns multiply zeros; thinning removes them
                module = modules[s.module]
                for attr in ("weight", "bias"):
                    p = getattr(module, attr, None)
                    if not isinstance(p, nn.Parameter):
                        continue
                    name = f"{s.module}.{attr}"
                    m = masks.setdefault(name, torch.ones_like(p, dtype=torch.bool))
                    part = keep[s.start : s.start + s.length].to(p.device)
                    m[s.offset : s.offset + s.length] &= part.view(-1, *([1] * (p.dim() - 1)))
        return masks

    def mask_params(self) -> list[tuple[str, nn.Parameter]]:
        named = dict(self.model.named_parameters())
        return [(n, named[n]) for n in self.param_masks()]

    def plan(self) -> ThinningPlan:
        return plan_thinning(self.model, self.graph, self.keep)

    def report(self) -> list[dict]:
        """One row per pruned group: its producers, channels before and kept."""
        return [
            {
                "group": gi,
                "layers": t.group.producers or [t.consumer],
                "params": list(t.params),
                "channels": t.group.size,
                "kept": int(self.keep[gi].sum()),
            }
            for gi, t in self.targets.items()
        ]


def _select(scores: torch.Tensor, keep: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Keep the ``n_keep`` highest scores; channels already removed stay removed (monotone)."""
    n_keep = min(n_keep, int(keep.sum()))
    key = torch.where(keep, scores, torch.full_like(scores, -math.inf))
    order = torch.sort(key, descending=True, stable=True).indices
    new = torch.zeros_like(keep)
    new[order[:n_keep]] = True
    return new
