"""docs/recipes.md, the recipe reference, cannot drift from the code: every registered modifier has a
section whose table lists exactly the keys it accepts with their defaults, the limits of the
expression language are the evaluator's, and every example recipe on the page loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sparseyolo.recipe import Recipe, expressions
from sparseyolo.recipe.modifiers import LOGGING_KEYS, MODIFIERS, REQUIRED

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "recipes.md"
TEXT = DOC.read_text(encoding="utf-8")
TAG_RE = re.compile(r"`!(\w+)`")
ROW_RE = re.compile(r"^\|\s*`(\w+)`\s*\|")


def _sections() -> dict[str, str]:
    """Heading line (``### ...``) -> the text up to the next ``##`` / ``###`` heading."""
    out: dict[str, str] = {}
    heading, lines = None, []
    for line in TEXT.splitlines():
        if line.startswith(("## ", "### ")):
            if heading is not None:
                out[heading] = "\n".join(lines)
            heading, lines = (line if line.startswith("### ") else None), []
        elif heading is not None:
            lines.append(line)
    if heading is not None:
        out[heading] = "\n".join(lines)
    return out


SECTIONS = _sections()
SECTION_OF = {tag: heading for heading in SECTIONS for tag in TAG_RE.findall(heading)}


def _cells(row: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]


def _table(body: str) -> dict[str, list[str]]:
    """key -> [type, default, meaning] of the section's key table."""
    return {ROW_RE.match(line).group(1): _cells(line)[1:] for line in body.splitlines() if ROW_RE.match(line)}


def _default(value) -> str:
    """How a ``FIELDS`` default is written in the tables."""
    if value is REQUIRED:
        return "required"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def test_every_registered_modifier_has_a_section():
    missing = [tag for tag in MODIFIERS.names() if tag not in SECTION_OF]
    assert not missing, f"docs/recipes.md has no '### `!Tag`' section for {missing}"
    unknown = [tag for tag in SECTION_OF if tag not in MODIFIERS]
    assert not unknown, f"docs/recipes.md documents modifiers that are not registered: {unknown}"


@pytest.mark.parametrize("tag", MODIFIERS.names())
def test_table_lists_every_key_with_its_default(tag):
    fields = MODIFIERS.get(tag).FIELDS
    table = _table(SECTIONS[SECTION_OF[tag]])
    assert set(table) == set(fields), (
        f"!{tag}: keys missing from docs/recipes.md {sorted(set(fields) - set(table))}, "
        f"documented but not accepted {sorted(set(table) - set(fields))}"
    )
    for key, (kind, default, meaning) in table.items():
        assert default == _default(fields[key]), f"!{tag} {key}: documented default {default}, code {fields[key]!r}"
        assert kind and meaning, f"!{tag} {key}: type and meaning must be given"


@pytest.mark.parametrize("tag", MODIFIERS.names())
def test_every_modifier_has_an_example(tag):
    blocks = re.findall(r"```yaml\n(.*?)```", SECTIONS[SECTION_OF[tag]], re.DOTALL)
    assert any(f"!{tag}" in b for b in blocks), f"!{tag}: no YAML example in its section"


def test_every_example_recipe_loads():
    blocks = re.findall(r"```yaml\n(.*?)```", TEXT, re.DOTALL)
    assert len(blocks) > len(MODIFIERS.names())
    for block in blocks:
        recipe = Recipe.load(block)  # raises on any key, value or expression the code refuses
        assert recipe.modifiers


def test_common_keys_and_expression_language_documented():
    for key in LOGGING_KEYS:
        assert f"`{key}`" in TEXT
    for func in expressions._FUNCS:
        assert f"`{func}`" in TEXT, f"expression function {func} not documented"
    for op in ("+", "-", "*", "/", "//", "%", "**"):
        assert op in TEXT
    limits = {
        f"at most {expressions.MAX_EXPRESSION_CHARS} characters": "MAX_EXPRESSION_CHARS",
        f"{expressions.MAX_DEPTH}\n  levels of nesting": "MAX_DEPTH",
        f"integers of at most {expressions.MAX_INT_BITS} bits": "MAX_INT_BITS",
        f"exponents up to {expressions.MAX_EXPONENT}": "MAX_EXPONENT",
        f"at most {expressions.MAX_ROUND_DIGITS} digits": "MAX_ROUND_DIGITS",
        f"at most {expressions.MAX_VARIABLE_CHAIN} long": "MAX_VARIABLE_CHAIN",
    }
    flat = " ".join(TEXT.split())
    for phrase, name in limits.items():
        assert " ".join(phrase.split()) in flat, f"docs/recipes.md does not state {name} ({phrase!r})"


def test_reference_sections_and_readme_link():
    for heading in (
        "## Expressions",
        "## Variables and overrides (`--recipe-args`)",
        "## Staged recipes",
        "## Where we differ from SparseML",
    ):
        assert f"\n{heading}\n" in TEXT
    assert "](docs/recipes.md)" in (REPO / "README.md").read_text(encoding="utf-8")
