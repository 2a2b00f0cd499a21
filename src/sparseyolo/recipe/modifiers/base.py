"""The modifier base class and the ``modifier`` registry.

A modifier is a scheduled object: ``start_epoch``, ``end_epoch`` (``-1`` = never ends) and, for
modifiers that update repeatedly, ``update_frequency``. The :class:`~sparseyolo.recipe.manager.RecipeManager`
sorts modifiers and drives them: ``on_attach`` (validate against the model), ``on_start`` (first
epoch reached), ``on_update`` (every manager tick while active; the modifier decides whether an
update is due), ``on_end`` (end epoch reached) and ``on_finalize``.

Each subclass declares its recipe keys in ``FIELDS`` (name -> default, :data:`REQUIRED` for none).
Unknown keys are an error naming the key, its line and the valid keys.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, ClassVar

from sparseyolo.utils.errors import ConfigError
from sparseyolo.utils.registry import Registry

if TYPE_CHECKING:
    from sparseyolo.recipe.manager import RecipeManager

MODIFIERS: Registry[type[Modifier]] = Registry("modifier")

# SparseML keys that only steer its own loggers; accepted and ignored here
LOGGING_KEYS = frozenset({"log_types", "constant_logging"})

# tolerance of epoch comparisons that are ours alone (QAT phases, thinning); the schedules SparseML
# also has compare exactly, as SparseML does (see sparsity/schedule.py)
EPS = 1e-9


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class Modifier:
    """Base class: parses and validates recipe keys, holds the schedule and lifecycle flags."""

    FIELDS: ClassVar[dict[str, Any]] = {"start_epoch": -1.0, "end_epoch": -1.0}
    # keys holding epochs: shifted when a recipe stage runs after earlier stages
    EPOCH_KEYS: ClassVar[tuple[str, ...]] = ("start_epoch", "end_epoch")
    # order among modifiers that start at the same epoch (lower first)
    ORDER: ClassVar[int] = 50
    tag: ClassVar[str] = "Modifier"

    def __init__(
        self,
        args: dict[str, Any] | None = None,
        source: str = "recipe",
        line: int | None = None,
        key_lines: dict[str, int] | None = None,
    ):
        args = dict(args or {})
        self.where = f"{source}:{line}" if line else source
        self.source = source
        key_lines = key_lines or {}
        self.key_lines = dict(key_lines)
        valid = sorted(set(self.FIELDS) | LOGGING_KEYS)
        for key in args:
            if key not in self.FIELDS and key not in LOGGING_KEYS:
                key_line = key_lines.get(key)
                loc = f"{source}:{key_line}" if key_line else self.where
                hint = difflib.get_close_matches(str(key), valid, n=3, cutoff=0.5)
                msg = f"{loc}: unknown key {key!r} for !{self.tag}"
                msg += f"; did you mean {', '.join(map(repr, hint))}?" if hint else ""
                raise ConfigError(f"{msg} Valid keys: {', '.join(valid)}")
        missing = [k for k, d in self.FIELDS.items() if d is REQUIRED and k not in args]
        if missing:
            raise ConfigError(f"{self.where}: !{self.tag} is missing required key(s) {', '.join(missing)}")
        self.given = {k: v for k, v in args.items() if k in self.FIELDS}
        self.ignored = {k: v for k, v in args.items() if k in LOGGING_KEYS}
        for key, default in self.FIELDS.items():
            setattr(self, key, args.get(key, default))
        for key in self.EPOCH_KEYS:
            value = getattr(self, key, None)
            if value is not None:
                setattr(self, key, self._number(key, value))
        self.started = False
        self.ended = False
        self.validate()

    # --- validation helpers -------------------------------------------------------------------
    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.where}: !{self.tag}: {message}")

    def where_key(self, key: str) -> str:
        """``file:line`` of ``key`` in the recipe (the modifier's line when unknown)."""
        line = self.key_lines.get(key)
        return f"{self.source}:{line}" if line else self.where

    def _number(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"{key} must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float (e.g. reached through a YAML alias)
            raise ConfigError(f"{self.where_key(key)}: !{self.tag}: {key} is too large a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"{self.where_key(key)}: !{self.tag}: {key} must be a finite number, got {value!r}")
        return number

    def validate(self) -> None:
        """Check values; subclasses extend."""
        if self.end_epoch >= 0 and self.start_epoch >= 0 and self.end_epoch < self.start_epoch:
            raise self.error(f"end_epoch {self.end_epoch} is before start_epoch {self.start_epoch}")

    # --- schedule ----------------------------------------------------------------------------
    def shift(self, offset: float) -> None:
        """Move every epoch key by ``offset`` (stages run one after another)."""
        for key in self.EPOCH_KEYS:
            value = getattr(self, key, None)
            if isinstance(value, (int, float)) and value >= 0:
                setattr(self, key, float(value) + offset)
                if key in self.given:
                    self.given[key] = float(value) + offset

    def starts_by(self, epoch: float) -> bool:
        """SparseML's ``start_pending``: ``epoch >= start_epoch`` exactly (``epoch`` is the manager's
        :func:`~sparseyolo.sparsity.schedule.step_epoch`), or a negative start (from the first step)."""
        return self.start_epoch < 0 or epoch >= self.start_epoch

    def ends_by(self, epoch: float) -> bool:
        """SparseML's ``end_pending``: ``epoch >= end_epoch`` exactly; the step that reaches it still
        runs the modifier's end update."""
        return self.end_epoch >= 0 and epoch >= self.end_epoch

    @property
    def last_epoch(self) -> float:
        """The latest epoch this modifier names (for ``max_epochs``)."""
        return max(self.start_epoch, self.end_epoch, 0.0)

    # --- lifecycle (the manager calls these) -----------------------------------------------------
    def on_attach(self, manager: RecipeManager) -> None:
        """Check the recipe against the model; raise ConfigError early."""

    def on_start(self, manager: RecipeManager, epoch: float) -> None:
        """The start epoch was reached."""

    def on_update(self, manager: RecipeManager, epoch: float) -> None:
        """Called on every manager tick while started and not ended."""

    def on_end(self, manager: RecipeManager, epoch: float) -> None:
        """The end epoch was reached."""

    def on_finalize(self, manager: RecipeManager) -> None:
        """Training finished."""

    def on_thinned(self, manager: RecipeManager, plan: Any) -> None:
        """The model lost channels (``plan``: a :class:`~sparseyolo.sparsity.ThinningPlan`): re-bind
        anything held on its old parameters."""

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "started": self.started, "ended": self.ended}

    def load_state_dict(self, state: dict[str, Any], manager: RecipeManager) -> None:
        if state.get("tag") != self.tag:
            raise ConfigError(
                f"recipe state does not match the recipe: expected !{self.tag}, found !{state.get('tag')}"
            )
        self.started = bool(state["started"])
        self.ended = bool(state["ended"])

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The recipe keys of this modifier (explicitly given ones, with resolved values)."""
        return dict(self.given)

    def __repr__(self) -> str:
        return f"{self.tag}({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"


def register(cls: type[Modifier]) -> type[Modifier]:
    """Register a modifier class under its ``tag`` (the ``!Tag`` users write)."""
    MODIFIERS.register(cls.tag)(cls)
    return cls
