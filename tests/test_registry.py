"""The node-type registry: the built-in types, argument schemas, ``register_type`` and import paths."""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import chainspec
from chainspec import SpecError
from chainspec.types.layers import (
    CausalSelfAttention,
    ChannelBias,
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchStddev,
    PixelNorm,
    PositionEmbedding,
    Reshape,
    RMSNorm,
    SubsamplePad,
)
from chainspec.types.registry import (
    builtin_type_names,
    close_match,
    describe_annotation,
    get_type,
    import_allowed,
    is_import_path,
    is_registered,
    list_types,
    suggest,
)

#: Every type the format promises: (type, args, input shape per sample, output shape, module class).
BUILTINS = [
    ("conv1d", {"in_channels": 3, "out_channels": 5, "kernel_size": 3}, [3, 10], [5, 8], nn.Conv1d),
    ("conv2d", {"in_channels": 3, "out_channels": 5, "padding": 1}, [3, 8, 8], [5, 8, 8], nn.Conv2d),
    ("conv_transpose2d", {"in_channels": 3, "out_channels": 5}, [3, 8, 8], [5, 16, 16], nn.ConvTranspose2d),
    ("linear", {"in_features": 6, "out_features": 2}, [6], [2], nn.Linear),
    ("batchnorm1d", {"num_features": 6}, [6], [6], nn.BatchNorm1d),
    ("batchnorm2d", {"num_features": 3}, [3, 4, 4], [3, 4, 4], nn.BatchNorm2d),
    ("layernorm", {"normalized_shape": [4, 4]}, [3, 4, 4], [3, 4, 4], nn.LayerNorm),
    ("groupnorm", {"num_groups": 2, "num_channels": 4}, [4, 3, 3], [4, 3, 3], nn.GroupNorm),
    ("instancenorm2d", {"num_features": 3}, [3, 4, 4], [3, 4, 4], nn.InstanceNorm2d),
    ("dropout", {"p": 0.25}, [6], [6], nn.Dropout),
    ("relu", {}, [6], [6], nn.ReLU),
    ("leaky_relu", {"negative_slope": 0.2}, [6], [6], nn.LeakyReLU),
    ("gelu", {"approximate": "tanh"}, [6], [6], nn.GELU),
    ("silu", {}, [6], [6], nn.SiLU),
    ("tanh", {}, [6], [6], nn.Tanh),
    ("sigmoid", {}, [6], [6], nn.Sigmoid),
    ("identity", {}, [6], [6], nn.Identity),
    ("flatten", {}, [3, 4, 4], [48], nn.Flatten),
    ("reshape", {"shape": [3, 16]}, [3, 4, 4], [3, 16], Reshape),
    ("upsample", {}, [3, 4, 4], [3, 8, 8], nn.Upsample),
    ("upsample", {"mode": "bilinear", "scale_factor": 0.5}, [3, 4, 4], [3, 2, 2], nn.Upsample),
    ("avgpool2d", {}, [3, 8, 8], [3, 4, 4], nn.AvgPool2d),
    ("maxpool2d", {"kernel_size": 3, "stride": 1, "padding": 1}, [3, 8, 8], [3, 8, 8], nn.MaxPool2d),
    ("adaptive_avgpool2d", {"output_size": [2, 3]}, [3, 8, 8], [3, 2, 3], nn.AdaptiveAvgPool2d),
    ("eq_conv2d", {"in_channels": 3, "out_channels": 5, "padding": 1}, [3, 8, 8], [5, 8, 8], EqualizedConv2d),
    ("eq_linear", {"in_features": 6, "out_features": 2}, [6], [2], EqualizedLinear),
    ("pixel_norm", {}, [3, 4, 4], [3, 4, 4], PixelNorm),
    ("channel_bias", {"num_channels": 3}, [3, 4, 4], [3, 4, 4], ChannelBias),
    ("minibatch_stddev", {}, [3, 4, 4], [4, 4, 4], MinibatchStddev),
    ("subsample_pad", {"in_channels": 3, "out_channels": 5}, [3, 8, 8], [5, 4, 4], SubsamplePad),
    ("token_embedding", {"num_embeddings": 10, "embedding_dim": 4}, [7], [7, 4], nn.Embedding),
    ("position_embedding", {"max_len": 8, "dim": 4}, [7, 4], [7, 4], PositionEmbedding),
    ("causal_self_attention", {"dim": 4, "heads": 2}, [7, 4], [7, 4], CausalSelfAttention),
    ("rmsnorm", {"dim": 4}, [7, 4], [7, 4], RMSNorm),
]
#: Types whose input is integer token ids (``input_dtype: int64``), not floats.
TOKEN_TYPES = {"token_embedding"}


def one_node_spec(type_name: str, args: dict, input_shape: list[int], **kwargs) -> chainspec.Spec:
    import json

    dtype = "    input_dtype: int64\n" if type_name in TOKEN_TYPES else ""
    text = (f"chainspec: 1\nchains:\n  net:\n    input_shape: {input_shape}\n{dtype}"
            f"    nodes: [{{id: n, type: {json.dumps(type_name)}, args: {json.dumps(args)}}}]\n")
    return chainspec.loads(text, source="one.yaml", **kwargs)


@pytest.mark.parametrize(("type_name", "args", "input_shape", "output_shape", "cls"), BUILTINS,
                         ids=[f"{row[0]}-{i}" for i, row in enumerate(BUILTINS)])
def test_every_builtin_type_builds_and_runs(type_name: str, args: dict, input_shape: list[int],
                                            output_shape: list[int], cls: type) -> None:
    spec = one_node_spec(type_name, args, input_shape)
    assert list(spec.summary().output_shape) == output_shape
    net = spec.build()
    assert type(net.n) is cls and net["n"].type == type_name
    net.eval()
    x = torch.randint(0, 10, (4, *input_shape)) if type_name in TOKEN_TYPES else torch.randn(4, *input_shape)
    assert list(net(x).shape) == [4, *output_shape]


def test_the_builtin_list_is_exactly_the_promised_one() -> None:
    assert builtin_type_names() == sorted({row[0] for row in BUILTINS})


def test_upsample_modes() -> None:
    nearest = one_node_spec("upsample", {}, [1, 2, 2]).build()
    bilinear = one_node_spec("upsample", {"mode": "bilinear"}, [1, 2, 2]).build()
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    assert nearest(x)[0, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert bilinear(x)[0, 0, 0].tolist() == [0.0, 0.25, 0.75, 1.0]
    assert bilinear.n.mode == "bilinear" and nearest.n.mode == "nearest"


def test_types_declare_args_with_types_and_defaults() -> None:
    conv = get_type("conv2d")
    args = {a.name: a for a in conv.args}
    assert list(args)[:3] == ["in_channels", "out_channels", "kernel_size"]
    assert args["in_channels"].required and not args["kernel_size"].required
    assert args["kernel_size"].default == 3 and args["bias"].default is True
    assert describe_annotation(args["bias"].annotation) == "bool"
    assert describe_annotation(args["in_channels"].annotation) == "int >= 1"
    assert describe_annotation(get_type("dropout").args[0].annotation) == "float in [0.0, 1.0]"
    assert get_type("pixel_norm").args[0].default == 1e-8
    assert get_type("minibatch_stddev").args[0].default == 4
    assert get_type("eq_conv2d").description.startswith("2-D convolution with equalized learning rate")
    assert "gain / sqrt(fan_in)" in {a.name: a for a in get_type("eq_linear").args}["gain"].description


@pytest.mark.parametrize(("type_name", "args", "expected"), [
    ("dropout", {"pp": 0.1}, [("pp", "unknown argument 'pp'", "did you mean 'p'?")]),
    ("relu", {"inplace": True}, [("inplace", "unknown argument 'inplace'", "relu takes no arguments")]),
    ("linear", {"in_features": 2, "out_features": 3, "zzz": 1},
     [("zzz", "unknown argument 'zzz'", "linear takes in_features, out_features, bias")]),
    ("linear", {"in_features": "2", "out_features": 3},
     [("in_features", "input should be a valid integer, got '2'", "in_features is int >= 1")]),
    ("linear", {"in_features": 0, "out_features": 3},
     [("in_features", "input should be greater than or equal to 1, got 0", "in_features is int >= 1")]),
    ("linear", {"in_features": 2.0, "out_features": 3},
     [("in_features", "input should be a valid integer, got 2.0", "in_features is int >= 1")]),
    ("linear", {"in_features": True, "out_features": 3},
     [("in_features", "input should be a valid integer, got True", "in_features is int >= 1")]),
    ("linear", {"out_features": 3},
     [(None, "missing required argument 'in_features'", "linear needs in_features, out_features")]),
    ("gelu", {"approximate": "fast"},
     [("approximate", "input should be 'none' or 'tanh', got 'fast'", "approximate is Literal['none', 'tanh']")]),
])
def test_validate_names_the_arg_and_suggests(type_name: str, args: dict, expected: list) -> None:
    kwargs, problems = get_type(type_name).validate(args)
    assert problems == expected and kwargs == {}


def test_validate_fills_defaults_and_turns_lists_into_tuples() -> None:
    kwargs, problems = get_type("conv2d").validate({"in_channels": 3, "out_channels": 4, "kernel_size": [3, 5]})
    assert problems == []
    assert kwargs["kernel_size"] == (3, 5) and kwargs["padding"] == 0 and kwargs["bias"] is True
    kwargs, _ = get_type("dropout").validate({"p": 1})
    assert kwargs == {"p": 1.0}  # an int is a fine float


def test_lookup_helpers() -> None:
    assert is_registered("Conv2d") and is_registered("conv2d") and not is_registered("conv3")
    assert get_type("ReLU").name == "relu"
    with pytest.raises(KeyError):
        get_type("conv3")
    assert suggest("conv3") == "conv2d" and suggest("batchnorm") in ("batchnorm1d", "batchnorm2d")
    assert suggest("qqqqqqqq") is None
    assert suggest("my_blok", extra=["my_block"]) == "my_block"
    assert [t.name for t in list_types("pool")] == ["adaptive_avgpool2d", "avgpool2d", "maxpool2d"]
    assert [t.name for t in list_types()] == sorted(t.name for t in list_types())


def test_the_registry_does_not_import_torch() -> None:
    code = ("import sys; from chainspec.types.registry import list_types, get_type; "
            "assert len(list_types()) >= 27; get_type('conv2d').validate({'in_channels': 1, 'out_channels': 1}); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- register_type -------------------------------------------------------------------


def test_register_type_function_and_class(fresh_types: list[str]) -> None:
    @chainspec.register_type()
    def Scaled(factor: float = 2.0) -> nn.Module:  # the type is named after it, lower-cased
        """Multiplies by a constant."""
        return _Scale(factor)

    @chainspec.register_type("gated")
    class Gated(nn.Module):
        """A learned gate per feature."""

        def __init__(self, features: int, bias: bool = False) -> None:
            super().__init__()
            self.gate = nn.Parameter(torch.ones(features))
            self.bias = nn.Parameter(torch.zeros(features)) if bias else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gate + (self.bias if self.bias is not None else 0)

    fresh_types.extend(["scaled", "gated"])
    assert isinstance(Gated(3), nn.Module)  # the decorator returns the class unchanged
    scaled, gated = get_type("scaled"), get_type("gated")
    assert scaled.description == "Multiplies by a constant." and [a.name for a in scaled.args] == ["factor"]
    assert [(a.name, a.required) for a in gated.args] == [("features", True), ("bias", False)]
    assert gated.origin.endswith("Gated")
    spec = chainspec.loads(textwrap.dedent("""\
        chainspec: 1
        chains:
          net:
            input_shape: [3]
            nodes:
              - {id: s, type: scaled, args: {factor: 3}}
              - {id: g, type: gated, args: {features: 3, bias: true}}
        """))
    net = spec.build()
    assert torch.equal(net(torch.ones(1, 3)), torch.full((1, 3), 3.0))
    assert sorted(net.state_dict()) == ["g.bias", "g.gate"]
    with pytest.raises(SpecError, match=r"args.features \(g\): input should be a valid integer, got 'x'"):
        chainspec.loads(spec.text.replace("features: 3", "features: x"))


def test_register_type_used_bare_registers_and_returns_the_class(fresh_types: list[str]) -> None:
    """``@register_type`` without parentheses works like ``@register_type()``, not silently wrong."""

    @chainspec.register_type
    class Doubler(nn.Module):
        """Multiplies by two."""

        def __init__(self, bias: bool = False) -> None:
            super().__init__()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    @chainspec.register_type(replace=True)
    def Halver() -> nn.Module:
        return _Scale(0.5)

    fresh_types.extend(["doubler", "halver"])
    assert isinstance(Doubler, type) and issubclass(Doubler, nn.Module)  # unchanged, not the inner decorator
    assert get_type("doubler").factory is Doubler and get_type("halver").factory is Halver
    net = one_node_spec("doubler", {"bias": True}, [3]).build()
    assert torch.equal(net(torch.ones(1, 3)), torch.full((1, 3), 2.0))
    with pytest.raises(TypeError, match=r"register_type: the name must be a string, got int"):
        chainspec.register_type(3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"expected a function or an nn.Module class, got str"):
        chainspec.register_type("oops")("not callable")  # type: ignore[type-var]


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_register_type_refuses_clashes_and_bad_names(fresh_types: list[str]) -> None:
    with pytest.raises(chainspec.ChainspecError, match=r"node type 'conv2d' is already registered by builtin"):
        chainspec.register_type("conv2d")(_Scale)
    with pytest.raises(chainspec.ChainspecError, match=r"node type name 'my-type' must be a valid identifier"):
        chainspec.register_type("my-type")(_Scale)
    chainspec.register_type("scale_once")(_Scale)
    fresh_types.append("scale_once")
    chainspec.register_type("scale_once")(_Scale)  # the same factory again is fine
    chainspec.register_type("scale_once", replace=True)(nn.Identity)
    assert get_type("scale_once").factory is nn.Identity


def test_a_factory_returning_no_module_is_reported(fresh_types: list[str]) -> None:
    chainspec.register_type("not_a_module")(lambda: 42)
    fresh_types.append("not_a_module")
    spec = one_node_spec("not_a_module", {}, [3])
    with pytest.raises(SpecError, match=r"chains.net.nodes\[0\] \(n\): cannot build: node type 'not_a_module' "
                                        r"returned int, not an nn.Module"):
        spec.summary()


# -- import paths ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "allow", "expected"), [
    ("mypkg.layers:Block", ["mypkg"], True),
    ("mypkg.layers:Block", ["mypkg.layers"], True),
    ("mypkg:Block", ["mypkg"], True),
    ("mypkg_evil:Block", ["mypkg"], False),
    ("mypkg.layers:Block", ["mypkg.lay"], False),
    ("mypkg:Block", ["mypkg.layers"], False),
    ("os:system", ["mypkg"], False),
    ("os:system", [], False),
])
def test_import_allowed_matches_whole_module_components(name: str, allow: list[str], expected: bool) -> None:
    assert import_allowed(name, allow) is expected
    assert is_import_path(name)


@pytest.fixture
def layer_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An importable package with a layer of its own and names it merely imports."""
    package = tmp_path / "userlayers"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent("""\
        import os
        from torch import nn
        from torch.nn import Linear

        IMPORTED = []


        class Doubler(nn.Module):
            \"\"\"Doubles its input.\"\"\"

            def __init__(self, times: int = 2) -> None:
                super().__init__()
                self.times = times

            def forward(self, x):
                return x * self.times


        def _private():
            return nn.Identity()


        NOT_CALLABLE = 3
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "userlayers"
    sys.modules.pop("userlayers", None)


def test_import_paths_need_the_allow_list(layer_module: str) -> None:
    with pytest.raises(SpecError, match=r"import path 'userlayers:Doubler' is not allowed; "
                                        r"the calling code must pass allow_imports=\[...\] naming its module"):
        one_node_spec("userlayers:Doubler", {"times": 3}, [2])
    assert layer_module not in sys.modules  # refused before importing anything
    spec = one_node_spec("userlayers:Doubler", {"times": 3}, [2], allow_imports=[layer_module])
    net = spec.build()
    assert torch.equal(net(torch.ones(1, 2)), torch.full((1, 2), 3.0))
    assert net["n"].type == "userlayers:Doubler"
    with pytest.raises(SpecError, match=r"args.tims \(n\): unknown argument 'tims'; did you mean 'times'\?"):
        one_node_spec("userlayers:Doubler", {"tims": 3}, [2], allow_imports=[layer_module])


@pytest.mark.parametrize(("type_name", "reason"), [
    ("userlayers:os.system", r"'os.system' is defined in posix, outside the allowed modules \(userlayers\)"),
    ("userlayers:Linear", r"'Linear' is defined in torch.nn.modules.linear, outside the allowed modules"),
    ("userlayers:_private", r"'_private' is not a public name"),
    ("userlayers:Doubler.__init__.__globals__", r"is not a public name"),
    ("userlayers:NOT_CALLABLE", r"'NOT_CALLABLE' is defined in no module"),
    ("userlayers:Nope", r"has no attribute 'Nope'"),
    ("userlayers.sub:Nope", r"No module named 'userlayers.sub'"),
], ids=["imported function", "imported class", "private name", "dunder walk", "not callable", "missing name",
        "missing module"])
def test_an_allowed_module_allows_only_what_it_defines(layer_module: str, type_name: str, reason: str) -> None:
    with pytest.raises(SpecError, match=rf"cannot import node type '{type_name}' \(.*{reason}"):
        one_node_spec(type_name, {}, [2], allow_imports=[layer_module])


def test_a_module_named_by_a_parent_package_is_allowed() -> None:
    spec = one_node_spec("torch.nn.modules.linear:Linear", {"in_features": 2, "out_features": 3}, [2],
                         allow_imports=["torch.nn"])
    assert isinstance(spec.build().n, nn.Linear)


def test_defaults_may_name_an_allowed_import_path() -> None:
    text = textwrap.dedent("""\
        chainspec: 1
        defaults:
          "torch.nn.modules.linear:Linear": {bias: false}
        chains:
          net:
            input_shape: [4]
            nodes: [{id: fc, type: "torch.nn.modules.linear:Linear", args: {in_features: 4, out_features: 2}}]
        """)
    assert chainspec.loads(text, allow_imports=["torch.nn"]).build().fc.bias is None
    with pytest.raises(SpecError, match=r"3:3: defaults.torch.nn.modules.linear:Linear: import path .* is not allowed"):
        chainspec.loads(text)


def test_replacing_a_builtin_before_any_spec_loads_it(tmp_path) -> None:
    # The built-in types register lazily; registering over one first must neither break
    # their loading later nor be undone by it, and a clash without replace=True is refused at once.
    code = """
import sys, chainspec
from chainspec import register_type
try:
    register_type("dropout")(lambda rate=0.5: None)
except chainspec.ChainspecError as exc:
    print("refused:", "already registered" in str(exc))
@register_type("dropout", replace=True)
def dropout(rate: float = 0.5):
    "My dropout."
spec = chainspec.loads("chainspec: 1\\nchains:\\n  net:\\n    input_shape: [4]\\n"
                       "    nodes: [{id: d, type: dropout, args: {rate: 0.3}}]\\n")
print("loaded:", spec.resolved().nodes[0].type, "torch" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines() == ["refused: True", "loaded: dropout False"], proc.stdout + proc.stderr


# -- import paths and factories whose signature cannot be checked: located errors, not internal ones -----------------

@pytest.mark.parametrize(("type_name", "reason"), [
    ("torch:save", "the arguments of 'save' cannot be checked"),
    ("torch:relu", "no signature found"),
    ("torch:tensor", "no signature found"),
    ("torch:float32", "is a dtype, not a class or function"),
    ("torch:Tensor", "is a class but not an nn.Module"),
    ("torch:device", "is a class but not an nn.Module"),
    ("torch:Size", "is a class but not an nn.Module"),
])
@pytest.mark.parametrize("where", ["node", "defaults"])
def test_allowed_imports_that_are_no_node_types_are_located_errors(type_name: str, reason: str, where: str) -> None:
    if where == "node":
        text = ("chainspec: 1\nchains:\n  net:\n    input_shape: [2]\n    nodes:\n"
                f'      - {{id: n, type: "{type_name}"}}\n')
        line = 6
    else:
        text = (f'chainspec: 1\ndefaults:\n  "{type_name}": {{x: 1}}\n'
                "chains:\n  net:\n    input_shape: [2]\n    nodes:\n      - {id: n, type: relu}\n")
        line = 3
    with pytest.raises(SpecError) as info:
        chainspec.loads(text, allow_imports=["torch"])
    problem = info.value.problems[0]
    assert problem.line == line and f"cannot import node type '{type_name}'" in problem.message
    assert reason in problem.message


def test_a_registered_factory_pydantic_cannot_model_is_a_located_error(fresh_types: list[str]) -> None:
    def odd(_hidden: int = 1) -> nn.Module:  # pydantic refuses fields with a leading underscore
        return nn.Identity()

    chainspec.register_type("odd_factory")(odd)
    fresh_types.append("odd_factory")
    with pytest.raises(SpecError, match=r"x.yaml:6:9: chains.net.nodes\[0\] \(n\): the arguments of node type "
                                        r"'odd_factory' cannot be checked"):
        chainspec.loads("chainspec: 1\nchains:\n  net:\n    input_shape: [2]\n    nodes:\n"
                        "      - {id: n, type: odd_factory}\n", source="x.yaml")


# -- did-you-mean: difflib's answer, at bounded cost -------------------------------------------------------------------

NAMES = st.text(alphabet="abcdefgh_12", min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(NAMES, st.lists(NAMES, max_size=30), st.sampled_from([0.5, 0.6]))
def test_close_match_agrees_with_difflib_on_small_inputs(word: str, candidates: list[str], cutoff: float) -> None:
    expected = difflib.get_close_matches(word, candidates, n=1, cutoff=cutoff)
    assert close_match(word, candidates, cutoff) == (expected[0] if expected else None)


def test_close_match_costs_little_whatever_the_names() -> None:
    similar = [f"layer_block_{'x' * 40}{i:05d}" for i in range(50_000)]
    start = time.perf_counter()
    for i in range(20):
        close_match(f"layer_block_{'x' * 40}{i:05d}z", similar)
        close_match("y" * 100_000, similar)  # no typo is that long: not compared at all
    assert time.perf_counter() - start < 2
    assert close_match("layer_block_xxxxx", ["layer_block_xxxx", "other"]) == "layer_block_xxxx"


def test_validate_can_leave_out_the_hints() -> None:
    assert get_type("dropout").validate({"pp": 0.1}, hints=False)[1] == [
        ("pp", "unknown argument 'pp'", "dropout takes p")]


# -- list arguments: YAML lists reach a registered type's list, bare or not ------------------------------------------

def test_a_list_argument_takes_a_yaml_list(fresh_types: list[str]) -> None:
    import typing

    seen: dict[str, object] = {}

    def sizes(widths: list, kernel: list[int] = (3,), pads: list[int] | None = None,  # type: ignore[assignment]
              old: typing.List[float] = (1.0,), pair: tuple[list[int], int] = ([1], 1)) -> nn.Module:  # noqa: UP006
        seen.update(widths=widths, kernel=kernel, pads=pads, old=old, pair=pair)
        return nn.Identity()

    chainspec.register_type("sizes")(sizes)
    fresh_types.append("sizes")
    args = {"widths": [1, "a", [2, 3]], "kernel": [3, 5], "pads": [0, 1], "old": [1, 2.5], "pair": [[4, 5], 6]}
    kwargs, problems = get_type("sizes").validate(args)
    assert problems == []
    assert kwargs == {"widths": [1, "a", (2, 3)], "kernel": [3, 5], "pads": [0, 1], "old": [1.0, 2.5],
                      "pair": ([4, 5], 6)}
    spec = one_node_spec("sizes", {"widths": [1, 2]}, [3])
    spec.build()
    assert seen["widths"] == [1, 2] and seen["kernel"] == (3,)  # a default is passed as written


@pytest.mark.parametrize(("args", "expected"), [
    ({"widths": 3}, "input should be a valid list, got 3; widths is list"),
    ({"widths": [1], "kernel": [3, "5"]}, "input should be a valid integer, got [3, '5']; kernel is list[int]"),
    ({"widths": [1], "pads": [1.5]}, "got [1.5]; pads is list[int] | None"),
])
def test_a_list_argument_keeps_its_items_strict_and_shows_the_value_as_written(fresh_types: list[str], args: dict,
                                                                               expected: str) -> None:
    def sizes(widths: list, kernel: list[int] = (3,), pads: list[int] | None = None) -> nn.Module:  # type: ignore[assignment]
        return nn.Identity()

    chainspec.register_type("sizes")(sizes)
    fresh_types.append("sizes")
    with pytest.raises(SpecError) as caught:
        one_node_spec("sizes", args, [3])
    assert expected in str(caught.value)
    assert "(3, '5')" not in str(caught.value)  # never the tuple YAML lists are turned into


# -- the register_type examples of the README and docs/spec-format.md run --------------------------------------------

@pytest.mark.parametrize("doc", ["README.md", "docs/spec-format.md"])
def test_the_documented_register_type_example_runs(fresh_types: list[str], capsys: pytest.CaptureFixture[str],
                                                   doc: str) -> None:
    text = (Path(__file__).resolve().parents[1] / doc).read_text(encoding="utf-8")
    blocks = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)]
    example = next(b for b in blocks if 'register_type("gated")' in b)
    fresh_types.append("gated")
    exec(compile(example, doc, "exec"), {"__name__": "docs_example"})
    if "print(" in example:
        assert capsys.readouterr().out == "torch.Size([2, 8])\n"
    gated = get_type("gated")
    assert [(a.name, a.required) for a in gated.args] == [("features", True), ("bias", False)]
    assert gated.description == "A learned gate per feature."
    net = one_node_spec("gated", {"features": 4, "bias": True}, [4]).build()
    x = torch.randn(2, 4)
    assert torch.equal(net(x), x)  # a gate of ones and a bias of zeros


def test_a_module_class_that_skips_nn_module_init_is_a_located_error(fresh_types: list[str]) -> None:
    """A registered class whose __init__ never calls super().__init__(): a located SpecError, not AttributeError."""
    from torch import nn

    class Forgetful(nn.Module):
        def __init__(self, k: int = 2) -> None:
            self.k = k  # no super().__init__()

        def forward(self, x: object) -> object:
            return x

    chainspec.register_type("forgetful")(Forgetful)
    fresh_types.append("forgetful")
    spec = chainspec.loads("chainspec: 1\nchains: {n: {input_shape: [2], nodes: [{id: a, type: forgetful}]}}",
                           source="f.yaml")
    for call in (spec.build, spec.check):
        with pytest.raises(chainspec.SpecError, match=r"f\.yaml:2:\d+: .*must call super\(\)\.__init__\(\) first"):
            call()
