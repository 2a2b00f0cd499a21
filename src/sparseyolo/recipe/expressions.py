"""Safe arithmetic for recipe ``eval(...)`` strings and variable resolution.

SparseML recipes may write ``end_epoch: eval(num_epochs - 2)``. Python's ``eval`` is never used:
the expression is parsed with :mod:`ast` and only a whitelist of node types is walked, so names
resolve only to numeric recipe variables and calls only to ``abs min max round int float``.

Untrusted recipes must not be able to use up CPU, memory or the stack, so the evaluator is bounded:
expression text is at most :data:`MAX_EXPRESSION_CHARS` characters and :data:`MAX_DEPTH` levels deep,
integers (literals, variables, every intermediate result) have at most :data:`MAX_INT_BITS` bits, a
power whose result would be larger is refused before it is computed, and chains of variables that
refer to each other are at most :data:`MAX_VARIABLE_CHAIN` long. Every refusal is a
:class:`ConfigError` naming the variable or key.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from sparseyolo.utils.errors import ConfigError

_EVAL_RE = re.compile(r"^\s*eval\s*\((.*)\)\s*$", re.DOTALL)

MAX_EXPRESSION_CHARS = 1000  # real recipes write a few dozen characters
MAX_DEPTH = 40  # levels of the syntax tree (each operator adds two: the operation and its operand)
MAX_INT_BITS = 256  # about 1e77: far above any epoch count or layer size, and cheap to compute with
MAX_EXPONENT = 1000
MAX_ROUND_DIGITS = 100  # round(5, -10**9) would build 10**(10**9)
MAX_VARIABLE_CHAIN = 100  # a -> b -> c -> ... (resolution recurses once per link)

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "min": min,
    "max": max,
    "round": round,
    "int": int,
    "float": float,
}


def is_expression(value: Any) -> bool:
    """True for strings of the form ``eval(...)``."""
    return isinstance(value, str) and _EVAL_RE.match(value) is not None


def expression_body(value: str) -> str:
    """The text inside ``eval(...)``."""
    match = _EVAL_RE.match(value)
    if match is None:
        raise ValueError(f"not an eval(...) expression: {value!r}")
    return match.group(1)


def _check_number(value: Any, what: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} is not a number (got {_short(value)})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{what} is not finite")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ConfigError(
            f"{what} is an integer of {value.bit_length()} bits; recipe numbers are limited " f"to {MAX_INT_BITS} bits"
        )
    return value


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters (a hostile value may be huge)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"<an integer of {value.bit_length()} bits>"  # repr of a huge int is itself slow
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pow_too_large(base: float | int, exponent: float | int) -> bool:
    """True when ``base ** exponent`` on integers would exceed :data:`MAX_INT_BITS` (checked before
    computing it: ``9 ** 99 ** 99`` would take hours and gigabytes)."""
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent < 0 or abs(base) <= 1:
        return False
    # |base| >= 2 ** (bit_length - 1), so the result has at least (bit_length - 1) * exponent + 1 bits
    return (abs(base).bit_length() - 1) * exponent + 1 > MAX_INT_BITS


def referenced_names(body: str, where: str = "expression") -> set[str]:
    """Names used in an expression body (function names excluded)."""
    tree = _parse(body, where)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in _FUNCS:
            names.add(node.id)
    return names


def _parse(body: str, where: str) -> ast.Expression:
    """Parse within the bounds: text length first, then the depth of the tree."""
    if len(body) > MAX_EXPRESSION_CHARS:
        raise ConfigError(
            f"{where}: expression is {len(body)} characters long; recipe expressions are "
            f"limited to {MAX_EXPRESSION_CHARS}"
        )
    try:
        tree = ast.parse(body.strip(), mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"{where}: cannot parse expression {_short(body)}: {err.msg}") from None
    except (RecursionError, MemoryError):  # the parser itself gives up on very deep nesting
        raise ConfigError(
            f"{where}: expression {_short(body)} is nested too deeply; recipe expressions "
            f"are limited to {MAX_DEPTH} levels"
        ) from None
    except ValueError as err:  # e.g. a NUL character (a SyntaxError from Python 3.12 on)
        raise ConfigError(f"{where}: cannot parse expression {_short(body)}: {err}") from None
    stack = [(tree, 1)]  # iterative: a recursive walk is what must not be run on a deep tree
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(
                f"{where}: expression {_short(body)} is nested more than {MAX_DEPTH} levels "
                f"deep; recipe expressions are limited to {MAX_DEPTH} levels"
            )
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return tree


def safe_eval(body: str, names: Mapping[str, Any], where: str = "expression") -> float | int:
    """Evaluate an arithmetic expression over numeric ``names`` without Python's ``eval``.

    Allowed: number literals, variable names, ``+ - * / // ** %``, unary ``-``/``+``, parentheses,
    and calls to ``abs min max round int float``. Anything else (attribute access, subscripts,
    strings, lambdas, other calls, ``__import__``) is refused with a :class:`ConfigError`.
    """
    tree = _parse(body, where)

    def refuse(node: ast.AST, what: str) -> ConfigError:
        return ConfigError(
            f"{where}: {what} is not allowed in recipe expressions {_short(body)} "
            "(only numbers, recipe variables, + - * / // ** %, abs min max round int float)"
        )

    def walk(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise refuse(node, f"the literal {_short(node.value)}")
            return _check_number(node.value, f"{where}: the literal in {_short(body)}")
        if isinstance(node, ast.Name):
            if node.id not in names:
                known = ", ".join(sorted(names)) or "none"
                raise ConfigError(f"{where}: unknown name {node.id!r} in {_short(body)}; variables: {known}")
            return _check_number(names[node.id], f"{where}: variable {node.id!r}")
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow):
                if abs(right) > MAX_EXPONENT:
                    raise refuse(node, f"an exponent above {MAX_EXPONENT}")
                if _pow_too_large(left, right):
                    raise ConfigError(
                        f"{where}: {_short(left)} ** {_short(right)} would have more than "
                        f"{MAX_INT_BITS} bits in {_short(body)}; recipe numbers are limited to "
                        f"{MAX_INT_BITS} bits"
                    )
            try:
                result = _BINOPS[type(node.op)](left, right)
                return _check_number(result, f"{where}: the result of {_short(body)}")
            except (ZeroDivisionError, OverflowError) as err:
                raise ConfigError(f"{where}: {err} in {_short(body)}") from None
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))  # neither changes a number's size
        if isinstance(node, ast.Call):
            func = node.func
            if not isinstance(func, ast.Name) or func.id not in _FUNCS:
                raise refuse(node, f"calling {ast.unparse(func)!r}")
            if node.keywords:
                raise refuse(node, "a keyword argument")
            args = [walk(arg) for arg in node.args]
            if func.id == "round" and len(args) == 2 and abs(args[1]) > MAX_ROUND_DIGITS:
                raise refuse(node, f"rounding to more than {MAX_ROUND_DIGITS} digits")
            try:
                return _check_number(_FUNCS[func.id](*args), f"{where}: the result of {_short(body)}")
            except (TypeError, ValueError, OverflowError) as err:
                raise ConfigError(f"{where}: {func.id}(...) failed in {_short(body)}: {err}") from None
        raise refuse(node, f"{type(node).__name__} ({ast.unparse(node)!r})")

    return walk(tree)


def resolve_variables(
    raw: Mapping[str, Any], outer: Mapping[str, Any] | None = None, where: str = "recipe"
) -> dict[str, Any]:
    """Resolve variables that may refer to each other (in any order) through ``eval(...)``.

    ``outer`` holds already-resolved variables visible to these ones (stage variables see the
    recipe's). A cycle or an unknown name raises :class:`ConfigError` naming the variable.
    """
    outer = dict(outer or {})
    resolved: dict[str, Any] = {}
    visiting: list[str] = []

    def get(name: str) -> Any:
        if name in resolved:
            return resolved[name]
        if name not in raw:
            return outer[name]
        if name in visiting:
            cycle = " -> ".join(visiting[visiting.index(name) :] + [name])
            raise ConfigError(f"{where}: variable {name!r} refers to itself through {cycle}")
        if len(visiting) >= MAX_VARIABLE_CHAIN:  # get() recurses once per link of the chain
            raise ConfigError(
                f"{where}: variable {name!r} ends a chain of more than {MAX_VARIABLE_CHAIN} "
                f"variables that refer to each other ({visiting[0]!r} -> ...)"
            )
        value = raw[name]
        if is_expression(value):
            visiting.append(name)
            body = expression_body(value)
            scope: dict[str, Any] = {}
            for ref in referenced_names(body, f"{where}: variable {name!r}"):
                if ref not in raw and ref not in outer:
                    known = ", ".join(sorted(set(raw) | set(outer)))
                    raise ConfigError(f"{where}: variable {name!r} uses unknown name {ref!r}; variables: {known}")
                scope[ref] = get(ref)
            value = safe_eval(body, scope, f"{where}: variable {name!r}")
            visiting.pop()
        resolved[name] = value
        return value

    for key in raw:
        get(key)
    return resolved


def evaluate_value(value: Any, names: Mapping[str, Any], where: str) -> Any:
    """Evaluate ``eval(...)`` strings anywhere inside a (nested) value; other values pass through."""
    if is_expression(value):
        return safe_eval(expression_body(value), names, where)
    if isinstance(value, list):
        return [evaluate_value(v, names, where) for v in value]
    if isinstance(value, dict):
        return {k: evaluate_value(v, names, where) for k, v in value.items()}
    return value
