"""Property-based tests (hypothesis).

1. Any text, and especially random specs and random mutations of valid ones:
   ``chainspec.loads`` returns a spec whose chains build and run at every
   stage tried, or raises ``SpecError`` with every problem located; never any
   other exception, and messages never carry raw control characters.
2. A random sequence of revisions applied live with the diff engine leaves a
   chain equal (ids, order, shapes, parameter order) to the last revision
   built from scratch, with the optimizer holding exactly the chain's
   parameters, and the weights of every node that survived all revisions
   untouched. A revision that cannot be applied changes nothing.

Example counts are modest so the file runs in well under a minute; raise them
with ``HYPOTHESIS_PROFILE=thorough``.
"""

from __future__ import annotations

import itertools
import os
import string
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import chainspec
from chainspec import PlanError, SpecError
from chainspec._compile import PROBE_BATCH

ROOT = Path(__file__).resolve().parents[1]
SPEC_FILES = sorted((ROOT / "specs").glob("*.yaml"))

settings.register_profile("default", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
#: Per-test example counts, scaled by the profile.
SCALE = 1 if PROFILE == "default" else 20


def examples(n: int) -> settings:
    return settings(settings.get_profile(PROFILE), max_examples=n * SCALE)


#: Largest model a property run builds for real (it shape-checks anything on the meta device).
MAX_PARAMS = 200_000
MAX_ACTIVATION = 200_000


# -- the property every input must satisfy ------------------------------------------------------------------------

def assert_located(err: SpecError) -> None:
    assert err.problems, "a SpecError without problems"
    text = str(err)
    assert not any(not c.isprintable() and c != "\n" for c in text), f"raw control character in {text!r}"
    for problem in err.problems:
        assert problem.line is not None and problem.col is not None, f"unlocated problem: {problem}"


def stages_to_try(spec: chainspec.Spec) -> list[int]:
    return sorted({0, spec.stages - 1, spec.stages // 2})


def loads_builds_and_runs(text: str | bytes) -> chainspec.Spec | None:
    """The property: a located SpecError, or a spec that shape-checks, builds and runs."""
    try:
        spec = chainspec.loads(text, source="prop.yaml")
    except SpecError as err:
        assert_located(err)
        return None
    for chain in spec.chain_names:
        for stage in stages_to_try(spec):
            try:
                summary = spec.summary(chain, stage=stage)
            except SpecError as err:
                assert_located(err)
                continue
            shapes = [summary.input_shape, *(n.output_shape for n in summary.nodes)]
            if summary.params > MAX_PARAMS or max(_numel(s) for s in shapes) > MAX_ACTIVATION:
                continue  # feasible but large: not built in a unit test
            net = spec.build(chain, stage=stage)  # what shape-checks must build
            assert [n.id for n in net] == [n.id for n in summary.nodes]
            x = torch.randn(PROBE_BATCH, *summary.input_shape)
            with torch.no_grad():
                y = net(x)
            assert tuple(y.shape) == (PROBE_BATCH, *summary.output_shape)
    return spec


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- random specs ----------------------------------------------------------------------------------------------------

SMALL = st.integers(1, 8)
ODD_INTS = st.sampled_from([0, -1, -7, 2**31, 10**30, 2**63, 1.5, True, None, "3", ".nan"])
IDS = st.one_of(st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True),
                st.sampled_from(["forward", "training", "to", "eval", "_x", "__class__", "class", "insert", "b1"]))


@st.composite
def size(draw: st.DrawFn, correct: int) -> Any:
    """Mostly the right size, sometimes another one, an expression, or something odd."""
    kind = draw(st.integers(0, 19))
    if kind < 14:
        return correct
    if kind < 16:
        return draw(SMALL)
    if kind < 18:
        return f"${{w * {correct}}}" if draw(st.booleans()) else f"${{{correct} + 0}}"
    return draw(ODD_INTS)


@st.composite
def vector_layer(draw: st.DrawFn, width: int) -> tuple[dict[str, Any], int]:
    kind = draw(st.sampled_from(["linear", "eq_linear", "relu", "leaky_relu", "tanh", "gelu", "silu", "sigmoid",
                                 "dropout", "batchnorm1d", "layernorm", "identity", "blk"]))
    out = width
    args: dict[str, Any] = {}
    if kind in ("linear", "eq_linear"):
        out = draw(SMALL)
        args = {"in_features": draw(size(width)), "out_features": draw(size(out))}
    elif kind == "blk":
        out = draw(SMALL)
        args = {"i": draw(size(width)), "o": draw(size(out))}
    elif kind == "leaky_relu":
        args = {"negative_slope": draw(st.sampled_from([0.2, 0.01, -1.0, "${0.1 * 2}"]))}
    elif kind == "dropout":
        args = {"p": draw(st.sampled_from([0.0, 0.5, 1.0, 1.5, "${1 / 4}"]))}
    elif kind == "batchnorm1d":
        args = {"num_features": draw(size(width))}
    elif kind == "layernorm":
        args = {"normalized_shape": draw(size(width))}
    return {"type": kind, "args": args}, out


@st.composite
def image_layer(draw: st.DrawFn, channels: int, side: int) -> tuple[dict[str, Any], int, int]:
    kind = draw(st.sampled_from(["conv2d", "eq_conv2d", "batchnorm2d", "groupnorm", "instancenorm2d", "relu",
                                 "leaky_relu", "avgpool2d", "maxpool2d", "upsample", "pixel_norm",
                                 "minibatch_stddev", "conv_transpose2d", "adaptive_avgpool2d"]))
    out, new_side = channels, side
    args: dict[str, Any] = {}
    if kind in ("conv2d", "eq_conv2d"):
        out = draw(SMALL)
        k = draw(st.sampled_from([1, 3]))
        args = {"in_channels": draw(size(channels)), "out_channels": draw(size(out)), "kernel_size": k,
                "padding": k // 2}
    elif kind == "conv_transpose2d":
        out = draw(SMALL)
        args = {"in_channels": draw(size(channels)), "out_channels": draw(size(out))}
        new_side = side * 2
    elif kind in ("batchnorm2d", "instancenorm2d"):
        args = {"num_features": draw(size(channels))}
    elif kind == "groupnorm":
        args = {"num_groups": draw(st.sampled_from([1, channels, 2])), "num_channels": draw(size(channels))}
    elif kind in ("avgpool2d", "maxpool2d"):
        new_side = side // 2
    elif kind == "upsample":
        new_side = side * 2
    elif kind == "minibatch_stddev":
        out = channels + 1
    elif kind == "adaptive_avgpool2d":
        new_side = 1
    return {"type": kind, "args": args}, out, new_side


@st.composite
def spec_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A spec as data: usually valid, often with one thing wrong somewhere."""
    image = draw(st.booleans())
    nodes: list[dict[str, Any]] = []
    if image:
        channels, side = draw(st.integers(1, 4)), draw(st.sampled_from([2, 4, 8]))
        shape: list[Any] = [channels, side, side]
        for _ in range(draw(st.integers(1, 5))):
            layer, channels, side = draw(image_layer(channels, max(side, 1)))
            nodes.append(layer)
            if side > 32 or side < 1:
                break
        if draw(st.booleans()):
            nodes.append({"type": "flatten", "args": {}})
            width = channels * max(side, 1) ** 2
            layer, _ = draw(vector_layer(width))
            nodes.append(layer)
    else:
        width = draw(SMALL)
        shape = [width]
        for _ in range(draw(st.integers(1, 6))):
            layer, width = draw(vector_layer(width))
            nodes.append(layer)
    decorate(draw, nodes)
    shape = draw(grown(shape))
    spec: dict[str, Any] = {"chainspec": 1, "vars": {"w": 1}}
    if any(n["type"] == "blk" for n in nodes):
        spec["types"] = {"blk": {"params": {"i": None, "o": None}, "nodes": [
            {"id": "fc", "type": "linear", "args": {"in_features": "${i}", "out_features": "${o}"}},
            {"id": "act", "type": "relu"}]}}
    spec.update(draw(extras()))
    spec["chains"] = {draw(st.sampled_from(["net", "g", "forward"])): {"input_shape": shape, "nodes": nodes}}
    return spec


def decorate(draw: st.DrawFn, nodes: list[dict[str, Any]]) -> None:
    """Ids (now and then an odd or repeated one), stages, and the occasional init or optim override."""
    for i, node in enumerate(nodes):
        node["id"] = draw(IDS) if draw(st.integers(0, 9)) == 0 else f"n{i}"
        if not node["args"] and draw(st.booleans()):
            del node["args"]
        if draw(st.integers(0, 5)) == 0:
            node["stage"] = draw(st.integers(0, 3))
        if draw(st.integers(0, 9)) == 0:
            node["until"] = draw(st.integers(0, 4))
        if draw(st.integers(0, 9)) == 0:
            node["init"] = draw(st.sampled_from(["fresh", "keep", "preserve", "bogus"]))
        if draw(st.integers(0, 9)) == 0:
            node["optim"] = draw(st.sampled_from([{"lr": 0.1}, {"betas": [0.0, 0.99]}, {"lr": "x"}, {"l r": 1}]))


@st.composite
def grown(draw: st.DrawFn, shape: list[Any]) -> list[Any]:
    """Now and then an input entry that grows with the stage, or an expression that fails."""
    shape = list(shape)
    if draw(st.integers(0, 5)) == 0:
        j = draw(st.integers(0, len(shape) - 1))
        shape[j] = draw(st.sampled_from([f"${{{shape[j]} + 0 * stage}}", "${stage}", "${stage - 1}", "${2**62}",
                                         "${w}", "${nope}", "${1.5}", "${stage * 2 + 1}"]))
    return shape


@st.composite
def extras(draw: st.DrawFn) -> dict[str, Any]:
    """Optional top-level sections: stages, growth, defaults."""
    out: dict[str, Any] = {}
    if draw(st.integers(0, 5)) == 0:
        out["stages"] = draw(st.integers(1, 5))
    if draw(st.integers(0, 5)) == 0:
        out["growth"] = draw(st.fixed_dictionaries({}, optional={
            "unit": st.sampled_from(["images", "steps", "epochs"]),
            "stabilize": st.sampled_from([0, 1, 800_000, -1, 2**62]),
            "fade": st.sampled_from([0, 10, -5]),
            "policy": st.sampled_from(["keep", "reset", "x"]),
            "per_stage": st.lists(st.fixed_dictionaries({"stage": st.integers(0, 6)}, optional={
                "stabilize": st.integers(-1, 10), "fade": st.integers(-1, 10)}), max_size=3)}))
    if draw(st.integers(0, 4)) == 0:
        out["defaults"] = {"linear": {"bias": draw(st.sampled_from([False, True, 0, "no"]))}}
    return out


def render(spec: dict[str, Any]) -> str:
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=200)


@examples(80)
@given(spec_dicts())
def test_random_specs_load_build_and_run_or_fail_cleanly(spec: dict[str, Any]) -> None:
    loads_builds_and_runs(render(spec))


def test_the_generator_produces_specs_that_build() -> None:
    """A guard on the generator itself: a fair share of its specs must be valid, or (1) tests little.

    A hundred examples, not fewer: hypothesis front-loads boundary values (``until: 0``, size 0), so a short
    run says more about the hypothesis version than about the generator.
    """
    valid = 0

    @settings(max_examples=100, deadline=None, database=None, derandomize=True)
    @given(spec_dicts())
    def count(spec: dict[str, Any]) -> None:
        nonlocal valid
        valid += loads_builds_and_runs(render(spec)) is not None

    count()
    assert valid >= 20, f"only {valid} of 100 generated specs were valid"


# -- random mutations of valid specs --------------------------------------------------------------------------------

SNIPPETS = ["\t", "&a ", "*a", "*a ", "!!python/object/apply:os.system ['true'] ", "{", "}", "[", "]", ": ", "- ",
            "\x00", "\x1b[2J", "${", "${x}", "}", "#", "'", '"', "\n", "<<: *a\n", "? ", "!!binary ", "0x1F",
            "1e400", "1.0e+400", ".nan", "-.inf", "~", "|\n", ">\n", "%YAML 1.1\n---\n", "---\n", "...\n", "\ufeff",
            "é", "\u2028", "&a [*a]", "!!set ", "!foo ", ",", "${2**62}", "${x.y}", "${" + "-" * 60 + "1}",
            "[" * 80, "{a: " * 70, "stage: 999", "until: 0", "forward", "__class__", " " * 3, "\\", "\r\n"]
TOKENS = ["0", "-1", "2147483648", str(10**30), "1.5", ".inf", "true", "null", "forward", "training", "__class__",
          "relux", "linear", "conv2d", "stage", "until", "args", "chains", "types", "nodes", "params", "id", "type",
          "${in_ch * 0}", "'${nope}'", "[]", "{}", "''"]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    base = draw(st.one_of(st.sampled_from([p.read_text(encoding="utf-8") for p in SPEC_FILES]),
                          spec_dicts().map(render)))
    text = base
    for _ in range(draw(st.integers(1, 4))):
        lines = text.split("\n")
        op = draw(st.integers(0, 8))
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        if op == 0 and len(lines) > 1:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])
        elif op == 2:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:
            lines[i] = (" " * draw(st.integers(1, 4)) + lines[i]) if draw(st.booleans()) else lines[i].lstrip()
        elif op == 4:
            text = text[: draw(st.integers(0, len(text)))]
            continue
        elif op in (5, 6):
            pos = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + draw(st.sampled_from(SNIPPETS)) + lines[i][pos:]
        elif op == 7:
            words = [w for w in lines[i].replace(",", " ").replace("{", " ").replace("}", " ").split() if w]
            if words:
                lines[i] = lines[i].replace(draw(st.sampled_from(words)), draw(st.sampled_from(TOKENS)), 1)
        else:
            pos = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + draw(st.characters()) + lines[i][pos + 1:]
        text = "\n".join(lines)
    return text


@examples(150)
@given(mutated())
def test_mutated_specs_load_build_and_run_or_fail_cleanly(text: str) -> None:
    loads_builds_and_runs(text)


@examples(60)
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400),
                 st.text(alphabet=string.printable + "{}[]:-&*!|>#%@`'\"\t", max_size=400)))
def test_arbitrary_input_fails_cleanly(data: str | bytes) -> None:
    loads_builds_and_runs(data)


@examples(40)
@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                    max_leaves=30))
def test_arbitrary_yaml_documents_fail_cleanly(data: Any) -> None:
    text = yaml.safe_dump({"chainspec": 1, "chains": data} if isinstance(data, dict) else data)
    loads_builds_and_runs(text)


# -- random revisions applied live ----------------------------------------------------------------------------------

INPUT = 6


@dataclass(frozen=True)
class Layer:
    """One node of a revision: linear layers change the width, the others keep it."""

    id: str
    kind: str  # linear | relu | tanh | leaky_relu | dropout | batchnorm1d
    width: int = 0  # linear: out_features
    value: float = 0.0  # leaky_relu: slope; dropout: p
    lr: float | None = None  # an optim override
    init: str = "fresh"


def revision_text(layers: list[Layer]) -> str:
    lines = ["chainspec: 1", "chains:", "  net:", f"    input_shape: [{INPUT}]", "    nodes:"]
    width = INPUT
    for layer in layers:
        extra = ""
        if layer.lr is not None:
            extra += f", optim: {{lr: {layer.lr}}}"
        if layer.init != "fresh":
            extra += f", init: {layer.init}"
        if layer.kind == "linear":
            args = f"{{in_features: {width}, out_features: {layer.width}}}"
            width = layer.width
        elif layer.kind == "batchnorm1d":
            args = f"{{num_features: {width}}}"
        elif layer.kind == "leaky_relu":
            args = f"{{negative_slope: {layer.value}}}"
        elif layer.kind == "dropout":
            args = f"{{p: {layer.value}}}"
        else:
            args = "{}"
        lines.append(f"      - {{id: {layer.id}, type: {layer.kind}, args: {args}{extra}}}")
    return "\n".join(lines) + "\n"


def definition(layers: list[Layer], *, weights_only: bool = False) -> dict[str, str]:
    """Each node's definition, input width included: equal definitions mean an untouched node.

    With ``weights_only``, only what shapes its weights (kind, widths): a node whose slope, dropout
    rate, learning rate or init mode changed keeps its very parameters (the change is an update).
    """
    out, width = {}, INPUT
    for layer in layers:
        out[layer.id] = f"{layer.kind}|{layer.width}|in={width}" if weights_only else f"{layer}|in={width}"
        if layer.kind == "linear":
            width = layer.width
    return out


NEUTRAL = ["relu", "tanh", "leaky_relu", "dropout"]


@st.composite
def new_layer(draw: st.DrawFn, fresh_id: str) -> Layer:
    kind = draw(st.sampled_from(["linear", "linear", *NEUTRAL, "batchnorm1d"]))
    return Layer(fresh_id, kind, width=draw(st.integers(1, 6)) if kind == "linear" else 0,
                 value=draw(st.sampled_from([0.1, 0.2, 0.3])) if kind in ("leaky_relu", "dropout") else 0.0,
                 lr=draw(st.sampled_from([None, None, 0.001])),
                 init=draw(st.sampled_from(["fresh", "fresh", "keep", "preserve"])))


@st.composite
def revise(draw: st.DrawFn, layers: list[Layer], counter: list[int]) -> list[Layer]:
    """One revision: a few edits, each keeping the chain well-formed."""
    layers = list(layers)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert", "remove", "width", "value", "kind", "move", "lr", "init"]))
        i = draw(st.integers(0, len(layers) - 1))
        if op == "insert":
            counter[0] += 1
            layers.insert(draw(st.integers(0, len(layers))), draw(new_layer(f"n{counter[0]}")))
        elif op == "remove" and len(layers) > 1:
            del layers[i]
        elif op == "width" and layers[i].kind == "linear":
            layers[i] = replace(layers[i], width=draw(st.integers(1, 8)),
                                init=draw(st.sampled_from(["fresh", "keep", "preserve"])))
        elif op == "value" and layers[i].kind in ("leaky_relu", "dropout"):
            layers[i] = replace(layers[i], value=draw(st.sampled_from([0.05, 0.1, 0.2, 0.4])))
        elif op == "kind" and layers[i].kind in NEUTRAL:
            kind = draw(st.sampled_from(NEUTRAL))
            layers[i] = replace(layers[i], kind=kind, value=0.2 if kind in ("leaky_relu", "dropout") else 0.0)
        elif op == "move" and layers[i].kind in NEUTRAL:
            layer = layers.pop(i)
            layers.insert(draw(st.integers(0, len(layers))), layer)
        elif op == "lr":
            layers[i] = replace(layers[i], lr=draw(st.sampled_from([None, 0.001, 0.002])))
        elif op == "init":
            layers[i] = replace(layers[i], init=draw(st.sampled_from(["fresh", "keep", "preserve"])))
    return layers


@st.composite
def histories(draw: st.DrawFn) -> list[list[Layer]]:
    counter = [1]
    first = [Layer("n1", "linear", width=draw(st.integers(1, 6)))]  # something for the optimizer to train
    for _ in range(draw(st.integers(0, 4))):
        counter[0] += 1
        first.append(draw(new_layer(f"n{counter[0]}")))
    history = [first]
    for _ in range(draw(st.integers(1, 5))):
        history.append(draw(revise(history[-1], counter)))
    return history


def state_bytes(module: torch.nn.Module) -> dict[str, bytes]:
    return {k: v.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b""
            for k, v in module.state_dict().items()}


@examples(40)
@given(histories(), st.sampled_from(["adam", "sgd"]), st.sampled_from(["keep", "reset"]))
def test_random_revisions_equal_a_build_from_scratch(history: list[list[Layer]], optimizer: str,
                                                     policy: str) -> None:
    torch.manual_seed(0)
    try:
        spec = chainspec.loads(revision_text(history[0]), source="rev0.yaml")
    except SpecError:
        assume(False)  # e.g. init: preserve on a first node: nothing to preserve from
        raise
    net = spec.build(dtype=torch.float64)
    opt = (torch.optim.Adam(net.parameters(), lr=0.01) if optimizer == "adam"
           else torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
    x = torch.linspace(-1, 1, 4 * INPUT, dtype=torch.float64).reshape(4, INPUT)
    net(x).square().mean().backward()
    opt.step()  # optimizer state to carry
    original = {node.id: (node.module, state_bytes(node.module), dict(node.module.named_parameters()))
                for node in net}
    applied = [history[0]]
    for n, layers in enumerate(history[1:], start=1):
        try:
            new = chainspec.loads(revision_text(layers), source=f"rev{n}.yaml")
        except SpecError:
            continue  # an invalid revision (e.g. a preserve with nothing to preserve) is simply not applied
        ids_before, bytes_before = [nd.id for nd in net], state_bytes(net)
        plan = chainspec.diff(spec, new)
        try:
            plan.apply(net, opt, policy=policy)
        except (SpecError, PlanError):
            # Refused: nothing changed.
            assert [nd.id for nd in net] == ids_before and state_bytes(net) == bytes_before
            continue
        spec = new
        applied.append(layers)

    scratch = spec.build(dtype=torch.float64)
    assert [nd.id for nd in net] == [nd.id for nd in scratch]
    assert [nd.type for nd in net] == [nd.type for nd in scratch]
    assert ({k: v.shape for k, v in net.state_dict().items()}
            == {k: v.shape for k, v in scratch.state_dict().items()})
    assert [k for k, _ in net.named_parameters()] == [k for k, _ in scratch.named_parameters()]
    # The optimizer trains exactly the chain's parameters, each once.
    in_optimizer = [id(p) for group in opt.param_groups for p in group["params"]]
    assert sorted(in_optimizer) == sorted(id(p) for p in net.parameters())
    # Nodes defined identically in every applied revision were never touched.
    definitions = [definition(layers) for layers in applied]
    shapes = [definition(layers, weights_only=True) for layers in applied]
    for node in net:
        module, before, params = original.get(node.id, (None, None, None))
        if all(node.id in d and d[node.id] == definitions[0].get(node.id) for d in definitions):
            assert node.module is module, f"{node.id} was rebuilt"
        if all(node.id in d and d[node.id] == shapes[0].get(node.id) for d in shapes):
            # Only its slope, rate, learning rate or init mode changed, if anything: the same
            # parameter objects, bit for bit (buffers too).
            assert params is not None and [n for n, _ in node.module.named_parameters()] == list(params), node.id
            assert all(p is params[name] for name, p in node.module.named_parameters()), node.id
            assert state_bytes(node.module) == before, f"{node.id}'s weights changed"
    # And it trains.
    if any(True for _ in net.parameters()):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()


def test_a_chain_with_no_weights_left_keeps_its_dtype() -> None:
    """Found by the property above: once every weighted node was removed, new nodes came in float32."""
    history = [[Layer("n1", "linear", width=2)], [Layer("n2", "relu")],
               [Layer("n3", "linear", width=1), Layer("n4", "batchnorm1d"), Layer("n2", "relu")]]
    specs = [chainspec.loads(revision_text(layers), source=f"rev{n}.yaml") for n, layers in enumerate(history)]
    net = specs[0].build(dtype=torch.float64)
    for old, new in itertools.pairwise(specs):
        chainspec.diff(old, new).apply(net)
    assert {p.dtype for p in net.parameters()} == {torch.float64}
    assert net(torch.zeros(4, INPUT, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.name)
def test_the_shipped_specs_satisfy_the_property(path: Path) -> None:
    assert loads_builds_and_runs(path.read_bytes()) is not None
