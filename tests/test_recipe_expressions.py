"""Safe recipe expressions and variable resolution."""

import pytest

from sparseyolo.recipe import Recipe, resolve_variables, safe_eval
from sparseyolo.utils.errors import ConfigError, SparseYoloError


def test_arithmetic_and_functions():
    names = {"a": 10, "b": 4}
    assert safe_eval("a - b * 2", names) == 2
    assert safe_eval("a / b", names) == 2.5
    assert safe_eval("a // b + a % b", names) == 4
    assert safe_eval("-b ** 2", names) == -16
    assert safe_eval("max(a, b) + min(1, 2) + abs(-3)", names) == 14
    assert safe_eval("round(2.6) + int(3.9) + float(1)", names) == 7.0


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('echo hi')",
        "x.__class__",
        "(1).__class__",
        "open('/etc/passwd')",
        "[1, 2][0]",
        "'a' * 3",
        "lambda: 1",
        "max(1, key=abs)",
        "a if a else b",
    ],
)
def test_refuses_anything_but_arithmetic(expr):
    with pytest.raises(ConfigError, match="not allowed|unknown name"):
        safe_eval(expr, {"x": 1, "a": 1, "b": 2})


def test_refusal_inside_a_recipe_names_the_key():
    text = "n: 2\nmodifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: \"eval(__import__('os').system('echo hi'))\"}\n"
    with pytest.raises(ConfigError, match=r"<recipe>:3.*end_epoch.*not allowed"):
        Recipe.load(text)
    text = "x: 2\nmodifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: eval(x.__class__)}\n"
    with pytest.raises(ConfigError, match="Attribute.*not allowed"):
        Recipe.load(text)


def test_variables_resolve_in_any_order():
    raw = {"end": "eval(start + length)", "length": "eval(total - start)", "start": 2, "total": 10}
    assert resolve_variables(raw) == {"end": 10, "length": 8, "start": 2, "total": 10}


def test_cycle_and_unknown_names_are_errors_naming_the_variable():
    with pytest.raises(ConfigError, match=r"variable 'a' refers to itself through a -> b -> a"):
        resolve_variables({"a": "eval(b + 1)", "b": "eval(a * 2)"})
    with pytest.raises(ConfigError, match=r"variable 'a' uses unknown name 'nope'"):
        resolve_variables({"a": "eval(nope + 1)"})


def test_errors_are_sparseyolo_errors():
    assert issubclass(ConfigError, SparseYoloError)
    with pytest.raises(ConfigError, match="division by zero"):
        safe_eval("1 / 0", {})
    with pytest.raises(ConfigError, match="cannot parse"):
        safe_eval("1 +", {})
