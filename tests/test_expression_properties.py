"""Property-based tests of the recipe expression evaluator (``recipe/expressions.py``).

Random expression trees are rendered as text and given to ``safe_eval``; a reference evaluator in this
file walks the same tree with Python's own operators. Properties:

- nothing but a ConfigError ever escapes (no OverflowError, RecursionError, TypeError, ...);
- no code runs: ``open``, ``exec``, ``eval``, ``print`` and ``__import__`` are never called;
- every result stays within the bounds (integers of at most MAX_INT_BITS bits, finite floats);
- where Python's arithmetic is defined and within the bounds, the result is Python's, type included;
- where Python's arithmetic is undefined or beyond the bounds, the answer is a ConfigError.
"""

from __future__ import annotations

import builtins
import math
import operator
from contextlib import ExitStack
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseyolo.recipe.expressions import (
    MAX_DEPTH,
    MAX_EXPONENT,
    MAX_EXPRESSION_CHARS,
    MAX_INT_BITS,
    MAX_ROUND_DIGITS,
    safe_eval,
)
from sparseyolo.utils.errors import ConfigError

# no example database (the tests write nothing outside tmp_path); fixed examples for a stable CI
PROPS = settings(max_examples=400, deadline=None, database=None, derandomize=True)

BINOPS = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}
FUNCS = {"abs": abs, "min": min, "max": max, "round": round, "int": int, "float": float}
# expressions that are not arithmetic: each must be refused, and none may run
HOSTILE = [
    "__import__('os')",
    "open('pwned', 'w')",
    "exec('x = 1')",
    "eval('1')",
    "print(1)",
    "a.real",
    "(1).__class__",
    "[1][0]",
    "'s'",
    "b'x'",
    "f'{a}'",
    "lambda: 1",
    "a if a else b",
    "{1: 2}",
    "1 < 2",
    "not a",
    "a and b",
    "(q := 1)",
    "[i for i in (1,)]",
    "~a",
    "1 << 2",
    "None",
    "True",
    "max(1, key=abs)",
    "zz",
    "globals()",
    "...",
    "(1, 2)",
]
NAMES = ("a", "b", "c")


class Beyond(Exception):
    """The reference left the bounds (a larger integer, exponent or rounding) or met hostile text."""


# --- trees ---------------------------------------------------------------------------------------------
ints = st.one_of(st.integers(-20, 20), st.integers(-(10**6), 10**6), st.integers(-(2**300), 2**300))
floats = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)
leaves = st.one_of(
    ints.map(lambda v: ("num", v)),
    floats.map(lambda v: ("num", v)),
    st.sampled_from(NAMES).map(lambda n: ("name", n)),
    st.sampled_from(HOSTILE).map(lambda t: ("hostile", t)),
)


def _extend(children):
    return st.one_of(
        st.tuples(st.just("bin"), st.sampled_from(sorted(BINOPS)), children, children),
        st.tuples(st.just("unary"), st.sampled_from(["-", "+"]), children),
        st.tuples(st.just("call"), st.sampled_from(sorted(FUNCS)), st.lists(children, min_size=0, max_size=3)),
    )


trees = st.recursive(leaves, _extend, max_leaves=12)


def render(node) -> str:
    kind = node[0]
    if kind == "num":
        return f"({node[1]!r})"  # parenthesised: -3 is unary minus applied to 3, as Python parses it
    if kind in ("name", "hostile"):
        return node[1] if kind == "name" else f"({node[1]})"
    if kind == "bin":
        return f"({render(node[2])} {node[1]} {render(node[3])})"
    if kind == "unary":
        return f"({node[1]}{render(node[2])})"
    return f"{node[1]}({', '.join(render(a) for a in node[2])})"


def size(node) -> int:
    if node[0] in ("num", "name", "hostile"):
        return 1
    children = node[2:] if node[0] == "bin" else [node[2]] if node[0] == "unary" else node[2]
    return 1 + sum(size(c) for c in children)


def _bounded(value):
    """Python's value, or an exception when it is undefined (complex, infinite) or beyond the bounds."""
    if isinstance(value, complex) or (isinstance(value, float) and not math.isfinite(value)):
        raise ArithmeticError(f"undefined: {value!r}")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise Beyond(f"{value.bit_length()} bits")
    return value


def reference(node, names):
    """Python's arithmetic on the tree, left to right; never computes anything huge itself."""
    kind = node[0]
    if kind == "num":
        return _bounded(node[1])
    if kind == "name":
        return _bounded(names[node[1]])
    if kind == "hostile":
        raise Beyond(node[1])
    if kind == "unary":
        value = reference(node[2], names)
        return -value if node[1] == "-" else +value
    if kind == "bin":
        left, right = reference(node[2], names), reference(node[3], names)
        if node[1] == "**":
            if abs(right) > MAX_EXPONENT:
                raise Beyond("exponent")
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                # compute only what stays reasonable: 8x the bound is still cheap, and tells us the truth
                if (abs(left).bit_length() - 1) * right > 8 * MAX_INT_BITS:
                    raise Beyond("power")
        return _bounded(BINOPS[node[1]](left, right))
    args = [reference(a, names) for a in node[2]]
    if node[1] == "round" and len(args) == 2 and isinstance(args[1], (int, float)) and abs(args[1]) > MAX_ROUND_DIGITS:
        raise Beyond("round digits")
    return _bounded(FUNCS[node[1]](*args))


def run_guarded(text: str, names: dict):
    """``safe_eval`` with the builtins that run code or touch files replaced by recorders."""
    calls: list[str] = []

    def recorder(name):
        def record(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"safe_eval called {name}")

        return record

    real_import = builtins.__import__

    def guarded_import(name, *args, **kwargs):  # the evaluator needs no imports while it runs
        calls.append(f"import {name}")
        return real_import(name, *args, **kwargs)

    with ExitStack() as stack:
        for name in ("open", "exec", "eval", "print", "input", "breakpoint", "globals"):
            stack.enter_context(mock.patch.object(builtins, name, recorder(name)))
        stack.enter_context(mock.patch.object(builtins, "__import__", guarded_import))
        try:
            result = safe_eval(text, names)
            error = None
        except ConfigError as err:
            result, error = None, err
    assert not calls, f"{text!r} ran {calls}"
    return result, error


@PROPS
@given(tree=trees, a=st.one_of(ints, floats), b=st.one_of(ints, floats), c=st.one_of(ints, floats))
def test_random_trees_match_python_or_are_refused(tree, a, b, c):
    names = {"a": a, "b": b, "c": c}
    text = render(tree)
    result, error = run_guarded(text, names)  # anything but ConfigError escapes and fails the test
    try:
        expected, ref_error = reference(tree, names), None
    except (Beyond, ArithmeticError, TypeError, ValueError) as err:  # ZeroDivision/Overflow are Arithmetic
        expected, ref_error = None, err
    if error is None:
        # within the bounds ...
        assert not isinstance(result, bool) and isinstance(result, (int, float))
        assert math.isfinite(result) if isinstance(result, float) else result.bit_length() <= MAX_INT_BITS
        # ... and Python's answer, type included
        assert ref_error is None, f"{text!r} gave {result!r}, Python: {ref_error!r}"
        assert type(result) is type(expected) and result == expected, (text, result, expected)
    else:
        assert str(error).startswith("expression: "), error  # one line naming where it came from
        assert "\n" not in str(error)
    if ref_error is not None:
        assert error is not None, f"{text!r} gave {result!r}; Python: {ref_error!r}"
    if ref_error is None and size(tree) <= 10 and len(text) <= MAX_EXPRESSION_CHARS:
        # small, defined, bounded expressions are not refused (the evaluator is not just "no")
        assert error is None, f"{text!r}: {error} (Python: {expected!r})"


@PROPS
@given(n=st.integers(0, 3 * MAX_EXPRESSION_CHARS), op=st.sampled_from(["-", "+", "(", "abs(", "-(", "int("]))
def test_deep_nesting_is_refused_not_a_recursion_error(n, op):
    closing = {"-": "", "+": "", "(": ")", "abs(": ")", "-(": ")", "int(": ")"}[op]
    text = op * n + "1" + closing * n
    result, error = run_guarded(text, {})
    if error is None:
        assert result in (1, -1) and n * (1 + len(closing)) + 1 <= MAX_EXPRESSION_CHARS
    else:
        assert "nested" in str(error) or "characters long" in str(error), error
    if n > MAX_DEPTH and op != "(":  # bare parentheses make no node of the tree (the parser caps them)
        assert error is not None


@PROPS
@given(base=st.integers(-(2**40), 2**40), exponent=st.integers(0, 10**6))
def test_integer_powers_beyond_the_bound_are_refused_before_computing(base, exponent):
    # 10**6 as an exponent is refused by its size alone; within 1000 the result's size decides, and a
    # refusal must not depend on computing the power (the bound check sees only the operands' sizes)
    result, error = run_guarded(f"({base}) ** {exponent}", {})
    if error is None:
        assert result == base**exponent and result.bit_length() <= MAX_INT_BITS
    else:
        # refused before computing (a lower bound on the size says so), or after (the result is too large)
        big = abs(base) > 1 and (abs(base).bit_length() - 1) * exponent + 1 > MAX_INT_BITS
        too_big = exponent <= MAX_EXPONENT and (base**exponent).bit_length() > MAX_INT_BITS
        assert exponent > MAX_EXPONENT or big or too_big, (base, exponent, error)


@pytest.mark.parametrize("text", HOSTILE)
def test_every_hostile_snippet_is_refused_without_running(text):
    result, error = run_guarded(text, {"a": 1, "b": 2})
    assert error is not None and result is None
