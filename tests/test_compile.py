"""The compiler: shape inference on the meta device, located shape errors, and building real modules."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import chainspec
from chainspec import ChainSummary, NodeSummary, SpecError
from chainspec._compile import PROBE_BATCH, build_module, instantiate
from chainspec._layers import Composite
from chainspec._resolve import Group, Leaf


def test_summary_rows(blog_path: Path) -> None:
    summary = chainspec.load(blog_path).summary(stage=2)
    assert isinstance(summary, ChainSummary)
    assert summary.name == "net" and summary.stage == 2 and summary.input_shape == (3, 32, 32)
    assert summary.nodes == (
        NodeSummary("b1", "conv_block", (32, 32, 32), 928),
        NodeSummary("b2", "conv_block", (64, 32, 32), 18_560),
        NodeSummary("b3", "conv_block", (128, 32, 32), 73_984),
    )
    assert summary.params == 93_472 and summary.output_shape == (128, 32, 32)
    assert summary.to_dict() == {
        "stage": 2, "params": 93_472,
        "nodes": [{"id": "b1", "type": "conv_block", "output_shape": [32, 32, 32], "params": 928},
                  {"id": "b2", "type": "conv_block", "output_shape": [64, 32, 32], "params": 18_560},
                  {"id": "b3", "type": "conv_block", "output_shape": [128, 32, 32], "params": 73_984}]}


def test_summary_in_another_dtype_counts_the_same(blog_path: Path) -> None:
    spec = chainspec.load(blog_path)
    assert spec.summary(stage=1, dtype=torch.float16).params == 19_488


def test_the_probe_batch_suits_batch_statistics() -> None:
    """Batch norm needs two samples and minibatch_stddev a full group: the probe has both."""
    assert PROBE_BATCH >= 4
    spec = chainspec.loads(textwrap.dedent("""\
        chainspec: 1
        chains:
          d:
            input_shape: [8, 4, 4]
            nodes:
              - {id: bn, type: batchnorm2d, args: {num_features: 8}}
              - {id: mb, type: minibatch_stddev}
              - {id: flat, type: flatten}
              - {id: fc, type: linear, args: {in_features: 144, out_features: 1}}
        """))
    assert [n.output_shape for n in spec.summary().nodes] == [(8, 4, 4), (9, 4, 4), (144,), (1,)]


BLOG = Path(__file__).resolve().parents[1] / "specs" / "blog.yaml"


@pytest.mark.parametrize(("old", "new", "expected"), [
    # A part inside the composite disagrees with the part before it: the type's definition is reported.
    ('num_features: "${out_ch}"', 'num_features: "${in_ch}"',
     "blog.yaml:16:9: types.conv_block.nodes[1] (in chains.net.nodes[0] (b1)): expects 3 input channels, "
     "but conv produces 32 (shape [32, 32, 32])"),
    # The composite's first part disagrees with the node before: the node is reported.
    ("{id: b2, type: conv_block, args: {in_ch: 32", "{id: b2, type: conv_block, args: {in_ch: 16",
     "blog.yaml:24:9: chains.net.nodes[1] (b2): expects 16 input channels, but b1 produces 32 "
     "(shape [32, 32, 32])"),
    ("input_shape: [3, 32, 32]", "input_shape: [1, 32, 32]",
     "blog.yaml:23:9: chains.net.nodes[0] (b1): expects 3 input channels, but the chain input has 1 "
     "(shape [1, 32, 32])"),
], ids=["inside a composite", "into a composite", "from the chain input"])
def test_shape_errors_point_at_the_fault(old: str, new: str, expected: str) -> None:
    text = BLOG.read_text()
    assert old in text
    spec = chainspec.loads(text.replace(old, new), source="blog.yaml")
    with pytest.raises(SpecError) as info:
        spec.check()
    assert str(info.value) == expected


def test_nested_composite_errors_name_the_innermost_fault() -> None:
    spec = chainspec.loads(textwrap.dedent("""\
        chainspec: 1
        types:
          pair:
            params: {c: null, d: null}
            nodes:
              - {id: one, type: linear, args: {in_features: "${c}", out_features: "${d}"}}
              - {id: two, type: linear, args: {in_features: "${c}", out_features: "${c}"}}
          outer:
            params: {c: null}
            nodes:
              - {id: act, type: tanh}
              - {id: p, type: pair, args: {c: "${c}", d: "${c + 1}"}}
        chains:
          net:
            input_shape: [4]
            nodes:
              - {id: fc, type: linear, args: {in_features: 4, out_features: 4}}
              - {id: o, type: outer, args: {c: 4}}
        """), source="n.yaml")
    with pytest.raises(SpecError) as info:
        spec.summary()
    assert str(info.value) == ("n.yaml:7:9: types.pair.nodes[1] (in chains.net.nodes[1] (o)): expects 4 input "
                               "features, but one produces 5 (shape [5])")


@pytest.mark.parametrize(("node", "expected"), [
    ("{id: g, type: conv2d, args: {in_channels: 4, out_channels: 6, groups: 4}}",
     "chains.net.nodes[0] (g): cannot build: out_channels must be divisible by groups"),
    ("{id: l, type: layernorm, args: {normalized_shape: 5}}",
     "chains.net.nodes[0] (l): cannot take input of shape [4, 4, 4] (the chain input has it): "),
    ("{id: c, type: conv2d, args: {in_channels: 4, out_channels: 4, kernel_size: 9}}",
     "chains.net.nodes[0] (c): cannot take input of shape [4, 4, 4] (the chain input has it): "),
    ("{id: t, type: conv_transpose2d, args: {in_channels: 2, out_channels: 4}}",
     "chains.net.nodes[0] (t): expects 2 input channels, but the chain input has 4 (shape [4, 4, 4])"),
    ("{id: n, type: instancenorm2d, args: {num_features: 3}}",
     "chains.net.nodes[0] (n): expects 3 input channels, but the chain input has 4 (shape [4, 4, 4])"),
], ids=["factory refuses its args", "wrong trailing shape", "kernel larger than the input",
        "transposed conv (lenient on meta)", "instance norm without weights (torch only warns)"])
def test_build_and_run_failures_are_located(node: str, expected: str) -> None:
    spec = chainspec.loads(f"chainspec: 1\nchains:\n  net:\n    input_shape: [4, 4, 4]\n    nodes: [{node}]\n")
    with pytest.raises(SpecError, match=re.escape(expected)):
        spec.summary()


@pytest.mark.parametrize(("shape", "nodes", "expected"), [
    # conv2d takes unbatched [C, H, W] too: on [3, 8] the probe batch of 4 would pass for its 4 channels.
    ([3, 8], "[{id: c, type: conv2d, args: {in_channels: 4, out_channels: 2, padding: 1}}]",
     "chains.net.nodes[0] (c): expects input of shape [C, H, W] per sample, but the chain input has shape [3, 8]"),
    ([3, 8], "[{id: n, type: instancenorm2d, args: {num_features: 4, affine: true}}]",
     "chains.net.nodes[0] (n): expects input of shape [C, H, W] per sample, but the chain input has shape [3, 8]"),
    ([16], "[{id: b, type: batchnorm2d, args: {num_features: 16}}]",
     "chains.net.nodes[0] (b): expects input of shape [C, H, W] per sample, but the chain input has shape [16]"),
    ([3, 8, 8], "[{id: a, type: relu}, {id: c, type: conv1d, args: {in_channels: 3, out_channels: 4}}]",
     "chains.net.nodes[1] (c): expects input of shape [C, L] per sample, but a produces shape [3, 8, 8]"),
    ([3, 8, 8], "[{id: b, type: batchnorm1d, args: {num_features: 3}}]",
     "chains.net.nodes[0] (b): expects input of shape [C] or [C, L] per sample, but the chain input has "
     "shape [3, 8, 8]"),
    ([4, 8], "[{id: e, type: eq_conv2d, args: {in_channels: 4, out_channels: 4}}]",
     "chains.net.nodes[0] (e): expects input of shape [C, H, W] per sample, but the chain input has shape [4, 8]"),
], ids=["conv2d", "instancenorm2d", "batchnorm2d", "conv1d", "batchnorm1d", "eq_conv2d"])
def test_a_sample_with_the_wrong_number_of_dimensions_is_reported(shape: list[int], nodes: str,
                                                                   expected: str) -> None:
    spec = chainspec.loads(f"chainspec: 1\nchains:\n  net:\n    input_shape: {shape}\n    nodes: {nodes}\n")
    with pytest.raises(SpecError, match=re.escape(expected)):
        spec.summary()


def test_samples_of_the_right_number_of_dimensions_still_pass() -> None:
    spec = chainspec.loads(textwrap.dedent("""\
        chainspec: 1
        chains:
          net:
            input_shape: [3, 16]
            nodes:
              - {id: c, type: conv1d, args: {in_channels: 3, out_channels: 4, padding: 1}}
              - {id: bn, type: batchnorm1d, args: {num_features: 4}}
              - {id: flat, type: flatten}
              - {id: bn0, type: batchnorm1d, args: {num_features: 64}}
              - {id: plane, type: reshape, args: {shape: [8, 8]}}
              - {id: pool, type: avgpool2d}
        """))
    assert [n.output_shape for n in spec.summary().nodes] == [(4, 16), (4, 16), (64,), (64,), (8, 8), (4, 4)]
    net = spec.build()
    assert net(torch.randn(16, 3, 16)).shape == (16, 4, 4)  # a pool takes each [H, W] sample on its own


@pytest.mark.parametrize(("node", "expected"), [
    ("{id: f, type: flatten, args: {start_dim: 0}}",
     "chains.net.nodes[0] (f): does not keep the batch dimension: a batch of 4 in, shape [300] out; "
     "start_dim counts the batch as dimension 0; start at 1"),
    ("{id: f, type: flatten, args: {start_dim: -4}}", "(f): does not keep the batch dimension"),
    ("{id: m, type: batch_mean}", "chains.net.nodes[0] (m): does not keep the batch dimension: a batch of 4 in, "
                                  "shape [3, 5, 5] out"),
    ("{id: t, type: batch_total}", "(t): does not keep the batch dimension: a batch of 4 in, shape [] out"),
], ids=["flatten from 0", "flatten from -4", "mean over the batch", "a scalar"])
def test_a_node_that_merges_or_drops_samples_is_reported(fresh_types: list[str], node: str, expected: str) -> None:
    """Shapes are per sample: a node must hand on the batch it got (at runtime its samples would mix)."""

    class Reduce(nn.Module):
        def __init__(self, total: bool = False) -> None:
            super().__init__()
            self.total = total

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum() if self.total else x.mean(dim=0)

    chainspec.register_type("batch_mean")(Reduce)
    chainspec.register_type("batch_total")(lambda: Reduce(total=True))
    fresh_types.extend(["batch_mean", "batch_total"])
    spec = chainspec.loads(f"chainspec: 1\nchains:\n  net:\n    input_shape: [3, 5, 5]\n    nodes: [{node}]\n")
    with pytest.raises(SpecError, match=re.escape(expected)):
        spec.summary()


def test_a_node_returning_no_tensor_is_reported(fresh_types: list[str]) -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    chainspec.register_type("pair_out")(Pair)
    fresh_types.append("pair_out")
    spec = chainspec.loads("chainspec: 1\nchains:\n  net:\n    input_shape: [4]\n"
                           "    nodes: [{id: p, type: pair_out}]\n")
    with pytest.raises(SpecError, match=r"chains.net.nodes\[0\] \(p\): returns tuple, not a tensor"):
        spec.summary()


def test_build_module_and_instantiate(blog_path: Path) -> None:
    resolved = chainspec.load(blog_path).resolved()
    b2 = resolved.nodes[1]
    assert isinstance(b2.tree, Group) and [part for part, _ in b2.tree.parts] == ["conv", "bn", "act"]
    conv_leaf = b2.tree.parts[0][1]
    assert isinstance(conv_leaf, Leaf) and conv_leaf.args["in_channels"] == 32 and conv_leaf.args["bias"] is False
    module = build_module(b2.tree)
    assert isinstance(module, Composite) and module.type_name == "conv_block"
    assert isinstance(build_module(conv_leaf), nn.Conv2d)
    on_meta = instantiate(b2, device="meta", dtype=torch.float64)
    assert on_meta.conv.weight.is_meta and on_meta.conv.weight.dtype == torch.float64
    assert b2.active(1) and b2.active(5) and not b2.active(0)


def test_build_gives_each_node_its_type_and_fresh_weights(blog_path: Path) -> None:
    spec = chainspec.load(blog_path)
    one, two = spec.build(stage=2), spec.build(stage=2)
    assert [(n.id, n.type) for n in one] == [("b1", "conv_block"), ("b2", "conv_block"), ("b3", "conv_block")]
    assert not torch.equal(one.b1.conv.weight, two.b1.conv.weight)  # every build initialises anew
    assert one.stage == 2
