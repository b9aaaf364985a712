"""The restricted ``${...}`` evaluator: what it computes, and everything it refuses."""

from __future__ import annotations

import ast
import inspect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainspec import _expr
from chainspec._expr import FUNCTIONS, MAX_LENGTH, ExpressionError, evaluate, has_placeholder, substitute

SCOPE = {"s": 5, "ch": 32, "wide": True, "slope": 0.2, "name": "relu"}


@pytest.mark.parametrize(("expression", "expected"), [
    ("ch * 2", 64),
    ("min(512, 8192 // 2**s)", 256),
    ("min(512, 8192 // 2**1)", 512),
    ("max(1, ch - 40)", 1),
    ("ch + 1 - 3", 30),
    ("ch / 64", 0.5),
    ("ch % 5", 2),
    ("-ch", -32),
    ("+ch", 32),
    ("2 ** -1", 0.5),
    ("(ch + 4) // 3", 12),
    ("abs(-3)", 3),
    ("int(7.9)", 7),
    ("float(3)", 3.0),
    ("round(2.567, 2)", 2.57),
    ("sqrt(16)", 4.0),
    ("log2(1024)", 10.0),
    ("floor(2.5)", 2),
    ("ceil(2.1)", 3),
    ("ch * 2 if wide else ch", 64),
    ("ch if not wide else 0", 0),
    ("wide and ch > 16", True),
    ("ch < 16 or s == 5", True),
    ("1 < s <= 5", True),
    ("s != 5", False),
    ("name == 'relu'", True),
    ("[ch, ch]", [32, 32]),
    ("(1, 2)", [1, 2]),
    ("slope * 2", 0.4),
    ("None", None),
    ("True", True),
    ("'text'", "text"),
])
def test_allowed_expressions(expression: str, expected: object) -> None:
    assert evaluate(expression, SCOPE) == expected


def test_the_functions_are_a_closed_list() -> None:
    assert sorted(FUNCTIONS) == ["abs", "ceil", "float", "floor", "int", "log2", "max", "min", "round", "sqrt"]


@pytest.mark.parametrize(("expression", "message"), [
    # attribute access, imports, dunder tricks, code objects
    ("ch.__class__", "attribute is not allowed in expressions"),
    ("().__class__.__bases__[0].__subclasses__()", "calls are limited to"),
    ("().__class__.__bases__", "attribute is not allowed"),
    ("__import__('os').system('true')", "calls are limited to abs, ceil, float"),
    ("__builtins__", "unknown name '__builtins__'"),
    ("eval('1')", "calls are limited to"),
    ("exec('x = 1')", "calls are limited to"),
    ("open('/etc/passwd')", "calls are limited to"),
    ("getattr(ch, 'real')", "calls are limited to"),
    ("(lambda: 1)()", "calls are limited to"),
    ("lambda: 1", "lambda is not allowed"),
    ("[x for x in [1]]", "listcomp is not allowed"),
    ("{1: 2}", "dict is not allowed"),
    ("{1, 2}", "set is not allowed"),
    ("f'{ch}'", "joinedstr is not allowed"),
    ("ch[0]", "subscript is not allowed"),
    ("(x := 1)", "namedexpr is not allowed"),
    ("min(*[1, 2])", "starred is not allowed"),
    ("min(1, key=abs)", "calls are limited to"),
    ("b'bytes'", "constant b'bytes' is not allowed"),
    ("1 << 100", "operator LShift is not allowed"),
    ("ch @ ch", "operator MatMult is not allowed"),
    ("1 in [1]", "comparison In is not allowed"),
    ("ch is None", "comparison Is is not allowed"),
    # huge numbers
    ("2 ** 100", "exponent 100 is too large (at most 64)"),
    ("9 ** 9 ** 9", "exponent 387420489 is too large"),
    ("2.0 ** 1000", "exponent 1000 is too large"),
    ("10 ** 30", "result is too large"),
    ("2 ** 62 * 4", "result is too large"),
    ("int(1e300)", "too large"),
    ("1e308 * 10", "not finite"),
    ("float('inf')", "not finite"),
    # arithmetic on what is not a number
    ("'a' * 10 ** 8", "arithmetic needs numbers, got 'a'"),
    ("name + 'x'", "arithmetic needs numbers, got 'relu'"),
    ("-True", "arithmetic needs numbers, got True"),
    # plain failures
    ("1 / 0", "division by zero"),
    ("sqrt(-1)", "sqrt(): math domain error"),
    ("chh * 2", "unknown name 'chh'; did you mean 'ch'?"),
    ("zzz", "unknown name 'zzz' (known names: ch, name, s, slope, wide)"),
    ("ch *", "invalid expression 'ch *'"),
    ("1" * (MAX_LENGTH + 1), f"longer than {MAX_LENGTH} characters"),
])
def test_refused_expressions(expression: str, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        evaluate(expression, SCOPE)
    assert message in str(info.value)


def test_expression_error_is_a_value_error() -> None:
    assert issubclass(ExpressionError, ValueError)


def test_names_come_only_from_the_scope() -> None:
    with pytest.raises(ExpressionError, match="unknown name 'min'"):
        evaluate("min", {})  # functions can be called, not passed around
    assert evaluate("print", {"print": 3}) == 3  # a scope name is just a value


@pytest.mark.parametrize(("value", "expected"), [
    ("${ch * 2}", 64),
    ("  ${ch * 2}  ", 64),
    ("${slope}", 0.2),
    ("${wide}", True),
    ("block_${s}", "block_5"),
    ("${ch}x${ch}", "32x32"),
    (["${s}", 3, "${s + 1}"], [5, 3, 6]),
    ({"a": "${s}", "b": ["${ch}"]}, {"a": 5, "b": [32]}),
    ("plain", "plain"),
    (7, 7),
    (None, None),
])
def test_substitute(value: object, expected: object) -> None:
    assert substitute(value, SCOPE) == expected


def test_substitute_refuses_broken_placeholders() -> None:
    with pytest.raises(ExpressionError, match="unclosed or nested placeholder"):
        substitute("a${s", SCOPE)
    with pytest.raises(ExpressionError, match="unclosed or nested placeholder"):
        substitute("x${${s}}", SCOPE)


def test_has_placeholder() -> None:
    assert has_placeholder("${a}") and has_placeholder("x ${a}")
    assert not has_placeholder("relu") and not has_placeholder(3) and not has_placeholder(["${a}"])


def test_the_evaluator_never_calls_eval_exec_or_compile() -> None:
    tree = ast.parse(inspect.getsource(_expr))
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__"}


# An oracle for arithmetic: Python itself, on expressions the strategy keeps small.
_INTS = st.integers(min_value=-1000, max_value=1000)
_LEAVES = st.one_of(_INTS.map(str), st.sampled_from(["s", "ch"]))


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.tuples(children, st.sampled_from(["+", "-", "*", "//", "%"]), children).map(
        lambda t: f"({t[0]} {t[1]} {t[2]})")
    calls = st.tuples(st.sampled_from(["min", "max"]), children, children).map(lambda t: f"{t[0]}({t[1]}, {t[2]})")
    return st.one_of(binary, calls, children.map(lambda c: f"abs({c})"), children.map(lambda c: f"-{c}"))


@settings(max_examples=200, deadline=None)
@given(st.recursive(_LEAVES, _combine, max_leaves=12))
def test_integer_arithmetic_agrees_with_python(expression: str) -> None:
    scope = {"s": 5, "ch": 32}
    try:
        oracle_builtins = {"min": min, "max": max, "abs": abs}
        expected = eval(expression, {"__builtins__": oracle_builtins}, dict(scope))  # the oracle, in the test only
    except ZeroDivisionError:
        with pytest.raises(ExpressionError, match="by zero"):
            evaluate(expression, scope)
        return
    if abs(expected) > 2**63:
        with pytest.raises(ExpressionError, match="too large"):
            evaluate(expression, scope)
        return
    assert evaluate(expression, scope) == expected
