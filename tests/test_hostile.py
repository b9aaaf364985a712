"""Malformed and hostile specs: each is a SpecError located at file:line:col, never another exception.

Every case goes through ``chainspec.loads`` and, if it loads, ``Spec.build``:
whichever step refuses it must raise :class:`SpecError` whose every problem
names the source, a line and a column. A few cases also run the real command
line in a subprocess: exit code 1, the location on stderr, no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from torch import nn

import chainspec
from chainspec import Chain, SpecError
from chainspec.read.document import MAX_BYTES, MAX_DEPTH, MAX_VALUES
from chainspec.read.expr import MAX_DEPTH as MAX_EXPR_DEPTH
from chainspec.read.model import MAX_STAGES
from chainspec.read.reserved import id_problem
from chainspec.read.resolve import MAX_COMPOSITE_DEPTH
from chainspec.types.layers import Composite

SOURCE = "hostile.yaml"
#: A valid spec up to its node list; the first node goes on line 6.
HEAD = "chainspec: 1\nchains:\n  net:\n    input_shape: [4]\n    nodes:\n"


def node(body: str) -> str:
    """A spec whose single node (on line 6) is ``{body}``."""
    return HEAD + "      - {" + body + "}\n"


def spec_error(text: str | bytes, **kwargs: object) -> SpecError:
    """Load and build ``text``; return the SpecError, checking every problem is located."""
    with pytest.raises(SpecError) as info:
        chainspec.loads(text, source=SOURCE, **kwargs).build()  # type: ignore[arg-type]
    err = info.value
    assert err.problems, "a SpecError must carry at least one problem"
    for problem in err.problems:
        assert problem.source == SOURCE, problem
        assert problem.line is not None and problem.line >= 1, problem
        assert problem.col is not None and problem.col >= 1, problem
    first = err.problems[0]
    assert str(err).startswith(f"{SOURCE}:{first.line}:{first.col}: ")
    return err


def assert_at(err: SpecError, line: int, *fragments: str) -> None:
    """Some problem of ``err`` is on ``line`` and its text holds every fragment."""
    for problem in err.problems:
        if problem.line == line and all(f in problem.format() for f in fragments):
            return
    raise AssertionError(f"no problem on line {line} with {fragments}:\n{err}")


# -- aliases -----------------------------------------------------------------------------------------------------

def billion_laughs(levels: int = 9) -> str:
    """Ten lols, then each anchor ten aliases of the one before: 10**levels values on expansion."""
    lines = ["chainspec: 1", 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_before_expansion() -> None:
    started = time.perf_counter()
    err = spec_error(billion_laughs())
    elapsed = time.perf_counter() - started
    # l4 is the first anchor past the bound: 1 + 10 * 11111 values. It sits on line 6.
    assert_at(err, 6, "expands to more than", "alias")
    assert elapsed < 10, f"took {elapsed:.1f}s"  # generous sanity bound; speed is measured in benchmarks/


def test_wide_alias_fanout_inside_a_spec_is_refused() -> None:
    text = ("chainspec: 1\nvars: {a: 1}\n"
            "x: &x [" + ", ".join(["1"] * 300) + "]\n"
            "y: [" + ", ".join(["*x"] * 300) + "]\n" + HEAD.removeprefix("chainspec: 1\n")
            + "      - {id: a, type: relu}\n")
    err = spec_error(text)
    assert_at(err, 4, f"more than {MAX_VALUES:,} values")


def test_moderate_aliases_are_fine() -> None:
    text = ("chainspec: 1\ndefaults:\n  conv2d: &conv {kernel_size: 3, padding: 1}\n"
            "  eq_conv2d: *conv\n" + HEAD.removeprefix("chainspec: 1\n")
            + "      - {id: a, type: linear, args: &fc {in_features: 4, out_features: 4}}\n"
            + "      - {id: b, type: linear, args: *fc}\n")
    assert [n.id for n in chainspec.loads(text).build()] == ["a", "b"]


@pytest.mark.parametrize("text, line", [
    ("chainspec: 1\na: &a [1, *a]\n", 2),
    ("chainspec: 1\na: &a {b: *a}\n", 2),
    ("chainspec: 1\na: &a {b: {c: [{d: *a}]}}\n", 2),
    ("chainspec: 1\na: &a {<<: *a, b: 1}\n", 2),
], ids=["list", "mapping", "nested", "merge"])
def test_self_referencing_anchors(text: str, line: int) -> None:
    assert_at(spec_error(text), line, "refers to itself")


def test_aliases_nesting_past_the_depth_bound() -> None:
    # Every line is shallow, but each alias wraps the previous anchor one level deeper.
    lines = ["chainspec: 1", "a0: &a0 [1]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, MAX_DEPTH + 5)]
    err = spec_error("\n".join(lines) + "\n")
    assert any("nesting is too deep" in p.message for p in err.problems), err


def test_undefined_alias_and_duplicate_anchor() -> None:
    assert_at(spec_error("chainspec: 1\na: *nope\n"), 2, "undefined alias")
    assert_at(spec_error("chainspec: 1\na: &x 1\nb: &x 2\n"), 3, "duplicate anchor")


# -- duplicate keys ----------------------------------------------------------------------------------------------

def test_duplicate_top_level_key_reports_both_lines() -> None:
    err = spec_error("chainspec: 1\nchains: {}\ndescription: x\nchains: {}\n")
    assert_at(err, 4, "duplicate key 'chains'", "first defined at line 2")


def test_duplicate_arg_reports_both_lines() -> None:
    text = HEAD + "      - id: fc\n        type: linear\n        args:\n          in_features: 4\n" \
                  "          out_features: 8\n          in_features: 5\n"
    err = spec_error(text)
    assert_at(err, 11, "duplicate key 'in_features'", "first defined at line 9")


def test_duplicate_keys_in_a_flow_mapping() -> None:
    err = spec_error(node("id: a, type: relu, id: b"))
    assert_at(err, 6, "duplicate key 'id'", "first defined at line 6")


# -- tags ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "!!python/object/apply:os.system ['true']",
    "!!python/object/new:os.system ['true']",
    "!!python/object:os.system {}",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/tuple [1, 2]",
    "!<tag:yaml.org,2002:python/object/apply:os.system> ['true']",
    "!!binary aGVsbG8=",
    "!!set {a, b}",
    "!!omap [a: 1]",
    "!custom 1",
    "!custom {a: 1}",
])
def test_tags_outside_the_core_schema_are_refused(value: str) -> None:
    err = spec_error(HEAD + f"      - id: a\n        type: relu\n        args:\n          x: {value}\n")
    assert_at(err, 9, "unsupported tag", "args.x")


def test_tagged_mapping_key_is_refused() -> None:
    assert_at(spec_error("chainspec: 1\n!!python/name:os.system : 1\n"), 2, "mapping keys must be plain strings")


@pytest.mark.parametrize("text", ["chainspec: 1\n1: a\n", "chainspec: 1\n[a]: b\n", "chainspec: 1\n? {a: 1}\n: b\n"])
def test_non_string_keys(text: str) -> None:
    err = spec_error(text)
    assert any(p.line == 2 for p in err.problems), err


# -- encoding, whitespace, size, depth ----------------------------------------------------------------------------

def test_tab_indentation_has_a_hint() -> None:
    err = spec_error("chainspec: 1\nchains:\n\tnet: {}\n")
    assert_at(err, 3, "invalid YAML", "indent with spaces, not tabs")


@pytest.mark.parametrize("raw, line, col", [
    (b"chainspec: 1\n\xff\xfe\n", 2, 1),
    (b"chainspec: 1\ndescription: caf\xe9\n", 2, 17),  # latin-1, not UTF-8
    (b"\xff\xfec\x00h\x00", 1, 1),  # UTF-16
])
def test_non_utf8_bytes(raw: bytes, line: int, col: int) -> None:
    err = spec_error(raw)
    assert (err.problems[0].line, err.problems[0].col) == (line, col)
    assert "not valid UTF-8" in err.problems[0].message


def test_escape_sequences_in_keys_cannot_reach_the_terminal() -> None:
    # "\e[2J" in a double-quoted YAML key is ESC [ 2 J: printed raw, it would clear the screen.
    err = spec_error(node('id: a, type: relu, args: {"\\e[2J\\u0007": 1}') + '"\\e]0;title\\a": 1\n')
    text = str(err)
    assert not any(c in text for c in "\x1b\x07"), repr(text)
    assert "\\x1b[2J" in text and "\\x07" in text


def test_control_characters_are_located() -> None:
    assert_at(spec_error("chainspec: 1\ndescription: a\x01b\n"), 2, "U+0001", "not allowed")


@pytest.mark.parametrize("text", ["", "   \n\n", "# only a comment\n", "---\n", "--- # nothing\n...\n", b""])
def test_empty_files(text: str | bytes) -> None:
    err = spec_error(text)
    assert [(p.line, p.col, p.message) for p in err.problems] == [(1, 1, "file is empty")]


@pytest.mark.parametrize("text", ["- a\n- b\n", "hello\n", "null\n", "42\n"])
def test_non_mapping_documents(text: str) -> None:
    assert_at(spec_error(text), 1, "a spec is a mapping")


def test_several_documents() -> None:
    assert_at(spec_error("chainspec: 1\n---\nchainspec: 1\n"), 2, "expected a single document")


def test_50_mb_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as fh:
        fh.write(b"chainspec: 1\n")
        fh.truncate(50 * 1024 * 1024)  # sparse: 50 MB on paper, nothing on disk
    with pytest.raises(SpecError) as info:
        chainspec.load(path)
    problem = info.value.problems[0]
    assert (problem.line, problem.col) == (1, 1)
    assert f"{50 * 1024 * 1024:,} bytes" in problem.message and f"{MAX_BYTES:,}" in problem.message


def test_50_mb_string_is_refused() -> None:
    err = spec_error("chainspec: 1\n" + "#" * (50 * 1024 * 1024))
    assert "specs are limited to" in err.problems[0].message


def test_endless_file_is_refused() -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    with pytest.raises(SpecError, match="specs are limited to"):
        chainspec.load("/dev/zero")


def _in_thread(fn: object, fifo: Path, seconds: float = 10.0) -> list[object]:
    """Run ``fn`` in a thread; if it is still blocked after ``seconds``, release it (open the FIFO for writing)."""
    import threading

    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(_outcome(fn)), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a writer arrives and leaves: the open returns
        thread.join(seconds)
        return ["blocked"]
    return out


def _outcome(fn: object) -> object:
    try:
        return fn()  # type: ignore[operator]
    except Exception as exc:
        return exc


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_never_blocks(tmp_path: Path) -> None:
    """A FIFO with no writer blocks a plain open() forever: the loader, the CLI and the watcher read it as empty."""
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    (err,) = _in_thread(lambda: chainspec.load(fifo), fifo)
    assert isinstance(err, SpecError), err
    assert err.problems[0].format().startswith(f"{fifo}:1:1: file is empty")
    for command in _commands():
        result = subprocess.run([sys.executable, "-m", "chainspec", command, str(fifo)], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 1 and f"{fifo}:1:1: file is empty" in result.stdout + result.stderr
    # A watched spec replaced by a FIFO: the training loop's poll returns at once, the model untouched.
    path = tmp_path / "net.yaml"
    path.write_text(node("id: fc, type: linear, args: {in_features: 4, out_features: 2}"))
    net = chainspec.load(path).build()
    errors: list[Exception] = []
    watcher = chainspec.SpecWatcher(path, net, on_error=errors.append, settle=0)
    path.unlink()
    os.mkfifo(path)
    assert _in_thread(watcher.poll, path) == [None]
    assert len(errors) == 1 and "file is empty" in str(errors[0])
    assert [n.id for n in net] == ["fc"]


@pytest.mark.parametrize("text", [
    "a: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "a: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n",
    "a:\n" + "".join(" " * i + "- \n" for i in range(1, 300)),
], ids=["flow-list", "flow-map", "block"])
def test_nesting_10000_deep(text: str) -> None:
    started = time.perf_counter()
    err = spec_error("chainspec: 1\n" + text)
    assert "nesting is too deep" in err.problems[0].message
    assert err.problems[0].line >= 2  # at the level that crosses the bound, not at 1:1
    assert time.perf_counter() - started < 10


def test_too_many_values() -> None:
    err = spec_error("chainspec: 1\nx: [" + "1," * (MAX_VALUES + 10) + "1]\n")
    assert_at(err, 2, f"more than {MAX_VALUES:,} values")


# -- numbers -------------------------------------------------------------------------------------------------------

HUGE = 10**30


@pytest.mark.parametrize("body, fragment", [
    (f"id: a, type: linear, args: {{in_features: 4, out_features: {HUGE}}}", "the limit is 2**63"),
    (f"id: a, type: linear, args: {{in_features: 4, out_features: {2**31}}}", "less than or equal to"),
    ("id: a, type: linear, args: {in_features: 4, out_features: 0xFFFFFFFFFFFFFFFFFFFFFFFF}", "too large"),
    ("id: a, type: linear, args: {in_features: 4, out_features: 0xFFFFFFFF}", "less than or equal"),
    (f"id: a, type: conv2d, args: {{in_channels: 4, out_channels: 4, kernel_size: [{HUGE}, 3]}}", "too large"),
    (f"id: a, type: conv2d, args: {{in_channels: 4, out_channels: 4, kernel_size: [{2**40}, 3]}}", "less than"),
    (f"id: a, type: relu, stage: {HUGE}", "too large"),
    ("id: a, type: relu, stage: 5000", f"less than or equal to {MAX_STAGES - 1}"),
    (f"id: a, type: relu, until: {HUGE}", "too large"),
    ('id: a, type: linear, args: {in_features: 4, out_features: "${10**30}"}', "too large"),
    ('id: a, type: linear, args: {in_features: 4, out_features: "${9**9**9}"}', "too large"),
    ('id: a, type: linear, args: {in_features: 4, out_features: "${2**62}"}', "less than or equal to"),
    ('id: a, type: linear, args: {in_features: 4, out_features: "${int(1e300)}"}', "too large"),
])
def test_huge_integers(body: str, fragment: str) -> None:
    err = spec_error(node(body))
    assert_at(err, 6, fragment)
    assert len(err.problems) == 1, err  # one problem per bad number, not echoes of it
    assert len(str(err)) < 2000, "a huge number must not flood the message"


@pytest.mark.parametrize("where", ["arg", "stage", "vars", "growth", "key", "float"])
def test_numbers_with_thousands_of_digits(where: str) -> None:
    # Python refuses to convert integers past 4,300 digits (a ValueError); none may escape, or flood the output.
    digits = "9" * 5000
    text = {
        "arg": node(f"id: a, type: linear, args: {{in_features: 4, out_features: {digits}}}"),
        "stage": node(f"id: a, type: relu, stage: {digits}"),
        "vars": f"chainspec: 1\nvars: {{w: {digits}}}\n" + HEAD.removeprefix("chainspec: 1\n")
                + "      - {id: a, type: relu}\n",
        "growth": f"chainspec: 1\ngrowth: {{stabilize: {digits}}}\n" + HEAD.removeprefix("chainspec: 1\n")
                  + "      - {id: a, type: relu}\n",
        "key": node(f"id: a, type: relu, args: {{{digits[:1000]}: 1}}"),
        "float": node(f"id: a, type: dropout, args: {{p: 1{digits}.5}}"),
    }[where]
    err = spec_error(text)
    assert len(str(err)) < 1000, str(err)
    if where != "key":
        assert "too large" in str(err) or "not a finite number" in str(err)
        assert "got None" not in str(err)  # the refused value is not reported a second time


def test_long_values_are_clipped_in_messages() -> None:
    err = spec_error(node(f"id: a, type: dropout, args: {{p: '{'k' * 100_000}'}}"))
    assert_at(err, 6, "args.p", "100,0")
    assert len(str(err)) < 1000


def test_refused_values_are_not_reported_twice_but_other_problems_are() -> None:
    err = spec_error(HEAD + "      - {id: a, type: linear, args: {in_features: .nan, out_features: 3}}\n"
                     "      - {id: b, type: relux}\n")
    assert [p.line for p in err.problems] == [6, 7]
    assert "not a finite number" in err.problems[0].message and "relux" in err.problems[1].message


def test_input_shapes_too_large_for_a_tensor() -> None:
    # Each dimension is legal; together they overflow torch's size arithmetic (on the meta device too).
    err = spec_error("chainspec: 1\nchains:\n  net:\n    input_shape: [2147483647, 2147483647, 2147483647]\n"
                     "    nodes: [{id: a, type: relu}]\n")
    assert_at(err, 4, "input_shape", "too large for a tensor")
    err = spec_error('chainspec: 1\nchains:\n  net:\n    input_shape: ["${2**62}"]\n'
                     "    nodes: [{id: a, type: relu}]\n")
    assert_at(err, 4, "input_shape[0]", "at stage 0", "more than 2147483647")


def test_unpaired_surrogates() -> None:
    # Text decoded with errors="surrogateescape" can hold them; libyaml cannot encode them.
    assert_at(spec_error("chainspec: 1\ndescription: \udcff\n"), 2, "unpaired surrogate U+DCFF")


def test_huge_input_shape_and_stage_count() -> None:
    shape = f"chainspec: 1\nchains:\n  net:\n    input_shape: [{HUGE}]\n    nodes: [{{id: a, type: relu}}]\n"
    assert_at(spec_error(shape), 4, "input_shape")
    err = spec_error(f"chainspec: 1\nstages: {HUGE}\n" + HEAD.removeprefix("chainspec: 1\n")
                     + "      - {id: a, type: relu}\n")
    assert_at(err, 2, "stages", "too large")
    err = spec_error("chainspec: 1\nstages: 1001\n" + HEAD.removeprefix("chainspec: 1\n")
                     + "      - {id: a, type: relu}\n")
    assert_at(err, 2, "stages", f"less than or equal to {MAX_STAGES}")
    assert_at(spec_error("chainspec: 10000000000000000000000000\nchains: {}\n"), 1, "chainspec", "too large")
    assert_at(spec_error("chainspec: 1000000\nchains: {}\n"), 1, "chainspec", "version")


def test_many_stages_stay_fast_and_are_reported_as_ranges() -> None:
    text = f"chainspec: 1\nstages: {MAX_STAGES}\n" + HEAD.removeprefix("chainspec: 1\n") \
        + "      - {id: a, type: relu, stage: 5, until: 7}\n"
    started = time.perf_counter()
    err = spec_error(text)
    assert time.perf_counter() - started < 10
    assert [p.message for p in err.problems] == ["chain 'net' has no nodes at stages 0..4",
                                                  f"chain 'net' has no nodes at stages 7..{MAX_STAGES - 1}"]


def test_checking_every_stage_builds_each_node_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # One node joins per stage: 300 stages of up to 300 nodes would be 45,000 meta builds without reuse.
    from chainspec.build import shapes as _compile

    nodes = "".join(f"      - {{id: n{i}, type: linear, args: {{in_features: 4, out_features: 4}}, stage: {i}}}\n"
                    for i in range(300))
    spec = chainspec.loads(HEAD + nodes)
    assert spec.stages == 300
    built: list[object] = []
    real = _compile.build_module
    monkeypatch.setattr(_compile, "build_module", lambda tree: built.append(tree) or real(tree))
    spec.check()
    assert len(built) == 1  # 300 nodes of one definition: built once, not once per node nor per stage
    # Distinct definitions are each built once.
    distinct = "".join(f"      - {{id: n{i}, type: layernorm, args: {{normalized_shape: [4], eps: {i + 1}.0e-6}}, "
                       f"stage: {i}}}\n" for i in range(300))
    built.clear()
    chainspec.loads(HEAD + distinct).check()
    assert len(built) == 300
    # A failure late in the growth is still found, at its line.
    bad = (HEAD + nodes).replace("{id: n250, type: linear, args: {in_features: 4", "{id: n250, type: linear, "
                                                                                    "args: {in_features: 5")
    with pytest.raises(SpecError, match=r":256:\d+: chains.net.nodes\[250\] \(n250\): expects 5 input features"):
        chainspec.loads(bad).check()


def test_vars_holding_huge_numbers() -> None:
    text = f"chainspec: 1\nvars: {{big: {HUGE}}}\n" + HEAD.removeprefix("chainspec: 1\n") \
        + '      - {id: a, type: linear, args: {in_features: 4, out_features: "${big * 2}"}}\n'
    assert_at(spec_error(text), 2, "vars.big", "too large")
    text = f"chainspec: 1\nvars: {{big: {2**62}}}\n" + HEAD.removeprefix("chainspec: 1\n") \
        + '      - {id: a, type: linear, args: {in_features: 4, out_features: "${big * 4}"}}\n'
    assert_at(spec_error(text), 7, "args.out_features", "too large")


def test_weights_that_cannot_fit_are_refused_before_allocating() -> None:
    # Passes validation (each size is legal) and shape inference on the meta device;
    # 2**62 parameters fit in no machine, so the build must refuse instead of allocating.
    # 2**48 parameters (a petabyte) pass it on any machine; the build must refuse them before allocating.
    text = "chainspec: 1\nchains:\n  net:\n    input_shape: [16777216]\n    nodes:\n" \
           "      - {id: fc, type: linear, args: {in_features: 16777216, out_features: 16777216}}\n"
    err = spec_error(text)
    assert_at(err, 6, "(fc)", "PB of weights", "free", "281,474,993,487,872 parameters")


def test_weights_too_large_for_any_tensor() -> None:
    text = "chainspec: 1\nchains:\n  net:\n    input_shape: [2147483647]\n    nodes:\n" \
           "      - {id: fc, type: linear, args: {in_features: 2147483647, out_features: 2147483647}}\n"
    # build counts a built-in type's weights in closed form: the memory guard refuses them at the node ...
    assert_at(spec_error(text), 6, "(fc)", "4,611,686,016,279,904,256 parameters")
    # ... and a shape check, which builds on the meta device, reports torch's refusal there.
    with pytest.raises(SpecError) as err:
        chainspec.loads(text, source=SOURCE).check()
    assert_at(err.value, 6, "(fc)", "cannot build")


@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf", "+.Inf", "1.0e+400"])
def test_nan_and_inf_where_a_number_is_expected(value: str) -> None:
    err = spec_error(node(f"id: a, type: dropout, args: {{p: {value}}}"))
    assert_at(err, 6, "not a finite number")


@pytest.mark.parametrize("where", ["vars", "input_shape", "defaults"])
def test_nan_elsewhere(where: str) -> None:
    shape = "[.nan]" if where == "input_shape" else "[4]"
    extra = {"vars": "vars: {x: .inf}\n", "defaults": "defaults:\n  dropout: {p: .nan}\n"}.get(where, "")
    text = f"chainspec: 1\n{extra}chains:\n  net:\n    input_shape: {shape}\n    nodes: [{{id: a, type: dropout}}]\n"
    err = spec_error(text)
    assert any("not a finite number" in p.message for p in err.problems), err


@pytest.mark.parametrize("expr", ["${1e308 * 10}", "${float('nan')}", "${float('inf')}", "${-float('inf')}"])
def test_expressions_producing_nan_or_inf(expr: str) -> None:
    assert_at(spec_error(node(f'id: a, type: dropout, args: {{p: "{expr}"}}')), 6, "not finite")


# -- negative and zero sizes ---------------------------------------------------------------------------------------

SIZE_ARGS = [
    ("linear", "in_features", {"in_features": 4, "out_features": 4}),
    ("linear", "out_features", {"in_features": 4, "out_features": 4}),
    ("eq_linear", "out_features", {"in_features": 4, "out_features": 4}),
    ("conv2d", "out_channels", {"in_channels": 4, "out_channels": 4}),
    ("conv2d", "in_channels", {"in_channels": 4, "out_channels": 4}),
    ("conv2d", "groups", {"in_channels": 4, "out_channels": 4}),
    ("conv2d", "kernel_size", {"in_channels": 4, "out_channels": 4}),
    ("conv2d", "stride", {"in_channels": 4, "out_channels": 4}),
    ("conv1d", "out_channels", {"in_channels": 4, "out_channels": 4}),
    ("conv_transpose2d", "out_channels", {"in_channels": 4, "out_channels": 4}),
    ("eq_conv2d", "out_channels", {"in_channels": 4, "out_channels": 4}),
    ("batchnorm1d", "num_features", {"num_features": 4}),
    ("batchnorm2d", "num_features", {"num_features": 4}),
    ("instancenorm2d", "num_features", {"num_features": 4}),
    ("groupnorm", "num_groups", {"num_groups": 2, "num_channels": 4}),
    ("groupnorm", "num_channels", {"num_groups": 2, "num_channels": 4}),
    ("layernorm", "normalized_shape", {"normalized_shape": 4}),
    ("minibatch_stddev", "group_size", {}),
    ("avgpool2d", "kernel_size", {}),
    ("adaptive_avgpool2d", "output_size", {}),
]


@pytest.mark.parametrize("value", [0, -1, -(10**30)])
@pytest.mark.parametrize("type_name, arg, args", SIZE_ARGS, ids=[f"{t}.{a}" for t, a, _ in SIZE_ARGS])
def test_zero_and_negative_sizes(type_name: str, arg: str, args: dict[str, int], value: int) -> None:
    given = ", ".join(f"{k}: {value if k == arg else v}" for k, v in {**args, arg: value}.items())
    err = spec_error(node(f"id: a, type: {type_name}, args: {{{given}}}"))
    if abs(value) > 2**63:  # refused as a number before it is read as a size
        assert_at(err, 6, f"args.{arg}", "too large")
    else:
        assert_at(err, 6, f"args.{arg} (a)", "greater than or equal to 1", f"got {value}", ">= 1")


def test_negative_padding_and_bad_probability() -> None:
    assert_at(spec_error(node("id: a, type: conv2d, args: {in_channels: 4, out_channels: 4, padding: -1}")),
              6, "args.padding", "greater than or equal to 0")
    assert_at(spec_error(node("id: a, type: dropout, args: {p: 1.5}")), 6, "args.p", "less than or equal to 1")


def test_zero_channels_through_a_composite_and_an_expression() -> None:
    text = ("chainspec: 1\nvars: {base: 32}\ntypes:\n  block:\n    params: {ch: null}\n    nodes:\n"
            "      - {id: fc, type: linear, args: {in_features: 4, out_features: \"${ch - base}\"}}\n"
            "chains:\n  net:\n    input_shape: [4]\n    nodes:\n      - {id: b1, type: block, args: {ch: 32}}\n")
    err = spec_error(text)
    # Reported where the arg is written, and naming the chain node that instantiates the composite.
    assert_at(err, 7, "types.block.nodes[0].args.out_features", "b1", "got 0")


def test_sizes_are_documented_as_bounded() -> None:
    assert "out_features: int >= 1" in _types_output("linear")


def _types_output(name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "chainspec", "types", "--filter", name],
                         capture_output=True, text=True, check=True)
    return out.stdout


# -- ids -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("node_id", ["forward", "training", "__class__", "__init__", "_modules", "state_dict",
                                     "to", "cuda", "head", "insert", "type_name", "class", "None"])
def test_ids_colliding_with_python_or_module_attributes(node_id: str) -> None:
    err = spec_error(node(f"id: '{node_id}', type: relu"))
    assert_at(err, 6, "nodes[0].id", repr(node_id), "pick another id")


@pytest.mark.parametrize("part_id", ["forward", "training", "__class__", "insert", "append", "type_name"])
def test_part_ids_colliding_inside_composites(part_id: str) -> None:
    text = (f"chainspec: 1\ntypes:\n  blk:\n    nodes:\n      - {{id: '{part_id}', type: relu}}\n"
            "chains:\n  net:\n    input_shape: [4]\n    nodes:\n      - {id: a, type: blk}\n")
    assert_at(spec_error(text), 5, "types.blk.nodes[0].id", repr(part_id))


def test_reserved_ids_cover_every_public_attribute() -> None:
    """Any attribute of an nn.Module, a Chain or a composite (an nn.Sequential) is refused as an id."""
    missing = set()
    built = chainspec.loads(node("id: a, type: linear, args: {in_features: 4, out_features: 2}")).build()
    for obj in (nn.Module(), nn.Sequential(), Chain(), built, Composite("x", [])):
        missing |= {name for name in dir(obj) if id_problem(name) is None}
    missing.discard("a")  # the built chain's own node
    assert not missing, f"add to chainspec.read.reserved.RESERVED_IDS: {sorted(missing)}"


def test_chain_names_may_be_anything_identifier_like() -> None:
    # A chain's name is data, never an attribute: 'forward' is a fine chain name.
    spec = chainspec.loads("chainspec: 1\nchains:\n  forward:\n    input_shape: [4]\n"
                           "    nodes: [{id: a, type: relu}]\n")
    assert spec.build("forward").name == "forward"


# -- composites and expressions ------------------------------------------------------------------------------------

def chained_types(count: int, *, cyclic: bool) -> str:
    types = "".join(f"  t{i}:\n    nodes:\n      - {{id: p, type: t{(i + 1) % count if cyclic else i + 1}}}\n"
                    for i in range(count - (0 if cyclic else 1)))
    if not cyclic:
        types += f"  t{count - 1}:\n    nodes:\n      - {{id: p, type: relu}}\n"
    return "chainspec: 1\ntypes:\n" + types + HEAD.removeprefix("chainspec: 1\n") + "      - {id: a, type: t0}\n"


def test_thousands_of_chained_composites_nest_too_deep() -> None:
    err = spec_error(chained_types(3000, cyclic=False))
    assert_at(err, 3, "types.t0", "nest 3000 levels deep", "t0 -> t1", "...", f"the limit is {MAX_COMPOSITE_DEPTH}")
    assert len(str(err)) < 1000


def test_thousands_of_composites_in_a_cycle() -> None:
    err = spec_error(chained_types(3000, cyclic=True))
    assert_at(err, 3, "cyclic composite types", "t0 -> t1", "...", "-> t0")
    assert len(str(err)) < 1000


def test_composite_nesting_at_the_limit_builds() -> None:
    chain = chainspec.loads(chained_types(MAX_COMPOSITE_DEPTH, cyclic=False)).build()
    assert [n.id for n in chain] == ["a"]
    assert_at(spec_error(chained_types(MAX_COMPOSITE_DEPTH + 1, cyclic=False)), 3, "levels deep")


@pytest.mark.parametrize("expr, fragment", [
    ("${x.__class__}", "attribute is not allowed"),
    ("${__import__('os').system('true')}", "calls are limited to"),
    ("${(lambda: 1)()}", "calls are limited to"),
    ("${[c for c in 'ab']}", "not allowed"),
    ("${'a' * 1000000}", "arithmetic needs numbers"),
    ("${\\0}", "null bytes"),
    ("${" + "-" * 400 + "1}", f"more than {MAX_EXPR_DEPTH} levels"),
    ("${" + "not " * 120 + "1}", f"more than {MAX_EXPR_DEPTH} levels"),
    ("${" + "(" * 300 + "1" + ")" * 300 + "}", "expression"),
    ("${" + "1+" * 300 + "1}", "longer than"),
    ("${1/0}", "division by zero"),
    ("${sqrt(-1)}", "math domain error"),
    ("${int('" + "9" * 450 + "')}", "too large"),
    ("${min()}", "min()"),
    ("${nope}", "unknown name"),
    ("${x", "unclosed"),
])
def test_hostile_expressions(expr: str, fragment: str) -> None:
    text = "chainspec: 1\nvars: {x: 1}\n" + HEAD.removeprefix("chainspec: 1\n") \
        + f'      - {{id: a, type: linear, args: {{in_features: 4, out_features: "{expr}"}}}}\n'
    err = spec_error(text)
    assert_at(err, 7, "args.out_features", fragment)
    # One problem for one bad expression: a failed expression is not also a missing argument.
    assert len(err.problems) == 1, err


# -- a watched spec turned hostile ---------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", ["bomb", "50MB", "python-tag", "zero-channels"])
def test_a_watched_spec_turned_hostile_is_rejected_and_changes_nothing(tmp_path: Path, payload: str) -> None:
    path = tmp_path / "net.yaml"
    path.write_text(node("id: fc, type: linear, args: {in_features: 4, out_features: 2}"))
    net = chainspec.load(path).build()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    errors: list[Exception] = []
    watcher = chainspec.SpecWatcher(path, net, on_error=errors.append, settle=0)
    if payload == "50MB":
        with path.open("r+b") as fh:
            fh.truncate(50 * 1024 * 1024)  # sparse: reading it whole would still cost 50 MB
    else:
        path.write_text({"bomb": billion_laughs(),
                         "python-tag": "chainspec: !!python/object/apply:os.system ['true']\nchains: {}\n",
                         "zero-channels": node("id: fc, type: linear, args: {in_features: 4, out_features: 0}"),
                         }[payload])
    stamp = time.time_ns() + 2_000_000_000
    os.utime(path, ns=(stamp, stamp))
    tracemalloc.start()
    try:
        assert watcher.poll() is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * MAX_BYTES, f"polling read {peak:,} bytes"  # the 50 MB file is never read whole
    assert len(errors) == 1 and isinstance(errors[0], SpecError)
    if payload == "50MB":
        assert f"file is {50 * 1024 * 1024:,} bytes" in str(errors[0])
    assert [n.id for n in net] == ["fc"]
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


# -- the command line ----------------------------------------------------------------------------------------------

def _commands() -> list[str]:
    from chainspec.cli import COMMANDS

    names = [c.__name__.rsplit(".", 1)[-1] for c in COMMANDS]
    return [c for c in ("build", "validate") if c in names]


CLI_CASES = {
    "billion-laughs": (billion_laughs().encode(), 6),
    "python-object": (b"chainspec: !!python/object/apply:os.system ['true']\nchains: {}\n", 1),
    "duplicate-key": (b"chainspec: 1\nchains: {}\nchains: {}\n", 3),
    "deep": (b"chainspec: 1\na: " + b"[" * 10_000 + b"]" * 10_000 + b"\n", 2),
    "non-utf8": (b"chainspec: 1\n\xff\n", 2),
    "empty": (b"", 1),
    "huge-channels": (node(f"id: a, type: linear, args: {{in_features: 4, out_features: {HUGE}}}").encode(), 6),
    "zero-channels": (node("id: a, type: linear, args: {in_features: 4, out_features: 0}").encode(), 6),
    "reserved-id": (node("id: forward, type: relu").encode(), 6),
    "nan": (node("id: a, type: dropout, args: {p: .nan}").encode(), 6),
    "inf": (node("id: a, type: linear, args: {in_features: 4, out_features: .inf}").encode(), 6),
    "negative-channels": (node("id: a, type: linear, args: {in_features: -4, out_features: 3}").encode(), 6),
    "self-reference": (b"chainspec: 1\nchains: &a {net: *a}\n", 2),
    "tab-indent": (b"chainspec: 1\nchains:\n\tnet: {}\n", 3),
    "unknown-tag": (b"chainspec: 1\nchains: !custom {}\n", 2),
    "python-name": (b"chainspec: 1\nchains: !!python/name:os.system\n", 2),
    "dunder-id": (node("id: __class__, type: relu").encode(), 6),
    "training-id": (node("id: training, type: relu").encode(), 6),
}


@pytest.mark.parametrize("command", _commands())
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_exits_1_with_a_located_message_and_no_traceback(tmp_path: Path, command: str, case: str) -> None:
    raw, line = CLI_CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(raw)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "chainspec", command, str(path)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "CHAINSPEC_DEBUG": ""})
    elapsed = time.perf_counter() - started
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and "internal error" not in output, output
    assert f"{path}:{line}:" in output, output
    assert elapsed < 10, f"{command} took {elapsed:.1f}s"  # sanity bound; benchmarks/ measures speed


def test_cli_refuses_a_50_mb_file(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as fh:
        fh.truncate(50 * 1024 * 1024)
    for command in _commands():
        result = subprocess.run([sys.executable, "-m", "chainspec", command, str(path)], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 1
        assert f"{path}:1:1: file is {50 * 1024 * 1024:,} bytes" in result.stdout + result.stderr


# -- scalars that do not fit their tag, slow scalars, tags in merged mappings --------------------------------------

@pytest.mark.parametrize("value", ["!!bool maybe", '!!int ""', "!!float abc", "!!null x", "!!int 0x", "0b_",
                                   "!!int 1.5", "!!bool ''", "!!float .", "!!int 1:99"])
def test_scalars_that_do_not_fit_their_tag(value: str) -> None:
    err = spec_error(f"chainspec: 1\ndescription: {value}\n" + HEAD.removeprefix("chainspec: 1\n")
                     + "      - {id: a, type: relu}\n")
    assert_at(err, 2, "description: ")
    assert "internal error" not in str(err)
    err = spec_error(node(f"id: a, type: leaky_relu, args: {{negative_slope: {value}}}"))
    assert_at(err, 6, "args.negative_slope")


@pytest.mark.parametrize("key", ["!!bool maybe", '!!int ""', "!!null x"])
def test_keys_that_do_not_fit_their_tag(key: str) -> None:
    assert_at(spec_error(f"chainspec: 1\n? {key}\n: 1\n"), 2, "is not")


@pytest.mark.parametrize("value", ["1" + ":2" * 130_000, "1" + ":2" * 120_000 + ".5", "0x" + "f" * 250_000,
                                   "!!int " + "7" * 250_000, "!!float " + "1" * 250_000 + "x"],
                         ids=["sexagesimal-int", "sexagesimal-float", "hex", "tagged-decimal", "bad-float"])
def test_no_scalar_is_slow(value: str) -> None:
    started = time.perf_counter()
    err = spec_error(f"chainspec: 1\nx: {value}\n")
    assert time.perf_counter() - started < 2  # PyYAML's base-60 conversion took 7 s on the first one
    assert_at(err, 2, "x: ")
    assert len(str(err)) < 1000


@pytest.mark.parametrize("merge", [
    "[!!python/object:builtins.dict {x: 1}, !custom {y: 2}]",
    "!custom {y: 2}",
    "!!python/object/apply:os.system {args: ['true']}",
    "[{z: 1}, !!omap {y: 2}]",
    "{<<: !custom {y: 2}}",
    "{<<: {<<: [!custom {y: 2}]}}",
    "{!!python/name:os.system : 1}",
])
def test_tags_in_merged_mappings(merge: str) -> None:
    err = spec_error(HEAD + f"      - id: a\n        type: relu\n        args:\n          <<: {merge}\n")
    assert_at(err, 9, "args")
    assert any("unsupported tag" in p.message or "plain strings" in p.message for p in err.problems), err


def test_tags_in_merged_mappings_through_aliases() -> None:
    text = ("chainspec: 1\nbase: &base !custom {negative_slope: 0.1}\nmid: &mid {<<: *base}\n"
            + HEAD.removeprefix("chainspec: 1\n") + "      - {id: a, type: leaky_relu, args: {<<: *mid}}\n")
    err = spec_error(text)
    assert_at(err, 2, "unsupported tag '!custom'")
    assert any(p.path.startswith("chains.net.nodes[0].args") for p in err.problems), err


def test_cli_on_bad_scalars_and_merges(tmp_path: Path) -> None:
    cases = {
        "bool": (b"chainspec: 1\ndescription: !!bool maybe\nchains: {}\n", 2),
        "empty-int": (b'chainspec: 1\ndescription: !!int ""\nchains: {}\n', 2),
        "sexagesimal": (b"chainspec: 1\nx: 1" + b":2" * 130_000 + b"\n", 2),
        "merge": (b"chainspec: 1\nx: {<<: [!!python/object:builtins.dict {a: 1}, !custom {b: 2}]}\n", 2),
    }
    paths = []
    for name, (raw, _) in cases.items():
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_bytes(raw)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "chainspec", "validate", *map(str, paths)], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "CHAINSPEC_DEBUG": ""})
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output and "internal error" not in output, output
    for path, (_, line) in zip(paths, cases.values(), strict=True):
        assert f"{path}:{line}:" in output, output
    assert time.perf_counter() - started < 10
