"""The restricted ``${...}`` evaluator: what it computes, and everything it refuses."""

from __future__ import annotations

import ast
import contextlib
import inspect
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainspec import Limits
from chainspec.read import expr as _expr
from chainspec.read.expr import (
    FUNCTIONS,
    MAX_LENGTH,
    Budget,
    ExpressionError,
    LimitError,
    evaluate,
    has_placeholder,
    substitute,
)

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


# -- every syntax node kind the grammar parses: evaluated or refused, never an internal error -------------------------

#: One expression per node kind ``ast.parse(mode="eval")`` can produce, operators included.
EVERY_KIND = {
    "BoolOp": "s and ch", "NamedExpr": "(x := 1)", "BinOp": "s + 1", "UnaryOp": "-s", "Lambda": "lambda: 1",
    "IfExp": "1 if s else 2", "Dict": "{1: 2}", "Set": "{1}", "ListComp": "[x for x in [1]]",
    "SetComp": "{x for x in [1]}", "DictComp": "{x: 1 for x in [1]}", "GeneratorExp": "(x for x in [1])",
    "Await": "await s", "Yield": "(yield)", "YieldFrom": "(yield from s)", "Compare": "s < 1", "Call": "abs(s)",
    "FormattedValue": "f'{s}'", "JoinedStr": "f'x'", "Constant": "1", "Attribute": "s.real", "Subscript": "s[0]",
    "Starred": "[*s]", "Name": "s", "List": "[s]", "Tuple": "(s, 1)", "Slice": "s[1:2]",
    # operators
    "Add": "1 + 1", "Sub": "1 - 1", "Mult": "2 * 3", "MatMult": "s @ s", "Div": "1 / 2", "Mod": "3 % 2",
    "Pow": "2 ** 3", "LShift": "1 << 2", "RShift": "4 >> 1", "BitOr": "1 | 2", "BitXor": "1 ^ 2",
    "BitAnd": "1 & 2", "FloorDiv": "7 // 2", "Invert": "~s", "Not": "not s", "UAdd": "+s", "USub": "-s",
    "Eq": "s == 1", "NotEq": "s != 1", "Lt": "s < 1", "LtE": "s <= 1", "Gt": "s > 1", "GtE": "s >= 1",
    "Is": "s is s", "IsNot": "s is not s", "In": "s in [1]", "NotIn": "s not in [1]", "And": "s and 1", "Or": "s or 1",
}
#: Constants of every type the parser makes.
EVERY_CONSTANT = ["1", "1.5", "1j", "'s'", "b's'", "True", "None", "...", "1e400", "9" * 400]


def _kinds() -> set[str]:
    """Every concrete node class that can appear in an expression's syntax tree."""
    bases = (ast.expr, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)
    return {cls.__name__ for base in bases for cls in base.__subclasses__()
            if cls.__module__ == "ast" and cls.__name__ not in ("Num", "Str", "Bytes", "NameConstant", "Ellipsis")}


def test_the_table_covers_every_node_kind_of_the_grammar() -> None:
    assert _kinds() <= set(EVERY_KIND), sorted(_kinds() - set(EVERY_KIND))
    for kind, expression in EVERY_KIND.items():
        names = {type(node).__name__ for node in ast.walk(ast.parse(expression, mode="eval"))}
        assert kind in names, (kind, expression)


@pytest.mark.parametrize("expression", [*EVERY_KIND.values(), *EVERY_CONSTANT])
def test_every_node_kind_evaluates_or_is_refused(expression: str) -> None:
    for scope in ({"s": 5, "ch": 32}, {"s": [1, 2], "ch": "x"}, {"s": "text", "ch": None}, {"s": 1.5, "ch": True}):
        with contextlib.suppress(ExpressionError):  # anything else (KeyError, TypeError ...) fails the test
            evaluate(expression, scope)


@pytest.mark.parametrize(("expression", "message"), [
    ("~s", "operator Invert is not allowed"),
    ("~True", "operator Invert is not allowed"),
    ("(-8) ** (1 / 3)", "not a real number"),
    ("int((-1) ** 0.5)", "not a real number"),
    ("1j", "constant 1j is not allowed"),
    ("...", "constant Ellipsis is not allowed"),
    ("await s", "await is not allowed"),
    ("(yield)", "yield is not allowed"),
    ("(yield from s)", "yieldfrom is not allowed"),
    ("s[1:2]", "subscript is not allowed"),
    ("[*[1, 2]]", "starred is not allowed"),
    ("1e400", "not finite"),
    ("9" * 400, "too large"),
    ("[1] < ['a']", "not supported"),
    ("max([1], 'a')", "max()"),
    ("int(float('nan'))", "not finite"),
    ("round(1e300)", "too large"),
    ("floor(1e300)", "too large"),
    ("ceil(-1e300)", "too large"),
    ("int(1e300)", "too large"),
])
def test_node_kinds_the_evaluator_used_to_mishandle(expression: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(message)):
        evaluate(expression, {"s": 5})


# -- every argument that drives a function's work is checked before the call ------------------------------------------

@pytest.mark.parametrize(("expression", "message"), [
    ("round(1, -10**18)", "ndigits -1000000000000000000 is out of range"),
    ("round(1, 10**18)", "ndigits 1000000000000000000 is out of range"),
    ("round(7, -2**62)", "out of range"),
    ("round(1, -(2**63))", "out of range"),
    ("round(1.5, -10**18)", "out of range"),
    ("round(10**18, -10**18)", "out of range"),
    ("round(1, -10**7)", "out of range"),
    ("round(round(1, -10**18), -10**18)", "out of range"),
    ("round(1, 1.5)", "ndigits must be an integer"),
    ("round(1, True)", "ndigits must be an integer"),
    ("int('" + "9" * 101 + "')", "a number written in 101 characters is too large"),
    ("float('" + "1" * 200 + "')", "a number written in 200 characters is too large"),
    ("'ab' * 10**9", "arithmetic needs numbers"),
    ("[1] * 10**9", "arithmetic needs numbers"),
    ("10**9 * 'ab'", "arithmetic needs numbers"),
    ("2 ** 65", "exponent 65 is too large"),
    ("(2**63) ** 64", "too large"),
    ("9" * 300 + " ** 64", "too large"),
])
def test_arguments_driving_work_are_checked_before_the_call(expression: str, message: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ExpressionError, match=re.escape(message)):
        evaluate(expression, {})
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(("expression", "expected"), [
    ("round(123456, -2)", 123500),
    ("round(2.5678, 64)", 2.5678),
    ("round(1, -64)", 0),
    ("int(' 42 ')", 42),
    ("float('1e3')", 1000.0),
    ("floor(-2.5)", -3),
    ("ceil(2**62 + 0.0)", 2**62),
    ("log2(2**62)", 62.0),
    ("max([3, 1, 2])", 3),
    ("min('cab')", "a"),
])
def test_bounded_functions_still_compute(expression: str, expected: object) -> None:
    assert evaluate(expression, {}) == expected


def test_a_variable_drives_round_no_further_than_a_literal() -> None:
    with pytest.raises(ExpressionError, match="out of range"):
        evaluate("round(1, n)", {"n": -10**18})


# -- the budget: steps over the whole load, sizes of what is made ------------------------------------------------------

def test_steps_are_counted_across_evaluations_and_checked_as_they_go() -> None:
    budget = Budget(Limits(max_expression_steps=1000))
    for _ in range(100):
        evaluate("1 + 2", {}, budget)  # 4 steps each
    ones = "[" + "1," * 240 + "1]"  # 31 steps to parse, 242 nodes, 241 items: 514 steps
    evaluate(ones, {}, budget)
    with pytest.raises(LimitError) as info:
        evaluate(ones, {}, budget)  # refused part way through, at the step past the limit
    assert info.value.fatal and info.value.limit == "max_expression_steps"
    assert info.value.hint == "raise Limits(max_expression_steps=...) if the spec is trusted"
    assert budget.steps == 1001
    with pytest.raises(LimitError):  # spent: every later evaluation is refused at once
        evaluate("1", {}, budget)


def test_lists_read_are_paid_for_item_by_item() -> None:
    big = list(range(5000))
    budget = Budget()
    assert evaluate("max(l)", {"l": big}, budget) == 4999
    assert budget.steps >= 5000
    with pytest.raises(LimitError, match="evaluation steps"):  # each read of l costs 5,000 steps
        evaluate("l == l == l == l == l", {"l": big}, Budget(Limits(max_expression_steps=20_000)))


def test_strings_and_lists_are_refused_as_they_are_made() -> None:
    row = list(range(100))
    with pytest.raises(LimitError, match="list of more than 1,000 items") as info:
        evaluate("[r, r, r, r, r, r, r, r, r, r, r]", {"r": row}, Budget(Limits(max_list=1000)))
    assert not info.value.fatal and info.value.limit == "max_list"
    with pytest.raises(LimitError, match="string of more than 50 characters"):
        substitute("${s}${s}${s}", {"s": "x" * 20}, Budget(Limits(max_string=50)))
    with pytest.raises(LimitError, match="string of more than 50 characters"):  # a list printed into text
        substitute("x${r}", {"r": row}, Budget(Limits(max_string=50)))
    assert substitute("${s}${s}", {"s": "x" * 25}, Budget(Limits(max_string=50))) == "x" * 50


def test_lists_shared_a_million_times_over_are_refused_without_walking_them() -> None:
    value: list[object] = [1]
    for _ in range(40):  # 2**40 items, in 40 lists
        value = [value, value]
    budget = Budget()
    start = time.perf_counter()
    with pytest.raises(LimitError, match="list of more than 10,000 items"):
        budget.charge(value)
    assert time.perf_counter() - start < 5


def test_lists_nested_deeper_than_yaml_allows_are_refused() -> None:
    value: list[object] = [1]
    for _ in range(5000):
        value = [value]
    with pytest.raises(LimitError, match="nests more than 64 levels deep"):
        evaluate("[v]", {"v": value})
    with pytest.raises(LimitError, match="nests more than 64 levels deep"):
        substitute("${v}", {"v": value})


def test_unknown_name_hints_are_cheap_with_thousands_of_names() -> None:
    scope = {f"layer_block_{i:05d}": i for i in range(20_000)}
    budget = Budget()
    start = time.perf_counter()
    messages = []
    for i in range(500):
        with pytest.raises(ExpressionError) as info:
            evaluate(f"layer_blok_{i:05d}", scope, budget)
        messages.append(str(info.value))
    assert time.perf_counter() - start < 2
    assert "did you mean 'layer_block_00000'?" in messages[0]
    assert messages[-1] == "unknown name 'layer_blok_00499'"  # past the first few: no hint computed
    with pytest.raises(ExpressionError, match=r"known names: a0, a1, a10, .*\(30 in all\)"):
        evaluate("zzzzzzzzzzzzzz", {f"a{i}": i for i in range(30)})
