"""A generated corpus of hostile specs: each pushes one way of making loading slow, big or crash to its worst.

Every document is at most ``MAX_BYTES`` (256 KiB, the default ``Limits.max_bytes``): what an attacker
who controls a spec file, a watched file or the spec text stored in a checkpoint can send. Generators
take a byte ``budget`` and fill it, so that a case is as bad as the size limit allows (the most
composite leaves, stages x nodes, unknown names, digits ...), not merely an example of its kind.

``tests/test_bounds.py`` runs every case through every entry point (``load``, ``Spec.check``, a
watcher's ``poll``, ``load_checkpoint`` and the command line) and requires a documented outcome
within a hang guard; ``benchmarks/bench_hostile.py`` measures the worst time and memory per entry
point. ``python tests/hostile_corpus.py DIR`` writes the corpus out as files.

The classes (the ``cls`` of each case):

- ``expansion``: composites, parameters, lists and templates that multiply when expanded;
- ``exponent``: integer work the expression bounds do not see (``round(1, -10**18)``);
- ``deep-check``: stages x nodes for ``validate --deep`` and ``build``;
- ``memory``: weights and buffers that cannot fit, which the memory guard must refuse before allocating;
- ``slow-refusal``: documents that are refused, but slowly (did-you-mean over thousands of names,
  YAML 1.1 sexagesimal integers, quadratic bookkeeping of problems);
- ``internal``: inputs that used to escape as exceptions other than ``SpecError``;
- ``control``: terminal control characters that a command prints;
- ``merge-tags``: tags on the sources and keys of a ``<<`` merge;
- ``deep-values``: values nested far deeper than YAML allows, built by expressions.

Example:
    >>> cases = corpus()
    >>> all(len(c.text) <= MAX_BYTES for c in cases)
    True
    >>> len({c.name for c in cases}) == len(cases)
    True
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

#: The default ``Limits.max_bytes``: no case is larger.
MAX_BYTES = 256 * 1024
#: The default stage bound (``read.model.MAX_STAGES``).
STAGES = 1000
#: Deepest composite nesting allowed by default (``Limits.max_composite_depth``).
COMPOSITE_DEPTH = 32
#: The largest legal size (``read.model.MAX_DIM``).
MAX_DIM = 2**31 - 1
#: YAML values a case may hold: just under the default ``Limits.max_values`` (50,000), so that a case
#: reaches the stage it attacks instead of being refused for its size alone.
VALUES = 49_000

#: A one-node chain that loads and builds: the revision a watcher or a checkpoint starts from.
BASE = "chainspec: 1\nchains:\n  net:\n    input_shape: [4]\n    nodes:\n" \
       "      - {id: fc, type: linear, args: {in_features: 4, out_features: 4}}\n"

CLASSES = ("expansion", "exponent", "deep-check", "memory", "slow-refusal", "internal", "control", "merge-tags",
           "deep-values")
#: The cases of each class that stand for its mechanisms (the issue's examples and the worst within the size
#: limit); the default test run takes these through every entry point, the whole corpus through ``load``.
KEY_CASES = {
    "tree-10x6", "tree-widest-31", "tree-wrapped-leaves", "string-doubling-40", "list-doubling-used",
    "template-long-var", "input-stage-exprs",
    "exponent-round-neg-1e18", "exponent-input-round-var", "exponent-in-tree",
    "deep-growing-input", "deep-fixed-input-layouts", "deep-routed-growing-input", "deep-tied-to-one",
    "buffers-batchnorm1d-x10", "buffers-two-chains",
    "didyoumean-types", "sexagesimal-value", "refused-times-problems",
    "scalar-bool-maybe", "scalar-key-bool-maybe", "expr-invert-name", "import-torch-save", "import-torch-relu",
    "control-diff-value", "control-diff-key", "control-checkpoint-source",
    "merge-python-object-and-local", "merge-python-name-key",
    "deep-list-arg", "deep-list-1100",
}


@dataclass(frozen=True)
class Case:
    """One hostile document.

    Attributes:
        name: unique, usable as a file name.
        cls: which class of the corpus it belongs to (see the module docstring).
        text: the document.
        why: what it attacks, in a few words.
        must_refuse: loading it must raise ``SpecError`` (accepting it is itself the bug).
        allow_imports: what the calling code allows (for cases about allowed import paths).
        old: for ``chainspec diff``: the revision it is compared with (default :data:`BASE`).
        source: the spec source stored with it in a checkpoint (default: the file name).
    """

    name: str
    cls: str
    text: bytes
    why: str
    must_refuse: bool = False
    allow_imports: tuple[str, ...] = ()
    old: bytes | None = None
    source: str | None = None

    @property
    def key(self) -> bool:
        """One of the few cases of its class that the default test run takes through every entry point."""
        return self.name in KEY_CASES


# -- building blocks -------------------------------------------------------------------------------------------------

def _chain(nodes: Iterable[str], *, shape: str = "[4]", name: str = "net") -> str:
    """A chain section whose nodes are the given flow mappings (without braces), one per line."""
    body = "".join(f"      - {{{n}}}\n" for n in nodes)
    return f"chains:\n  {name}:\n    input_shape: {shape}\n    nodes:\n{body}"


def _flow_nodes(nodes: Iterable[str]) -> str:
    """Flow-style node list on one line: the densest way to write many nodes."""
    return "[" + ", ".join("{" + n + "}" for n in nodes) + "]"


def _fit(prefix: str, suffix: str, item: Callable[[int], str], budget: int, sep: str = "",
         max_items: int | None = None) -> tuple[str, int]:
    """``prefix`` + as many ``item(i)`` (joined by ``sep``, at most ``max_items``) as fit in ``budget`` bytes
    with ``suffix``; and the count."""
    room = budget - len(prefix.encode()) - len(suffix.encode())
    parts: list[str] = []
    used = 0
    while max_items is None or len(parts) < max_items:
        piece = item(len(parts))
        cost = len(piece.encode()) + (len(sep) if parts else 0)
        if used + cost > room:
            break
        parts.append(piece)
        used += cost
    return prefix + sep.join(parts) + suffix, len(parts)


def _linear_out(expr: str) -> str:
    """A spec whose one node is a linear layer with ``out_features: "${expr}"`` (line 6)."""
    return "chainspec: 1\nvars: {a: 1, n: -1000000000000000000}\n" + _chain(
        [f'id: fc, type: linear, args: {{in_features: 4, out_features: "{expr}"}}'])


# -- 1. expansion ---------------------------------------------------------------------------------------------------

def composite_tree(fanout: int, depth: int, *, chain_nodes: int = 1, leaf: str = "relu") -> str:
    """Composite ``t0`` holds ``fanout`` parts of ``t1`` ... ``depth`` levels down: ``fanout**depth`` leaves."""
    types = []
    for level in range(depth):
        child = f"t{level + 1}" if level + 1 < depth else leaf
        types.append(f"  t{level}:\n    nodes: " + _flow_nodes(f"id: p{i}, type: {child}" for i in range(fanout)))
    return ("chainspec: 1\ntypes:\n" + "\n".join(types) + "\n"
            + _chain(f"id: n{i}, type: t0" for i in range(chain_nodes)))


def widest_composite_tree(depth: int, budget: int = MAX_BYTES) -> tuple[str, int]:
    """The composite tree of ``depth`` levels with the largest fan-out that fits in ``budget``."""
    lo, hi = 1, min(budget // (20 * depth), (VALUES // depth - 4) // 5)  # > 20 bytes and 5 values a part
    while lo < hi:  # the largest fan-out whose document fits
        mid = (lo + hi + 1) // 2
        if len(composite_tree(mid, depth).encode()) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return composite_tree(lo, depth), lo


def composite_tree_many_nodes(fanout: int, depth: int, budget: int = MAX_BYTES) -> str:
    """A small composite tree used by as many chain nodes as fit: the chain multiplies the leaves again."""
    types = "".join(f"  t{lv}:\n    nodes: " + _flow_nodes(
        f"id: p{i}, type: {f't{lv + 1}' if lv + 1 < depth else 'relu'}" for i in range(fanout)) + "\n"
        for lv in range(depth))
    prefix = "chainspec: 1\ntypes:\n" + types + "chains:\n  net:\n    input_shape: [4]\n    nodes: ["
    text, _ = _fit(prefix, "]\n", lambda i: f"{{id: n{i}, type: t0}}", budget, sep=", ",
                   max_items=(VALUES - depth * (5 * fanout + 4)) // 5)
    return text


def wrapped_leaves(budget: int = MAX_BYTES, depth: int = COMPOSITE_DEPTH - 1) -> str:
    """Thousands of leaves, each inside ``depth`` single-part composites: few leaves, ``depth`` times the modules."""
    chain = "".join(f"  t{i}:\n    nodes: [{{id: p, type: {f't{i + 1}' if i < depth else 'relu'}}}]\n"
                    for i in range(1, depth + 1))
    prefix = "chainspec: 1\ntypes:\n" + chain + "  t0:\n    nodes: ["
    suffix = "]\nchains:\n  net:\n    input_shape: [4]\n    nodes: [{id: n, type: t0}]\n"
    text, _ = _fit(prefix, suffix, lambda i: f"{{id: p{i}, type: t1}}", budget, sep=", ",
                   max_items=(VALUES - 10 * depth) // 5)
    return text


def composite_dag(depth: int) -> str:
    """Each composite holds one part of every composite below it: a shared-definition DAG, 2**depth leaves."""
    types = []
    for level in range(depth):
        below = [f"t{j}" for j in range(level + 1, depth)] or ["relu"]
        types.append(f"  t{level}:\n    nodes: " + _flow_nodes(f"id: p{j}, type: {t}" for j, t in enumerate(below)))
    return "chainspec: 1\ntypes:\n" + "\n".join(types) + "\n" + _chain(["id: n, type: t0"])


def string_doubling(times: int) -> str:
    """A composite parameter doubling a string ``times`` times (``s1: "${s0}${s0}"`` ...): 2**times characters."""
    params = ", ".join(["s0: ab"] + [f's{i}: "${{s{i - 1}}}${{s{i - 1}}}"' for i in range(1, times + 1)])
    return ("chainspec: 1\ntypes:\n  big:\n    params: {" + params + "}\n    nodes: [{id: a, type: relu}]\n"
            + _chain(["id: n, type: big"]))


def string_doubling_through_args(depth: int, fanout: int = 2) -> str:
    """Nested composites, each passing ``"${s}${s}"`` to ``fanout`` parts below it."""
    types = []
    for level in range(depth):
        if level + 1 < depth:
            parts = _flow_nodes(f'id: p{i}, type: t{level + 1}, args: {{s: "${{s}}${{s}}"}}' for i in range(fanout))
        else:
            parts = _flow_nodes(["id: p0, type: relu"])
        types.append(f"  t{level}:\n    params: {{s: null}}\n    nodes: {parts}")
    return "chainspec: 1\ntypes:\n" + "\n".join(types) + "\n" + _chain(['id: n, type: t0, args: {s: ab}'])


def list_doubling(times: int, width: int = 2) -> str:
    """Parameters that are lists of lists of lists: ``l1: "${[l0, l0]}"`` ..., ``width**times`` leaves."""
    def item(i: int) -> str:
        return f'l{i}: "${{[' + ", ".join([f"l{i - 1}"] * width) + ']}"'
    params = ", ".join(["l0: [1]"] + [item(i) for i in range(1, times + 1)])
    return ("chainspec: 1\ntypes:\n  big:\n    params: {" + params + "}\n    nodes: [{id: a, type: relu}]\n"
            + _chain(["id: n, type: big"]))


def list_doubling_used(times: int) -> str:
    """A doubled list handed to a real argument (``reshape.shape``), so that it is validated and compared."""
    params = ", ".join(["l0: [1]"] + [f'l{i}: "${{[l{i - 1}, l{i - 1}]}}"' for i in range(1, times + 1)])
    return ("chainspec: 1\ntypes:\n  big:\n    params: {" + params + "}\n"
            f'    nodes: [{{id: a, type: reshape, args: {{shape: "${{l{times}}}"}}}}]\n'
            + _chain(["id: n, type: big"]))


def template_of_long_var(budget: int = MAX_BYTES) -> str:
    """One argument of thousands of ``${s}`` placeholders of a 10,000-character var: hundreds of MB once formatted."""
    prefix = ("chainspec: 1\nvars: {s: " + "x" * 10_000 + "}\nchains:\n  net:\n    input_shape: [4]\n"
              '    nodes:\n      - {id: a, type: gelu, args: {approximate: "')
    text, _ = _fit(prefix, '"}}\n', lambda i: "${s}", budget)
    return text


def placeholders_through_aliases(budget: int = MAX_BYTES) -> str:
    """An anchored string of thousands of placeholders, aliased into every node's args."""
    nodes_budget = budget // 2
    anchor, _ = _fit('x: &e "', '"\n', lambda i: "${a}", nodes_budget)
    prefix = "chainspec: 1\nvars: {a: 1}\n" + anchor + "chains:\n  net:\n    input_shape: [4]\n    nodes: ["
    text, _ = _fit(prefix, "]\n", lambda i: f"{{id: n{i}, type: relu, args: {{a: *e}}}}", budget, sep=", ",
                   max_items=VALUES // 11)
    return text


def defaults_on_every_node(budget: int = MAX_BYTES) -> str:
    """One long expression in ``defaults`` for a type, and as many nodes of that type as fit."""
    expr = "${" + "+".join(["a"] * 40) + "}"
    prefix = f'chainspec: 1\nvars: {{a: 1}}\ndefaults:\n  relu: {{x: "{expr}", y: "{expr}", z: "{expr}"}}\n' \
             "chains:\n  net:\n    input_shape: [4]\n    nodes: ["
    text, _ = _fit(prefix, "]\n", lambda i: f"{{id: n{i}, type: relu}}", budget, sep=", ", max_items=VALUES // 5)
    return text


def param_defaults_in_a_tree(depth: int = 6, fanout: int = 10) -> str:
    """Param defaults are evaluated per instance: 40 expressions in a composite instantiated fanout**depth times."""
    params = ", ".join(f'q{i}: "${{{"+".join(["a"] * 30)}}}"' for i in range(40))
    types = [f"  leaf:\n    params: {{{params}}}\n    nodes: [{{id: a, type: relu}}]"]
    for level in range(depth):
        child = f"t{level + 1}" if level + 1 < depth else "leaf"
        types.append(f"  t{level}:\n    nodes: " + _flow_nodes(f"id: p{i}, type: {child}" for i in range(fanout)))
    return "chainspec: 1\nvars: {a: 1}\ntypes:\n" + "\n".join(types) + "\n" + _chain(["id: n, type: t0"])


def stage_expressions_in_the_input(budget: int = MAX_BYTES) -> str:
    """``stages: 1000`` and an input shape of thousands of ``${stage}`` entries: each is evaluated per stage."""
    prefix = f"chainspec: 1\nstages: {STAGES}\nchains:\n  net:\n    input_shape: ["
    suffix = f"]\n    nodes:\n      - {{id: a, type: relu}}\n      - {{id: b, type: relu, stage: {STAGES - 1}}}\n"
    text, _ = _fit(prefix, suffix, lambda i: '"${stage + 1}"', budget, sep=", ")
    return text


def wide_input_one_expression(budget: int = MAX_BYTES) -> str:
    """An input shape of tens of thousands of 1s and one ``${stage}`` entry: a wide tuple per stage."""
    prefix = f'chainspec: 1\nstages: {STAGES}\nchains:\n  net:\n    input_shape: ["${{stage + 1}}", '
    suffix = f"]\n    nodes:\n      - {{id: a, type: relu}}\n      - {{id: b, type: relu, stage: {STAGES - 1}}}\n"
    text, _ = _fit(prefix, suffix, lambda i: "1", budget, sep=", ", max_items=VALUES - 20)
    return text


def many_chains(budget: int = MAX_BYTES) -> str:
    """As many chains as fit, each using a composite of a thousand leaves."""
    types = "types:\n" + "".join(f"  t{lv}:\n    nodes: " + _flow_nodes(
        f"id: p{i}, type: {f't{lv + 1}' if lv < 2 else 'relu'}" for i in range(10)) + "\n" for lv in range(3))
    prefix = "chainspec: 1\n" + types + "chains:\n"
    text, _ = _fit(prefix, "", lambda i: f"  c{i}: {{input_shape: [4], nodes: [{{id: a, type: t0}}]}}\n", budget,
                   max_items=(VALUES - 200) // 12)
    return text


# -- 2. exponent -----------------------------------------------------------------------------------------------------

EXPONENT_EXPRESSIONS = {
    "round-neg-1e18": "${round(1, -10**18)}",
    "round-neg-2e62": "${round(7, -2**62)}",
    "round-neg-2e63": "${round(1, -(2**63))}",
    "round-var": "${round(1, n)}",
    "round-literal": "${round(1, -" + "9" * 400 + ")}",
    "round-big-both": "${round(10**18, -10**18)}",
    "round-neg-1e7": "${round(3, -10**7)}",
    "round-float": "${round(1.5, -10**18)}",
    "round-nested": "${round(round(1, -10**18), -10**18)}",
    "pow-literal-base": "${" + "9" * 300 + "**64}",
    "pow-of-pow": "${(2**63)**64}",
    "literal-400-digits": "${" + "9" * 400 + "}",
    "neg-literal": "${-" + "9" * 400 + "}",
    "int-of-str": "${int('" + "9" * 400 + "')}",
    "floor-inf": "${floor(1e400)}",
    "inf-literal": "${1e400}",
    "neg-inf-literal": "${-1e400}",
}


def exponent_in_input_shape(expr: str) -> str:
    """A stage-dependent input entry: evaluated at each of 1,000 stages."""
    return (f"chainspec: 1\nstages: {STAGES}\nvars: {{n: -1000000000000000000}}\nchains:\n  net:\n"
            f'    input_shape: ["{expr}"]\n    nodes:\n      - {{id: a, type: relu}}\n')


def exponent_in_a_tree(expr: str) -> str:
    """An exponent expression in a parameter default of a composite instantiated a million times."""
    text = composite_tree(10, 6, leaf="leaf")
    leaf = f'  leaf:\n    params: {{q: "{expr}"}}\n    nodes: [{{id: a, type: relu}}]\n'
    return text.replace("types:\n", "types:\n" + leaf, 1)


# -- 4. deep check ---------------------------------------------------------------------------------------------------

def growing_input(budget: int = MAX_BYTES, *, per_stage_layout: bool = False, conv: bool = False) -> str:
    """``input_shape: ["${stage + 1}"]``, 1,000 stages and as many nodes as fit: stages x nodes shape checks."""
    shape = '["${stage + 1}", 2, 2]' if conv else '["${stage + 1}"]'
    prefix = f"chainspec: 1\nstages: {STAGES}\nchains:\n  net:\n    input_shape: {shape}\n    nodes: ["

    def item(i: int) -> str:
        stage = f", stage: {i % STAGES}" if per_stage_layout else (f", stage: {STAGES - 1}" if i == 0 else "")
        return f"{{id: n{i}, type: relu{stage}}}"

    text, _ = _fit(prefix, "]\n", item, budget, sep=", ", max_items=VALUES // (7 if per_stage_layout else 5))
    return text


def routed_growing_input(budget: int = MAX_BYTES) -> str:
    """A growing input over 1,000 stages, every node adding the chain's input to the node before (``from``)."""
    prefix = f'chainspec: 1\nstages: {STAGES}\nchains:\n  net:\n    input_shape: ["${{stage + 1}}"]\n    nodes: ['
    text, _ = _fit(prefix, "]\n", lambda i: f"{{id: n{i}, type: relu{f', stage: {STAGES - 1}' if i == 0 else ''}"
                   + (", from: [prev, input], merge: add}" if i else "}"), budget, sep=", ",
                   max_items=VALUES // 11)
    return text


def tied_to_one(budget: int = MAX_BYTES) -> str:
    """Thousands of linear nodes, every one tying its weight to the first one's."""
    prefix = "chainspec: 1\nchains:\n  net:\n    input_shape: [4]\n    nodes: ["
    text, _ = _fit(prefix, "]\n", lambda i: f"{{id: n{i}, type: linear, args: {{in_features: 4, out_features: 4}}"
                   + (", tie: {weight: n0.weight}}" if i else "}"), budget, sep=", ", max_items=VALUES // 8)
    return text


def fixed_input_new_layout_each_stage(budget: int = MAX_BYTES) -> str:
    """A fixed input, a node joining at each of 1,000 stages and thousands always there: 1,000 layouts."""
    prefix = f"chainspec: 1\nstages: {STAGES}\nchains:\n  net:\n    input_shape: [4]\n    nodes: ["
    text, _ = _fit(prefix, "]\n", lambda i: f"{{id: n{i}, type: relu, stage: {i % STAGES}}}" if i < STAGES
                   else f"{{id: n{i}, type: relu}}", budget, sep=", ", max_items=(VALUES - 2 * STAGES) // 5)
    return text


def growing_input_composites(budget: int = MAX_BYTES) -> str:
    """1,000 stages of a growing input through nodes that are composites of 100 leaves each."""
    types = "types:\n" + "".join(f"  t{lv}:\n    nodes: " + _flow_nodes(
        f"id: p{i}, type: {'t1' if lv == 0 else 'relu'}" for i in range(10)) + "\n" for lv in range(2))
    prefix = f'chainspec: 1\nstages: {STAGES}\n{types}chains:\n  net:\n    input_shape: ["${{stage + 1}}"]\n' \
             "    nodes: ["
    text, _ = _fit(prefix, "]\n", lambda i: f"{{id: n{i}, type: t0{f', stage: {STAGES - 1}' if i == 0 else ''}}}",
                   budget, sep=", ", max_items=(VALUES - 200) // 5)
    return text


def two_growing_chains(budget: int = MAX_BYTES) -> str:
    """Two chains (a generator and a discriminator), each growing at every stage."""
    half = budget // 2 - 200
    nodes, _ = _fit("[", "]", lambda i: f"{{id: n{i}, type: relu{f', stage: {STAGES - 1}' if i == 0 else ''}}}",
                    half, sep=", ", max_items=VALUES // 10)
    return (f"chainspec: 1\nstages: {STAGES}\nchains:\n"
            f'  g:\n    input_shape: ["${{stage + 1}}"]\n    nodes: {nodes}\n'
            f'  d:\n    input_shape: ["${{2 * stage + 1}}"]\n    nodes: {nodes}\n')


# -- 5. memory -------------------------------------------------------------------------------------------------------

def unfit_buffers(kind: str = "batchnorm1d", count: int = 10) -> str:
    """Nodes with no weights but two buffers of 2**31 - 1 floats each (17 GB a node): refused before allocating."""
    if kind == "batchnorm1d":
        shape, args = f"[{MAX_DIM}]", f"num_features: {MAX_DIM}, affine: false"
    elif kind == "batchnorm2d":
        shape, args = f"[{MAX_DIM}, 1, 1]", f"num_features: {MAX_DIM}, affine: false"
    else:
        shape, args = f"[{MAX_DIM}, 1, 1]", f"num_features: {MAX_DIM}, track_running_stats: true"
    return "chainspec: 1\n" + _chain((f"id: n{i}, type: {kind}, args: {{{args}}}" for i in range(count)), shape=shape)


def unfit_buffers_in_a_tree() -> str:
    """A composite of a thousand such buffer-only nodes: 17 TB of buffers from one chain node."""
    leaf = f"{{id: bn, type: batchnorm1d, args: {{num_features: {MAX_DIM}, affine: false}}}}"
    types = "types:\n  t1:\n    nodes: [" + leaf + "]\n  t0:\n    nodes: " + _flow_nodes(
        f"id: p{i}, type: t1" for i in range(1000)) + "\n"
    return "chainspec: 1\n" + types + _chain(["id: n, type: t0"], shape=f"[{MAX_DIM}]")


def unfit_weights_and_buffers() -> str:
    """Weights just under a petabyte, plus buffers: the sum is what must be compared with free memory."""
    return "chainspec: 1\n" + _chain([
        f"id: fc, type: linear, args: {{in_features: {MAX_DIM}, out_features: 1000000, bias: false}}",
        "id: bn, type: batchnorm1d, args: {num_features: 1000000}",
    ], shape=f"[{MAX_DIM}]")


def unfit_over_two_chains() -> str:
    """Two chains of 9 TB of buffers each: loading a checkpoint or build_all builds both."""
    node = f"{{id: bn, type: batchnorm1d, args: {{num_features: {MAX_DIM}, affine: false}}}}"
    many = "[" + ", ".join(node.replace("id: bn", f"id: bn{i}") for i in range(500)) + "]"
    return (f"chainspec: 1\nchains:\n  g:\n    input_shape: [{MAX_DIM}]\n    nodes: {many}\n"
            f"  d:\n    input_shape: [{MAX_DIM}]\n    nodes: {many}\n")


# -- 7. slow refusals ------------------------------------------------------------------------------------------------

def _similar(i: int, width: int = 60) -> str:
    """Names that share a long prefix, so that every did-you-mean comparison is a full one."""
    return "layer_block_" + "x" * (width - 12 - 5) + f"{i:05d}"


def unknown_types_among_composites(budget: int = MAX_BYTES, width: int = 60) -> str:
    """Half the budget of composites, half of nodes whose type is a near miss of them: did-you-mean for each."""
    half = budget // 2
    types, count = _fit("types:\n", "", lambda i: f"  {_similar(i, width)}: {{nodes: [{{id: a, type: relu}}]}}\n",
                        half)
    prefix = "chainspec: 1\n" + types + "chains:\n  net:\n    input_shape: [4]\n    nodes: ["
    text, _ = _fit(prefix, "]\n", lambda i: f"{{id: n{i}, type: {_similar(i % max(count, 1), width)}z}}", budget,
                   sep=", ")
    return text


def unknown_long_type_names(budget: int = MAX_BYTES) -> str:
    """A few hundred composites and nodes whose unknown type names are kilobytes long."""
    types, count = _fit("types:\n", "", lambda i: f"  {_similar(i, 100)}: {{nodes: [{{id: a, type: relu}}]}}\n",
                        budget // 4)
    prefix = "chainspec: 1\n" + types + "chains:\n  net:\n    input_shape: [4]\n    nodes: ["
    text, _ = _fit(prefix, "]\n", lambda i: f"{{id: n{i}, type: {_similar(i % count, 100) * 20}}}", budget, sep=", ")
    return text


def unknown_params_of_a_composite(budget: int = MAX_BYTES) -> str:
    """A composite with thousands of parameters and a node passing thousands of near misses of them."""
    params, count = _fit("    params: {", "}\n", lambda i: f"{_similar(i, 40)}: 0", budget // 2, sep=", ")
    prefix = "chainspec: 1\ntypes:\n  big:\n" + params + "    nodes: [{id: a, type: relu}]\n" \
             "chains:\n  net:\n    input_shape: [4]\n    nodes:\n      - {id: n, type: big, args: {"
    text, _ = _fit(prefix, "}}\n", lambda i: f"{_similar(i % count, 40)}q: 0", budget, sep=", ")
    return text


def unknown_names_in_expressions(budget: int = MAX_BYTES) -> str:
    """Thousands of vars, and as many expressions each naming a near miss of one."""
    names, count = _fit("vars: {", "}\n", lambda i: f"{_similar(i, 40)}: 1", budget // 2, sep=", ")
    prefix = "chainspec: 1\n" + names + "chains:\n  net:\n    input_shape: [4]\n    nodes: ["
    text, _ = _fit(prefix, "]\n",
                   lambda i: f'{{id: n{i}, type: dropout, args: {{p: "${{{_similar(i % count, 40)}q}}"}}}}',
                   budget, sep=", ")
    return text


def unknown_args_of_many_nodes(budget: int = MAX_BYTES) -> str:
    """Every node passing an unknown argument to a type with many (conv2d): a did-you-mean per node."""
    prefix = "chainspec: 1\nchains:\n  net:\n    input_shape: [4, 4, 4]\n    nodes: ["
    text, _ = _fit(prefix, "]\n", lambda i: f"{{id: n{i}, type: conv2d, args: {{in_chanels: 4, out_chanels: 4}}}}",
                   budget, sep=", ", max_items=VALUES // 11)
    return text


def sexagesimal(budget: int = MAX_BYTES, *, where: str = "value", style: str = "59") -> str:
    """A YAML 1.1 base-60 integer (``1:59:59:...``) filling the file: converting it is quadratic."""
    digit = {"59": ":59", "1": ":1", "00": ":00"}[style]
    if where == "value":
        prefix, suffix = "chainspec: 1\ndescription: 1", "\n" + _chain(["id: a, type: relu"])
    elif where == "key":  # an explicit key: a plain one may not be longer than 1,024 characters
        prefix, suffix = "chainspec: 1\n? 1", "\n: x\n" + _chain(["id: a, type: relu"])
    elif where == "tagged":
        prefix, suffix = 'chainspec: 1\ndescription: !!int "1', '"\n' + _chain(["id: a, type: relu"])
    else:  # a float
        prefix, suffix = "chainspec: 1\ndescription: 1", ".5\n" + _chain(["id: a, type: relu"])
    text, _ = _fit(prefix, suffix, lambda i: digit, budget)
    return text


def many_sexagesimals(budget: int = MAX_BYTES) -> str:
    """A list of many base-60 integers of a few hundred digits each."""
    prefix = "chainspec: 1\ndescription: x\nx: ["
    text, _ = _fit(prefix, "]\n" + _chain(["id: a, type: relu"]), lambda i: "1" + ":59" * 300, budget, sep=", ")
    return text


def refused_values_and_problems(budget: int = MAX_BYTES) -> str:
    """Thousands of refused values (a bad tag each) and thousands of other problems: each compared with each."""
    prefix = "chainspec: 1\nchains:\n  net:\n    input_shape: [4]\n    nodes: ["
    text, _ = _fit(prefix, "]\n", lambda i: f"{{id: n{i}, type: nope{i}, args: {{a: !x 1}}}}", budget, sep=", ",
                   max_items=VALUES // 11)
    return text


def many_problems_wide_output(budget: int = MAX_BYTES) -> str:
    """Thousands of unknown keys whose names print escaped at several times their length."""
    key = "\u200b" * 90
    prefix = "chainspec: 1\nchains:\n  net:\n    input_shape: [4]\n    nodes: ["
    text, _ = _fit(prefix, "]\n", lambda i: f'{{id: n{i}, type: relu, "{key}{i}": 1}}', budget, sep=", ")
    return text


def duplicate_stages_in_growth(budget: int = MAX_BYTES) -> str:
    """A growth section listing the same stage thousands of times."""
    prefix = "chainspec: 1\nstages: 3\ngrowth:\n  per_stage: ["
    text, _ = _fit(prefix, "]\n" + _chain(["id: a, type: relu", "id: b, type: relu, stage: 2"]),
                   lambda i: "{stage: 1, fade: 1}", budget, sep=", ", max_items=VALUES // 5)
    return text


# -- 8. internal errors ----------------------------------------------------------------------------------------------

BAD_SCALARS = {
    "bool-maybe": "!!bool maybe",
    "bool-empty": '!!bool ""',
    "int-empty": '!!int ""',
    "int-minus": '!!int "-"',
    "int-0x": '!!int "0x"',
    "int-0b": '!!int "0b"',
    "int-colon": '!!int ":"',
    "int-colon-tail": '!!int "1:"',
    "float-empty": '!!float ""',
    "float-minus": '!!float "-"',
    "float-word": "!!float abc",
    "float-colon": '!!float ":"',
    "null-word": "!!null value",
    "tag-directive-bool": None,  # written out below: %TAG ! tag:yaml.org,2002: then !bool maybe
}


def bad_scalar(name: str, *, where: str = "value") -> str:
    """A core-schema tag on a scalar it cannot construct, as a value, a key, or in a node's args."""
    if name == "tag-directive-bool":
        return ("%TAG ! tag:yaml.org,2002:\n---\nchainspec: 1\ndescription: !bool maybe\n"
                + _chain(["id: a, type: relu"]))
    value = BAD_SCALARS[name]
    if where == "key":
        return f"chainspec: 1\n? {value}\n: 1\n" + _chain(["id: a, type: relu"])
    if where == "arg":
        return "chainspec: 1\n" + _chain([f"id: a, type: leaky_relu, args: {{negative_slope: {value}}}"])
    return f"chainspec: 1\ndescription: {value}\n" + _chain(["id: a, type: relu"])


INTERNAL_EXPRESSIONS = {
    "invert-name": "${~a}",
    "invert-number": "${~1}",
    "invert-bool": "${~True}",
    "complex-power": "${(-8) ** (1 / 3)}",
    "complex-in-int": "${int((-1) ** 0.5)}",
    "complex-compared": "${(-1) ** 0.5 < 1}",
    "complex-rounded": "${round((-1) ** 0.5)}",
    "matmul": "${a @ a}",
    "shift": "${a << 2}",
    "bitor": "${a | 2}",
    "await": "${await a}",
    "yield": "${(yield)}",
    "starred": "${[*[1, 2]]}",
    "in": "${1 in [1]}",
    "is": "${a is a}",
    "ellipsis": "${...}",
    "bytes": "${b'x'}",
    "complex-literal": "${1j}",
    "slice": "${[1, 2][0:1]}",
    "fstring": "${f'{a}'}",
    "walrus": "${(b := 1)}",
    "lambda": "${(lambda: 1)()}",
    "keyword": "${max(1, key=abs)}",
    "call-starred": "${max(*[1, 2])}",
    "nested-call": "${max(min(), 1)}",
    "compare-lists": "${[1] < ['a']}",
    "max-mixed": "${max([1], 'a')}",
    "int-base-bad": "${int('9', 99)}",
    "float-nan-str": "${float('nan')}",
    "int-of-nan": "${int(float('nan'))}",
    "ceil-nan": "${ceil(float('nan'))}",
    "round-nan": "${round(float('nan'))}",
    "log2-zero": "${log2(0)}",
    "sqrt-list": "${sqrt([1])}",
    "abs-str": "${abs('a')}",
    "min-empty-list": "${min([])}",
    "not-list": "${not [1]}",
    "null-byte": "${1\\0}",
    "unclosed": "${1 + }",
}


def internal_expression(expr: str, *, where: str = "arg") -> str:
    """An expression where a number is expected, in an arg or in a stage-dependent input entry."""
    if where == "input":
        return (f"chainspec: 1\nstages: 2\nvars: {{a: 1}}\nchains:\n  net:\n    input_shape: [\"{expr}\"]\n"
                "    nodes:\n      - {id: a, type: relu}\n      - {id: b, type: relu, stage: 1}\n")
    return "chainspec: 1\nvars: {a: 1}\n" + _chain([f'id: n, type: leaky_relu, args: {{negative_slope: "{expr}"}}'])


#: Import paths under an allowed ``torch`` that are no node types, and whether loading must refuse them
#: (the others are refused when built, or are accepted: the caller allowed them).
IMPORT_PATHS = {"torch:save": True, "torch:load": True, "torch:relu": True, "torch:tensor": True,
                "torch:device": False, "torch:Generator": False, "torch:float32": True, "torch.nn:Module": False,
                "torch.nn.functional:relu": True, "torch:Tensor": False, "torch:Size": False,
                "torch.nn:ModuleDict": False, "torch.optim:SGD": True, "torch:set_default_device": True,
                "torch:nn": True}


def allowed_import(path: str, *, where: str = "node") -> str:
    """A node (or a ``defaults`` entry) naming ``path``; the case allows ``torch``."""
    if where == "defaults":
        return f'chainspec: 1\ndefaults:\n  "{path}": {{x: 1}}\n' + _chain(["id: a, type: relu"])
    return "chainspec: 1\n" + _chain([f'id: a, type: "{path}"'])


# -- 10. control characters ------------------------------------------------------------------------------------------

#: What a hostile string may hold to drive a terminal: ESC sequences (clear, title, colour), BEL, a C1 CSI,
#: a line separator and a right-to-left override.
CONTROL = "\\e[2J\\e]0;pwned\\a\\e[31m\\x9b2J\\u2028\\u202e"


def identity_with_args(value: str, *, key: str = "x") -> str:
    """An allowed ``torch.nn:Identity`` (which takes any argument) with a string arg: diff prints it."""
    return "chainspec: 1\n" + _chain([f'id: a, type: "torch.nn:Identity", args: {{"{key}": "{value}"}}'])


def control_in_unknown_things() -> dict[str, str]:
    """Control characters in places that end up in messages: type names, keys, chain names, ids, tags."""
    return {
        "type-name": "chainspec: 1\n" + _chain([f'id: a, type: "relu{CONTROL}"']),
        "import-path": "chainspec: 1\n" + _chain([f'id: a, type: "os{CONTROL}:system"']),
        "arg-key": "chainspec: 1\n" + _chain([f'id: a, type: relu, args: {{"{CONTROL}": 1}}']),
        "arg-value": "chainspec: 1\n" + _chain([f'id: a, type: gelu, args: {{approximate: "{CONTROL}"}}']),
        "chain-name": f'chainspec: 1\nchains:\n  "{CONTROL}":\n    input_shape: [4]\n'
                      "    nodes: [{id: a, type: relu}]\n",
        "node-id": "chainspec: 1\n" + _chain([f'id: "{CONTROL}", type: relu']),
        "tag": "chainspec: 1\ndescription: !<tag:x%1B[2J%1B]0;pwned%07> x\n" + _chain(["id: a, type: relu"]),
        "expression": "chainspec: 1\n" + _chain([f'id: a, type: dropout, args: {{p: "${{\'{CONTROL}\'}}"}}']),
        "var-name-in-expression": "chainspec: 1\n" + _chain([f'id: a, type: dropout, args: {{p: "${{x{CONTROL}}}"}}']),
        "padding-mode": "chainspec: 1\n" + _chain(
            [f'id: a, type: conv2d, args: {{in_channels: 4, out_channels: 4, padding_mode: "{CONTROL}"}}'],
            shape="[4, 4, 4]"),
        "padding-string": "chainspec: 1\n" + _chain(
            [f'id: a, type: conv2d, args: {{in_channels: 4, out_channels: 4, padding: "{CONTROL}"}}'],
            shape="[4, 4, 4]"),
        "description": f'chainspec: 1\ndescription: "{CONTROL}"\n' + _chain(["id: a, type: relu"]),
    }


# -- 11. merge keys --------------------------------------------------------------------------------------------------

MERGES = {
    "python-object-and-local": "<<: [!!python/object:builtins.dict {a: 1}, !custom {b: 2}]",
    "local-tag": "<<: !custom {a: 1}",
    "python-apply": "<<: !!python/object/apply:os.system {a: 1}",
    "set": "<<: !!set {a, b}",
    "omap-sources": "<<: !!omap [{a: 1}]",
    "tagged-list": "<<: !custom [{a: 1}]",
    "python-name-key": "<<: {!!python/name:os.system : 1}",
    "bool-maybe-key": "<<: {!!bool maybe : 1}",
    "int-empty-key": '<<: {!!int "" : 1}',
    "mapping-key": "<<: {? {a: 1} : 1}",
    "anchored-source": "<<: [&s !custom {a: 1}, *s]",
    "explicit-merge-tag": "!!merge x: !custom {a: 1}",
}


def merge_with_tags(merge: str, *, where: str = "top") -> str:
    """A ``<<`` merge whose sources (or their keys) carry tags outside the core schema."""
    if where == "args":
        return "chainspec: 1\n" + _chain([f"id: a, type: relu, args: {{{merge}}}"])
    return f"chainspec: 1\nextra_section: {{{merge}}}\n" + _chain(["id: a, type: relu"])


def merge_at_top(merge: str) -> str:
    """The merge directly in the top-level mapping, next to valid keys."""
    return f"chainspec: 1\n{merge}\n" + _chain(["id: a, type: relu"])


# -- deep values -----------------------------------------------------------------------------------------------------

def deep_list_param(levels: int, *, use: str = "none") -> str:
    """``p1: "${[p0]}"`` ... : a list nested ``levels`` deep, built without any YAML nesting."""
    params = ", ".join(["p0: 1"] + [f'p{i}: "${{[p{i - 1}]}}"' for i in range(1, levels + 1)])
    last = f"p{levels}"
    part = {
        "none": "{id: a, type: relu}",
        "arg": f'{{id: a, type: reshape, args: {{shape: "${{{last}}}"}}}}',
        "template": f'{{id: a, type: gelu, args: {{approximate: "x${{{last}}}"}}}}',
        "compare": f'{{id: a, type: dropout, args: {{p: "${{0.5 if {last} == {last} else 0.1}}"}}}}',
        "passed": f'{{id: a, type: sub, args: {{v: "${{{last}}}"}}}}',
    }[use]
    sub = "  sub:\n    params: {v: null}\n    nodes: [{id: a, type: relu}]\n" if use == "passed" else ""
    return ("chainspec: 1\ntypes:\n" + sub + "  deep:\n    params: {" + params + "}\n    nodes: [" + part + "]\n"
            + _chain(["id: n, type: deep"]))


def deepest_list_param(budget: int = MAX_BYTES, *, use: str = "arg") -> str:
    """The deepest such list that fits in ``budget``."""
    lo, hi = 1, budget // 18  # each level takes more than 18 bytes
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(deep_list_param(mid, use=use).encode()) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return deep_list_param(lo, use=use)


# -- the corpus ------------------------------------------------------------------------------------------------------

def corpus(budget: int = MAX_BYTES) -> list[Case]:
    """Every case, each at most ``budget`` bytes (default: the size limit)."""
    cases: list[Case] = []

    def add(name: str, cls: str, text: str | bytes, why: str, **kw: object) -> None:
        raw = text.encode("utf-8") if isinstance(text, str) else text
        if len(raw) > MAX_BYTES:
            raise AssertionError(f"corpus case {name} is {len(raw):,} bytes, over {MAX_BYTES:,}")
        cases.append(Case(name, cls, raw, why, **kw))  # type: ignore[arg-type]

    # 1. expansion
    add("tree-10x6", "expansion", composite_tree(10, 6), "composites ten parts wide, six deep: 10**6 leaves",
        must_refuse=True)
    add("tree-2x31", "expansion", composite_tree(2, 31), "two parts per composite, 31 deep: 2**31 leaves",
        must_refuse=True)
    text, fanout = widest_composite_tree(COMPOSITE_DEPTH - 1, budget)
    add("tree-widest-31", "expansion", text, f"{fanout} parts per composite, 31 deep", must_refuse=True)
    text, fanout = widest_composite_tree(4, budget)
    add("tree-widest-4", "expansion", text, f"{fanout} parts per composite, 4 deep", must_refuse=True)
    add("tree-times-nodes", "expansion", composite_tree_many_nodes(10, 3, budget),
        "a 1,000-leaf composite used by every node that fits", must_refuse=True)
    add("tree-wrapped-leaves", "expansion", wrapped_leaves(budget),
        "thousands of leaves, each 31 single-part composites deep: 32 modules a leaf", must_refuse=True)
    add("tree-dag-31", "expansion", composite_dag(COMPOSITE_DEPTH - 1),
        "each composite holds one of every composite below it: 2**30 leaves", must_refuse=True)
    add("tree-many-chains", "expansion", many_chains(budget), "as many chains as fit, 1,000 leaves each",
        must_refuse=True)
    add("string-doubling-40", "expansion", string_doubling(40), 'a parameter "${s0}${s0}" doubled 40 times',
        must_refuse=True)
    add("string-doubling-2000", "expansion", string_doubling(2000), "doubled 2,000 times", must_refuse=True)
    add("string-doubling-args", "expansion", string_doubling_through_args(COMPOSITE_DEPTH - 1),
        "composites passing ${s}${s} to two parts each, 31 deep", must_refuse=True)
    add("list-doubling-40", "expansion", list_doubling(40), "lists of lists of lists, 2**40 leaves",
        must_refuse=True)
    add("list-10x12", "expansion", list_doubling(12, width=10), "lists ten wide, twelve deep", must_refuse=True)
    add("list-doubling-used", "expansion", list_doubling_used(40), "a 2**40-leaf list handed to reshape",
        must_refuse=True)
    add("template-long-var", "expansion", template_of_long_var(budget),
        "thousands of ${s} of a 10,000-character var in one string", must_refuse=True)
    add("placeholders-aliased", "expansion", placeholders_through_aliases(budget),
        "an anchored string of thousands of placeholders aliased into every node")
    add("defaults-every-node", "expansion", defaults_on_every_node(budget),
        "long expressions in defaults, evaluated for every node that fits")
    add("param-defaults-tree", "expansion", param_defaults_in_a_tree(),
        "40 expression defaults in a composite instantiated a million times", must_refuse=True)
    add("input-stage-exprs", "expansion", stage_expressions_in_the_input(budget),
        "an input shape of thousands of ${stage} entries over 1,000 stages")
    add("input-wide-one-expr", "expansion", wide_input_one_expression(budget),
        "an input shape of ~49,000 entries, one of them ${stage}, over 1,000 stages")

    # 2. exponent
    for name, expr in EXPONENT_EXPRESSIONS.items():
        add(f"exponent-{name}", "exponent", _linear_out(expr), f"out_features: {expr[:60]}", must_refuse=True)
    for name in ("round-neg-1e18", "round-var", "round-literal"):
        expr = EXPONENT_EXPRESSIONS[name]
        add(f"exponent-input-{name}", "exponent", exponent_in_input_shape(expr),
            f"input_shape: [{expr[:40]}] at 1,000 stages", must_refuse=True)
    add("exponent-in-tree", "exponent", exponent_in_a_tree(EXPONENT_EXPRESSIONS["round-neg-1e18"]),
        "round(1, -10**18) in a default of a composite used a million times", must_refuse=True)

    # 4. deep check
    add("deep-growing-input", "deep-check", growing_input(budget),
        'input_shape: ["${stage + 1}"], 1,000 stages x every node that fits')
    add("deep-growing-input-layouts", "deep-check", growing_input(budget, per_stage_layout=True),
        "a growing input and a node joining at each stage")
    add("deep-growing-input-conv", "deep-check", growing_input(budget, conv=True),
        "a growing [C, 2, 2] input, 1,000 stages x every node that fits")
    add("deep-fixed-input-layouts", "deep-check", fixed_input_new_layout_each_stage(budget),
        "a fixed input and 1,000 distinct layouts of thousands of nodes")
    add("deep-growing-composites", "deep-check", growing_input_composites(budget),
        "a growing input through composites of 100 leaves each", must_refuse=True)
    add("deep-two-chains", "deep-check", two_growing_chains(budget), "two chains growing at every stage")
    add("deep-routed-growing-input", "deep-check", routed_growing_input(budget),
        "a growing input, every node adding the chain's input by id, at 1,000 stages")
    add("deep-tied-to-one", "deep-check", tied_to_one(budget), "thousands of nodes tying their weight to one")

    # 5. memory
    add("buffers-batchnorm1d-x10", "memory", unfit_buffers("batchnorm1d"),
        "ten batchnorm1d of 2**31-1 features without affine weights: 170 GB of buffers")
    add("buffers-batchnorm2d-x10", "memory", unfit_buffers("batchnorm2d"), "the same with batchnorm2d")
    add("buffers-instancenorm-x10", "memory", unfit_buffers("instancenorm2d"),
        "instancenorm2d tracking running stats: buffers only")
    add("buffers-in-a-tree", "memory", unfit_buffers_in_a_tree(), "a thousand such nodes in one composite: 17 TB")
    add("weights-plus-buffers", "memory", unfit_weights_and_buffers(), "petabyte weights plus buffers")
    add("buffers-two-chains", "memory", unfit_over_two_chains(), "two chains of 9 TB of buffers each")

    # 7. slow refusals
    add("didyoumean-types", "slow-refusal", unknown_types_among_composites(budget),
        "near misses of a thousand composite names: did-you-mean for each")
    add("didyoumean-long-types", "slow-refusal", unknown_long_type_names(budget),
        "kilobyte-long near misses of composite names")
    add("didyoumean-params", "slow-refusal", unknown_params_of_a_composite(budget),
        "near misses of thousands of composite parameters")
    add("didyoumean-names", "slow-refusal", unknown_names_in_expressions(budget),
        "expressions naming near misses of thousands of vars")
    add("didyoumean-args", "slow-refusal", unknown_args_of_many_nodes(budget), "an unknown argument in every node")
    add("sexagesimal-value", "slow-refusal", sexagesimal(budget), "a 256 KiB YAML 1.1 base-60 integer")
    add("sexagesimal-key", "slow-refusal", sexagesimal(budget, where="key"), "the same as a mapping key")
    add("sexagesimal-tagged", "slow-refusal", sexagesimal(budget, where="tagged"), 'the same as !!int "..."')
    add("sexagesimal-ones", "slow-refusal", sexagesimal(budget, style="1"), "1:1:1:...: two bytes a digit")
    add("sexagesimal-float", "slow-refusal", sexagesimal(budget, where="float"), "a base-60 float")
    add("sexagesimal-many", "slow-refusal", many_sexagesimals(budget), "hundreds of 300-digit base-60 integers")
    add("refused-times-problems", "slow-refusal", refused_values_and_problems(budget),
        "thousands of refused values and thousands of unknown types")
    add("problems-escaped-keys", "slow-refusal", many_problems_wide_output(budget),
        "thousands of unknown keys of zero-width spaces")
    add("growth-duplicates", "slow-refusal", duplicate_stages_in_growth(budget),
        "one stage listed thousands of times in growth.per_stage")

    # 8. internal errors
    for name in BAD_SCALARS:
        add(f"scalar-{name}", "internal", bad_scalar(name), f"{BAD_SCALARS[name] or '%TAG ! + !bool maybe'}",
            must_refuse=name != "null-word")
    for name in ("bool-maybe", "int-empty", "float-minus"):
        add(f"scalar-key-{name}", "internal", bad_scalar(name, where="key"), f"a key {BAD_SCALARS[name]}",
            must_refuse=True)
        add(f"scalar-arg-{name}", "internal", bad_scalar(name, where="arg"), f"an arg {BAD_SCALARS[name]}",
            must_refuse=True)
    for name, expr in INTERNAL_EXPRESSIONS.items():
        add(f"expr-{name}", "internal", internal_expression(expr), f"negative_slope: {expr}",
            must_refuse=name not in ("not-list",))
    for name in ("invert-name", "complex-power", "matmul", "int-of-nan"):
        add(f"expr-input-{name}", "internal", internal_expression(INTERNAL_EXPRESSIONS[name], where="input"),
            f"input_shape: [{INTERNAL_EXPRESSIONS[name]}]", must_refuse=True)
    for path, refuse in IMPORT_PATHS.items():
        slug = path.replace(":", "-").replace(".", "-")
        add(f"import-{slug}", "internal", allowed_import(path), f"type: {path} with torch allowed",
            allow_imports=("torch",), must_refuse=refuse)
    for path in ("torch:save", "torch:relu", "torch:float32"):
        slug = path.replace(":", "-").replace(".", "-")
        add(f"import-defaults-{slug}", "internal", allowed_import(path, where="defaults"),
            f"defaults for {path} with torch allowed", allow_imports=("torch",), must_refuse=True)

    # 10. control characters
    plain = identity_with_args("plain")
    add("control-diff-value", "control", identity_with_args(CONTROL),
        "an escape sequence in an argument value that diff prints", allow_imports=("torch.nn",), old=plain.encode())
    add("control-diff-key", "control", identity_with_args("plain", key=CONTROL),
        "an escape sequence in an argument name that diff prints", allow_imports=("torch.nn",), old=plain.encode())
    add("control-checkpoint-source", "control", BASE.replace("out_features: 4", "out_features: 5"),
        "a checkpoint whose spec source holds escape sequences (and whose weights do not fit it)",
        source="\x1b[2J\x1b]0;pwned\x07net.yaml\u202e")
    for name, text in control_in_unknown_things().items():
        add(f"control-{name}", "control", text, f"escape sequences in a {name.replace('-', ' ')}")

    # 11. merge keys
    for name, merge in MERGES.items():
        add(f"merge-{name}", "merge-tags", merge_with_tags(merge), merge, must_refuse=True)
    for name in ("python-object-and-local", "local-tag", "python-name-key"):
        add(f"merge-args-{name}", "merge-tags", merge_with_tags(MERGES[name], where="args"), f"in args: {MERGES[name]}",
            must_refuse=True)
        add(f"merge-top-{name}", "merge-tags", merge_at_top(MERGES[name]), f"top level: {MERGES[name]}",
            must_refuse=True)

    # deep values
    add("deep-list-unused", "deep-values", deepest_list_param(budget, use="none"),
        "a list nested thousands deep through parameters")
    for use in ("arg", "template", "compare", "passed"):
        add(f"deep-list-{use}", "deep-values", deepest_list_param(budget, use=use),
            f"a list nested thousands deep, {use}", must_refuse=True)
    add("deep-list-1100", "deep-values", deep_list_param(1100, use="arg"),
        "a list nested just past Python's recursion limit, handed to reshape", must_refuse=True)
    return cases


def by_name(budget: int = MAX_BYTES) -> dict[str, Case]:
    """The corpus by case name."""
    return {case.name: case for case in corpus(budget)}


def write(directory: Path, cases: Iterable[Case] | None = None) -> dict[str, Path]:
    """Write each case to ``directory/NAME.yaml`` (and ``NAME.old.yaml`` where it has one); return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in corpus() if cases is None else cases:
        path = directory / f"{case.name}.yaml"
        path.write_bytes(case.text)
        if case.old is not None:
            (directory / f"{case.name}.old.yaml").write_bytes(case.old)
        paths[case.name] = path
    return paths


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")
    written = write(out)
    for case in corpus():
        print(f"{case.cls:<13} {case.name:<36} {len(case.text):>8,} B  {case.why}")
    print(f"{len(written)} cases written to {out}")
