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

3. Hostile specs generated at the spec level, through ``chainspec.loads``:
   composites nested by generation (random fan-out and depth, shared
   definitions, strings and lists doubled on the way down), expressions from
   the whole Python expression grammar (node kinds that are not allowed, huge
   constants, ``~``, calls with huge arguments) wherever a spec takes one, and
   random YAML tags on any value, merge-key sources included. Each example runs
   under a hang guard and a memory cap (:func:`bounded`): it ends in a spec or a
   located ``SpecError`` within seconds and a gigabyte, and what the documented
   bounds forbid (more modules than ``Limits.max_nodes``, a tag outside the core
   schema anywhere) is refused.

Example counts are modest so the file runs in well under a minute; raise them
with ``HYPOTHESIS_PROFILE=thorough``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import resource
import signal
import string
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import chainspec
from chainspec import PlanError, SpecError
from chainspec.build.shapes import PROBE_BATCH

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
            dtype = spec.data.chains[chain].input_dtype
            if dtype in ("int64", "int32"):  # token ids: 0 is one for every vocabulary
                x = torch.zeros(PROBE_BATCH, *summary.input_shape, dtype=getattr(torch, dtype))
            else:
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
            "[" * 80, "{a: " * 70, "stage: 999", "until: 0", "forward", "__class__", " " * 3, "\\", "\r\n",
            "${round(1, -10**18)}", "${~w}", "!!bool maybe ", '!!int "" ', "<<: [!custom {a: 1}]\n",
            "<<: {!!python/name:os.system : 1}\n", "1:59:59:59 ", "${(-1) ** 0.5}", "${1e400}"]
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
    try:
        with bounded():
            loads_builds_and_runs(text)
    except Hang as exc:
        raise Hang(f"{exc}, loading:\n{text[:3000]}") from None


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


# -- hostile specs: the guard ---------------------------------------------------------------------------------------

#: Seconds and bytes (beyond what the process holds) one hostile example may take. Generous: a bounded
#: load takes milliseconds; an unbounded one takes hours or all the memory there is.
HANG_AFTER = 20.0
EXTRA_MEMORY = 1 << 30
#: The default ``Limits`` (``chainspec.Limits``), with the values this file assumes where it has none.
_LIMITS = getattr(chainspec, "Limits", None)
MAX_NODES = _LIMITS().max_nodes if _LIMITS is not None else 20_000
MAX_COMPOSITE_DEPTH = _LIMITS().max_composite_depth if _LIMITS is not None else 32


class Hang(BaseException):
    """An example ran past :data:`HANG_AFTER` (a BaseException: no ``except Exception`` swallows it)."""


def _address_space() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def bounded(seconds: float = HANG_AFTER, memory: int = EXTRA_MEMORY) -> Iterator[None]:
    """Fail an example that runs past ``seconds`` (with :class:`Hang`) or allocates ``memory`` more bytes.

    The alarm interrupts Python code (expansion loops, did-you-mean); the address-space cap turns a
    runaway allocation into a ``MemoryError`` instead of swapping the machine. Both are restored after.
    """
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    size = _address_space()
    old_limit = resource.getrlimit(resource.RLIMIT_AS) if size is not None else None

    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"no answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, alarm) if usable else None
    if usable:
        signal.setitimer(signal.ITIMER_REAL, seconds)
    if old_limit is not None and size is not None:
        cap = size + memory
        if old_limit[1] == resource.RLIM_INFINITY or cap < old_limit[1]:
            resource.setrlimit(resource.RLIMIT_AS, (cap, old_limit[1]))
    try:
        yield
    finally:
        if usable:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        if old_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, old_limit)


def assert_values_bounded(spec: chainspec.Spec) -> None:
    """What a loaded spec hands to its node types: finite numbers, integers within 2**63."""
    def walk(value: Any) -> None:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, int):
            assert abs(value) <= 2**63, f"integer of {value.bit_length()} bits accepted"
        elif isinstance(value, float):
            assert math.isfinite(value), f"{value} accepted"
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        else:
            raise AssertionError(f"a {type(value).__name__} accepted as an argument value: {value!r}")

    def leaves(tree: Any) -> Iterator[Any]:
        todo = [tree]
        while todo:
            node = todo.pop()
            if hasattr(node, "parts"):
                todo.extend(sub for _, sub in node.parts)
            else:
                yield node

    for name in spec.chain_names:
        for node in spec.resolved(name).nodes:
            for leaf in leaves(node.tree):
                walk(dict(leaf.args))


def loads_within_bounds(text: str, *, build: bool = True) -> chainspec.Spec | None:
    """The property under the guard; with ``build=False`` only loading and the bounds on values.

    A hang is reported with the text that hung (hypothesis does not shrink an example that takes
    :data:`HANG_AFTER` seconds a try).
    """
    try:
        with bounded():
            if build:
                spec = loads_builds_and_runs(text)
            else:
                try:
                    spec = chainspec.loads(text, source="prop.yaml")
                except SpecError as err:
                    assert_located(err)
                    return None
            if spec is not None:
                assert_values_bounded(spec)
            return spec
    except Hang as exc:
        raise Hang(f"{exc}, loading:\n{text[:3000]}") from None


# -- hostile specs: composites nested by generation -----------------------------------------------------------------

LEAVES = ["relu", "tanh", "identity", "linear"]


def _composite(name: str) -> bool:
    return name[:1] == "t" and name[1:].isdigit()


@dataclass(frozen=True)
class Nested:
    """A generated spec of nested composites, and what the documented bounds make of it."""

    text: str
    modules: int  # modules the chain expands to (leaves and composites), if acyclic
    depth: int  # deepest nesting of composites, if acyclic
    cyclic: bool
    strings: int  # longest string a parameter reaches (doubled on the way down)


@st.composite
def nested_composites(draw: st.DrawFn) -> Nested:
    """Composite types holding parts of deeper types, with random fan-out and depth and shared definitions.

    Type ``t{i}`` takes parts of types ``t{j}`` (``j > i``): a tree (each holds several of the next), a
    DAG (each holds one of every deeper type), a chain (one part each, up to 40 deep), or a random mix in
    which a part now and then points back up (a cycle). Parameters flow down: ``w`` sizes the linear
    leaves, and with ``double`` each level passes ``"${s}${s}"`` (or ``"${[l, l]}"``) down.
    """
    shape = draw(st.sampled_from(["tree", "tree", "dag", "chain", "random", "random"]))
    count = draw(st.integers(1, 40 if shape == "chain" else 10))
    double = draw(st.sampled_from(["none", "none", "string", "list"]))
    types: dict[int, list[str]] = {}
    for i in range(count):
        below = [f"t{j}" for j in range(i + 1, count)]
        if shape == "tree":  # fan-out F_i of the next type: prod(F_i) leaves
            parts = [below[0] if below else draw(st.sampled_from(LEAVES))] * draw(st.integers(2, 12))
        elif shape == "dag":  # one part of every deeper type, shared: 2**count leaves
            parts = below or [draw(st.sampled_from(LEAVES))]
        elif shape == "chain":  # one part each: deep rather than wide
            parts = [below[0] if below else draw(st.sampled_from(LEAVES))]
        else:
            parts = []
            for _ in range(draw(st.integers(1, 12))):
                if draw(st.integers(0, 15)) == 0 and i > 0:
                    parts.append(f"t{draw(st.integers(0, i))}")  # back up: a cycle, or a type used twice
                elif below and draw(st.integers(0, 3)) > 0:
                    parts.append(draw(st.sampled_from(below)))
                else:
                    parts.append(draw(st.sampled_from(LEAVES)))
        types[i] = parts
    lines = ["chainspec: 1", "vars: {v: 4}", "types:"]
    for i, parts in types.items():
        params = {"none": "{w: 4}", "string": "{w: 4, s: ab}", "list": "{w: 4, l: [1]}"}[double]
        pass_down = {"none": ", w: '${w}'", "string": ", w: '${w}', s: '${s}${s}'",
                     "list": ", w: '${w}', l: '${[l, l]}'"}[double]
        rendered = []
        for k, part in enumerate(parts):
            if part == "linear":
                rendered.append(f"{{id: p{k}, type: linear, args: {{in_features: '${{w}}', out_features: '${{w}}'}}}}")
            elif _composite(part):
                rendered.append(f"{{id: p{k}, type: {part}, args: {{{pass_down.lstrip(', ')}}}}}")
            else:
                rendered.append(f"{{id: p{k}, type: {part}}}")
        lines.append(f"  t{i}:\n    params: {params}\n    nodes: [{', '.join(rendered)}]")
    chain_nodes = draw(st.integers(1, 3))
    tops = [f"t{draw(st.integers(0, min(2, count - 1)))}" for _ in range(chain_nodes)]
    lines.append("chains:\n  net:\n    input_shape: [4]\n    nodes:")
    lines += [f"      - {{id: n{k}, type: {t}}}" for k, t in enumerate(tops)]
    text = "\n".join(lines) + "\n"

    # What the expansion would be: modules, depth, cycles, longest doubled string (saturating: it can be huge).
    cap = 10**12
    graph = {i: [int(p[1:]) for p in parts if _composite(p)] for i, parts in types.items()}
    cyclic = _has_cycle(graph)
    modules: dict[int, int] = {}
    depth: dict[int, int] = {}
    if not cyclic:
        for i in _post_order(graph):
            modules[i] = min(cap, 1 + sum(modules[int(p[1:])] if _composite(p) else 1 for p in types[i]))
            depth[i] = 1 + max((depth[j] for j in graph[i]), default=0)
    used = [int(t[1:]) for t in tops]
    total = 0 if cyclic else min(cap, sum(modules[i] for i in used))
    deepest = 0 if cyclic else max(depth[i] for i in used)
    strings = 2 * 2 ** min(deepest, 60) if double == "string" else 0
    return Nested(text, total, deepest, cyclic, strings)


def _post_order(graph: dict[int, list[int]]) -> list[int]:
    """The nodes of an acyclic graph, each after every node it points to."""
    order: list[int] = []
    done: set[int] = set()
    for start in graph:
        todo = [(start, False)]
        while todo:
            node, ready = todo.pop()
            if node in done:
                continue
            if ready:
                done.add(node)
                order.append(node)
            else:
                todo.append((node, True))
                todo.extend((child, False) for child in graph[node] if child not in done)
    return order


def _has_cycle(graph: dict[int, list[int]]) -> bool:
    state: dict[int, int] = {}
    for start in graph:
        stack = [(start, iter(graph[start]))]
        if start in state:
            continue
        state[start] = 1
        while stack:
            node, children = stack[-1]
            for child in children:
                if state.get(child) == 1:
                    return True
                if child not in state:
                    state[child] = 1
                    stack.append((child, iter(graph[child])))
                    break
            else:
                state[node] = 2
                stack.pop()
    return False


def _tree(fanouts: list[int], leaf: str = "relu") -> Nested:
    """A composite tree with these fan-outs, level by level (an explicit example of the generator's shape)."""
    lines = ["chainspec: 1", "types:"]
    for level, fanout in enumerate(fanouts):
        child = f"t{level + 1}" if level + 1 < len(fanouts) else leaf
        lines.append(f"  t{level}:\n    nodes: [" + ", ".join(f"{{id: p{k}, type: {child}}}" for k in range(fanout))
                     + "]")
    lines.append("chains:\n  net:\n    input_shape: [4]\n    nodes:\n      - {id: n0, type: t0}")
    modules, width = 1, 1
    for fanout in fanouts:
        width *= fanout
        modules += width
    return Nested("\n".join(lines) + "\n", modules, len(fanouts), False, 0)


@examples(40)
@given(nested_composites())
@example(_tree([10] * 6))  # the example: 10**6 leaves
@example(_tree([2] * 13))  # 8,192 leaves and 8,191 composites above them
@example(_tree([400] + [1] * 30))  # 400 leaves, each inside 30 single-part composites
def test_nested_composites_expand_within_the_limits_or_are_refused(nested: Nested) -> None:
    """However wide and deep the composites, loading ends quickly; past the bounds it is a located SpecError."""
    spec = loads_within_bounds(nested.text, build=nested.modules <= 300)
    if nested.cyclic or nested.depth > MAX_COMPOSITE_DEPTH or nested.modules > MAX_NODES:
        assert spec is None, f"accepted a spec expanding to {nested.modules:,} modules, {nested.depth} levels deep"


# -- hostile specs: expressions from the whole grammar -------------------------------------------------------------

#: Atoms: mostly numbers and names that evaluate, so that the arithmetic around them runs; then the odd ones.
NUMBERS = ["0", "1", "-1", "2", "4", "0.5", "1e308", "10**18", "2**62", "-(2**62)", "w", "n", "True"]
ODD_ATOMS = ["1e400", "9" * 80, "9" * 400, "2**63", "-(2**63)", "None", "'a'", "'9' * 90", "[]", "[1, 2]", "s",
             "stage", "nope", "1j", "b'x'", "...", "float('nan')", "float('inf')", "int('9' * 90)"]
ATOMS = st.integers(0, 3).flatmap(lambda k: st.sampled_from(NUMBERS if k else ODD_ATOMS))
UNARY = ["-", "+", "not ", "~"]
BINARY = ["+", "-", "*", "/", "//", "%", "**"] * 3 + ["@", "<<", ">>", "|", "&", "^"]
COMPARE = ["<", "<=", "==", "!=", ">", ">="] * 2 + ["in", "not in", "is", "is not"]
CALLS = ["min", "max", "abs", "int", "float", "round", "sqrt", "log2", "floor", "ceil"] * 3 + [
    "pow", "len", "eval", "__import__", "getattr", "open", "print", "type"]


def _allowed(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """The forms the evaluator takes (with every operator and function name, allowed or not)."""
    return st.one_of(
        st.tuples(st.sampled_from(UNARY), inner).map(lambda t: f"({t[0]}{t[1]})"),
        st.tuples(inner, st.sampled_from(BINARY), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, st.sampled_from(COMPARE), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
        st.tuples(st.sampled_from(CALLS), st.lists(inner, max_size=3)).map(lambda t: f"{t[0]}({', '.join(t[1])})"),
        st.tuples(st.sampled_from(["round", "min", "max", "int", "float"]), inner,
                  st.sampled_from(["-10**18", "-(2**62)", "10**18", "-" + "9" * 30, "n", "-n"])).map(
            lambda t: f"{t[0]}({t[1]}, {t[2]})"),
        st.lists(inner, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
        st.tuples(inner, inner).map(lambda t: f"({t[0]}, {t[1]})"),
    )


def _forbidden(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Python expression forms outside the evaluator's whitelist, around an allowed expression."""
    pair = st.tuples(inner, inner)
    return st.one_of(
        pair.map(lambda t: f"{t[0]}[{t[1]}]"),
        pair.map(lambda t: f"{t[0]}[{t[1]}:]"),
        inner.map(lambda e: f"{e}.real"),
        inner.map(lambda e: f"{e}.__class__"),
        inner.map(lambda e: f"(lambda: {e})()"),
        inner.map(lambda e: f"[x for x in {e}]"),
        inner.map(lambda e: f"[*{e}]"),
        inner.map(lambda e: f"(y := {e})"),
        inner.map(lambda e: f"f'{{{e}}}'"),
        inner.map(lambda e: f"(await {e})"),
        inner.map(lambda e: f"(yield {e})"),
        pair.map(lambda t: f"max({t[0]}, key={t[1]})"),
    )


ALLOWED = st.recursive(ATOMS, _allowed, max_leaves=12)
#: Mostly what the evaluator takes, so that the arithmetic runs; now and then a forbidden form in it.
EXPRESSIONS = st.integers(0, 9).flatmap(lambda k: ALLOWED if k < 7 else _forbidden(ALLOWED) if k < 9 else st.tuples(
    ALLOWED, st.sampled_from(BINARY), _forbidden(ALLOWED)).map(lambda t: f"{t[0]} {t[1]} {t[2]}"))

#: Where a spec takes an expression; ``{e}`` is replaced by ``${...}`` around the expression.
PLACES = {
    "out_features": "chains: {net: {input_shape: [4], nodes: [{id: a, type: linear, args: "
                    "{in_features: 4, out_features: \"{e}\"}}]}}",
    "negative_slope": "chains: {net: {input_shape: [4], nodes: [{id: a, type: leaky_relu, args: "
                      "{negative_slope: \"{e}\"}}]}}",
    "dropout": "chains: {net: {input_shape: [4], nodes: [{id: a, type: dropout, args: {p: \"{e}\"}}]}}",
    "reshape": "chains: {net: {input_shape: [4], nodes: [{id: a, type: reshape, args: {shape: \"{e}\"}}]}}",
    "input_shape": "stages: 3\nchains: {net: {input_shape: [\"{e}\"], nodes: [{id: a, type: relu}, "
                   "{id: b, type: relu, stage: 2}]}}",
    "param_default": "types: {blk: {params: {k: 4, q: \"{e}\"}, nodes: [{id: fc, type: linear, args: "
                     "{in_features: 4, out_features: \"${k}\"}}]}}\n"
                     "chains: {net: {input_shape: [4], nodes: [{id: a, type: blk}]}}",
    "param_passed": "types: {blk: {params: {q: null}, nodes: [{id: d, type: dropout, args: {p: \"${q}\"}}]}}\n"
                    "chains: {net: {input_shape: [4], nodes: [{id: a, type: blk, args: {q: \"{e}\"}}]}}",
    "defaults": "defaults: {leaky_relu: {negative_slope: \"{e}\"}}\n"
                "chains: {net: {input_shape: [4], nodes: [{id: a, type: leaky_relu}, {id: b, type: leaky_relu}]}}",
    "template": "chains: {net: {input_shape: [4], nodes: [{id: a, type: gelu, args: {approximate: \"x{e}{e}\"}}]}}",
}


@examples(120)
@given(EXPRESSIONS, st.sampled_from(sorted(PLACES)))
@example("~w", "negative_slope")  # an operator the evaluator parses but does not map
@example("round(1, -10**18)", "out_features")  # 10**(10**18) digits: a hang before the exponent bound
@example("round(4, n)", "input_shape")  # the same through a var, at every stage
@example("1e400", "defaults")  # a float literal that is not finite
@example("1e308", "negative_slope")  # finite for Python, not for the float32 weights it meets
def test_expressions_from_the_whole_grammar_load_or_fail_cleanly(expr: str, place: str) -> None:
    """Whatever the expression and wherever it stands: a spec with bounded values, or a located SpecError."""
    body = expr.replace('"', "'").replace("\\", "")
    text = ("chainspec: 1\nvars: {w: 4, n: -1000000000000000000, s: ab}\n"
            + PLACES[place].replace("{e}", "${" + body + "}"))
    loads_within_bounds(text)


# -- hostile specs: YAML tags on any value, merge sources included --------------------------------------------------

CORE_SCALAR_TAGS = ["!!str", "!!int", "!!float", "!!bool", "!!null"]
FOREIGN_TAGS = ["!!python/object/apply:os.system", "!!python/object:builtins.dict", "!!python/name:os.system",
                "!!python/tuple", "!!binary", "!!set", "!!omap", "!!pairs", "!custom", "!<tag:evil.example,2000:x>",
                "!<tag:yaml.org,2002:python/object/new:os.system>"]
SCALARS = ["1", "-3", "x", "'q'", "1.5", "true", "null", "maybe", '""', "1:2", "0x1F", "0b", ".inf", "~", "'-'"]


@dataclass(frozen=True)
class Tagged:
    """YAML text in flow style, and whether a tag outside the core schema appears anywhere in it."""

    text: str
    foreign: bool


def _tag(draw: st.DrawFn, kind: str) -> tuple[str, bool]:
    """A tag for a node of ``kind`` (scalar, seq, map): none, its own core tag, another core tag, or a foreign one."""
    choice = draw(st.integers(0, 9))
    if choice < 5:
        return "", False
    if choice < 7:
        own = {"scalar": draw(st.sampled_from(CORE_SCALAR_TAGS)), "seq": "!!seq", "map": "!!map"}[kind]
        return own + " ", False
    if choice < 8:  # a core tag on the wrong kind (!!int on a mapping): refused, but not foreign
        return draw(st.sampled_from(["!!seq", "!!map", *CORE_SCALAR_TAGS])) + " ", False
    return draw(st.sampled_from(FOREIGN_TAGS)) + " ", True


@st.composite
def tagged_values(draw: st.DrawFn, depth: int = 0) -> Tagged:
    kind = draw(st.sampled_from(["scalar", "scalar", "seq", "map", "merge"] if depth < 3 else ["scalar"]))
    if kind == "scalar":
        tag, foreign = _tag(draw, "scalar")
        return Tagged(tag + draw(st.sampled_from(SCALARS)), foreign)
    if kind == "seq":
        tag, foreign = _tag(draw, "seq")
        items = draw(st.lists(tagged_values(depth + 1), max_size=3))
        return Tagged(tag + "[" + ", ".join(i.text for i in items) + "]", foreign or any(i.foreign for i in items))
    pairs, foreign = [], False
    for k, value in enumerate(draw(st.lists(tagged_values(depth + 1), min_size=kind == "merge", max_size=3))):
        key_tag, key_foreign = ("", False) if draw(st.integers(0, 3)) else _tag(draw, "scalar")
        if key_tag.startswith(("!!int", "!!float", "!!bool", "!!null")):
            key_tag = ""  # a key of another type is not an identifier: a plain error, not what this tests
        pairs.append(f"{key_tag}k{k}: {value.text}")
        foreign = foreign or key_foreign or value.foreign
    if kind == "merge":
        sources = draw(merge_sources(depth + 1))
        pairs.insert(0, f"<<: {sources.text}")
        foreign = foreign or sources.foreign
    tag, tag_foreign = _tag(draw, "map")
    return Tagged(tag + "{" + ", ".join(pairs) + "}", foreign or tag_foreign)


@st.composite
def merge_sources(draw: st.DrawFn, depth: int = 0) -> Tagged:
    """Mappings to merge, each possibly tagged, with possibly tagged keys: what ``<<:`` takes."""
    sources = []
    foreign = False
    for k in range(draw(st.integers(1, 3))):
        tag, tag_foreign = _tag(draw, "map")
        key_tag, key_foreign = ("", False) if draw(st.booleans()) else _tag(draw, "scalar")
        if key_tag.startswith(("!!int", "!!float", "!!bool", "!!null")):
            key_tag = draw(st.sampled_from(["", "!!python/name:os.system ", "!custom "]))
            key_foreign = key_tag != ""
        value = draw(tagged_values(max(depth, 2)))
        sources.append(f"{tag}{{{key_tag}m{k}: {value.text}}}")
        foreign = foreign or tag_foreign or key_foreign or value.foreign
    text = sources[0] if len(sources) == 1 and draw(st.booleans()) else "[" + ", ".join(sources) + "]"
    return Tagged(text, foreign)


@examples(120)
@given(tagged_values(), merge_sources(), st.sampled_from(["param", "merged-params", "merged-args", "top"]))
@example(Tagged("1", False), Tagged("[!!python/object:builtins.dict {m0: 1}, !custom {m1: 2}]", True), "merged-params")
@example(Tagged("1", False), Tagged("{!!python/name:os.system m0: 1}", True), "merged-args")
@example(Tagged("!!bool maybe", False), Tagged("{m0: 1}", False), "param")
@example(Tagged('!!int ""', False), Tagged("{m0: 1}", False), "param")
def test_tags_on_any_value_and_any_merge_source_are_refused(value: Tagged, merged: Tagged, where: str) -> None:
    """A tag outside YAML's core schema anywhere, merge sources and merged keys included: a located SpecError.

    The tagged value is a composite's parameter default, which may hold anything: without a foreign tag
    the spec is valid (or refused for a bad scalar, such as ``!!bool maybe``), never crashes.
    """
    params = {"param": f"{{q: {value.text}}}", "merged-params": f"{{<<: {merged.text}, q: {value.text}}}",
              "merged-args": f"{{q: {value.text}}}", "top": f"{{q: {value.text}}}"}[where]
    args = f"{{<<: {merged.text}}}" if where == "merged-args" else "{}"
    top = f"<<: {merged.text}\n" if where == "top" else ""
    text = (f"chainspec: 1\n{top}types:\n  blk:\n    params: {params}\n    nodes: [{{id: a, type: relu}}]\n"
            f"chains:\n  net:\n    input_shape: [4]\n    nodes: [{{id: n, type: blk, args: {args}}}]\n")
    foreign = value.foreign or (where != "param" and merged.foreign)
    spec = loads_within_bounds(text, build=False)
    if foreign:
        assert spec is None, f"a tag outside the core schema was accepted:\n{text}"


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
        try:
            plan = chainspec.diff(spec, new)  # diff refuses what apply would (tests/test_promise.py)
            plan.apply(net, opt, policy=policy)
        except (SpecError, PlanError):
            # Refused, by diff or by apply: nothing changed.
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
