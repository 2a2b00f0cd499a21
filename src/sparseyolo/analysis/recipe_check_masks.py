"""The dry run's fast mask updates (:func:`~sparseyolo.analysis.recipe_check.check_recipe`): pruned
counts per parameter instead of masks chosen by sorting every weight, and when that shortcut is exact."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from sparseyolo.recipe import RecipeManager


class FastMasks:
    """Stand-in for one pruning modifier's mask update in a dry run (see :mod:`sparseyolo.analysis.recipe_check`).

    Unstructured / block / N:M: counts of pruned units per parameter, exactly as the magnitude
    pruner's ``round(target * units)`` with its monotone and N:M rules, without touching a weight.
    Filter (and channel by ``bn_gamma``): the modifier's own
    :class:`~sparseyolo.sparsity.channel_pruner.ChannelPruner` with its scores cached, and no element
    masks (thinning reads the pruner's channel keep-masks); a removed channel's scores are never read
    again, so masking it would change nothing.
    """

    def __init__(self, mod: Any):
        self.mod = mod
        self.units: dict[str, int] = {}
        self.unit_size: dict[str, int] = {}
        self.cap: dict[str, int] = {}  # N:M: the most units that may be pruned
        self.pruned: dict[str, int] = {}
        self.numel: dict[str, int] = {}

    def install(self) -> None:
        self.mod._update_masks = self.update  # an instance attribute: only this dry run's modifier
        self.mod.apply_masks = no_op

    def update(self, manager: RecipeManager, epoch: float) -> None:
        m = self.mod
        if m.thinned:
            return
        if m.pruner is not None:
            pruner = m.pruner
            if "scores" not in vars(pruner):  # cache its channel scores: the weights do not change
                cache: dict[int, Any] = {}
                original = pruner.scores

                def scores(gi: int, cache=cache, original=original):
                    if gi not in cache:
                        cache[gi] = original(gi)
                    return cache[gi]

                pruner.scores = scores
            targets = {n: m.target_at(n, epoch) for n in m.final_by_param}
            glob = targets[next(iter(targets))] if m.global_sparsity and targets else None
            pruner.update(targets, glob)
        else:
            self._count(m, epoch)
        m.last_update = epoch

    def _init_param(self, name: str, p: torch.Tensor, mask: torch.Tensor, fresh: bool) -> None:
        """Units of ``name`` and how many are pruned: none for a fresh masker (all-True masks), else
        those its masks hold (``init_sparsity: __FROM_PARAM__``); after thinning, the same fraction."""
        from sparseyolo.sparsity.masks import to_groups

        kind = self.mod.mask
        size = 1 if kind.kind == "nm" else kind.block[0] * kind.block[1]
        units = p.numel() // size
        cap = p.numel() // kind.m * (kind.m - kind.n) if kind.kind == "nm" else units
        if name in self.units:  # the model was thinned: keep the pruned fraction
            pruned = min(round(self.pruned[name] / max(self.units[name], 1) * units), cap)
        elif fresh:
            pruned = 0
        else:
            gone = ~mask if size == 1 else (~to_groups(mask, kind.block)).all(dim=1)
            pruned = int(gone.sum())
        self.numel[name], self.unit_size[name], self.units[name], self.cap[name] = p.numel(), size, units, cap
        self.pruned[name] = pruned

    def _count(self, m: Any, epoch: float) -> None:
        names = list(m.masker.params)
        fresh = m.masker.version == 0  # no mask was ever set: all True
        for n in names:
            if n not in self.units or self.numel[n] != m.masker.params[n].numel():  # new, or thinned
                self._init_param(n, m.masker.params[n], m.masker.masks[n], fresh)
        if m.global_sparsity and names:
            total = sum(self.units[n] for n in names)
            k = round(m.target_at(names[0], epoch) * total)
            k = min(k, sum(self.cap[n] for n in names))
            k = max(k, sum(self.pruned[n] for n in names))
            for n, v in zip(names, allocate(k, names, self.units, self.pruned, self.cap), strict=True):
                self.pruned[n] = v
            return
        for n in names:
            k = min(round(m.target_at(n, epoch) * self.units[n]), self.cap[n])
            self.pruned[n] = max(k, self.pruned[n])

    def zeros(self) -> dict[str, float]:
        """Pruned fraction of each parameter's elements."""
        return {n: self.pruned[n] * self.unit_size[n] / max(self.numel[n], 1) for n in self.pruned}


def no_op() -> None:
    """Masks are not re-applied in a dry run: nothing changes the weights between mask updates."""


def allocate(k: int, names: list[str], units: dict, pruned: dict, cap: dict) -> list[int]:
    """Split ``k`` pruned units over tensors for global ranking: each keeps what it has pruned, the
    rest goes in proportion to what each can still lose (the real split needs real weights; the
    total is exact)."""
    want = {n: pruned[n] for n in names}
    left = k - sum(want.values())
    room = {n: cap[n] - want[n] for n in names}
    total_room = sum(room.values())
    if left <= 0 or total_room <= 0:
        return [want[n] for n in names]
    for n in names:
        want[n] += min(room[n], left * room[n] // total_room)
    left = k - sum(want.values())
    for n in sorted(names, key=lambda n: want[n] - cap[n]):  # the remainder, to the roomiest first
        if left <= 0:
            break
        if want[n] < cap[n]:
            want[n] += 1
            left -= 1
    return [want[n] for n in names]


def fast_is_exact(m: Any) -> bool:
    """Whether :class:`FastMasks` gives ``m``'s outcome. Not for ``mask_type: channel`` ranked by
    ``l1`` / ``l2``: a channel is scored by the columns of the layer that reads it, and that layer's
    rows are zeroed when its own output channels go, so the scores change with the masks."""
    return getattr(m, "structure", None) != "channel" or m.importance == "bn_gamma"


def shared_structured(mods: list[Any]) -> str:
    """Why masks must be chosen by magnitude, or "": a filter / channel pruner ranks channels by the
    weights, so when another magnitude pruner zeroes weights before its last update, the choice of
    one depends on the other's zeros (the dry run's position-chosen masks zero nothing)."""
    structured = [m for m in mods if getattr(m, "structure", None)]
    magnitude = [m for m in mods if hasattr(m, "target_at")]
    for s in structured:
        for o in magnitude:
            if o is not s and o.start_epoch < s.end_epoch:
                return f"!{o.tag} ({o.where}) zeroes weights while !{s.tag} ({s.where}) still ranks channels"
    return ""
