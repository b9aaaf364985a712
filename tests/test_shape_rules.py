"""The closed-form shape rules (``build.rules``) agree with torch's meta device.

For every built-in type, on random valid arguments and random inputs (ranks, channel counts,
kernels larger than the input, stride, padding, dilation, output padding, groups, dtypes):

- where the meta device gives a shape, the rule gives the same shape (it covers the case);
- where the meta device refuses, the rule never gives a shape: it words the same problem, or
  leaves the case to the meta device;
- what a module holds (parameters, their bytes, buffer bytes) in closed form (``rules.holdings``)
  is what a meta-device build measures;
- the shape engine with its closed forms (``Probes()``) and without them
  (``Probes(closed_form=False)``: every pair run on the meta device) answer alike, problems
  worded and located alike, inside composites too.

The one-dimension helpers (``conv_size``, ``transposed_size``, ``pool_size``) are held to torch's
functionals directly, with the arguments no built-in type exposes (``ceil_mode``, a pool's dilation).
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainspec.build import rules
from chainspec.build.modules import build_module
from chainspec.build.shapes import PROBE_BATCH, Probes, _Failure
from chainspec.read.document import format_path
from chainspec.read.resolve import Group, Leaf, Tree
from chainspec.types.registry import builtin_type_names, get_type

settings.register_profile("rules", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("rules-thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = "rules-thorough" if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else "rules"

DTYPES = st.sampled_from([torch.float32] * 5 + [torch.float64, torch.float16, torch.bfloat16])
SIZE, SMALL, PAD = st.integers(1, 6), st.integers(1, 3), st.integers(0, 3)


def pair(values: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    """An int, or a list of two (as a spec writes them)."""
    return values | st.lists(values, min_size=2, max_size=2)


def conv_args(n: int) -> st.SearchStrategy[dict[str, Any]]:
    side = pair if n == 2 else (lambda s: s)
    return st.fixed_dictionaries({
        "in_channels": SIZE, "out_channels": SIZE, "kernel_size": side(st.integers(1, 5)), "stride": side(SMALL),
        "padding": side(PAD) | st.sampled_from(["same", "valid"]), "dilation": side(SMALL),
        "groups": st.sampled_from([1, 1, 1, 2, 3]),
        "padding_mode": st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]),
    })


#: Random arguments for each built-in type (validated by the type itself before use).
ARGS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "conv1d": conv_args(1),
    "conv2d": conv_args(2),
    "conv_transpose2d": st.fixed_dictionaries({
        "in_channels": SIZE, "out_channels": SIZE, "kernel_size": pair(st.integers(1, 5)), "stride": pair(SMALL),
        "padding": pair(PAD), "output_padding": pair(st.integers(0, 3)), "groups": st.sampled_from([1, 1, 2, 3]),
        "dilation": pair(SMALL)}),
    "eq_conv2d": st.fixed_dictionaries({"in_channels": SIZE, "out_channels": SIZE, "kernel_size": st.integers(1, 5),
                                        "stride": SMALL, "padding": PAD}),
    "avgpool2d": st.fixed_dictionaries({"kernel_size": pair(st.integers(1, 4)),
                                        "stride": st.none() | pair(SMALL), "padding": pair(PAD)}),
    "maxpool2d": st.fixed_dictionaries({"kernel_size": pair(st.integers(1, 4)),
                                        "stride": st.none() | pair(SMALL), "padding": pair(PAD)}),
    "adaptive_avgpool2d": st.fixed_dictionaries({"output_size": pair(st.integers(1, 5))}),
    "batchnorm1d": st.fixed_dictionaries({"num_features": SIZE, "affine": st.booleans(),
                                          "track_running_stats": st.booleans()}),
    "batchnorm2d": st.fixed_dictionaries({"num_features": SIZE, "affine": st.booleans(),
                                          "track_running_stats": st.booleans()}),
    "instancenorm2d": st.fixed_dictionaries({"num_features": SIZE, "affine": st.booleans(),
                                             "track_running_stats": st.booleans()}),
    "groupnorm": st.fixed_dictionaries({"num_groups": SMALL, "num_channels": SIZE, "affine": st.booleans()}),
    "layernorm": st.fixed_dictionaries({"normalized_shape": SIZE | st.lists(SIZE, min_size=1, max_size=3)}),
    "pixel_norm": st.just({}),
    "channel_bias": st.fixed_dictionaries({"num_channels": SIZE}),
    "minibatch_stddev": st.fixed_dictionaries({"group_size": st.integers(1, 6)}),
    "linear": st.fixed_dictionaries({"in_features": SIZE, "out_features": SIZE, "bias": st.booleans()}),
    "eq_linear": st.fixed_dictionaries({"in_features": SIZE, "out_features": SIZE}),
    "reshape": st.fixed_dictionaries({"shape": st.lists(st.integers(-1, 8), max_size=4)}),
    "flatten": st.fixed_dictionaries({"start_dim": st.integers(-5, 4), "end_dim": st.integers(-5, 4)}),
    "upsample": st.fixed_dictionaries({
        "scale_factor": st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0, 3.0]) | st.floats(0.1, 4.0),
        "mode": st.sampled_from(["nearest", "nearest", "bilinear"])}),
    "relu": st.just({}), "tanh": st.just({}), "sigmoid": st.just({}), "silu": st.just({}), "identity": st.just({}),
    "leaky_relu": st.fixed_dictionaries({"negative_slope": st.floats(-1.0, 1.0)}),
    "gelu": st.fixed_dictionaries({"approximate": st.sampled_from(["none", "tanh"])}),
    "dropout": st.fixed_dictionaries({"p": st.floats(0.0, 1.0)}),
    "subsample_pad": st.fixed_dictionaries({"in_channels": SIZE, "out_channels": SIZE, "stride": SMALL}),
    "token_embedding": st.fixed_dictionaries({"num_embeddings": SIZE, "embedding_dim": SIZE}),
    "position_embedding": st.fixed_dictionaries({"max_len": SIZE, "dim": SIZE}),
    "causal_self_attention": st.fixed_dictionaries({"dim": st.sampled_from([2, 4, 6]), "heads": st.sampled_from(
        [1, 2, 4]), "dropout": st.sampled_from([0.0, 0.5]), "bias": st.booleans()}),
    "rmsnorm": st.fixed_dictionaries({"dim": SIZE}),
}

#: Where a type's input is most likely to fit: (sample dimension, the argument giving its size).
FITS = {"in_channels": 0, "num_features": 0, "num_channels": 0, "in_features": -1, "dim": -1}


def leaf(name: str, args: dict[str, Any]) -> Leaf | None:
    """The leaf a spec would make of ``name`` with ``args`` (defaults filled in), or None if they are invalid."""
    node_type = get_type(name)
    kwargs, problems = node_type.validate({k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    return None if problems else Leaf(node_type.name, kwargs, node_type.factory)


@st.composite
def sample_for(draw: st.DrawFn, tree: Tree) -> tuple[int, ...]:
    """A per-sample input shape of rank 0 to 4, its channels or features often what ``tree``'s first leaf takes."""
    first = tree
    while isinstance(first, Group):
        first = first.parts[0][1]
    rank = draw(st.sampled_from([0, 1, 1, 2, 2, 3, 3, 3, 3, 4]))
    sample = [draw(st.integers(1, 9)) for _ in range(rank)]
    for arg, dim in FITS.items():
        if sample and arg in first.args and draw(st.integers(0, 3)):
            sample[dim] = first.args[arg]
    normalized = first.args.get("normalized_shape")
    if normalized is not None and draw(st.booleans()):
        normalized = (normalized,) if isinstance(normalized, int) else tuple(normalized)
        sample = [*sample[: max(0, len(sample) - len(normalized))], *normalized]
    return tuple(sample)


class _Doc:
    """Stands in for a spec's document: a problem is its path, label and message."""

    def problem(self, path: Any, message: str, hint: str | None = None, *, label: str = "") -> str:
        return f"{format_path(path)}{label}: {message}"


NODE = SimpleNamespace(path=("chains", "net", "nodes", 1), id="n", type="t")


def render(result: Any) -> Any:
    """A probe's answer, comparable: a state, or the problem it makes at :data:`NODE` (after a node ``prev``)."""
    return result.problem(_Doc(), NODE, "prev") if isinstance(result, _Failure) else result


def both(tree: Tree, sample: tuple[int, ...], dtype: torch.dtype) -> tuple[Any, Any]:
    """What the engine says with its closed forms and with the meta device alone, rendered.

    Where the module builds, both also measure the same parameters and bytes (the closed-form
    side counts registered tensors only: the built-in types' modules keep no other).
    """
    state = ((PROBE_BATCH, *sample), dtype)
    fast, meta = Probes(dtype), Probes(dtype, closed_form=False)
    answers = render(fast.run(fast.define(tree), state)), render(meta.run(meta.define(tree), state))
    if not (isinstance(answers[1], str) and "cannot build" in answers[1]):
        assert fast.measure(0) == meta.measure(0), tree
        # What a build that trusts the factories counts without building: the same.
        assert rules.holdings(tree, dtype) == meta.measure(0), (tree, dtype)
    return answers


def covered(tree: Tree) -> bool:
    """Whether the rules promise to cover every case torch accepts (bilinear upsampling is left to the meta device)."""
    if isinstance(tree, Leaf):
        return not (tree.type == "upsample" and tree.args["mode"] == "bilinear")
    return all(covered(sub) for _, sub in tree.parts)


def runs_on_the_cpu(tree: Tree, sample: tuple[int, ...], dtype: torch.dtype) -> bool:
    """Whether the real module takes a real input: the meta device lets a few cases through that it refuses
    (a 5-D input to an adaptive pool, an output padding as large as the stride and the dilation), and a
    rule may leave those to the meta device rather than agree that they fit."""
    try:
        with torch.no_grad():
            build_module(tree).to(dtype)(torch.zeros((PROBE_BATCH, *sample), dtype=dtype))
    except Exception:
        return False
    return True


def check_agreement(tree: Tree, sample: tuple[int, ...], dtype: torch.dtype) -> None:
    fast, meta = both(tree, sample, dtype)
    assert fast == meta, (tree, sample, dtype)
    if isinstance(meta, str) and "cannot build" in meta:
        return  # the factory refused the arguments: no rule is ever asked
    found = rules.infer_tree(tree, (PROBE_BATCH, *sample), dtype)
    if isinstance(meta, tuple):
        assert meta[1] == dtype and found in (meta[0], None), (tree, sample, dtype, found, meta)
        if found is None:  # left to the meta device: what the rules do not promise, an empty output, or what
            # the meta device lets through but torch refuses
            assert not covered(tree) or 0 in meta[0] or not runs_on_the_cpu(tree, sample, dtype), \
                (tree, sample, dtype, meta)
    else:
        assert not isinstance(found, tuple), (tree, sample, dtype, found, meta)  # both refuse


def test_every_built_in_type_has_a_rule_and_arguments_here() -> None:
    assert set(rules.RULES) == set(builtin_type_names()) == set(ARGS)


@pytest.mark.parametrize("name", sorted(ARGS))
@settings(settings.get_profile(PROFILE))
@given(data=st.data())
def test_each_rule_agrees_with_the_meta_device(name: str, data: st.DataObject) -> None:
    made = leaf(name, data.draw(ARGS[name], label="args"))
    if made is None:
        return  # arguments a spec could not give
    check_agreement(made, data.draw(sample_for(made), label="sample"), data.draw(DTYPES, label="dtype"))


#: Types that compose into plausible composites, with arguments near what the previous part makes.
PARTS = ["conv2d", "batchnorm2d", "relu", "linear", "flatten", "avgpool2d", "pixel_norm", "channel_bias",
         "groupnorm", "upsample", "reshape", "minibatch_stddev", "layernorm", "conv_transpose2d"]


@st.composite
def composites(draw: st.DrawFn, depth: int = 0) -> Tree:
    parts: list[tuple[str, Tree]] = []
    for i in range(draw(st.integers(1, 4))):
        if depth < 2 and draw(st.integers(0, 4)) == 0:
            parts.append((f"p{i}", draw(composites(depth + 1))))
            continue
        if depth < 2 and draw(st.integers(0, 5)) == 0:  # a residual block: body, maybe a shortcut and an after
            inner = [("body", draw(composites(depth + 1)))]
            inner += [(key, draw(composites(depth + 1))) for key in ("shortcut", "after") if draw(st.booleans())]
            parts.append((f"p{i}", Group(f"r{depth}", tuple(inner), kind="residual")))
            continue
        made = None
        while made is None:
            name = draw(st.sampled_from(PARTS))
            made = leaf(name, draw(ARGS[name]))
        parts.append((f"p{i}", made))
    return Group(f"t{depth}", tuple(parts))


@settings(settings.get_profile(PROFILE), max_examples=settings.get_profile(PROFILE).max_examples * 3)
@given(data=st.data())
def test_composites_are_walked_leaf_by_leaf_and_located_alike(data: st.DataObject) -> None:
    tree = data.draw(composites(), label="tree")
    sample = data.draw(sample_for(tree) | st.sampled_from([(3, 8, 8), (4, 4, 4), (8,), (4,)]), label="sample")
    check_agreement(tree, sample, torch.float32)


@pytest.mark.parametrize(("tree", "sample", "expected"), [
    (Group("blk", (("conv", leaf("conv2d", {"in_channels": 3, "out_channels": 8, "padding": 1})),
                   ("bn", leaf("batchnorm2d", {"num_features": 3})))), (3, 8, 8),
     "types.blk.nodes[1] (in chains.net.nodes[1] (n)): expects 3 input channels, but conv produces 8 "
     "(shape [8, 8, 8])"),
    (Group("blk", (("conv", leaf("conv2d", {"in_channels": 3, "out_channels": 8})),)), (4, 8, 8),
     "chains.net.nodes[1] (n): expects 3 input channels, but prev produces 4 (shape [4, 8, 8])"),
    (leaf("conv1d", {"in_channels": 3, "out_channels": 8}), (3, 8, 8),
     "chains.net.nodes[1] (n): expects input of shape [C, L] per sample, but prev produces shape [3, 8, 8]"),
    (leaf("linear", {"in_features": 3, "out_features": 2}), (5, 2),
     "chains.net.nodes[1] (n): expects 3 input features, but prev produces 2 (shape [5, 2])"),
], ids=["inside a composite", "into a composite", "rank", "features"])
def test_misfits_are_worded_without_the_meta_device(tree: Tree, sample: tuple[int, ...], expected: str) -> None:
    probes = Probes()
    failure = probes.run(probes.define(tree), ((PROBE_BATCH, *sample), torch.float32))
    assert isinstance(failure, _Failure) and failure.kind == "misfit" and probes.ran_on_meta == 0
    assert render(failure) == expected == both(tree, sample, torch.float32)[1]


@settings(settings.get_profile(PROFILE))
@given(args=ARGS["token_embedding"], sample=st.lists(st.integers(1, 9), max_size=3),
       dtype=st.sampled_from([torch.int64, torch.int32]))
def test_token_ids_are_embedded_in_closed_form_as_on_the_meta_device(args: dict[str, int], sample: list[int],
                                                                     dtype: torch.dtype) -> None:
    tree = leaf("token_embedding", args)
    assert tree is not None
    fast, meta = Probes(), Probes(closed_form=False)
    state = ((PROBE_BATCH, *sample), dtype)
    assert fast.run(fast.define(tree), state) == meta.run(meta.define(tree), state) == (
        (PROBE_BATCH, *sample, args["embedding_dim"]), torch.float32)
    assert fast.ran_on_meta == 0


def test_integer_input_to_a_float_layer_is_refused_in_closed_form() -> None:
    probes = Probes()
    failure = probes.run(probes.define(leaf("linear", {"in_features": 4, "out_features": 2})),
                         ((PROBE_BATCH, 4), torch.int64))
    assert render(failure) == ("chains.net.nodes[1] (n): expects floating-point input, but prev produces int64 "
                               "values (shape [4])") and probes.ran_on_meta == 0


def test_a_kernel_larger_than_its_input_is_left_to_the_meta_device() -> None:
    """torch's own words say why: the rule does not guess them."""
    tree = leaf("conv2d", {"in_channels": 4, "out_channels": 4, "kernel_size": 9})
    assert rules.infer_tree(tree, (PROBE_BATCH, 4, 4, 4), torch.float32) is None
    probes = Probes()
    problem = render(probes.run(probes.define(tree), ((PROBE_BATCH, 4, 4, 4), torch.float32)))
    assert "cannot take input of shape [4, 4, 4] (prev produces it): " in problem and probes.ran_on_meta == 1


def test_types_that_are_not_built_in_run_on_the_meta_device() -> None:
    from chainspec.types.builtins import linear

    imitation = Leaf("linear", {"in_features": 4, "out_features": 2}, lambda **kw: linear(**kw))
    assert not rules.covers(imitation) and rules.infer_tree(imitation, (PROBE_BATCH, 4), torch.float32) is None
    probes = Probes()
    assert probes.run(probes.define(imitation), ((PROBE_BATCH, 4), torch.float32)) == ((PROBE_BATCH, 2),
                                                                                        torch.float32)
    assert probes.ran_on_meta == 1


def test_parameter_and_buffer_bytes_are_still_measured() -> None:
    probes = Probes(torch.float16)
    d = probes.define(leaf("batchnorm2d", {"num_features": 8}))
    assert probes.run(d, ((PROBE_BATCH, 8, 4, 4), torch.float16)) == ((PROBE_BATCH, 8, 4, 4), torch.float16)
    assert probes.measure(d) == (16, 32, 2 * 8 * 2 + 8) and probes.ran_on_meta == 0  # running stats, a long count


# -- the one-dimension helpers against torch's functionals ------------------------------------------------------------

def _meta_size(fn: Any, size: int, *args: Any) -> int | None:
    """The height ``fn`` (a 2-D functional, given ``args``) makes of a [1, 1, size, 3] meta input, or None."""
    try:
        out = fn(torch.empty(1, 1, size, 3, device="meta"), *args)
    except (RuntimeError, ValueError):
        return None
    return int(out.shape[-2])


@settings(settings.get_profile(PROFILE), max_examples=settings.get_profile(PROFILE).max_examples * 3)
@given(size=st.integers(1, 12), kernel=st.integers(1, 6), stride=st.integers(1, 4), padding=st.integers(0, 4),
       dilation=st.integers(1, 3), ceil_mode=st.booleans())
def test_pool_size_agrees_with_max_and_average_pooling(size: int, kernel: int, stride: int, padding: int,
                                                       dilation: int, ceil_mode: bool) -> None:
    expected = _meta_size(F.max_pool2d, size, (kernel, 1), (stride, 1), (padding, 0), (dilation, 1), ceil_mode)
    assert rules.pool_size(size, kernel, stride, padding, dilation, ceil_mode) == expected
    expected = _meta_size(F.avg_pool2d, size, (kernel, 1), (stride, 1), (padding, 0), ceil_mode)
    assert rules.pool_size(size, kernel, stride, padding, 1, ceil_mode) == expected


@settings(settings.get_profile(PROFILE), max_examples=settings.get_profile(PROFILE).max_examples * 3)
@given(size=st.integers(1, 12), kernel=st.integers(1, 6), stride=st.integers(1, 4), padding=st.integers(0, 4),
       dilation=st.integers(1, 3), output_padding=st.integers(0, 3))
def test_conv_sizes_agree_with_convolutions(size: int, kernel: int, stride: int, padding: int, dilation: int,
                                            output_padding: int) -> None:
    weight = torch.empty(1, 1, kernel, 1, device="meta")
    expected = _meta_size(F.conv2d, size, weight, None, (stride, 1), (padding, 0), (dilation, 1))
    assert rules.conv_size(size, kernel, stride, padding, dilation) == expected
    if output_padding < max(stride, dilation):
        expected = _meta_size(F.conv_transpose2d, size, weight, None, (stride, 1), (padding, 0), (output_padding, 0),
                              1, (dilation, 1))
        expected = expected if expected else None  # an empty output (the meta device makes one) is left to it
        assert rules.transposed_size(size, kernel, stride, padding, output_padding, dilation) == expected


# -- what it is for --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["specs/blog.yaml", "specs/pggan.yaml"])
def test_checking_a_built_in_spec_never_runs_on_the_meta_device(spec: str) -> None:
    """In a fresh process: no meta-device run, and none of what the first one imports."""
    code = ("import sys, chainspec\n"
            f"spec = chainspec.load({spec!r})\n"
            "spec.check()\n"
            "for name in spec.chain_names:\n"
            "    spec.summary(name, stage='final')\n"
            "from chainspec.build import shapes\n"
            "print(shapes._warm, 'torch._dynamo' in sys.modules, 'sympy' in sys.modules)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "False"]
