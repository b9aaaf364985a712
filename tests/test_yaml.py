"""Safe YAML parsing with a position for every key path, and every refusal located."""

from __future__ import annotations

import time

import pytest
import yaml

from chainspec.read.document import MAX_BYTES, MAX_DEPTH, Document, construct_scalar, format_path, parse_yaml

TEXT = """\
chains:
  net:
    input_shape: [3, 32, 32]
    nodes:
      - {id: b1, type: conv2d}
      - id: b2
        type: relu
"""


def test_values_and_positions() -> None:
    doc = parse_yaml(TEXT, "x.yaml")
    assert doc.problems == []
    assert doc.data == {"chains": {"net": {"input_shape": [3, 32, 32],
                                           "nodes": [{"id": "b1", "type": "conv2d"}, {"id": "b2", "type": "relu"}]}}}
    assert doc.where(("chains",)) == (1, 1)
    assert doc.where(("chains", "net", "input_shape")) == (3, 5)
    assert doc.where(("chains", "net", "input_shape", 2)) == (3, 26)
    assert doc.where(("chains", "net", "nodes", 0)) == (5, 9)  # a flow mapping: its opening brace
    assert doc.where(("chains", "net", "nodes", 0, "type")) == (5, 18)  # a key: the key itself
    assert doc.where(("chains", "net", "nodes", 1)) == (6, 9)  # a block mapping: its first key
    assert doc.where(("chains", "net", "nodes", 1, "type")) == (7, 9)


def test_where_falls_back_to_the_closest_ancestor() -> None:
    doc = parse_yaml(TEXT, "x.yaml")
    assert doc.where(("chains", "net", "nodes", 1, "args", "in_channels")) == (6, 9)
    assert doc.where(("nothing", "here")) == (1, 1)  # the document itself
    assert Document("empty").where(("a",)) == (None, None)


def test_problem_formats_file_line_col_path() -> None:
    doc = parse_yaml(TEXT, "x.yaml")
    problem = doc.problem(("chains", "net", "nodes", 1, "type"), "unknown node type 'relu'", "a hint",
                          label=" (b2)")
    assert problem.format() == "x.yaml:7:9: chains.net.nodes[1].type (b2): unknown node type 'relu'; a hint"


@pytest.mark.parametrize(("path", "text"), [
    ((), ""),
    (("chains",), "chains"),
    (("chains", "net", "nodes", 1, "args"), "chains.net.nodes[1].args"),
    (("types", "blk", "nodes", 0, "id"), "types.blk.nodes[0].id"),
    (("a", 0, 1), "a[0][1]"),
])
def test_format_path(path: tuple, text: str) -> None:
    assert format_path(path) == text


@pytest.mark.parametrize(("text", "expected"), [
    ("a: 1\nb: 2\na: 3\n", "d.yaml:3:1: a: duplicate key 'a' (first defined at line 1); remove one of them"),
    ("x:\n  a: 1\n  a: 1\n", "d.yaml:3:3: x.a: duplicate key 'a' (first defined at line 2)"),
    ("a: !!python/object/apply:os.system ['true']\n", "d.yaml:1:4: a: unsupported tag"),
    ("a: !!python/name:os.system ''\n", "d.yaml:1:4: a: unsupported tag"),
    ("a: !custom 3\n", "d.yaml:1:4: a: unsupported tag '!custom'; specs never construct Python objects"),
    ("a: .nan\n", "d.yaml:1:4: a: '.nan' is not a finite number; use an ordinary number"),
    ("a: [-.inf]\n", "d.yaml:1:5: a[0]: '-.inf' is not a finite number"),
    ("a:\n\tb: 1\n", "d.yaml:2:1: invalid YAML: "),
    ("a: [1, 2\n", "d.yaml:2:1: invalid YAML: "),
    ("", "d.yaml:1:1: file is empty; a spec needs at least 'chainspec: 1' and 'chains:'"),
    ("# a comment\n\n", "d.yaml:1:1: file is empty"),
    ("a: 1\n---\nb: 2\n", "d.yaml:2:1: invalid YAML: expected a single document in the stream"),
    ("? [1, 2]\n: 3\n", "d.yaml:1:3: mapping keys must be plain strings"),
    ("a: &a [*a]\n", "d.yaml:1:4: a[0]: anchor refers to itself"),
    ("[" * (MAX_DEPTH + 10) + "]" * (MAX_DEPTH + 10), f"nesting is too deep (the limit is {MAX_DEPTH} levels)"),
], ids=["duplicate key", "nested duplicate", "python object tag", "python name tag", "custom tag", "nan", "inf",
        "tab", "unclosed list", "empty", "only comments", "two documents", "complex key", "self-anchor",
        "deep nesting"])
def test_refusals_are_located(text: str, expected: str) -> None:
    doc = parse_yaml(text, "d.yaml")
    assert doc.problems, f"{text!r} was accepted"
    assert any(expected in p.format() for p in doc.problems), [p.format() for p in doc.problems]


def test_tabs_get_a_hint() -> None:
    assert "indent with spaces, not tabs" in parse_yaml("a:\n\tb: 1\n", "d.yaml").problems[0].format()


def test_alias_bomb_is_refused_before_expanding() -> None:
    bomb = "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(8))
    doc = parse_yaml(bomb, "bomb.yaml")  # 10**9 values if expanded
    assert doc.data is None
    assert "alias bomb" in doc.problems[0].format()


def test_aliases_and_merge_keys_within_bounds() -> None:
    doc = parse_yaml("base: &b {k: 3, p: 1}\nuse: *b\nmerged:\n  <<: *b\n  p: 2\n", "d.yaml")
    assert doc.problems == []
    assert doc.data == {"base": {"k": 3, "p": 1}, "use": {"k": 3, "p": 1}, "merged": {"k": 3, "p": 2}}


@pytest.mark.parametrize(("text", "where"), [(b"a: \xff\n", (1, 4)), (b"a: 1\nb: \xc3\x28\n", (2, 4))],
                         ids=["latin-1 byte", "broken sequence"])
def test_non_utf8_is_located(text: bytes, where: tuple[int, int]) -> None:
    problem = parse_yaml(text, "d.yaml").problems[0]
    assert problem.message.startswith("file is not valid UTF-8 (byte 0x")
    assert (problem.line, problem.col) == where


def test_size_limit() -> None:
    doc = parse_yaml("a: " + "x" * MAX_BYTES, "big.yaml")
    assert doc.data is None and "specs are limited to" in doc.problems[0].message


@pytest.mark.parametrize(("text", "value"), [
    ("a: 0x10", 16),
    ("a: 1_000", 1000),
    ("a: yes", True),
    ("a: ~", None),
    ("a: 1e3", 1000.0),  # YAML 1.2 floats, though PyYAML reads YAML 1.1
    ("a: 1e-5", 1e-5),
    ("a: .5E+2", 50.0),
    ("a: 1.0e-5", 1e-5),
    ("a: '1e3'", "1e3"),  # quoted: a string
    ("a: 1e3x", "1e3x"),
    ("a: '${ch * 2}'", "${ch * 2}"),
    ("a: 2023-01-01", "2023-01-01"),  # a timestamp stays text: specs never construct dates
])
def test_core_schema_scalars(text: str, value: object) -> None:
    doc = parse_yaml(text + "\n", "d.yaml")
    assert doc.problems == [] and doc.data == {"a": value}


# -- scalars: every tagged value fits its tag, and no scalar is slow to construct ---------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("a: !!bool maybe", "'maybe' is not a boolean"),
    ("a: !!bool ''", "'' is not a boolean"),
    ('a: !!int ""', "'' is not an integer"),
    ("a: !!int 0x", "'0x' is not an integer"),
    ("a: !!int 0b_", "'0b_' is not an integer"),
    ("a: 0b_", "'0b_' is not an integer"),  # resolved as an integer, though PyYAML cannot construct it
    ("a: 0x__", "'0x__' is not an integer"),
    ("a: !!int 08", "'08' is not an integer"),
    ("a: !!int 1.5", "'1.5' is not an integer"),
    ("a: !!int 1:75", "'1:75' is not an integer"),
    ("a: !!int '١٢'", "'١٢' is not an integer"),  # digits Python's int() would take, YAML's would not
    ("a: !!float abc", "'abc' is not a number"),
    ("a: !!float ''", "'' is not a number"),
    ("a: !!float .", "'.' is not a number"),
    ("a: !!float ._", "'._' is not a number"),
    ("a: !!float 1e", "'1e' is not a number"),
    ("a: !!float 0x1p3", "'0x1p3' is not a number"),
    ("a: !!float inf", "'inf' is not a finite number"),
    ("a: !!float -.Inf", "'-.Inf' is not a finite number"),
    ("a: !!null x", "'x' is not null"),
    ("a: !!null 0", "'0' is not null"),
    ("a: [1, !!bool maybe]", "a[1]: 'maybe' is not a boolean"),
    ("!!bool maybe: 1", "maybe: 'maybe' is not a boolean"),
    ('? !!int ""\n: 1', "'' is not an integer"),
    ("b: &b {!!float x: 1}\na: {<<: *b}", "'x' is not a number"),
])
def test_scalars_that_do_not_fit_their_tag_are_located(text: str, message: str) -> None:
    doc = parse_yaml(text + "\n", "d.yaml")
    assert any(p.line is not None and p.col is not None and message in p.format() for p in doc.problems), \
        [p.format() for p in doc.problems]


@pytest.mark.parametrize("text", [
    "a: !!int 42", "a: !!int '0x1F'", "a: !!int -0b101", "a: !!int 0o17", "a: 017", "a: 1:30", "a: -1:30:00",
    "a: 190:20:30", "a: 1_000", "a: +12", "a: !!float 1", "a: !!float '1.5'", "a: 1.5e+3", "a: 1:30.5",
    "a: !!bool Yes", "a: !!bool OFF", "a: !!null ''", "a: !!null ~", "a: !!null NULL", "a: !!str 12", "a: 0",
    "a: -.5", "a: 6.8523015e+5", "a: 685_230.15", "a: 1.", "a: !!float 1e3",
])
def test_valid_scalars_read_as_yaml_1_1_reads_them(text: str) -> None:
    doc = parse_yaml(text + "\n", "d.yaml")
    expected = yaml.safe_load(text)["a"]
    if text == "a: !!float 1e3":
        expected = 1000.0  # YAML 1.2's form, which PyYAML's float() happens to accept too
    assert doc.problems == [] and doc.data == {"a": expected}
    assert type(doc.data["a"]) is type(expected)


def test_construct_scalar_raises_value_error_only() -> None:
    int_tag = "tag:yaml.org,2002:int"
    assert construct_scalar(int_tag, "1:0:0") == 3600
    with pytest.raises(ValueError, match="too large"):
        construct_scalar(int_tag, "1" + ":59" * 20)
    for tag in ("bool", "int", "float", "null"):
        with pytest.raises(ValueError):
            construct_scalar("tag:yaml.org,2002:" + tag, "\x00?")


@pytest.mark.parametrize("value", [
    "1" + ":2" * 130_000,  # base 60: PyYAML's conversion took 7 s for this one
    "1" + ":00" * 86_000,
    "!!int " + "1" + ":2" * 130_000,
    "1" + ":2" * 120_000 + ".5",  # a base-60 float
    "0" * 250_000 + "1",  # leading zeros: small, but long
    "0x" + "f" * 250_000,
    "0b" + "1" * 250_000,
    "0" + "7" * 250_000,  # octal
    "1" + "_" * 250_000,
    "!!int " + "1" * 250_000,
    "!!int " + "1" * 250_000 + "x",
    "!!float " + "1" * 250_000 + "x",
    "1" + "0" * 250_000 + ".5",
    "1e" + "9" * 250_000,
    "!!bool " + "y" * 250_000,
], ids=["sexagesimal", "sexagesimal-zeros", "sexagesimal-tagged", "sexagesimal-float", "leading-zeros", "hex",
        "binary", "octal", "underscores", "tagged-decimal", "bad-int", "bad-float", "long-float", "long-exponent",
        "bad-bool"])
def test_no_scalar_is_slow_to_construct(value: str) -> None:
    text = "a: " + value + "\n"
    assert len(text) < MAX_BYTES
    started = time.perf_counter()
    doc = parse_yaml(text, "d.yaml")
    elapsed = time.perf_counter() - started
    assert elapsed < 10.0, f"{elapsed:.2f}s"
    assert all(len(p.format()) < 400 for p in doc.problems)
    assert doc.problems or doc.data["a"] in (1, 0)


# -- merge keys: their sources are checked like any other mapping ---------------------------------------------------

@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("a: {<<: [!!python/object:builtins.dict {x: 1}, !custom {y: 2}]}", 1, "unsupported tag 'tag:yaml.org,2002:"
                                                                          "python/object:builtins.dict'"),
    ("a: {<<: [{x: 1}, !custom {y: 2}]}", 1, "unsupported tag '!custom'"),
    ("a: {<<: !custom {y: 2}}", 1, "unsupported tag '!custom'"),
    ("a: {<<: !!omap {y: 2}}", 1, "unsupported tag"),
    ("b: &b !custom {x: 1}\na: {<<: *b}", 1, "a: unsupported tag '!custom'"),
    ("b: &b {x: 1}\na: {<<: !custom [*b]}", 2, "unsupported tag '!custom'; specs use plain YAML lists"),
    ("b: &b !!set {x}\na: {<<: [*b]}", 1, "a: unsupported tag"),
    ("b: &b {x: 1, <<: !custom {y: 2}}\nc: &c {<<: *b}\na: {<<: *c}", 1, "a: unsupported tag '!custom'"),
    ("b: &b {!!python/name:os.system : 1}\na: {<<: *b}", 1, "a: mapping keys must be plain strings"),
    ("b: &b {[1]: 1}\na: {<<: *b}", 1, "a: mapping keys must be plain strings"),
    ("a: {<<: [1]}", 1, "'<<' merges only mappings"),
    ("a: {<<: {x: !!python/name:os.system 1}}", 1, "a.x: unsupported tag"),
    ("a: &a {b: {<<: *a}}", 1, "anchor refers to itself"),
    ("a: &a {<<: &b {<<: *a}}", 1, "anchor refers to itself"),
], ids=["python-object-and-custom", "custom-in-list", "custom", "omap", "alias-to-tagged", "tagged-list",
        "alias-to-set", "nested", "tagged-key", "complex-key", "not-a-mapping", "tagged-value", "self", "self-nested"])
def test_tags_in_merged_mappings_are_refused(text: str, line: int, fragment: str) -> None:
    doc = parse_yaml(text + "\n", "d.yaml")
    assert any(p.line == line and fragment in p.format() for p in doc.problems), [p.format() for p in doc.problems]


def test_nested_merges_follow_yaml_precedence() -> None:
    doc = parse_yaml("base: &base {k: 1, p: 1, q: 1}\n"
                     "mid: &mid {<<: *base, p: 2, r: 2}\n"
                     "other: &other {q: 3, s: 3, k: 3}\n"
                     "top: {<<: [*mid, *other], r: 4}\n", "d.yaml")
    assert doc.problems == []
    # The mapping's own keys first, then each source in order, a source's own keys before its merges.
    assert doc.data["top"] == {"r": 4, "p": 2, "k": 1, "q": 1, "s": 3}
    assert doc.data["mid"] == {"p": 2, "r": 2, "k": 1, "q": 1}


def test_merges_nested_through_thousands_of_anchors_do_not_recurse() -> None:
    lines = ["a0: &a0 {k0: 0}"] + [f"a{i}: &a{i} {{<<: *a{i - 1}, k{i}: {i}}}" for i in range(1, 3000)]
    started = time.perf_counter()
    doc = parse_yaml("\n".join(lines) + "\n", "d.yaml")
    assert time.perf_counter() - started < 2
    assert doc.problems and "more than 50,000 values" in doc.problems[0].message  # each merge counts its pairs


def test_a_merge_bomb_is_refused_before_expanding() -> None:
    lines = ["a0: &a0 {k: 1}"] + [f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 10)}]}}" for i in range(1, 9)]
    started = time.perf_counter()
    doc = parse_yaml("\n".join(lines) + "\n", "d.yaml")
    assert time.perf_counter() - started < 10
    assert doc.data is None and "alias bomb" in doc.problems[0].format()
