"""Reading recipe text: sources, Markdown front matter, YAML with ``!Modifier`` tags.

* Sources: a ``.md`` file (YAML front matter between ``---`` lines, after any leading HTML
  comment such as a licence header), a ``.yaml``/``.yml`` file, raw YAML text, a ``zoo:`` stub
  (looked up in the ``recipes:`` section of ``configs/zoo.yaml``), or the name of a built-in
  recipe in ``configs/recipes/``.
* Tags are parsed by YAML constructors registered for every modifier name (no text rewriting);
  an unknown tag is an error naming its line.
* Anchors and aliases work. An alias of a top-level (or stage-level) variable is kept as a
  :class:`VarRef`, so that overriding the variable (``--recipe-args num_epochs=3``) also changes
  every place that wrote ``*num_epochs``, as it would with ``eval(num_epochs)``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparseyolo.recipe.modifiers import MODIFIERS
from sparseyolo.utils.errors import ConfigError
from sparseyolo.utils.registry import close_matches

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
RECIPE_DIR = CONFIG_DIR / "recipes"
ZOO_FILE = CONFIG_DIR / "zoo.yaml"

_COMMENT_RE = re.compile(r"\A(\s*<!--.*?-->)+", re.DOTALL)
_FRONT_RE = re.compile(r"\A(\s*)---[ \t]*\r?\n(.*?)^---[ \t]*$", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class VarRef:
    """A value that is an alias of a recipe variable (``scope`` = stage name or None)."""

    name: str
    scope: str | None = None


@dataclass
class ModifierSpec:
    """A ``!Tag`` mapping as written: values may hold :class:`VarRef` and ``eval(...)`` strings."""

    tag: str
    args: dict[str, Any]
    line: int | None
    key_lines: dict[str, int] = field(default_factory=dict)


# --- sources -------------------------------------------------------------------------------------
def _zoo_file() -> Path:
    env = os.environ.get("SPARSEYOLO_ZOO_FILE")
    return Path(env).expanduser() if env else ZOO_FILE


def _zoo_recipes() -> dict[str, dict[str, Any]]:
    """The ``recipes:`` section of the zoo file (read tolerantly: the model zoo owns that file).

    Entries map a stub to a path / URL string, or to a mapping with ``path`` (or ``file``,
    ``recipe``) or ``url`` and an optional ``sha256``.
    """
    zoo = _zoo_file()
    if not zoo.is_file():
        return {}
    try:
        data = yaml.safe_load(zoo.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return {}
    section = data.get("recipes") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for key, value in section.items():
        if isinstance(value, str):
            value = {"url": value} if value.startswith(("http://", "https://")) else {"path": value}
        if isinstance(value, dict):
            target = value.get("path") or value.get("file") or value.get("recipe")
            if isinstance(target, str):
                out[str(key)] = {"path": target}
            elif isinstance(value.get("url"), str):
                out[str(key)] = {"url": value["url"], "sha256": value.get("sha256")}
    return out


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipe names (file stem and file name) -> path."""
    out: dict[str, Path] = {}
    if RECIPE_DIR.is_dir():
        for path in sorted(RECIPE_DIR.iterdir()):
            if path.suffix in (".md", ".yaml", ".yml"):
                out.setdefault(path.stem, path)
                out.setdefault(path.name, path)
    return out


def _resolve_zoo(stub: str) -> Path:
    key = stub[len("zoo:") :].strip()
    table = _zoo_recipes()
    entry = table.get(key) or table.get(stub)
    if entry is not None and "url" in entry:
        from sparseyolo.utils.downloads import cache_dir, download

        name = entry["url"].rstrip("/").rsplit("/", 1)[-1] or "recipe.md"
        dest = cache_dir() / "recipes" / key.replace("/", "_").replace(":", "_") / name
        return download(entry["url"], dest, sha256=entry.get("sha256"), progress=False)
    target = entry["path"] if entry is not None else None
    if target is None and key in builtin_recipes():
        return builtin_recipes()[key]
    if target is None:
        names = sorted(set(table) | set(builtin_recipes()))
        hint = close_matches(key, names)
        raise ConfigError(
            f"unknown recipe stub {stub!r}"
            + (f"; did you mean {', '.join(hint)}?" if hint else "")
            + (f" Known: {', '.join(names)}" if names else " (no recipe stubs are registered)")
        )
    path = Path(target)
    if not path.is_absolute():
        for base in (CONFIG_DIR, RECIPE_DIR):
            if (base / path).is_file():
                return base / path
        if target in builtin_recipes():
            return builtin_recipes()[target]
    if not path.is_file():
        raise ConfigError(f"recipe stub {stub!r} points to {target!r}, which does not exist")
    return path


def read_source(source: str | Path) -> tuple[str, str]:
    """Return ``(yaml_text, label)`` for a path, ``zoo:`` stub, built-in name or YAML text.

    The YAML text keeps the line numbers of the original file (front matter prefix is blanked).
    """
    if isinstance(source, Path):
        path: Path | None = source
    else:
        text = str(source)
        path = None
        if text.startswith("zoo:"):
            path = _resolve_zoo(text)
        elif "\n" not in text and len(text) < 4096:
            candidate = Path(text).expanduser()
            if candidate.is_file():
                path = candidate
            elif text in builtin_recipes():
                path = builtin_recipes()[text]
            elif candidate.suffix in (".md", ".yaml", ".yml"):
                raise ConfigError(f"recipe file not found: {text}")
        if path is None:
            return extract_front_matter(text, "<recipe>"), "<recipe>"
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    raw = path.read_text(encoding="utf-8")
    return extract_front_matter(raw, str(path)), str(path)


def extract_front_matter(text: str, label: str) -> str:
    """YAML of a Markdown recipe (between ``---`` lines after optional HTML comments), else ``text``.

    Everything before the YAML body is replaced by newlines so YAML line numbers match the file.
    """
    comment = _COMMENT_RE.match(text)
    start = comment.end() if comment else 0
    rest = text[start:]
    match = _FRONT_RE.match(rest)
    if match:
        prefix = text[:start] + rest[: match.start(2)]
        return "\n" * prefix.count("\n") + match.group(2)
    if comment:
        if rest.lstrip().startswith("---"):
            raise ConfigError(f"{label}: front matter starts with '---' but has no closing '---' line")
        return "\n" * text[:start].count("\n") + rest
    return text


# --- YAML ---------------------------------------------------------------------------------------
class ScalarLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 base-60 integers, so ``mask_type: 2:4`` stays the string '2:4'."""


ScalarLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:int"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ScalarLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"""^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$""", re.X),
    list("-+0123456789"),
)


def load_scalar(text: str) -> Any:
    """Read a value written on the command line (``3``, ``0.5``, ``[1, 4]``, ``2:4``)."""
    return yaml.load(text, Loader=ScalarLoader)


class RecipeLoader(ScalarLoader):
    """SafeLoader with ``!Modifier`` constructors and variable-alias tracking."""

    label = "<recipe>"

    def __init__(self, stream: str):
        super().__init__(stream)
        self.var_nodes: dict[int, VarRef] = {}


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _construct_value(loader: RecipeLoader, node: yaml.Node) -> Any:
    ref = loader.var_nodes.get(id(node))
    if ref is not None:
        return ref
    if isinstance(node, yaml.MappingNode) and node.tag == "tag:yaml.org,2002:map":
        loader.flatten_mapping(node)
        return {loader.construct_object(k, deep=True): _construct_value(loader, v) for k, v in node.value}
    if isinstance(node, yaml.SequenceNode) and node.tag == "tag:yaml.org,2002:seq":
        return [_construct_value(loader, v) for v in node.value]
    return loader.construct_object(node, deep=True)


def _construct_modifier(loader: RecipeLoader, node: yaml.Node) -> ModifierSpec:
    tag = node.tag[1:]
    if isinstance(node, yaml.ScalarNode) and not node.value.strip():
        return ModifierSpec(tag, {}, _line(node))
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{loader.label}:{_line(node)}: !{tag} must be a mapping of keys")
    loader.flatten_mapping(node)
    args: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in args:
            raise ConfigError(f"{loader.label}:{_line(key_node)}: key {key!r} repeated in !{tag}")
        args[key] = _construct_value(loader, value_node)
        lines[key] = _line(key_node)
    return ModifierSpec(tag, args, _line(node), lines)


def _unknown_tag(loader: RecipeLoader, suffix: str, node: yaml.Node) -> Any:
    name = suffix.lstrip("!")
    hint = close_matches(name, MODIFIERS.names())
    msg = f"{loader.label}:{_line(node)}: unknown modifier tag !{name}"
    msg += f"; did you mean {', '.join('!' + h for h in hint)}?" if hint else ""
    raise ConfigError(f"{msg} Known: {', '.join(MODIFIERS.names())}")


def _register_constructors() -> None:
    for name in MODIFIERS.names():
        RecipeLoader.add_constructor(f"!{name}", _construct_modifier)
    RecipeLoader.add_multi_constructor("!", _unknown_tag)


_register_constructors()


@dataclass
class ParsedRecipe:
    """The raw structure of a recipe document."""

    variables: dict[str, Any]
    var_lines: dict[str, int]
    groups: list[tuple[str, list[ModifierSpec]]]  # (key, modifiers) in document order
    stages: list[tuple[str, ParsedRecipe]]
    label: str


def _is_modifier_key(key: str) -> bool:
    return "modifiers" in key


def _is_stage(key: str, node: yaml.Node) -> bool:
    """A top-level mapping is a stage when named so or when it holds a modifier list (SparseML's rule:
    ``pruning_phase: {pruning_modifiers: [...]}`` is a stage, not a variable to be ignored)."""
    if not isinstance(node, yaml.MappingNode):
        return False
    return "stage" in key or any(
        isinstance(k, yaml.ScalarNode) and _is_modifier_key(str(k.value)) for k, _ in node.value
    )


def _parse_mapping(loader: RecipeLoader, node: yaml.MappingNode, scope: str | None, top: bool) -> ParsedRecipe:
    loader.flatten_mapping(node)
    entries: list[tuple[str, yaml.Node, yaml.Node]] = []
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise ConfigError(f"{loader.label}:{_line(key_node)}: recipe keys must be strings, got {key!r}")
        entries.append((key, key_node, value_node))
    # first pass: register variable nodes so aliases anywhere resolve to references
    for key, _key_node, value_node in entries:
        if _is_modifier_key(key) or (top and _is_stage(key, value_node)):
            continue
        loader.var_nodes.setdefault(id(value_node), VarRef(key, scope))
    variables: dict[str, Any] = {}
    var_lines: dict[str, int] = {}
    groups: list[tuple[str, list[ModifierSpec]]] = []
    stages: list[tuple[str, ParsedRecipe]] = []
    for key, key_node, value_node in entries:
        if _is_modifier_key(key):
            if not isinstance(value_node, yaml.SequenceNode):
                raise ConfigError(f"{loader.label}:{_line(key_node)}: {key!r} must be a list of !Modifier entries")
            specs = []
            for item in value_node.value:
                value = loader.construct_object(item, deep=True)
                if not isinstance(value, ModifierSpec):
                    raise ConfigError(
                        f"{loader.label}:{_line(item)}: entries of {key!r} must be tagged modifiers such as "
                        f"!GMPruningModifier, got {value!r}"
                    )
                specs.append(value)
            groups.append((key, specs))
        elif top and _is_stage(key, value_node):
            stages.append((key, _parse_mapping(loader, value_node, key, top=False)))
        elif key == "__metadata__":
            continue  # SparseML bookkeeping, not a variable
        else:
            value = loader.construct_object(value_node, deep=True)
            if isinstance(value, ModifierSpec):
                raise ConfigError(
                    f"{loader.label}:{_line(key_node)}: modifier !{value.tag} under key {key!r}; modifiers must "
                    "be in a list whose key contains 'modifiers'"
                )
            variables[key] = value
            var_lines[key] = _line(key_node)
    return ParsedRecipe(variables, var_lines, groups, stages, loader.label)


def parse_recipe_text(text: str, label: str) -> ParsedRecipe:
    """Parse recipe YAML into variables, modifier groups and stages."""
    loader = RecipeLoader(text)
    loader.label = label
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{label}: the recipe is empty")
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(f"{label}:{_line(node)}: a recipe must be a YAML mapping")
        return _parse_mapping(loader, node, None, top=True)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        loc = f"{label}:{mark.line + 1}" if mark is not None else label
        raise ConfigError(f"{loc}: invalid YAML: {getattr(err, 'problem', None) or err}") from None
    except RecursionError:  # PyYAML composes nested lists / mappings recursively
        raise ConfigError(f"{label}: invalid YAML: lists or mappings are nested too deeply") from None
    finally:
        loader.dispose()
