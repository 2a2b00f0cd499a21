"""A tiny publish / subscribe bus: the recipe manager announces its phases on one, the trainer's
hooks share what happened through another, so no part reaches into another's attributes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sparseyolo.utils.errors import SparseYoloError


class EventBus:
    """``subscribe(event, callback)``; ``emit(event, **info)`` calls ``callback(**info)`` in
    subscription order. Only the events named at construction exist, so a typo is an error."""

    def __init__(self, events: Iterable[str], owner: str = "event"):
        self._listeners: dict[str, list[Callable[..., None]]] = {e: [] for e in events}
        self._owner = owner

    @property
    def events(self) -> tuple[str, ...]:
        return tuple(self._listeners)

    def subscribe(self, event: str, callback: Callable[..., None]) -> None:
        if event not in self._listeners:
            raise SparseYoloError(f"unknown {self._owner} {event!r}; events: {', '.join(self._listeners)}")
        self._listeners[event].append(callback)

    def emit(self, event: str, **info: Any) -> None:
        if event not in self._listeners:
            raise SparseYoloError(f"unknown {self._owner} {event!r}; events: {', '.join(self._listeners)}")
        for callback in self._listeners[event]:
            callback(**info)
