"""Magnitude mask creators: unstructured, blocks (e.g. ``[1, 4]``) and N:M (e.g. ``"2:4"``).

Every pattern is expressed as *groups* of weights that are pruned together:

* unstructured: each weight is its own group;
* block ``[bo, bi]``: ``bo`` consecutive output channels x ``bi`` consecutive input channels at one
  kernel position (``[1, 4]`` = 4 consecutive input channels of one filter tap); the score of a
  block is the mean ``|w|`` of its members;
* N:M: groups of M consecutive input channels at one output channel and kernel position in which
  at most ``M - N`` weights are pruned (N of every M are kept, as SparseML's ``NMPruningMaskCreator``
  documents), so the pattern's full sparsity is ``(M - N) / M``.

Selection is exact and deterministic: ``round(target * n_groups)`` groups with the lowest score are
pruned (ties broken by position, via a stable sort), already-pruned groups are kept pruned first
(monotone masks), and for global pruning all tensors share one ranking.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sparseyolo.utils.errors import ConfigError

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class MaskType:
    """A parsed ``mask_type``: ``kind`` is ``unstructured``, ``block`` or ``nm``."""

    kind: str
    block: tuple[int, int] = (1, 1)  # (output channels, input channels) per group
    n: int = 0  # N:M: weights kept per group
    m: int = 0  # N:M: group size

    @property
    def max_sparsity(self) -> float:
        return (self.m - self.n) / self.m if self.kind == "nm" else 1.0

    def to_recipe(self) -> Any:
        """The value to write back into a recipe."""
        if self.kind == "unstructured":
            return "unstructured"
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        return list(self.block)


def parse_mask_type(value: Any, where: str = "recipe") -> MaskType:
    """Parse SparseML ``mask_type`` values: ``unstructured``, ``[1, 4]``, ``block``/``block4``, ``"2:4"``."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "unstructured"):
        return MaskType("unstructured")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("block", "block4"):  # SparseML's names for the 1x4 block creator
            return MaskType("block", (1, 4))
        match = _NM_RE.match(text)
        if match:
            n, m = int(match.group(1)), int(match.group(2))
            if m < 1 or not 0 < n <= m:
                raise ConfigError(f"{where}: mask_type {value!r} needs 0 < N <= M")
            return MaskType("nm", (1, m), n, m)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        if tuple(value) == (1, 1):
            return MaskType("unstructured")
        return MaskType("block", (int(value[0]), int(value[1])))
    raise ConfigError(
        f"{where}: unsupported mask_type {value!r}; use 'unstructured', a block shape such as "
        "[1, 4], or an N:M pattern such as '2:4'"
    )


def check_shape(shape: Sequence[int], mask_type: MaskType, name: str, where: str = "recipe") -> None:
    """Raise if ``mask_type`` cannot tile a parameter of ``shape``."""
    if mask_type.kind == "unstructured":
        return
    bo, bi = mask_type.block
    if len(shape) < 2:
        raise ConfigError(
            f"{where}: mask_type {mask_type.to_recipe()} needs a 2-D or larger parameter; "
            f"{name} has shape {list(shape)}"
        )
    if shape[0] % bo or shape[1] % bi:
        raise ConfigError(
            f"{where}: mask_type {mask_type.to_recipe()} does not tile {name} of shape {list(shape)} "
            f"(output channels must divide by {bo}, input channels by {bi})"
        )


def to_groups(t: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Reshape a weight ``(O, I, *k)`` to ``(n_groups, bo * bi)``; ``(1, 1)`` flattens to ``(numel, 1)``."""
    if block == (1, 1):
        return t.reshape(-1, 1)
    bo, bi = block
    o, i = t.shape[0], t.shape[1]
    r = t[0, 0].numel()
    x = t.reshape(o, i, r).permute(2, 0, 1)  # (R, O, I): one kernel position at a time
    x = x.reshape(r, o // bo, bo, i // bi, bi).permute(0, 1, 3, 2, 4)
    return x.reshape(-1, bo * bi)


def from_groups(g: torch.Tensor, shape: Sequence[int], block: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_groups` for a tensor of group values ``(n_groups, bo * bi)``."""
    if block == (1, 1):
        return g.reshape(shape)
    bo, bi = block
    o, i = shape[0], shape[1]
    r = math.prod(shape[2:]) if len(shape) > 2 else 1
    x = g.reshape(r, o // bo, i // bi, bo, bi).permute(0, 1, 3, 2, 4).reshape(r, o, i)
    return x.permute(1, 2, 0).reshape(shape)


def _candidates(weight: torch.Tensor, mask: torch.Tensor, mask_type: MaskType) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the prunable units of one tensor and which of them are already pruned.

    Units are whole groups for unstructured/block patterns and single weights for N:M (where only
    the ``M - N`` lowest weights of each group are candidates: the others get score ``+inf``).
    """
    # computed where the weight lives (a stable sort of a YOLO layer is fast on a GPU)
    w = to_groups(weight.detach().abs().float(), mask_type.block)
    pruned = ~to_groups(mask.to(weight.device), mask_type.block)
    if mask_type.kind != "nm":
        return w.mean(dim=1), pruned.all(dim=1)
    # N:M: rank inside each group (pruned first, then by |w|, ties by position)
    key = torch.where(pruned, torch.full_like(w, -1.0), w)
    order = torch.sort(key, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(w.shape[1], device=w.device).expand_as(order).contiguous())
    scores = torch.where(rank < mask_type.m - mask_type.n, w, torch.full_like(w, math.inf))
    return scores.reshape(-1), pruned.reshape(-1)


def _unit_size(mask_type: MaskType) -> int:
    return 1 if mask_type.kind == "nm" else mask_type.block[0] * mask_type.block[1]


def magnitude_masks(
    weights: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    targets: Sequence[float] | float,
    mask_type: MaskType,
    global_sparsity: bool = False,
) -> list[torch.Tensor]:
    """New boolean keep-masks (True = keep) for ``weights`` at the target sparsities.

    ``masks`` are the current keep-masks; pruned units stay pruned (monotone), so a target below
    the current sparsity leaves the mask unchanged. ``global_sparsity`` ranks all tensors together
    against one scalar target.
    """
    if global_sparsity:
        target = float(targets if not isinstance(targets, Sequence) else targets[0])
        parts = [_candidates(w, m, mask_type) for w, m in zip(weights, masks, strict=False)]
        device = parts[0][0].device  # global ranking: gather the scores on one device
        scores = torch.cat([p[0].to(device) for p in parts])
        pruned = torch.cat([p[1].to(device) for p in parts])
        keep = _select(scores, pruned, target, mask_type)
        out, offset = [], 0
        for w, (s, _) in zip(weights, parts, strict=False):
            out.append(_expand(keep[offset : offset + s.numel()], w, mask_type))
            offset += s.numel()
        return out
    if not isinstance(targets, Sequence):
        targets = [float(targets)] * len(weights)
    out = []
    for w, m, t in zip(weights, masks, targets, strict=False):
        scores, pruned = _candidates(w, m, mask_type)
        out.append(_expand(_select(scores, pruned, float(t), mask_type), w, mask_type))
    return out


def _select(scores: torch.Tensor, pruned: torch.Tensor, target: float, mask_type: MaskType) -> torch.Tensor:
    """Keep-flags for units: prune ``round(target * n_units)`` (N:M: of weights) lowest scores."""
    n = scores.numel()
    if mask_type.kind == "nm":
        k = round(target * n)  # units are weights here
        k = min(k, int(torch.isfinite(scores).sum()))
    else:
        k = round(target * n)
    k = max(k, int(pruned.sum()))
    key = torch.where(pruned, torch.full_like(scores, -math.inf), scores)
    order = torch.sort(key, stable=True).indices
    keep = torch.ones(n, dtype=torch.bool, device=scores.device)
    keep[order[:k]] = False
    return keep


def _expand(keep_units: torch.Tensor, weight: torch.Tensor, mask_type: MaskType) -> torch.Tensor:
    if mask_type.kind == "nm":
        groups = keep_units.reshape(-1, mask_type.m)
    else:
        groups = keep_units.reshape(-1, 1).expand(-1, _unit_size(mask_type))
    return from_groups(groups, weight.shape, mask_type.block).to(weight.device)


def magnitude_prune_(weight: torch.Tensor, sparsity: float, mask_type: MaskType | None = None) -> torch.Tensor:
    """Zero the ``sparsity`` fraction of ``weight``'s units with the lowest magnitude, in place (exactly
    ``round(sparsity * n_units)``, ties by position); returns the keep-mask. One-shot use (sensitivity
    analysis, tests): training goes through :class:`~sparseyolo.sparsity.masker.ParamMasker`."""
    mask_type = mask_type or MaskType("unstructured")
    with torch.no_grad():
        keep = magnitude_masks([weight], [torch.ones_like(weight, dtype=torch.bool)], sparsity, mask_type)[0]
        weight.masked_fill_(~keep, 0.0)  # masked_fill, not mul: NaN * 0 is NaN
    return keep


def tensor_sparsity(t: torch.Tensor) -> float:
    """Fraction of exact zeros."""
    return float((t == 0).sum()) / max(t.numel(), 1)
