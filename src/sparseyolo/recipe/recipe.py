"""The :class:`Recipe`: variables, overrides, stages and modifiers of a SparseML-format recipe."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sparseyolo.recipe.expressions import evaluate_value, resolve_variables
from sparseyolo.recipe.loader import ModifierSpec, ParsedRecipe, VarRef, load_scalar, parse_recipe_text, read_source
from sparseyolo.recipe.modifiers import MODIFIERS, Modifier
from sparseyolo.utils.errors import ConfigError

if TYPE_CHECKING:
    from sparseyolo.recipe.manager import RecipeManager


def parse_recipe_args(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Overrides from a dict, JSON text (``'{"num_epochs": 10}'``) or ``k=v,k2=v2`` text.

    Values of ``k=v`` pairs are read as YAML scalars/flow values (``3`` -> int, ``0.5`` -> float,
    ``[1, 4]`` -> list). Commas inside brackets do not split pairs.
    """
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"recipe args: invalid JSON {text!r}: {err}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"recipe args: expected a JSON object, got {text!r}")
        return value
    out: dict[str, Any] = {}
    for pair in _split_pairs(text):
        if "=" not in pair:
            raise ConfigError(f"recipe args: expected key=value, got {pair!r} in {text!r}")
        key, raw = (s.strip() for s in pair.split("=", 1))
        try:
            out[key] = load_scalar(raw) if raw else None
        except yaml.YAMLError:
            out[key] = raw
    return out


def _split_pairs(text: str) -> list[str]:
    pairs, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            pairs.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        pairs.append(cur)
    return [p.strip() for p in pairs if p.strip()]


def _substitute(
    value: Any, scope: Mapping[str, Any], stage_scopes: Mapping[str | None, Mapping[str, Any]], where: str
) -> Any:
    """Replace variable references and evaluate ``eval(...)`` strings in a modifier argument."""
    if isinstance(value, VarRef):
        return stage_scopes[value.scope][value.name]
    if isinstance(value, list):
        return [_substitute(v, scope, stage_scopes, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, scope, stage_scopes, where) for k, v in value.items()}
    return evaluate_value(value, scope, where)


class Recipe:
    """A loaded recipe: resolved variables and the ordered list of modifiers.

    Build with :meth:`Recipe.load`; make a :class:`RecipeManager` with :meth:`manager`.
    """

    def __init__(
        self,
        variables: dict[str, Any],
        modifiers: list[Modifier],
        source: str,
        args: dict[str, Any],
        stage_variables: dict[str, dict[str, Any]] | None = None,
    ):
        self.variables = variables
        self.stage_variables = stage_variables or {}
        self.modifiers = modifiers
        self.source = source
        self.args = args

    # --- loading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | Path, args: Mapping[str, Any] | str | None = None) -> Recipe:
        """Load a recipe from a path, ``zoo:`` stub, built-in name or YAML text, with overrides."""
        text, label = read_source(source)
        parsed = parse_recipe_text(text, label)
        overrides = parse_recipe_args(args)
        return cls._build(parsed, overrides, label)

    @classmethod
    def _build(cls, parsed: ParsedRecipe, overrides: dict[str, Any], label: str) -> Recipe:
        top_raw = dict(parsed.variables)
        stage_raw = {name: dict(stage.variables) for name, stage in parsed.stages}
        cls._apply_overrides(top_raw, stage_raw, overrides, label)
        top = resolve_variables(top_raw, where=label)
        scopes: dict[str | None, dict[str, Any]] = {None: top}
        for name, raw in stage_raw.items():
            stage_only = resolve_variables(raw, outer=top, where=f"{label} stage {name!r}")
            scopes[name] = {**top, **stage_only}
        modifiers = cls._make_modifiers(parsed, None, scopes, label)
        offset = max((m.last_epoch for m in modifiers), default=0.0)
        for name, stage in parsed.stages:
            if stage.stages:
                raise ConfigError(f"{label}: stage {name!r} contains another stage; stages cannot nest")
            stage_mods = cls._make_modifiers(stage, name, scopes, label)
            if not stage_mods:
                raise ConfigError(f"{label}: stage {name!r} has no modifiers")
            length = max(m.last_epoch for m in stage_mods)
            for m in stage_mods:
                m.shift(offset)
            offset += length
            modifiers.extend(stage_mods)
        if not modifiers:
            raise ConfigError(f"{label}: the recipe has no modifiers (lists under keys containing 'modifiers')")
        stage_vars = {n: {k: scopes[n][k] for k in stage_raw[n]} for n in stage_raw}
        recipe = cls(top, modifiers, label, overrides, stage_vars)
        recipe._parsed = parsed
        return recipe

    @staticmethod
    def _apply_overrides(
        top: dict[str, Any], stages: dict[str, dict[str, Any]], overrides: dict[str, Any], label: str
    ) -> None:
        known = list(top) + [f"{s}.{k}" for s, raw in stages.items() for k in raw]
        for key, value in overrides.items():
            if key in top:
                top[key] = value
                continue
            if "." in key and key.split(".", 1)[0] in stages and key.split(".", 1)[1] in stages[key.split(".", 1)[0]]:
                stage, name = key.split(".", 1)
                stages[stage][name] = value
                continue
            owners = [s for s, raw in stages.items() if key in raw]
            if len(owners) == 1:
                stages[owners[0]][key] = value
                continue
            raise ConfigError(
                f"{label}: recipe override {key!r} is not a variable of the recipe; "
                f"variables: {', '.join(known) or 'none'}"
            )

    @staticmethod
    def _make_modifiers(
        parsed: ParsedRecipe, stage: str | None, scopes: dict[str | None, dict[str, Any]], label: str
    ) -> list[Modifier]:
        out: list[Modifier] = []
        for _, specs in parsed.groups:
            for spec in specs:
                out.append(Recipe._make_modifier(spec, scopes[stage], scopes, label))
        return out

    @staticmethod
    def _make_modifier(
        spec: ModifierSpec, scope: dict[str, Any], scopes: dict[str | None, dict[str, Any]], label: str
    ) -> Modifier:
        where = f"{label}:{spec.line}" if spec.line else label
        args = {k: _substitute(v, scope, scopes, f"{where} (key {k!r})") for k, v in spec.args.items()}
        cls = MODIFIERS.get(spec.tag)
        return cls(args, source=label, line=spec.line, key_lines=spec.key_lines)

    # --- use -----------------------------------------------------------------------------------------
    def manager(self) -> RecipeManager:
        """A fresh manager driving a copy of this recipe's modifiers."""
        from sparseyolo.recipe.manager import RecipeManager

        parsed = getattr(self, "_parsed", None)
        fresh = Recipe._build(parsed, self.args, self.source) if parsed else Recipe.load(self.to_yaml())
        return RecipeManager(fresh.modifiers, recipe=self)

    @property
    def max_epochs(self) -> int:
        import math

        return int(math.ceil(max((m.last_epoch for m in self.modifiers), default=0.0) - 1e-9))

    def to_yaml(self) -> str:
        """Resolved recipe YAML (``!Tags``, absolute epochs, values substituted) that loads to the same schedule."""
        return dump_recipe(self.variables, self.modifiers)

    def __repr__(self) -> str:
        return f"Recipe({self.source!r}, {len(self.modifiers)} modifiers, max_epochs={self.max_epochs})"


class _Dumper(yaml.SafeDumper):
    pass


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _represent_modifier(dumper: yaml.SafeDumper, mod: Modifier) -> yaml.Node:
    data = {k: _plain(v) for k, v in mod.to_dict().items()}
    data.update({k: _plain(v) for k, v in mod.ignored.items()})
    return dumper.represent_mapping(f"!{mod.tag}", data)


_Dumper.add_multi_representer(Modifier, _represent_modifier)


def dump_recipe(variables: Mapping[str, Any], modifiers: list[Modifier]) -> str:
    """YAML text for resolved variables and modifiers (all modifiers in one ``modifiers`` list)."""
    doc: dict[str, Any] = {k: _plain(v) for k, v in variables.items()}
    doc["modifiers"] = list(modifiers)
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=None)
