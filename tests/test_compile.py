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
from chainspec.build.modules import build_module, instantiate
from chainspec.build.shapes import PROBE_BATCH
from chainspec.read.resolve import Group, Leaf
from chainspec.types.layers import Composite


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
    with pytest.raises(SpecError, match=re.escape(expected)):  # build measures built-in types without a
        spec.build()  # meta-device build first: a factory's refusal comes from the real build, worded alike


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


# -- the memory a build allocates: parameters, buffers and every other tensor ----------------------------------------

#: The largest size a spec may give (``read.model.MAX_DIM``).
MAX_DIM = 2**31 - 1


def _no_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test, instead of allocating, if a build gets past the memory guard."""
    from chainspec.build import compile as _compile

    def refuse(*args: object, **kwargs: object) -> nn.Module:
        raise AssertionError("the memory guard let a build through")

    monkeypatch.setattr(_compile, "instantiate", refuse)


def _norms(count: int, kind: str = "batchnorm1d", args: str = f"num_features: {MAX_DIM}, affine: false") -> str:
    shape = {"batchnorm1d": f"[{MAX_DIM}]", "batchnorm2d": f"[{MAX_DIM}, 1, 1]"}.get(kind, f"[{MAX_DIM}, 2, 1]")
    nodes = "".join(f"      - {{id: n{i}, type: {kind}, args: {{{args}}}}}\n" for i in range(count))
    return f"chainspec: 1\nchains:\n  net:\n    input_shape: {shape}\n    nodes:\n{nodes}"


def test_summary_rows_count_parameter_and_buffer_bytes(blog_path: Path) -> None:
    summary = chainspec.load(blog_path).summary(stage=0)
    [b1] = summary.nodes
    # conv 3 -> 32 (no bias) and batch norm over 32 channels: 864 + 64 weights; running mean, var
    # (32 floats each) and the int64 batch counter.
    assert (b1.params, b1.param_bytes, b1.buffer_bytes) == (928, 928 * 4, 2 * 32 * 4 + 8)
    assert summary.nbytes == summary.param_bytes + summary.buffer_bytes == 928 * 4 + 264
    half = chainspec.load(blog_path).summary(stage=0, dtype=torch.float16).nodes[0]
    assert (half.param_bytes, half.buffer_bytes) == (928 * 2, 2 * 32 * 2 + 8)  # the counter stays int64
    assert summary.to_dict() == {"stage": 0, "params": 928, "nodes": [
        {"id": "b1", "type": "conv_block", "output_shape": [32, 32, 32], "params": 928}]}
    assert summary.to_dict(memory=True) == {"stage": 0, "params": 928, "param_bytes": 3712, "buffer_bytes": 264,
                                            "nodes": [{"id": "b1", "type": "conv_block", "output_shape": [32, 32, 32],
                                                       "params": 928, "param_bytes": 3712, "buffer_bytes": 264}]}


@pytest.mark.parametrize(("kind", "args", "per_node"), [
    ("batchnorm1d", f"num_features: {MAX_DIM}, affine: false", 2 * 4 * MAX_DIM + 8),
    ("batchnorm2d", f"num_features: {MAX_DIM}, affine: false", 2 * 4 * MAX_DIM + 8),
    ("instancenorm2d", f"num_features: {MAX_DIM}, track_running_stats: true", 2 * 4 * MAX_DIM + 8),
], ids=["batchnorm1d", "batchnorm2d", "instancenorm2d"])
def test_norms_without_weights_are_measured_by_their_running_statistics(kind: str, args: str, per_node: int) -> None:
    summary = chainspec.loads(_norms(2, kind, args)).summary()
    assert summary.params == 0 and [n.buffer_bytes for n in summary.nodes] == [per_node, per_node]


def test_ten_affine_free_batch_norms_are_refused_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reported case: no weight at all, 172 GB of running statistics."""
    from chainspec.build import memory as _memory

    _no_allocation(monkeypatch)
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: 100 * 10**9)
    spec = chainspec.loads(_norms(10), source="bn.yaml")
    with pytest.raises(SpecError) as info:
        spec.build()
    assert str(info.value) == (
        "bn.yaml:6:9: chains.net.nodes[0] (n0): chain 'net' needs 171.8 GB of weights and buffers at stage 0, "
        "but cpu has 100.0 GB free; this node alone holds 17.2 GB of buffers; reduce its sizes, or build on a "
        "device with more memory")


def test_buffers_no_machine_has_are_refused_without_a_patched_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thousand of them: 17 TB of memory, and each node alone 17 GB, so only the sum is over any machine."""
    _no_allocation(monkeypatch)
    with pytest.raises(SpecError, match=r"needs 17.2 TB of weights and buffers .* this node alone holds 17.2 GB of "
                                        r"buffers"):
        chainspec.loads(_norms(1000)).build()


@pytest.fixture
def big_state(fresh_types: list[str]) -> None:
    """Registered types holding big tensors: as buffers (persistent or not), attributes, lists, many of them."""
    from chainspec import register_type

    class Table(nn.Module):
        def __init__(self, size: int, how: str = "buffer", count: int = 1) -> None:
            super().__init__()
            if how == "buffer":
                self.register_buffer("table", torch.empty(size))
            elif how == "scratch":
                self.register_buffer("scratch", torch.empty(size), persistent=False)
            elif how == "attribute":
                self.table = torch.empty(size)
            elif how == "list":
                self.tables = [torch.empty(size), torch.empty(size)]
            elif how == "views":  # one storage, seen twice
                self.register_buffer("table", torch.empty(size))
                self.register_buffer("first_half", self.table[: size // 2])
            elif how == "many":
                for i in range(count):
                    self.register_buffer(f"t{i}", torch.empty(size))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    register_type("table")(Table)
    fresh_types.append("table")


@pytest.mark.parametrize(("how", "bytes_"), [("buffer", 4096), ("scratch", 4096), ("attribute", 4096),
                                             ("list", 8192), ("views", 4096), ("many", 3 * 4096)])
def test_every_tensor_a_registered_type_keeps_is_measured(big_state: None, how: str, bytes_: int) -> None:
    spec = chainspec.loads("chainspec: 1\nchains:\n  net:\n    input_shape: [4]\n    nodes:\n"
                           f"      - {{id: t, type: table, args: {{size: 1024, how: {how}, count: 3}}}}\n")
    [row] = spec.summary().nodes
    assert (row.params, row.param_bytes, row.buffer_bytes) == (0, 0, bytes_)


@pytest.mark.parametrize(("args", "fragment"), [
    ("size: 35184372088832", "140.7 TB of buffers"),  # one registered buffer of 2**45 floats
    ("size: 35184372088832, how: scratch", "140.7 TB of buffers"),  # the same, not persistent
    ("size: 2147483647, how: many, count: 10000", "85.9 TB of buffers"),  # 10,000 medium buffers in one node
], ids=["buffer", "non-persistent", "many-medium"])
def test_a_registered_type_with_big_buffers_is_refused(big_state: None, monkeypatch: pytest.MonkeyPatch,
                                                       args: str, fragment: str) -> None:
    _no_allocation(monkeypatch)
    spec = chainspec.loads("chainspec: 1\nchains:\n  net:\n    input_shape: [4]\n    nodes:\n"
                           f"      - {{id: t, type: table, args: {{{args}}}}}\n", source="t.yaml")
    with pytest.raises(SpecError, match=rf"^t.yaml:6:\d+: chains.net.nodes\[0\] \(t\): .* this node alone holds "
                                        rf"{re.escape(fragment)}"):
        spec.build()


def test_weights_and_buffers_are_summed(monkeypatch: pytest.MonkeyPatch) -> None:
    from chainspec.build import memory as _memory

    _no_allocation(monkeypatch)
    # 52 GB of running statistics, then 43 GB of weights, with 60 GB free: each fits, together they do not.
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: 60 * 10**9)
    spec = chainspec.loads(_norms(3) + f"      - {{id: w, type: linear, args: {{in_features: {MAX_DIM}, "
                                       "out_features: 5, bias: false}}\n")
    summary = spec.summary()
    assert (summary.param_bytes, summary.buffer_bytes) == (5 * MAX_DIM * 4, 3 * (2 * MAX_DIM * 4 + 8))
    with pytest.raises(SpecError, match=r"\(w\): chain 'net' needs 94.5 GB of weights and buffers .* this node "
                                        r"alone holds 10,737,418,235 parameters"):
        spec.build()


def test_applying_a_revision_refuses_new_modules_that_cannot_fit(big_state: None) -> None:
    from chainspec.revise.apply import shape_check

    head = "chainspec: 1\nchains:\n  net:\n    input_shape: [4]\n    nodes:\n"
    fc = "      - {id: fc, type: linear, args: {in_features: 4, out_features: 4}}\n"
    big = "      - {id: t, type: table, args: {size: 35184372088832}}\n"
    plan = chainspec.diff(chainspec.loads(head + fc), chainspec.loads(head + fc + big, source="new.yaml"))
    shape_check(plan, None)  # shapes only
    with pytest.raises(SpecError, match=r"^new.yaml:7:\d+: chains.net.nodes\[1\] \(t\): chain 'net' needs 140.7 TB "
                                        r"of weights and buffers"):
        shape_check(plan, None, "cpu")
    # Only what the plan builds counts: a node both revisions have is already allocated.
    kept = chainspec.diff(chainspec.loads(head + big), chainspec.loads(head + big + fc))
    shape_check(kept, None, "cpu")


def test_the_memory_guard_sees_an_address_space_limit(tmp_path: Path) -> None:
    """``ulimit -v 2G`` (RLIMIT_AS) and a 4 GB layer: a located SpecError before allocating, not a MemoryError."""
    import subprocess
    import sys

    script = textwrap.dedent("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, resource.RLIM_INFINITY))
        import chainspec
        spec = chainspec.loads("chainspec: 1\\nchains:\\n  net:\\n    input_shape: [32768]\\n    nodes:\\n"
                               "      - {id: fc, type: linear, args: {in_features: 32768, out_features: 32768}}\\n",
                               source="big.yaml")
        try:
            spec.build()
        except chainspec.SpecError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("big.yaml:6:9: chains.net.nodes[0] (fc): chain 'net' needs 4.3 GB"), out.stdout


def test_build_all_refuses_chains_that_fit_alone_but_not_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two chains of 400 MB each with 600 MB free: refused before either is built, naming the other chains' need."""
    from chainspec.build import memory as _memory

    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: 600 * 10**6)
    layer = "{id: fc, type: linear, args: {in_features: 10000, out_features: 10000, bias: false}}"
    spec = chainspec.loads(f"chainspec: 1\nchains:\n  g: {{input_shape: [10000], nodes: [{layer}]}}\n"
                           f"  d: {{input_shape: [10000], nodes: [{layer}]}}\n", source="gan.yaml")
    built: list[str] = []
    real = chainspec.Spec.build
    monkeypatch.setattr(chainspec.Spec, "build",
                        lambda self, name=None, **kw: built.append(name) or real(self, name, **kw))
    with pytest.raises(SpecError) as info:
        spec.build_all(device="meta")
    assert built == []
    assert "chain 'g' needs 400.0 MB of weights at stage 0 (and the other chains 400.0 MB), but meta has 600.0 MB" \
        in str(info.value)
