"""What a picture shows: nodes with labels and a state, edges with a kind, from a spec or a plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ..read.resolve import ResolvedNode
    from ..read.spec import Spec
    from ..revise.plan import Plan

#: How a node changes in a plan (``same`` in a picture of a chain).
State = Literal["same", "insert", "remove", "replace", "update", "move"]


@dataclass(frozen=True)
class GraphNode:
    """One box: the node's id, its label lines, what a plan does to it, and (with every stage) the stage
    it joins.

    Example:
        >>> GraphNode("fc", ("fc (linear)", "[8]", "40 params")).state
        'same'
    """

    id: str
    lines: tuple[str, ...]
    state: State = "same"
    stage: int | None = None


@dataclass(frozen=True)
class Edge:
    """An arrow: ``spine`` from the node before, ``skip`` from a source named by id (``label``: the
    merge), ``moved`` from where a moved node was.

    Example:
        >>> Edge("a", "b").kind
        'spine'
    """

    source: str
    target: str
    kind: Literal["spine", "skip", "moved"] = "spine"
    label: str = ""


@dataclass(frozen=True)
class Graph:
    """A picture's content: a title, boxes in chain order, arrows.

    Example:
        >>> Graph("net", (GraphNode("a", ("a (relu)",)),), ()).nodes[0].id
        'a'
    """

    title: str
    nodes: tuple[GraphNode, ...]
    edges: tuple[Edge, ...] = field(default=())


def chain_graph(spec: Spec, chain: str, stage: int | str | None = "final") -> Graph:
    """The chain ``chain`` of ``spec`` at ``stage`` (None: every stage, each node marked with the
    stage it joins), with output shapes and parameter counts by shape inference.

    Example:
        >>> import chainspec
        >>> spec = chainspec.loads("chainspec: 1\\nchains: {net: {input_shape: [4], nodes: ["
        ...                        "{id: fc, type: linear, args: {in_features: 4, out_features: 2}}]}}")
        >>> chain_graph(spec, "net").nodes[1].lines  # nodes[0] is the input
        ('fc (linear)', '[2]', '10 params')
    """
    last = spec.stages - 1
    index = last if stage is None else spec.stage_index(stage)
    summary = spec.summary(chain, stage=index)
    rows = {row.id: row for row in summary.nodes}
    resolved = spec.resolved(chain)
    nodes = [GraphNode("input", ("input", _shape(summary.input_shape)))]
    edges: list[Edge] = []
    previous = "input"
    for node in resolved.at(index):
        row = rows[node.id]
        lines = (f"{node.id} ({node.type})", _shape(row.output_shape), f"{row.params:,} params", *_residual(node.tree))
        if stage is None:
            lines = (*lines, f"joins at stage {node.stage}" if node.stage else "from stage 0")
        nodes.append(GraphNode(node.id, lines, stage=node.stage if stage is None else None))
        edges += _inputs(node, previous)
        previous = node.id
    where = "every stage" if stage is None else f"stage {index} of {last}"
    return Graph(f"{spec.source}: chain {chain!r}, {where}", tuple(nodes), tuple(edges))


def plan_graph(plan: Plan) -> Graph:
    """A plan as a picture: the new chain, each node coloured by its op; removed nodes where they were,
    with no arrows; a moved node with a dashed arrow from the node it used to follow.

    Example:
        >>> import chainspec
        >>> old = chainspec.loads("chainspec: 1\\nchains: {n: {input_shape: [4], nodes: [{id: a, type: relu}]}}")
        >>> new = chainspec.loads("chainspec: 1\\nchains: {n: {input_shape: [4], nodes: [{id: a, type: relu}, "
        ...                       "{id: b, type: tanh}]}}")
        >>> [(n.id, n.state) for n in plan_graph(chainspec.diff(old, new)).nodes]
        [('input', 'same'), ('a', 'same'), ('b', 'insert')]
    """
    states: dict[str, State] = {}
    for op in plan.ops:  # a node's update or replace follows its move in the plan, and wins over it
        if op.kind != "remove":
            states[op.node_id] = op.kind
    moves = {op.node_id for op in plan.ops if op.kind == "move"}
    removed = {op.node_id: op for op in plan.ops if op.kind == "remove"}
    nodes = [GraphNode("input", ("input",))]
    edges: list[Edge] = []
    previous = "input"
    for node in plan.new_nodes:
        lines = (f"{node.id} ({node.type})", *_op_lines(plan, node.id))
        nodes.append(GraphNode(node.id, lines, states.get(node.id, "same")))
        edges += _inputs(node, previous)
        previous = node.id
    before = dict(zip(plan.old_ids, ("input", *plan.old_ids[:-1]), strict=True))
    for node_id, op in removed.items():
        nodes.append(GraphNode(node_id, (f"{node_id} ({op.type})", "removed", f"{op.param_delta:+,} params"),
                               "remove"))
    for node_id in moves:
        edges.append(Edge(before[node_id], node_id, "moved", "was after"))
    title = f"chain {plan.chain!r}: {plan.summary()}"
    return Graph(title, tuple(nodes), tuple(edges))


def _inputs(node: ResolvedNode, previous: str) -> list[Edge]:
    """The arrows into ``node``: from the node before (the spine), and from each source it names by id."""
    return [Edge(previous if source == "prev" else source, node.id, "spine" if source == "prev" else "skip",
                 node.merge or "") for source in node.sources or ("prev",)]


def _op_lines(plan: Plan, node_id: str) -> tuple[str, ...]:
    lines = []
    for op in plan.ops:
        if op.node_id != node_id:
            continue
        if op.kind in ("update", "replace") and op.changes:
            lines.append(", ".join(change.format() for change in op.changes[:2])
                         + (", ..." if len(op.changes) > 2 else ""))
        if op.param_delta:
            lines.append(f"{op.param_delta:+,} params")
        if op.kind == "insert" and op.init != "fresh":
            lines.append("copy of " + str(op.copy) if op.init == "copy" else f"init: {op.init}")
    return tuple(lines)


def _residual(tree: object) -> tuple[str, ...]:
    """A label line for a residual block (``+ input``) or a composite of them (``residual: attn, mlp``)."""
    kind = getattr(tree, "kind", None)
    if kind == "residual":
        return ("+ input (residual)",)
    parts = [part_id for part_id, part in getattr(tree, "parts", ()) if getattr(part, "kind", None) == "residual"]
    return (f"residual: {', '.join(parts)}",) if parts else ()


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
