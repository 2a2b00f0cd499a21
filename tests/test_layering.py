"""The package's layers only import downwards (docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "sparseyolo"

# A subpackage may import subpackages of the same or a lower rank only (and never a sibling
# of the same rank unless listed in SAME_RANK_OK).
RANK = {
    "utils": 0,
    "sparsity": 1, "quantization": 1,
    "recipe": 2,
    "models": 3, "data": 3,
    "evaluation": 4,
    "engine": 5,
    "export": 6,
    "benchmark": 7,
    "demo": 8,
    "cli": 9,
}
SAME_RANK_OK: set[tuple[str, str]] = set()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "sparseyolo" and len(parts) > 1 and parts[1] in RANK:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", sorted(RANK))
def test_layer_imports_only_downwards(layer):
    bad = []
    for path in sorted((PKG / layer).rglob("*.py")):
        for target in _imports(path):
            if target == layer:
                continue
            if RANK[target] > RANK[layer] or (
                RANK[target] == RANK[layer] and (layer, target) not in SAME_RANK_OK
            ):
                bad.append(f"{path.relative_to(PKG)} imports sparseyolo.{target}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_core_never_imports_yolo_code():
    yolo = {"models", "data", "engine", "evaluation", "export", "benchmark", "demo", "cli"}
    for layer in ("recipe", "sparsity", "quantization"):
        for path in (PKG / layer).rglob("*.py"):
            assert not (_imports(path) & yolo), f"{path} imports YOLO code"
