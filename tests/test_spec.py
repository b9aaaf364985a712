"""Loading specs: the blog example's figures, every located error, composites, defaults, vars, stages, building."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import chainspec
from chainspec import Chain, ChainspecError, Spec, SpecError
from chainspec.read.model import ChainSpec, CopyInit, NodeSpec, PartSpec, SpecModel, TypeDef

ROOT = Path(__file__).resolve().parents[1]

# -- the seed example ----------------------------------------------------------------

BLOG_FIGURES = [
    (0, [16, 32, 32, 32], 928),
    (1, [16, 64, 32, 32], 19_488),
    (2, [16, 128, 32, 32], 93_472),
]


@pytest.mark.parametrize(("stage", "shape", "params"), BLOG_FIGURES)
def test_blog_spec_builds_the_documented_figures(blog_path: Path, stage: int, shape: list[int], params: int) -> None:
    spec = chainspec.load(blog_path)
    net = spec.build(stage=stage)
    assert isinstance(net, Chain) and isinstance(net, nn.Module)
    assert net.ids() == ["b1", "b2", "b3"][: stage + 1]
    assert list(net(torch.randn(16, 3, 32, 32)).shape) == shape
    assert sum(p.numel() for p in net.parameters()) == params
    summary = spec.summary(stage=stage)
    assert summary.params == params and list(summary.output_shape) == shape[1:]


def test_blog_spec_structure(blog_path: Path) -> None:
    spec = chainspec.load(blog_path)
    assert spec.chain_names == ["net"] and spec.stages == 3 and spec.source == str(blog_path)
    assert spec.text == blog_path.read_text()
    net = spec.build(stage="final")
    b2 = net["b2"].module
    assert [name for name, _ in b2.named_children()] == ["conv", "bn", "act"]
    assert isinstance(b2.conv, nn.Conv2d) and b2.conv.bias is None and b2.conv.kernel_size == (3, 3)
    assert b2.conv.padding == (1, 1) and (b2.conv.in_channels, b2.conv.out_channels) == (32, 64)
    assert isinstance(b2.bn, nn.BatchNorm2d) and b2.bn.num_features == 64 and isinstance(b2.act, nn.ReLU)
    assert net["b2"].type == "conv_block" and net.stage == 2 and net.name == "net"
    assert list(net.state_dict())[:2] == ["b1.conv.weight", "b1.bn.weight"]


# -- located errors -----------------------------------------------------------------

HEAD = """\
chainspec: 1
chains:
  net:
    input_shape: [3, 8, 8]
    nodes:
"""

ERRORS = {
    "unknown type, with a suggestion": (
        "      - {id: b1, type: conv3d}\n",
        "x.yaml:6:18: chains.net.nodes[0].type: unknown node type 'conv3d'; did you mean 'conv2d'?"),
    "unknown type, nothing close": (
        "      - {id: b1, type: frobnicate}\n",
        "x.yaml:6:18: chains.net.nodes[0].type: unknown node type 'frobnicate'; "
        "run 'chainspec types' to list the node types"),
    "unknown arg, with a suggestion": (
        "      - {id: b1, type: conv2d, args: {in_channels: 3, out_channels: 8, kernal_size: 3}}\n",
        "x.yaml:6:72: chains.net.nodes[0].args.kernal_size (b1): unknown argument 'kernal_size'; "
        "did you mean 'kernel_size'?"),
    "wrong arg type: a string for an int": (
        "      - {id: b1, type: conv2d, args: {in_channels: 3, out_channels: '8'}}\n",
        "x.yaml:6:55: chains.net.nodes[0].args.out_channels (b1): input should be a valid integer, got '8'; "
        "out_channels is int >= 1"),
    "wrong arg type: an int for a bool": (
        "      - {id: b1, type: conv2d, args: {in_channels: 3, out_channels: 8, bias: 1}}\n",
        "x.yaml:6:72: chains.net.nodes[0].args.bias (b1): input should be a valid boolean, got 1; bias is bool"),
    "missing arg": (
        "      - {id: b1, type: conv2d, args: {in_channels: 3}}\n",
        "x.yaml:6:32: chains.net.nodes[0].args (b1): missing required argument 'out_channels'; "
        "conv2d needs in_channels, out_channels"),
    "duplicate node id": (
        "      - {id: b1, type: relu}\n      - {id: b1, type: tanh}\n",
        "x.yaml:7:10: chains.net.nodes[1].id: duplicate id 'b1' (also at chains.net.nodes[0]); ids must be unique"),
    "id naming an nn.Module attribute": (
        "      - {id: forward, type: relu}\n",
        "x.yaml:6:10: chains.net.nodes[0].id: 'forward' is an attribute of nn.Module"),
    "id that is not an identifier": (
        "      - {id: 1b, type: relu}\n",
        "x.yaml:6:10: chains.net.nodes[0].id: '1b' is not a valid identifier; "
        "use letters, digits and _, not starting with a digit"),
    "until before stage": (
        "      - {id: a, type: relu}\n      - {id: b1, type: relu, stage: 2, until: 1}\n",
        "x.yaml:7:40: chains.net.nodes[1].until: until (1) must be greater than stage (2); "
        "the node is active for stage <= s < until"),
    "a stage without nodes": (
        "      - {id: a, type: relu, until: 1}\n      - {id: b, type: relu, stage: 2}\n",
        "x.yaml:5:5: chains.net.nodes: chain 'net' has no nodes at stage 1; "
        "every stage needs at least one active node"),
    "misspelt key": (
        "      - {id: a, type: relu, stag: 1}\n",
        "x.yaml:6:29: chains.net.nodes[0].stag: unknown key 'stag'; did you mean 'stage'?"),
    "unknown name in an expression": (
        "      - {id: a, type: dropout, args: {p: '${q / 2}'}}\n",
        "x.yaml:6:39: chains.net.nodes[0].args.p (a): unknown name 'q'"),
    "import path without allow_imports": (
        "      - {id: a, type: 'os:system'}\n",
        "x.yaml:6:17: chains.net.nodes[0].type: import path 'os:system' is not allowed; "
        "the calling code must pass allow_imports=[...] naming its module"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_located_by_line_and_column(case: str) -> None:
    body, expected = ERRORS[case]
    with pytest.raises(SpecError) as info:
        chainspec.loads(HEAD + body, source="x.yaml")
    assert any(line.startswith(expected) for line in str(info.value).splitlines()), str(info.value)
    problem = info.value.problems[0]
    assert isinstance(problem.line, int) and isinstance(problem.col, int)
    assert problem.source == "x.yaml"


def test_spec_error_is_a_value_error_and_a_chainspec_error() -> None:
    with pytest.raises(ValueError, match=r"x.yaml:2:1: chains: must have at least 1 chain"):
        chainspec.loads("chainspec: 1\nchains: {}\n", source="x.yaml")
    with pytest.raises(SpecError) as info:  # pydantic's "list should have at least 1 item after validation"
        chainspec.loads("chainspec: 1\ntypes:\n  t: {nodes: []}\nchains:\n  n: {input_shape: [3], nodes: []}\n",
                        source="x.yaml")
    assert str(info.value).splitlines() == [
        "x.yaml:3:7: types.t.nodes: must have at least 1 node; a composite type is made of at least one part",
        "x.yaml:5:25: chains.n.nodes: must have at least 1 node"]
    assert issubclass(SpecError, ChainspecError)


CHANNEL_MISMATCH = """\
chainspec: 1
description: The channel counts of b1 and b2 disagree.
defaults:
  conv2d: {kernel_size: 3, padding: 1}
# b1 makes 64 channels; b2 was written for 32.
chains:
  net:
    input_shape: [3, 32, 32]
    nodes:
    - id: b1
      type: conv2d
      args: {in_channels: 3, out_channels: 64}
    # the next node is on line 14, its mapping at column 7
    - id: b2
      type: conv2d
      args: {in_channels: 32, out_channels: 64}
"""


def test_channel_mismatch_message(write_spec) -> None:
    spec = chainspec.loads(CHANNEL_MISMATCH, source="specs/x.yaml")  # structure is fine; shapes are not
    expected = ("specs/x.yaml:14:7: chains.net.nodes[1] (b2): expects 32 input channels, but b1 produces 64 "
                "(shape [64, 32, 32])")
    with pytest.raises(SpecError) as info:
        spec.summary()
    assert str(info.value) == expected
    with pytest.raises(SpecError, match=re.escape(expected)):
        spec.build()
    with pytest.raises(SpecError, match=re.escape(expected)):
        spec.check()
    path = write_spec(CHANNEL_MISMATCH)
    with pytest.raises(SpecError, match=re.escape(f"{path}:14:7: chains.net.nodes[1] (b2): expects 32")):
        chainspec.load(path).build()


@pytest.mark.parametrize(("nodes", "expected"), [
    ("[{id: fc, type: linear, args: {in_features: 4, out_features: 8}},"
     " {id: fc2, type: linear, args: {in_features: 6, out_features: 2}}]",
     "chains.net.nodes[1] (fc2): expects 6 input features, but fc produces 8 (shape [8])"),
    ("[{id: bn, type: batchnorm1d, args: {num_features: 5}}]",
     "chains.net.nodes[0] (bn): expects 5 input channels, but the chain input has 4 (shape [4])"),
    ("[{id: r, type: reshape, args: {shape: [3, 3]}}]",
     "chains.net.nodes[0] (r): cannot take input of shape [4] (the chain input has it): "),
], ids=["features", "first node", "reshape"])
def test_shape_errors_name_the_node_and_its_input(nodes: str, expected: str) -> None:
    spec = chainspec.loads(f"chainspec: 1\nchains:\n  net:\n    input_shape: [4]\n    nodes: {nodes}\n",
                           source="x.yaml")
    with pytest.raises(SpecError, match=re.escape(expected)):
        spec.summary()


def test_cyclic_composite_types_are_located() -> None:
    text = textwrap.dedent("""\
        chainspec: 1
        types:
          a:
            nodes: [{id: x, type: b}]
          b:
            nodes: [{id: y, type: c}]
          c:
            nodes: [{id: z, type: a}]
          selfish:
            nodes: [{id: w, type: relu}, {id: again, type: selfish}]
        chains:
          net:
            input_shape: [4]
            nodes: [{id: n, type: a}, {id: m, type: selfish}]
        """)
    with pytest.raises(SpecError) as info:
        chainspec.loads(text, source="x.yaml")
    assert str(info.value).splitlines() == [
        "x.yaml:3:3: types.a: cyclic composite types: a -> b -> c -> a; "
        "a composite cannot contain itself, directly or through other composites",
        "x.yaml:9:3: types.selfish: cyclic composite types: selfish -> selfish; "
        "a composite cannot contain itself, directly or through other composites",
    ]


def test_every_problem_is_reported_at_once() -> None:
    text = HEAD + textwrap.indent(textwrap.dedent("""\
        - {id: b1, type: conv3d}
        - {id: b2, type: conv2d, args: {in_channels: 3, out_channels: 8, kernal_size: 3}}
        - {id: b3, type: conv2d, args: {in_channels: 3, out_channels: '8'}}
        - {id: b2, type: relu}
        - {id: eval, type: relu}
        - {id: b6, type: dropout, args: {p: '${nope}'}}
        """), "      ")
    with pytest.raises(SpecError) as info:
        chainspec.loads(text, source="x.yaml")
    lines = str(info.value).splitlines()
    assert len(info.value.problems) == len(lines) == 6
    for fragment in ["6:18: chains.net.nodes[0].type: unknown node type 'conv3d'",
                     "7:72: chains.net.nodes[1].args.kernal_size (b2): unknown argument",
                     "8:55: chains.net.nodes[2].args.out_channels (b3): input should be a valid integer",
                     "9:10: chains.net.nodes[3].id: duplicate id 'b2'",
                     "10:10: chains.net.nodes[4].id: 'eval' is an attribute of nn.Module",
                     "11:40: chains.net.nodes[5].args.p (b6): unknown name 'nope'"]:
        assert sum(fragment in line for line in lines) == 1, fragment


def test_structural_and_document_problems_together() -> None:
    """A structural error (an unknown key) does not hide the rest of the document's problems."""
    text = HEAD + "      - {id: a, type: relu, stag: 1}\n      - {id: b, type: conv3d}\n"
    with pytest.raises(SpecError) as info:
        chainspec.loads(text, source="x.yaml")
    assert "unknown key 'stag'" in str(info.value) and "unknown node type 'conv3d'" in str(info.value)


def test_problems_are_listed_in_file_order_whatever_found_them() -> None:
    """The structural check (pydantic) runs first, but its problem on line 7 is listed after line 6's."""
    text = HEAD + "      - {id: a, type: conv3d}\n      - {id: b, type: relu, stag: 1}\n"
    with pytest.raises(SpecError) as info:
        chainspec.loads(text, source="x.yaml")
    assert [(p.line, p.path) for p in info.value.problems] == [
        (6, "chains.net.nodes[0].type"), (7, "chains.net.nodes[1].stag")]


def test_check_reports_every_stage_at_once() -> None:
    spec = chainspec.loads(textwrap.dedent("""\
        chainspec: 1
        chains:
          net:
            input_shape: [4]
            nodes:
              - {id: fc, type: linear, args: {in_features: 4, out_features: 8}}
              - {id: bad1, type: linear, args: {in_features: 5, out_features: 2}, stage: 1, until: 2}
              - {id: bad2, type: linear, args: {in_features: 7, out_features: 2}, stage: 2}
          other:
            input_shape: [3]
            nodes: [{id: fc, type: linear, args: {in_features: 2, out_features: 2}}]
        """), source="x.yaml")
    with pytest.raises(SpecError) as info:
        spec.check()
    text = str(info.value)
    assert "(bad1): expects 5 input features, but fc produces 8" in text
    assert "(bad2): expects 7 input features, but fc produces 8" in text
    assert "chains.other.nodes[0] (fc): expects 2 input features, but the chain input has 3" in text
    assert len(info.value.problems) == 3
    with pytest.raises(SpecError) as info:
        spec.check([0])  # only the chains' problems at stage 0
    assert len(info.value.problems) == 1 and "chains.other" in str(info.value)


def test_format_version_key() -> None:
    with pytest.raises(SpecError, match=r"x.yaml:1:1: chainspec: format version 2 is newer than this chainspec "
                                        r"reads \(1\); upgrade chainspec"):
        chainspec.loads("chainspec: 2\nchains: {}\n", source="x.yaml")
    with pytest.raises(SpecError, match=r"missing required key 'chainspec'"):
        chainspec.loads("chains:\n  net: {input_shape: [4], nodes: [{id: a, type: relu}]}\n", source="x.yaml")
    with pytest.raises(SpecError, match=r"chainspec: input should be 1|unsupported format version"):
        chainspec.loads("chainspec: one\nchains:\n  net: {input_shape: [4], nodes: [{id: a, type: relu}]}\n")


def test_load_reports_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"missing.yaml: cannot read spec: No such file or directory"):
        chainspec.load(tmp_path / "missing.yaml")


# -- composites, defaults, vars, expressions --------------------------------------

COMPOSITES = """\
chainspec: 1
vars: {base: 8}
defaults:
  conv2d: {kernel_size: 3, padding: 1, bias: false}
  blk: {k: 1}
types:
  inner:
    description: one conv whose padding keeps the size
    params: {c: null, k: 3}
    nodes:
      - {id: conv, type: conv2d,
         args: {in_channels: "${c}", out_channels: "${c}", kernel_size: "${k}", padding: "${k // 2}"}}
  blk:
    params: {c: null, k: 3, s: 5}
    nodes:
      - {id: i1, type: inner, args: {c: "${c}", k: "${k}"}}
      - {id: i2, type: inner, args: {c: "${c}"}}
      - {id: out, type: conv2d, args: {in_channels: "${c}", out_channels: "${min(512, 8192 // 2**s)}"}}
chains:
  net:
    input_shape: ["${base}", 8, 8]
    nodes:
      - {id: a, type: blk, args: {c: "${base}"}}
      - {id: b, type: blk, args: {c: 256, k: 5, s: 4}}
"""


def test_composites_nest_with_params_defaults_and_expressions() -> None:
    net = chainspec.loads(COMPOSITES).build()
    a, b = net.a, net.b
    # blk's per-type default k: 1 beats blk's own default k: 3; inner's own default k: 3 applies to i2.
    assert a.i1.conv.kernel_size == (1, 1) and a.i1.conv.padding == (0, 0)
    assert a.i2.conv.kernel_size == (3, 3) and a.i2.conv.padding == (1, 1)
    # conv2d's per-type defaults fill what is not given; explicit args win.
    assert a.out.kernel_size == (3, 3) and a.out.padding == (1, 1) and a.out.bias is None
    assert a.i1.conv.bias is None
    # ${min(512, 8192 // 2**s)}: s = 5 gives 256; s = 4 gives min(512, 512).
    assert (a.out.in_channels, a.out.out_channels) == (8, 256)
    assert (b.out.in_channels, b.out.out_channels) == (256, 512)
    assert b.i1.conv.kernel_size == (5, 5) and b.i1.conv.padding == (2, 2)
    assert list(net(torch.randn(2, 8, 8, 8)).shape) == [2, 512, 8, 8]
    assert sorted(net.state_dict())[:3] == ["a.i1.conv.weight", "a.i2.conv.weight", "a.out.weight"]
    assert repr(a).startswith("blk(\n  (i1): inner(")


@pytest.mark.parametrize(("edit", "expected"), [
    (("{id: a, type: blk, args: {c: \"${base}\"}}", "{id: a, type: blk}"),
     "chains.net.nodes[0] (a): missing required parameter 'c' of composite type 'blk'"),
    (("args: {c: 256, k: 5, s: 4}", "args: {c: 256, kk: 5, s: 4}"),
     "chains.net.nodes[1].args.kk (b): unknown parameter 'kk' of composite type 'blk'; did you mean 'k'?"),
    (("{c: \"${c}\"}}", "{c: \"${cc}\"}}"),
     "types.blk.nodes[1].args.c (in chains.net.nodes[0] (a)): unknown name 'cc'; did you mean 'c'?"),
    (("blk: {k: 1}", "blk: {k: 1, z: 2}"), "unknown parameter 'z' of composite type 'blk'"),
    (("blk: {k: 1}", "blk: {k: 1}\n  conv9d: {k: 1}"), "defaults.conv9d: unknown node type 'conv9d'"),
    (("vars: {base: 8}", "vars: {base: 8, c: 1}"), "types.inner.params.c: parameter 'c' hides the spec var"),
    (("  inner:\n", "  relu:\n    nodes: [{id: a, type: tanh}]\n  inner:\n"),
     "types.relu: composite type 'relu' shadows the registered type of that name"),
], ids=["required param", "unknown param", "unknown name in a part", "unknown param via defaults",
        "defaults for an unknown type", "param hiding a var", "composite shadowing a registered type"])
def test_composite_errors(edit: tuple[str, str], expected: str) -> None:
    old, new = edit
    assert old in COMPOSITES
    with pytest.raises(SpecError, match=re.escape(expected)):
        chainspec.loads(COMPOSITES.replace(old, new, 1), source="x.yaml")


def test_parameter_defaults_may_be_expressions() -> None:
    text = textwrap.dedent("""\
        chainspec: 1
        vars: {extra: 4}
        types:
          blk:
            params: {c: null, d: "${c * 2}", e: "${extra}"}
            nodes: [{id: fc, type: linear, args: {in_features: "${c}", out_features: "${d + e}"}}]
        chains:
          net:
            input_shape: [4]
            nodes: [{id: a, type: blk, args: {c: 4}}, {id: b, type: blk, args: {c: 12, d: 1}}]
        """)
    net = chainspec.loads(text).build()
    assert net.a.fc.out_features == 12 and net.b.fc.out_features == 5  # 4 * 2 + 4; the given d wins
    with pytest.raises(SpecError, match=re.escape("x.yaml:5:23: types.blk.params.d (in chains.net.nodes[0] (a)): "
                                                  "unknown name 'cc'; did you mean 'c'?")):
        chainspec.loads(text.replace("${c * 2}", "${cc * 2}"), source="x.yaml")


def test_defaults_are_checked_even_where_no_node_uses_them_and_reported_once() -> None:
    text = textwrap.dedent("""\
        chainspec: 1
        vars: {wide: true}
        defaults:
          dropout: {p: 2.0}
          conv2d: {kernal_size: 3, padding: 1}
          linear: {bias: "${wide}", in_features: 4}
        chains:
          net:
            input_shape: [3, 8, 8]
            nodes:
              - {id: a, type: conv2d, args: {in_channels: 3, out_channels: 4}}
              - {id: b, type: conv2d, args: {in_channels: 4, out_channels: 4}}
        """)
    with pytest.raises(SpecError) as info:
        chainspec.loads(text, source="x.yaml")
    assert str(info.value).splitlines() == [
        "x.yaml:4:13: defaults.dropout.p: input should be less than or equal to 1, got 2.0; p is float in [0.0, 1.0]",
        "x.yaml:5:12: defaults.conv2d.kernal_size: unknown argument 'kernal_size'; did you mean 'kernel_size'?"]
    # Required args left to the nodes, and expressions of a composite's parameters, are no problem.
    fine = text.replace("p: 2.0", "p: 0.5").replace("kernal_size", "kernel_size")
    fine = fine.replace("chains:", "types:\n  blk:\n    params: {c: null}\n    nodes:\n"
                                   "      - {id: fc, type: linear, args: {out_features: 2}}\nchains:")
    fine = fine.replace("in_features: 4}", "in_features: \"${c}\"}")
    assert chainspec.loads(fine).build()["b"].module.kernel_size == (3, 3)


def test_registered_type_names_are_case_insensitive_in_defaults_too() -> None:
    text = textwrap.dedent("""\
        chainspec: 1
        defaults:
          Conv2d: {kernel_size: 1, bias: false}
        chains:
          net:
            input_shape: [2, 4, 4]
            nodes:
              - {id: a, type: conv2d, args: {in_channels: 2, out_channels: 2}}
              - {id: b, type: CONV2D, args: {in_channels: 2, out_channels: 2}}
        """)
    net = chainspec.loads(text).build()
    assert net.a.kernel_size == net.b.kernel_size == (1, 1) and net.a.bias is None and net.b.bias is None
    with pytest.raises(SpecError, match=re.escape("x.yaml:4:3: defaults.conv2d: defaults for 'conv2d' are given "
                                                  "twice (also as 'Conv2d'); merge them into one entry")):
        chainspec.loads(text.replace("chains:", "  conv2d: {padding: 1}\nchains:"), source="x.yaml")
    # Reported once, at the default, not once per node that uses it.
    with pytest.raises(SpecError, match=re.escape("x.yaml:3:28: defaults.Conv2d.bias: input should be a valid "
                                                  "boolean, got 3; bias is bool")) as info:
        chainspec.loads(text.replace("bias: false", "bias: 3"), source="x.yaml")
    assert len(info.value.problems) == 1


def test_expressions_in_args_and_vars() -> None:
    spec = chainspec.loads(textwrap.dedent("""\
        chainspec: 1
        vars: {width: 48, slope: 0.2, wide: true, act: gelu}
        chains:
          net:
            input_shape: ["${width // 2}"]
            nodes:
              - id: fc
                type: linear
                args: {in_features: "${width // 2}", out_features: "${width * 2 if wide else width}"}
              - {id: act, type: leaky_relu, args: {negative_slope: "${slope / 2}"}}
              - {id: g, type: gelu, args: {approximate: "${'tanh' if wide else 'none'}"}}
              - {id: d, type: dropout, args: {p: "${round(1 / 3, 2)}"}}
        """))
    net = spec.build()
    assert (net.fc.in_features, net.fc.out_features) == (24, 96)
    assert net.act.negative_slope == 0.1 and net.g.approximate == "tanh" and net.d.p == 0.33
    assert spec.resolved().input_shape == (24,)


# -- stages -----------------------------------------------------------------------

STAGED = """\
chainspec: 1
chains:
  net:
    input_shape: [4]
    nodes:
      - {id: stem, type: linear, args: {in_features: 4, out_features: 8}}
      - {id: head0, type: linear, args: {in_features: 8, out_features: 3}, until: 1}
      - {id: grow1, type: linear, args: {in_features: 8, out_features: 8}, stage: 1}
      - {id: head1, type: linear, args: {in_features: 8, out_features: 3}, stage: 1, until: 2}
      - {id: grow2, type: linear, args: {in_features: 8, out_features: 16}, stage: 2}
      - {id: head2, type: linear, args: {in_features: 16, out_features: 3}, stage: 2}
"""


@pytest.mark.parametrize(("stage", "ids"), [
    (0, ["stem", "head0"]),
    (1, ["stem", "grow1", "head1"]),
    (2, ["stem", "grow1", "grow2", "head2"]),
    ("final", ["stem", "grow1", "grow2", "head2"]),
    ("1", ["stem", "grow1", "head1"]),
])
def test_stage_and_until(stage: int | str, ids: list[str]) -> None:
    spec = chainspec.loads(STAGED)
    assert spec.stages == 3
    net = spec.build(stage=stage)
    assert net.ids() == ids and net(torch.randn(2, 4)).shape == (2, 3)
    assert [n.id for n in spec.resolved().at(spec.stage_index(stage))] == ids
    assert [n.id for n in spec.summary(stage=stage).nodes] == ids


def test_stage_index_errors_and_declared_stages() -> None:
    spec = chainspec.loads(STAGED, source="x.yaml")
    with pytest.raises(ValueError, match=r"stage 3 is out of range; x.yaml has stages 0..2"):
        spec.build(stage=3)
    with pytest.raises(ValueError, match=r"stage must be a number or 'final', got 'last'"):
        spec.stage_index("last")
    for wrong in (1.7, 1.0, True, None, [1]):  # never truncated or coerced to a stage
        with pytest.raises(ValueError, match=r"stage must be a number or 'final', got "):
            spec.build(stage=wrong)  # type: ignore[arg-type]
    assert spec.stage_index(np.int64(2)) == 2 and spec.stage_index(" 1") == 1
    declared = chainspec.loads(STAGED.replace("chainspec: 1\n", "chainspec: 1\nstages: 5\n"))
    assert declared.stages == 5 and declared.build(stage=4).ids() == ["stem", "grow1", "grow2", "head2"]
    with pytest.raises(SpecError, match=r"chains.net.nodes\[4\].stage: stage 2 is out of range; "
                                        r"the spec declares stages: 2"):
        chainspec.loads(STAGED.replace("chainspec: 1\n", "chainspec: 1\nstages: 2\n"))


# -- chains, devices, dtypes ------------------------------------------------------

TWO_CHAINS = """\
chainspec: 1
chains:
  gen:
    input_shape: [2]
    nodes: [{id: fc, type: linear, args: {in_features: 2, out_features: 6}}]
  disc:
    input_shape: [6]
    nodes: [{id: fc, type: linear, args: {in_features: 6, out_features: 1}}, {id: act, type: sigmoid}]
"""


def test_several_chains_in_one_file() -> None:
    spec = chainspec.loads(TWO_CHAINS, source="gan.yaml")
    assert spec.chain_names == ["gen", "disc"]
    chains = spec.build_all()
    assert set(chains) == {"gen", "disc"} and chains["disc"].ids() == ["fc", "act"]
    out = chains["disc"](chains["gen"](torch.randn(5, 2)))
    assert out.shape == (5, 1)
    with pytest.raises(ValueError, match=r"gan.yaml has several chains \(gen, disc\); pass chain=NAME"):
        spec.build()
    with pytest.raises(ValueError, match=r"gan.yaml has no chain 'dsic'; did you mean 'disc'\?"):
        spec.build("dsic")


def test_build_with_dtype_and_device() -> None:
    spec = chainspec.loads(TWO_CHAINS)
    net = spec.build("gen", dtype=torch.float64)
    assert net.fc.weight.dtype == torch.float64
    meta = spec.build("disc", device="meta")
    assert meta.fc.weight.is_meta


def test_a_dtype_parameters_cannot_have_is_the_callers_error_not_the_specs() -> None:
    """Not a SpecError located at a node of a valid spec: the argument is wrong."""
    spec = chainspec.loads(TWO_CHAINS)
    for call in (spec.build, spec.summary):
        with pytest.raises(ValueError, match=r"dtype must be a floating-point or complex dtype for parameters, "
                                             r"got torch.int64") as info:
            call("gen", dtype=torch.int64)
        assert not isinstance(info.value, SpecError)
        with pytest.raises(TypeError, match=r"dtype must be a torch.dtype such as torch.float16, got 'float16'"):
            call("gen", dtype="float16")  # type: ignore[arg-type]
    assert spec.build("gen", dtype=torch.bfloat16).fc.weight.dtype == torch.bfloat16


# -- shape inference allocates nothing --------------------------------------------


@pytest.fixture
def device_probe(fresh_types: list[str]) -> list[torch.device]:
    """A node type that records the device its parameters are created on."""
    seen: list[torch.device] = []

    @chainspec.register_type("device_probe")
    def device_probe(features: int) -> nn.Module:
        layer = nn.Linear(features, features)
        seen.append(layer.weight.device)
        return layer

    fresh_types.append("device_probe")
    return seen


def test_a_huge_linear_is_checked_without_allocating(device_probe: list[torch.device]) -> None:
    """10**10 parameters (40 GB of float32) are counted on the meta device, never allocated."""
    spec = chainspec.loads(textwrap.dedent("""\
        chainspec: 1
        chains:
          net:
            input_shape: [100000]
            nodes:
              - {id: huge, type: linear, args: {in_features: 100000, out_features: 100000}}
              - {id: probe, type: device_probe, args: {features: 100000}}
        """))
    summary = spec.summary()
    assert summary.params == 2 * (100_000 * 100_000 + 100_000)
    assert summary.output_shape == (100_000,)
    assert device_probe == [torch.device("meta")]
    spec.check()
    assert device_probe == [torch.device("meta")] * 2


PGGAN_LIKE = """\
chainspec: 1
vars: {latent: 512, fmap: 8192}
defaults:
  eq_conv2d: {kernel_size: 3, padding: 1}
  leaky_relu: {negative_slope: 0.2}
types:
  conv_act:
    params: {in_ch: null, out_ch: null}
    nodes:
      - {id: conv, type: eq_conv2d, args: {in_channels: "${in_ch}", out_channels: "${out_ch}"}}
      - {id: act, type: leaky_relu}
      - {id: norm, type: pixel_norm}
  up_block:
    params: {s: null}
    nodes:
      - {id: up, type: upsample}
      - id: c1
        type: conv_act
        args: {in_ch: "${min(512, fmap // 2**s)}", out_ch: "${min(512, fmap // 2**(s + 1))}"}
      - id: c2
        type: conv_act
        args: {in_ch: "${min(512, fmap // 2**(s + 1))}", out_ch: "${min(512, fmap // 2**(s + 1))}"}
  to_rgb:
    params: {ch: null}
    nodes:
      - id: conv
        type: eq_conv2d
        args: {in_channels: "${ch}", out_channels: 3, kernel_size: 1, padding: 0, gain: 1.0}
chains:
  gen:
    input_shape: [512]
    nodes:
      - {id: dense, type: eq_linear, args: {in_features: "${latent}", out_features: 8192, gain: "${sqrt(2) / 4}"}}
      - {id: shape, type: reshape, args: {shape: [512, 4, 4]}}
      - {id: b0, type: conv_act, args: {in_ch: 512, out_ch: 512}}
      - {id: b1, type: up_block, args: {s: 1}}
      - {id: b2, type: up_block, args: {s: 2}}
      - {id: b3, type: up_block, args: {s: 3}}
      - {id: b4, type: up_block, args: {s: 4}}
      - {id: b5, type: up_block, args: {s: 5}}
      - {id: b6, type: up_block, args: {s: 6}}
      - {id: b7, type: up_block, args: {s: 7}}
      - {id: b8, type: up_block, args: {s: 8}}
      - {id: rgb, type: to_rgb, args: {ch: 16}}
"""


def test_a_full_size_generator_is_shape_checked_on_the_meta_device() -> None:
    summary = chainspec.loads(PGGAN_LIKE).summary()
    assert summary.output_shape == (3, 1024, 1024)
    assert [n.output_shape[0] for n in summary.nodes[3:11]] == [512, 512, 512, 256, 128, 64, 32, 16]
    assert summary.params == 23_079_187


def test_load_and_validate_do_not_import_torch(blog_path: Path) -> None:
    code = ("import sys, chainspec; spec = chainspec.load(sys.argv[1]); "
            "assert spec.chain_names == ['net']; assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code, str(blog_path)], check=True, timeout=120)


# -- the reference stays complete ---------------------------------------------------


def test_spec_format_reference_covers_every_key_and_builtin_type() -> None:
    doc = (ROOT / "docs" / "spec-format.md").read_text(encoding="utf-8")
    for model in (SpecModel, ChainSpec, NodeSpec, PartSpec, TypeDef, CopyInit):
        for field, info in model.model_fields.items():
            key = info.alias or field  # the key a spec writes (``from``, not the attribute ``from_``)
            assert f"`{key}`" in doc, f"docs/spec-format.md does not document {model.__name__}.{key}"
    from chainspec.types.registry import builtin_type_names

    for name in builtin_type_names():
        assert f"`{name}`" in doc, f"docs/spec-format.md does not list the built-in type {name}"


def _doc_specs() -> list[str]:
    text = (ROOT / "docs" / "spec-format.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    return [b for b in blocks if re.search(r"^chainspec: 1$", b, flags=re.M)]


def test_the_reference_examples_are_valid_and_build_at_every_stage() -> None:
    specs = _doc_specs()
    assert len(specs) >= 2  # the minimal spec and the complete example
    for text in specs:
        spec = chainspec.loads(text, source="docs/spec-format.md")
        spec.check()
    complete = chainspec.loads(max(specs, key=len))
    assert complete.chain_names == ["generator", "discriminator"] and complete.stages == 3
    for stage in range(3):
        chains = complete.build_all(stage=stage)
        images = chains["generator"](torch.randn(4, 64))
        assert images.shape == (4, 3, 8 * 2**stage, 8 * 2**stage)
        assert chains["discriminator"](images).shape == (4, 1)


def test_spec_repr() -> None:
    spec = chainspec.loads(STAGED, source="staged.yaml")
    assert repr(spec) == "Spec('staged.yaml', chains=['net'], stages=3)"
    assert isinstance(spec, Spec)


@pytest.mark.parametrize(("section", "expected"), [
    ("growth: {stabilise: 10}\n",
     "x.yaml:1:10: growth.stabilise: unknown key 'stabilise'; did you mean 'stabilize'?"),
    ("growth: {per_stage: [{stage: 0, stabilise: 3}]}\n",
     "x.yaml:1:33: growth.per_stage[0].stabilise: unknown key 'stabilise'; did you mean 'stabilize'?"),
    ("vars: [1, 2]\n",
     "x.yaml:1:1: vars: input should be a valid dictionary, got a list"),
])
def test_misspelt_growth_keys_and_wrong_containers_get_a_hint(section: str, expected: str) -> None:
    text = section + HEAD + "      - {id: a, type: relu}\n"
    with pytest.raises(SpecError) as info:
        chainspec.loads(text, source="x.yaml")
    assert str(info.value).splitlines() == [expected]
