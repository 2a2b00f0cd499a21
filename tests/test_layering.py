"""The package's layers only import downwards (docs/architecture.md). This is the one layering test."""

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "sparseyolo"

# A subpackage may import subpackages of a lower rank only (and a sibling of the same rank only
# when listed in SAME_RANK_OK). Core first, then the YOLO domain, then the edges.
RANK = {
    "utils": 0,
    "sparsity": 1,
    "quantization": 1,
    "recipe": 2,
    "models": 3,
    "data": 3,
    "evaluation": 4,
    "engine": 5,
    "runtime": 6,
    "exporters": 6,
    "analysis": 7,
    "timing": 7,
    "api": 8,
    "demo": 9,
    "cli": 10,
}
SAME_RANK_OK: set[tuple[str, str]] = {("analysis", "timing")}  # a report times its runs
CORE = ("recipe", "sparsity", "quantization")
YOLO = set(RANK) - set(CORE) - {"utils"}
# "sparseyolo.x..." inside any string: importlib.import_module targets, lazy-export tables
_STRING_MODULE = re.compile(r"^sparseyolo\.([a-z_]+)(\.[a-z_.]+)?$")


def _imports(path: Path) -> set[str]:
    """Subpackages ``path`` imports: import statements and module names written as strings."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _STRING_MODULE.match(node.value):
            names = [node.value]
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            names = [str(node.values[0].value).rstrip(".")]  # f"sparseyolo.cli.{name}"
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "sparseyolo" and len(parts) > 1 and parts[1] in RANK:
                found.add(parts[1])
    return found


def test_every_subpackage_has_a_rank():
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(RANK)


@pytest.mark.parametrize("layer", sorted(RANK))
def test_layer_imports_only_downwards(layer):
    bad = []
    for path in sorted((PKG / layer).rglob("*.py")):
        for target in _imports(path):
            if target == layer:
                continue
            if RANK[target] > RANK[layer] or (RANK[target] == RANK[layer] and (layer, target) not in SAME_RANK_OK):
                bad.append(f"{path.relative_to(PKG)} imports sparseyolo.{target}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer", CORE)
def test_core_never_imports_yolo_code(layer):
    for path in (PKG / layer).rglob("*.py"):
        assert not (_imports(path) & YOLO), f"{path} imports YOLO code"


def test_sparsity_needs_only_utils():
    for path in (PKG / "sparsity").rglob("*.py"):
        assert _imports(path) <= {"sparsity", "utils"}, f"{path} imports {_imports(path)}"


def test_string_imports_are_caught(tmp_path):
    """The check sees ``importlib`` targets, so a lazy upward import cannot slip through."""
    f = tmp_path / "m.py"
    f.write_text('import importlib\nimportlib.import_module("sparseyolo.cli.main")\n' 'x = f"sparseyolo.engine.{1}"\n')
    assert _imports(f) == {"cli", "engine"}
