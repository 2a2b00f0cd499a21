"""Name -> object registries (timm style) whose failed lookups suggest close names."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from sparseyolo.utils.errors import SparseYoloError

T = TypeVar("T")


def close_matches(name: str, candidates: list[str] | tuple[str, ...], n: int = 5) -> list[str]:
    """Return up to ``n`` candidates that look like ``name`` (for 'did you mean' messages)."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.4)


class Registry(Generic[T]):
    """A named table of classes or builders, filled with the :meth:`register` decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or obj.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            hint = close_matches(name, tuple(self._items))
            msg = f"unknown {self.kind} {name!r}"
            msg += f"; did you mean {', '.join(map(repr, hint))}?" if hint else ""
            msg += f" Known: {', '.join(sorted(self._items))}"
            raise SparseYoloError(msg) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
