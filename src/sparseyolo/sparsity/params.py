"""Selecting parameters by recipe names: exact names, ``re:`` patterns, ``__ALL_PRUNABLE__``."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

import torch
from torch import nn

from sparseyolo.utils.errors import ConfigError

ALL_PRUNABLE_TOKEN = "__ALL_PRUNABLE__"
ALL_TOKEN = "__ALL__"

# modules whose ``weight`` counts as prunable (SparseML: conv and linear layers)
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_param_names(model: nn.Module, min_numel: int = 0) -> list[str]:
    """Names of the ``weight`` of every conv / linear layer (with at least ``min_numel`` elements),
    in module order."""
    names = []
    for mod_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, PRUNABLE_TYPES) and isinstance(weight, nn.Parameter) and weight.numel() >= min_numel:
            names.append(f"{mod_name}.weight" if mod_name else "weight")
    return names


def resolve_params(
    model: nn.Module, specs: Iterable[str] | str, where: str = "recipe"
) -> list[tuple[str, nn.Parameter]]:
    """Match recipe ``params`` entries against ``model.named_parameters()``.

    Entries are exact names, ``re:<pattern>`` (``re.match`` from the start of the name, as in
    SparseML), ``__ALL_PRUNABLE__`` (all conv/linear weights) or ``__ALL__`` (every parameter).
    An entry that matches nothing is an error listing the closest parameter names.
    Returns ``(name, parameter)`` pairs in model order, without duplicates.
    """
    named = dict(model.named_parameters())
    if isinstance(specs, str):
        specs = [specs]
    chosen: set[str] = set()
    for spec in specs:
        if not isinstance(spec, str):
            raise ConfigError(f"{where}: params entries must be strings, got {spec!r}")
        token = spec.strip()
        if token.upper() == ALL_PRUNABLE_TOKEN:
            hits = prunable_param_names(model)
        elif token.upper() == ALL_TOKEN:
            hits = list(named)
        elif token.startswith("re:"):
            try:
                pattern = re.compile(token[3:])
            except re.error as err:
                raise ConfigError(f"{where}: bad regular expression {token!r}: {err}") from None
            hits = [n for n in named if pattern.match(n)]
        else:
            hits = [token] if token in named else []
        if not hits:
            close = difflib.get_close_matches(token.removeprefix("re:"), list(named), n=5, cutoff=0.5)
            hint = f"; closest names: {', '.join(close)}" if close else ""
            raise ConfigError(f"{where}: params entry {token!r} matches no parameter of the model{hint}")
        chosen.update(hits)
    return [(n, p) for n, p in named.items() if n in chosen]


def find_param_name(model: nn.Module, param: torch.Tensor) -> str | None:
    """The name under which ``param`` (by identity) lives in ``model``."""
    for name, p in model.named_parameters():
        if p is param:
            return name
    return None
