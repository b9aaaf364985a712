"""Safe arithmetic for ``${...}`` substitutions in spec arguments.

Expressions are parsed with :mod:`ast` and evaluated by walking a small
whitelist of node kinds; nothing is ever passed to ``eval``. Names come only
from the scope the caller provides (composite parameters and spec ``vars``),
and the few callable names are pure builtins such as ``min`` and ``max``.

Every evaluation is bounded in time and memory, whatever the spec says: a
:class:`Budget` counts the steps of all the expressions of one load
(``Limits.max_expression_steps``) and refuses, as they are made, strings
longer than ``Limits.max_string`` and lists of more than ``Limits.max_list``
items; every argument that drives a function's work (``round``'s digits, the
text ``int`` parses, the float ``floor`` converts) is checked before the call.
"""

from __future__ import annotations

import ast
import functools
import heapq
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from .._limits import Limits, limit_hint, limits_or_default

#: Largest magnitude an integer result may reach. Channel counts and sizes are
#: far below it; the bound stops ``2**10**10`` from eating the machine.
MAX_INT = 2**63
#: Longest expression accepted, to keep parsing cheap.
MAX_LENGTH = 500
#: Deepest syntax tree accepted. The evaluator recurses once per level; 500
#: characters of ``-`` or ``not`` would otherwise come close to Python's
#: recursion limit when loading is itself called from deep in a program.
MAX_DEPTH = 50
#: Largest exponent of ``**``.
MAX_EXPONENT = 64
#: Largest ``ndigits`` of ``round`` either way: ``round(1, -10**18)`` would compute ``10**10**18``.
MAX_NDIGITS = 64
#: Longest text ``int()`` and ``float()`` convert (converting decimal text is quadratic in its length).
MAX_NUMBER_TEXT = 100
#: How many names an "unknown name" message lists at most.
MAX_LISTED_NAMES = 20
#: How many characters of a produced string cost one evaluation step.
CHARS_PER_STEP = 32

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

    ``hint`` says how to fix it, where there is more to say than the message.

    Example:
        >>> evaluate("__import__('os')", {})
        Traceback (most recent call last):
        ...
        chainspec.read.expr.ExpressionError: calls are limited to abs, ceil, float, floor, int, log2, max, min, ...
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class LimitError(ExpressionError):
    """A bound of :class:`~chainspec.Limits` was reached; ``limit`` names the field that raises it.

    ``fatal`` is True for a bound on the whole load (its steps): once it is spent, every
    later expression would fail too, so the load stops at the first.

    Example:
        >>> try:
        ...     evaluate("[1, 2, 3]", {}, Budget(Limits(max_list=2)))
        ... except LimitError as exc:
        ...     print(exc, "|", exc.hint)
        list of more than 2 items | raise Limits(max_list=...) if the spec is trusted
    """

    def __init__(self, message: str, limit: str, *, fatal: bool = False) -> None:
        super().__init__(message, limit_hint(limit))
        self.limit = limit
        self.fatal = fatal


class Budget:
    """The expression work one load may do, shared by all of its expressions.

    Each syntax node evaluated costs a step, each item of a list or mapping an
    expression reads or makes costs one, a string costs one per
    :data:`CHARS_PER_STEP` characters; past ``limits.max_expression_steps`` every
    evaluation fails with a fatal :class:`LimitError`. ``hints`` is how many
    did-you-mean hints may still be computed (each compares a name with every
    known one: a file of a thousand unknown names must not pay for a thousand).

    Example:
        >>> budget = Budget(Limits(max_expression_steps=50))
        >>> evaluate("1 + 2", {}, budget), budget.steps
        (3, 4)
        >>> evaluate("+".join(["1"] * 40), {}, budget)
        Traceback (most recent call last):
        ...
        chainspec.read.expr.LimitError: expressions take more than 50 evaluation steps in all
    """

    #: Did-you-mean hints computed per load.
    HINTS = 20

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits_or_default(limits)
        self.steps = 0
        self.hints = self.HINTS
        #: Lists and mappings measured so far, by id: (items, depth, the object itself).
        self._sizes: dict[int, tuple[int, int, Any]] = {}

    def spend(self, steps: int) -> None:
        """Count ``steps`` more; refuse once the load's total passes ``max_expression_steps``.

        Example:
            >>> budget = Budget(Limits(max_expression_steps=10))
            >>> budget.spend(10)
            >>> budget.spend(1)
            Traceback (most recent call last):
            ...
            chainspec.read.expr.LimitError: expressions take more than 10 evaluation steps in all
        """
        self.steps += steps
        if self.steps > self.limits.max_expression_steps:
            raise LimitError(f"expressions take more than {self.limits.max_expression_steps:,} evaluation steps "
                             "in all", "max_expression_steps", fatal=True)

    def take_hint(self) -> bool:
        """True if one more did-you-mean hint may be computed (and count it).

        Example:
            >>> budget = Budget()
            >>> sum(budget.take_hint() for _ in range(100)) == Budget.HINTS
            True
        """
        if self.hints <= 0:
            return False
        self.hints -= 1
        return True

    def charge(self, value: Any) -> int:
        """Pay for reading ``value`` and check its size; return how many items it holds, nested ones included.

        A list pays for every item it holds, nested ones included, as often as it is read: what
        later code walking it (validation, comparison, printing) will spend. Measuring it costs
        far less: each distinct list is walked once per load, and the walk stops as soon as a bound
        is passed, so a list of lists shared a million times over is refused after a few steps.

        Example:
            >>> budget = Budget()
            >>> row = [1, 2, 3]
            >>> budget.charge([row, row]), budget.steps
            (8, 8)
        """
        if isinstance(value, str):
            self.check_string(len(value))
            return 0
        if not isinstance(value, (list, tuple, dict)):
            return 0
        items = self._measure(value)[0]
        self.spend(items)
        return items

    def check_string(self, length: int) -> None:
        """Refuse a string of ``length`` characters past ``max_string``.

        Example:
            >>> Budget(Limits(max_string=5)).check_string(6)
            Traceback (most recent call last):
            ...
            chainspec.read.expr.LimitError: string of more than 5 characters
        """
        if length > self.limits.max_string:
            raise LimitError(f"string of more than {self.limits.max_string:,} characters", "max_string")

    def _measure(self, root: Any) -> tuple[int, int]:
        """``(items, depth)`` of a list or mapping: all items, nested ones included, and how deep it nests.

        Iterative (a list nested ten thousand deep is no recursion), refusing past ``max_list`` items
        or ``max_yaml_depth`` levels as soon as the walk gets there, and remembering each list it
        measured (with a reference, so that its ``id`` stays its own) for the rest of the load.
        """
        sizes = self._sizes
        known = sizes.get(id(root))
        if known is not None:
            return known[0], known[1]
        walked = len(root)
        # Each frame: the container, an iterator over its children, its items so far, its depth below.
        stack: list[list[Any]] = [[root, iter(_children(root)), len(root), 1]]
        while True:
            frame = stack[-1]
            for child in frame[1]:
                if not isinstance(child, (list, tuple, dict)):
                    continue
                known = sizes.get(id(child))
                if known is not None:
                    frame[2] += known[0]
                    frame[3] = max(frame[3], known[1] + 1)
                    self._check(frame[2], len(stack) + known[1])
                    continue
                walked += len(child)
                self._check(walked, len(stack) + 1)
                stack.append([child, iter(_children(child)), len(child), 1])
                break
            else:
                stack.pop()
                container, items, depth = frame[0], frame[2], frame[3]
                self._check(items, depth)
                sizes[id(container)] = (items, depth, container)
                if not stack:
                    return items, depth
                parent = stack[-1]
                parent[2] += items
                parent[3] = max(parent[3], depth + 1)
                self._check(parent[2], len(stack) + depth)

    def _check(self, items: int, depth: int) -> None:
        if depth > self.limits.max_yaml_depth:
            raise LimitError(f"value nests more than {self.limits.max_yaml_depth} levels deep (lists in lists)",
                             "max_yaml_depth")
        if items > self.limits.max_list:
            raise LimitError(f"list of more than {self.limits.max_list:,} items", "max_list")


def _children(container: Any) -> Any:
    return container.values() if isinstance(container, dict) else container


def has_placeholder(value: Any) -> bool:
    """Tell whether ``value`` is a string holding at least one ``${...}``.

    Example:
        >>> has_placeholder("${ch * 2}"), has_placeholder("relu")
        (True, False)
    """
    return isinstance(value, str) and "${" in value


def substitute(value: Any, scope: Mapping[str, Any], budget: Budget | None = None) -> Any:
    """Replace every ``${expr}`` in ``value`` (recursing into lists and dicts).

    A string that is exactly one placeholder takes the expression's type;
    placeholders inside longer text are formatted into it. ``budget`` (a fresh
    one with the default limits if not given) pays for the work and bounds the
    sizes of what is made.

    Example:
        >>> substitute("${min(512, 8192 // 2**s)}", {"s": 5})
        256
        >>> substitute(["${a}", "x${a + 1}"], {"a": 1})
        [1, 'x2']
    """
    budget = budget if budget is not None else Budget()
    result = _substitute(value, scope, budget)
    if isinstance(result, (list, tuple, dict)):
        budget.charge(result)  # an argument's list: its size, nested items included, within max_list
    return result


def _substitute(value: Any, scope: Mapping[str, Any], budget: Budget) -> Any:
    if isinstance(value, list):
        budget.spend(len(value))
        return [_substitute(v, scope, budget) for v in value]
    if isinstance(value, dict):
        budget.spend(len(value))
        return {k: _substitute(v, scope, budget) for k, v in value.items()}
    if not has_placeholder(value):
        return value
    whole = _PLACEHOLDER.fullmatch(value.strip())
    if whole:
        return evaluate(whole.group(1), scope, budget)
    if "${" in _PLACEHOLDER.sub("", value):
        raise ExpressionError(f"unclosed or nested placeholder in {value!r}")
    # Formatted piece by piece, each checked before the next is made: the text never grows past max_string.
    pieces: list[str] = []
    length, start = 0, 0
    for match in _PLACEHOLDER.finditer(value):
        pieces.append(value[start:match.start()])
        pieces.append(_text(evaluate(match.group(1), scope, budget), budget, budget.limits.max_string - length))
        length += len(pieces[-2]) + len(pieces[-1])
        budget.check_string(length)
        start = match.end()
    pieces.append(value[start:])
    length += len(pieces[-1])
    budget.check_string(length)
    budget.spend(1 + length // CHARS_PER_STEP)
    return "".join(pieces)


def _text(value: Any, budget: Budget, room: int) -> str:
    """``str(value)``, refused before it is made if it would be longer than ``room`` characters."""
    if isinstance(value, str):
        if len(value) > room:
            budget.check_string(budget.limits.max_string + 1)
        return value
    if isinstance(value, (list, tuple, dict)):
        # Each item prints as at least one character and a separator: a bound without printing anything.
        items = budget.charge(value)
        if 2 * items > room or _shortest_text(value) > room:
            budget.check_string(budget.limits.max_string + 1)
    text = str(value)
    if len(text) > room:
        budget.check_string(budget.limits.max_string + 1)
    return text


def _shortest_text(value: Any) -> int:
    """A lower bound of ``len(str(value))`` for a value already checked by :meth:`Budget.charge`."""
    total = 0
    todo = [value]
    while todo:
        current = todo.pop()
        if isinstance(current, dict):
            total += 2 + 4 * len(current)
            todo.extend(current.values())
        elif isinstance(current, (list, tuple)):
            total += 2 + 2 * len(current)
            todo.extend(current)
        elif isinstance(current, str):
            total += len(current)
    return total


@functools.lru_cache(maxsize=4096)
def _parse(expression: str) -> ast.expr | ExpressionError:
    """The syntax tree of an expression, or the error to raise (both cached: specs repeat expressions)."""
    if len(expression) > MAX_LENGTH:
        return ExpressionError(f"expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        return ExpressionError(f"invalid expression {expression.strip()!r}: {exc.msg}")
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes; nesting CPython's parser refuses
        return ExpressionError(f"invalid expression: {exc}")
    if _depth(tree.body) > MAX_DEPTH:
        return ExpressionError(f"expression nests more than {MAX_DEPTH} levels deep")
    return tree.body


def evaluate(expression: str, scope: Mapping[str, Any], budget: Budget | None = None) -> Any:
    """Evaluate one expression against ``scope`` with the restricted evaluator, within ``budget``.

    Example:
        >>> evaluate("ch * 2 if wide else ch", {"ch": 32, "wide": True})
        64
    """
    budget = budget if budget is not None else Budget()
    budget.spend(1 + min(len(expression), MAX_LENGTH) // 16)  # parsing (cached, but counted alike)
    tree = _parse(expression)
    if isinstance(tree, ExpressionError):
        raise ExpressionError(str(tree), tree.hint)
    try:
        return _Evaluator(scope, budget).visit(tree)
    except ExpressionError:
        raise
    except RecursionError:
        raise ExpressionError("expression nests too deeply to evaluate") from None
    except Exception as exc:  # a value or an operation the checks above did not foresee: still a located error
        raise ExpressionError(f"cannot evaluate: {type(exc).__name__}: {exc}") from None


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
    """Walks the whitelisted node kinds. Every other kind (``Attribute``, ``Subscript``, ``Lambda``,
    comprehensions, ``Await``, ``Yield``, f-strings, ``Starred``, ``Dict``, ``Set``, ``NamedExpr``,
    ``Slice``) has no ``visit_`` method and is refused by name."""

    def __init__(self, scope: Mapping[str, Any], budget: Budget) -> None:
        self.scope = scope
        self.budget = budget
        self.last = budget.limits.max_expression_steps

    def visit(self, node: ast.AST) -> Any:
        budget = self.budget
        budget.steps += 1
        if budget.steps > self.last:
            budget.spend(0)  # raises the fatal LimitError
        method = _VISITORS.get(type(node))
        if method is None:
            raise ExpressionError(f"{type(node).__name__.lower()} is not allowed in expressions")
        return method(self, node)

    def visit_Constant(self, node: ast.Constant) -> Any:
        value = node.value
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, (int, float)):
            return _bounded(value)
        if isinstance(value, str):
            self.budget.check_string(len(value))
            return value
        raise ExpressionError(f"constant {value!r} is not allowed")

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[node.id]
        if node.id not in self.scope:
            raise ExpressionError(self.unknown(node.id))
        value = self.scope[node.id]
        self.budget.charge(value)
        return value

    def unknown(self, name: str) -> str:
        if not self.budget.take_hint():
            return f"unknown name {name!r}"
        from ..types.registry import close_match

        names = list(self.scope)
        close = close_match(name, names, cutoff=0.6)
        if close:
            return f"unknown name {name!r}; did you mean {close!r}?"
        shown = heapq.nsmallest(MAX_LISTED_NAMES, names)
        known = ", ".join(shown) or "none"
        if len(names) > len(shown):
            known += f", ... ({len(names):,} in all)"
        return f"unknown name {name!r} (known names: {known})"

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        op = _BINARY.get(type(node.op))
        if op is None:
            raise ExpressionError(f"operator {type(node.op).__name__} is not allowed")
        left, right = self.visit(node.left), self.visit(node.right)
        _check_number(left)
        _check_number(right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ExpressionError(f"exponent {right!r} is too large (at most {MAX_EXPONENT})")
        try:
            result = op(left, right)
        except (ArithmeticError, ValueError, TypeError) as exc:
            raise ExpressionError(str(exc)) from None
        return _bounded(result)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        op = _UNARY.get(type(node.op))
        if op is None:  # ~ (Invert): bitwise, like << and |
            raise ExpressionError(f"operator {type(node.op).__name__} is not allowed")
        operand = self.visit(node.operand)
        if not isinstance(node.op, ast.Not):
            _check_number(operand)
        return op(operand)

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
            # Both sides were paid for, item by item, when they were read or made: comparing is cheaper.
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
        items = [self.visit(e) for e in node.elts]
        self.budget.charge(items)  # nested items and depth, within max_list and max_yaml_depth
        return items

    visit_List = visit_Tuple

    def visit_Call(self, node: ast.Call) -> Any:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS or node.keywords:
            raise ExpressionError("calls are limited to " + ", ".join(sorted(FUNCTIONS)))
        args = [self.visit(a) for a in node.args]
        _check_call(name, args, self.budget)
        try:
            result = FUNCTIONS[name](*args)
        except (ArithmeticError, ValueError, TypeError) as exc:
            raise ExpressionError(f"{name}(): {exc}") from None
        return _bounded(result)


#: The node kinds the evaluator walks, by type; every other kind is refused by name.
_VISITORS: dict[type[ast.AST], Callable[[_Evaluator, Any], Any]] = {
    getattr(ast, name.removeprefix("visit_")): method for name, method in vars(_Evaluator).items()
    if name.startswith("visit_") and name != "visit"
}


def _check_call(name: str, args: list[Any], budget: Budget) -> None:
    """Refuse, before the call, an argument that would make ``name`` slow or huge."""
    if name in ("min", "max"):
        if len(args) == 1 and isinstance(args[0], str):
            budget.spend(1 + len(args[0]) // CHARS_PER_STEP)  # iterates the characters
        return  # lists were paid for item by item when read or made
    if name in ("int", "float") and args and isinstance(args[0], str) and len(args[0]) > MAX_NUMBER_TEXT:
        raise ExpressionError(f"{name}(): a number written in {len(args[0]):,} characters is too large "
                              f"(at most {MAX_NUMBER_TEXT} characters)")
    if name in ("int", "round", "floor", "ceil") and args and isinstance(args[0], float):
        if not math.isfinite(args[0]):
            raise ExpressionError(f"{name}(): cannot convert {args[0]} to an integer")
        if abs(args[0]) > MAX_INT and (name != "round" or len(args) == 1 or args[1] is None):
            raise ExpressionError(f"{name}(): result is too large (about {args[0]:.3g}; the limit is 2**63)")
    if name == "round" and len(args) == 2 and args[1] is not None:
        digits = args[1]
        if isinstance(digits, bool) or not isinstance(digits, int):
            raise ExpressionError(f"round(): ndigits must be an integer, got {digits!r}")
        if abs(digits) > MAX_NDIGITS:
            raise ExpressionError(f"round(): ndigits {digits} is out of range (at most {MAX_NDIGITS} either way)")


def _check_number(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExpressionError(f"arithmetic needs numbers, got {_short(value)}")


def _short(value: Any) -> str:
    """``repr(value)``, cut short for long strings and lists: an error message must not print megabytes."""
    if isinstance(value, str) and len(value) > 60:
        return repr(value[:40]) + f"... ({len(value):,} characters)"
    if isinstance(value, (list, tuple, dict)) and len(value) > 8:
        return f"a {type(value).__name__} of {len(value):,} items"
    text = repr(value)
    return text if len(text) <= 200 else text[:100] + "..."


def _bounded(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if abs(value) > MAX_INT:
            # Not the value itself: it may have hundreds of digits.
            raise ExpressionError(f"result is too large (about 2**{value.bit_length() - 1}; the limit is 2**63)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ExpressionError(f"result {value} is not finite")
        return value
    if isinstance(value, (str, list, tuple, dict)):
        return value
    if isinstance(value, complex):
        raise ExpressionError(f"result {value} is not a real number")
    raise ExpressionError(f"result of type {type(value).__name__} is not allowed")
