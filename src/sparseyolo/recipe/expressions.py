"""Safe arithmetic for recipe ``eval(...)`` strings and variable resolution.

SparseML recipes may write ``end_epoch: eval(num_epochs - 2)``. Python's ``eval`` is never used:
the expression is parsed with :mod:`ast` and only a whitelist of node types is walked, so names
resolve only to numeric recipe variables and calls only to ``abs min max round int float``.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any, Callable, Mapping

from sparseyolo.utils.errors import ConfigError

_EVAL_RE = re.compile(r"^\s*eval\s*\((.*)\)\s*$", re.DOTALL)

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
        raise ConfigError(f"{what} is not a number (got {value!r})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{what} is not finite")
    return value


def referenced_names(body: str, where: str = "expression") -> set[str]:
    """Names used in an expression body (function names excluded)."""
    tree = _parse(body, where)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in _FUNCS:
            names.add(node.id)
    return names


def _parse(body: str, where: str) -> ast.Expression:
    try:
        return ast.parse(body.strip(), mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"{where}: cannot parse expression {body!r}: {err.msg}") from None


def safe_eval(body: str, names: Mapping[str, Any], where: str = "expression") -> float | int:
    """Evaluate an arithmetic expression over numeric ``names`` without Python's ``eval``.

    Allowed: number literals, variable names, ``+ - * / // ** %``, unary ``-``/``+``, parentheses,
    and calls to ``abs min max round int float``. Anything else (attribute access, subscripts,
    strings, lambdas, other calls, ``__import__``) is refused with a :class:`ConfigError`.
    """
    tree = _parse(body, where)

    def refuse(node: ast.AST, what: str) -> ConfigError:
        return ConfigError(
            f"{where}: {what} is not allowed in recipe expressions {body!r} "
            "(only numbers, recipe variables, + - * / // ** %, abs min max round int float)"
        )

    def walk(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise refuse(node, f"the literal {node.value!r}")
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in names:
                known = ", ".join(sorted(names)) or "none"
                raise ConfigError(f"{where}: unknown name {node.id!r} in {body!r}; variables: {known}")
            return _check_number(names[node.id], f"{where}: variable {node.id!r}")
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 1000:
                raise refuse(node, "an exponent above 1000")
            try:
                return _check_number(_BINOPS[type(node.op)](left, right), f"{where}: result")
            except (ZeroDivisionError, OverflowError) as err:
                raise ConfigError(f"{where}: {err} in {body!r}") from None
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.Call):
            func = node.func
            if not isinstance(func, ast.Name) or func.id not in _FUNCS:
                raise refuse(node, f"calling {ast.unparse(func)!r}")
            if node.keywords:
                raise refuse(node, "a keyword argument")
            args = [walk(arg) for arg in node.args]
            try:
                return _check_number(_FUNCS[func.id](*args), f"{where}: result")
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{where}: {func.id}(...) failed in {body!r}: {err}") from None
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
            cycle = " -> ".join(visiting[visiting.index(name):] + [name])
            raise ConfigError(f"{where}: variable {name!r} refers to itself through {cycle}")
        value = raw[name]
        if is_expression(value):
            visiting.append(name)
            body = expression_body(value)
            scope: dict[str, Any] = {}
            for ref in referenced_names(body, f"{where}: variable {name!r}"):
                if ref not in raw and ref not in outer:
                    known = ", ".join(sorted(set(raw) | set(outer)))
                    raise ConfigError(
                        f"{where}: variable {name!r} uses unknown name {ref!r}; variables: {known}"
                    )
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
