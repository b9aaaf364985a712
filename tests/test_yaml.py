"""Safe YAML parsing with a position for every key path, and every refusal located."""

from __future__ import annotations

import pytest

from chainspec._yaml import MAX_BYTES, MAX_DEPTH, Document, format_path, parse_yaml

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
