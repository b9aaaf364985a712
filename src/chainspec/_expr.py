"""Safe arithmetic for ``${...}`` substitutions in spec arguments.

Expressions are parsed with :mod:`ast` and evaluated by walking a small
whitelist of node kinds; nothing is ever passed to ``eval``. Names come only
from the scope the caller provides (composite parameters and spec ``vars``),
and the few callable names are pure builtins such as ``min`` and ``max``.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

#: Largest magnitude an integer result may reach. Channel counts and sizes are
#: far below it; the bound stops ``2**10**10`` from eating the machine.
MAX_INT = 2**63
#: Longest expression accepted, to keep parsing cheap.
MAX_LENGTH = 500
#: Deepest syntax tree accepted. The evaluator recurses once per level; 500
#: characters of ``-`` or ``not`` would otherwise come close to Python's
#: recursion limit when loading is itself called from deep in a program.
MAX_DEPTH = 50

_PLACEHOLDER = re.compile(r"\$\{([^{}]*)\}")

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
}
#: The only functions an expression may call.
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "min": min, "max": max, "abs": abs, "int": int, "float": float, "round": round,
    "sqrt": math.sqrt, "log2": math.log2, "floor": math.floor, "ceil": math.ceil,
}


class ExpressionError(ValueError):
    """An expression is malformed, uses something not allowed, or fails to evaluate.

    Example:
        >>> evaluate("__import__('os')", {})
        Traceback (most recent call last):
        ...
        chainspec._expr.ExpressionError: calls are limited to abs, ceil, float, floor, int, log2, max, min, round, sqrt
    """


def has_placeholder(value: Any) -> bool:
    """Tell whether ``value`` is a string holding at least one ``${...}``.

    Example:
        >>> has_placeholder("${ch * 2}"), has_placeholder("relu")
        (True, False)
    """
    return isinstance(value, str) and "${" in value


def substitute(value: Any, scope: Mapping[str, Any]) -> Any:
    """Replace every ``${expr}`` in ``value`` (recursing into lists and dicts).

    A string that is exactly one placeholder takes the expression's type;
    placeholders inside longer text are formatted into it.

    Example:
        >>> substitute("${min(512, 8192 // 2**s)}", {"s": 5})
        256
        >>> substitute(["${a}", "x${a + 1}"], {"a": 1})
        [1, 'x2']
    """
    if isinstance(value, list):
        return [substitute(v, scope) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, scope) for k, v in value.items()}
    if not has_placeholder(value):
        return value
    whole = _PLACEHOLDER.fullmatch(value.strip())
    if whole:
        return evaluate(whole.group(1), scope)
    if "${" in _PLACEHOLDER.sub("", value):
        raise ExpressionError(f"unclosed or nested placeholder in {value!r}")
    return _PLACEHOLDER.sub(lambda m: str(evaluate(m.group(1), scope)), value)


def evaluate(expression: str, scope: Mapping[str, Any]) -> Any:
    """Evaluate one expression against ``scope`` with the restricted evaluator.

    Example:
        >>> evaluate("ch * 2 if wide else ch", {"ch": 32, "wide": True})
        64
    """
    if len(expression) > MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"invalid expression {expression.strip()!r}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes; nesting CPython's parser refuses
        raise ExpressionError(f"invalid expression: {exc}") from None
    if _depth(tree.body) > MAX_DEPTH:
        raise ExpressionError(f"expression nests more than {MAX_DEPTH} levels deep")
    return _Evaluator(scope).visit(tree.body)


def _depth(node: ast.AST) -> int:
    """How deeply the syntax tree nests, measured without recursion (the evaluator itself recurses)."""
    deepest = 0
    todo = [(node, 1)]
    while todo:
        current, depth = todo.pop()
        deepest = max(deepest, depth)
        todo.extend((child, depth + 1) for child in ast.iter_child_nodes(current))
    return deepest


class _Evaluator:
    def __init__(self, scope: Mapping[str, Any]) -> None:
        self.scope = scope

    def visit(self, node: ast.AST) -> Any:
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            raise ExpressionError(f"{type(node).__name__.lower()} is not allowed in expressions")
        return method(node)

    def visit_Constant(self, node: ast.Constant) -> Any:
        if not isinstance(node.value, (int, float, str, bool)) and node.value is not None:
            raise ExpressionError(f"constant {node.value!r} is not allowed")
        return node.value

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[node.id]
        if node.id not in self.scope:
            import difflib

            close = difflib.get_close_matches(node.id, list(self.scope), n=1)
            known = ", ".join(sorted(self.scope)) or "none"
            hint = f"; did you mean {close[0]!r}?" if close else f" (known names: {known})"
            raise ExpressionError(f"unknown name {node.id!r}{hint}")
        return self.scope[node.id]

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        op = _BINARY.get(type(node.op))
        if op is None:
            raise ExpressionError(f"operator {type(node.op).__name__} is not allowed")
        left, right = self.visit(node.left), self.visit(node.right)
        _check_number(left)
        _check_number(right)
        if isinstance(node.op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > 64:
            raise ExpressionError(f"exponent {right!r} is too large (at most 64)")
        try:
            return _bounded(op(left, right))
        except (ArithmeticError, ValueError, TypeError) as exc:
            raise ExpressionError(str(exc)) from None

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        operand = self.visit(node.operand)
        if not isinstance(node.op, ast.Not):
            _check_number(operand)
        return _UNARY[type(node.op)](operand)

    def visit_BoolOp(self, node: ast.BoolOp) -> Any:
        values = [self.visit(v) for v in node.values]
        if isinstance(node.op, ast.And):
            return all(values)
        return any(values)

    def visit_Compare(self, node: ast.Compare) -> Any:
        left = self.visit(node.left)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            fn = _COMPARE.get(type(op))
            if fn is None:
                raise ExpressionError(f"comparison {type(op).__name__} is not allowed")
            right = self.visit(right_node)
            try:
                if not fn(left, right):
                    return False
            except TypeError as exc:
                raise ExpressionError(str(exc)) from None
            left = right
        return True

    def visit_IfExp(self, node: ast.IfExp) -> Any:
        return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)

    def visit_Tuple(self, node: ast.Tuple) -> Any:
        return [self.visit(e) for e in node.elts]

    visit_List = visit_Tuple

    def visit_Call(self, node: ast.Call) -> Any:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS or node.keywords:
            raise ExpressionError("calls are limited to " + ", ".join(sorted(FUNCTIONS)))
        args = [self.visit(a) for a in node.args]
        try:
            return _bounded(FUNCTIONS[name](*args))
        except (ArithmeticError, ValueError, TypeError) as exc:
            raise ExpressionError(f"{name}(): {exc}") from None


def _check_number(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExpressionError(f"arithmetic needs numbers, got {value!r}")


def _bounded(value: Any) -> Any:
    if isinstance(value, int) and abs(value) > MAX_INT:
        # Not the value itself: it may have hundreds of digits.
        raise ExpressionError(f"result is too large (about 2**{value.bit_length() - 1}; the limit is 2**63)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ExpressionError(f"result {value} is not finite")
    return value
