"""Diffing two revisions of a spec into a :class:`Plan` of node operations.

Nodes are matched by id. The nodes present in both revisions whose relative
order did not change are a longest common subsequence of the two id
sequences; because ids are unique, that LCS is a longest increasing
subsequence of old positions taken in new order, found by patience sorting in
O(n log n). Every other common node is a *move*. A common node whose expanded
definition changed is an *update* when its parameter and buffer shapes stay
the same (its state carries over) and a *replace* when they change (new
weights, started as its ``init`` says). Only changed nodes are built, on the
meta device, so diffing two 10,000-node chains that differ in a few places
takes milliseconds.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .._gc import gc_paused
from ..read.expr import Budget, ExpressionError, substitute
from ..read.resolve import Leaf, ResolvedNode, Tree, leaf_types, tree_key
from .ops import ABSENT, Change, Op, OpKind
from .plan import Plan, PlanSet
from .rehearse import rehearse

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from ..build.chain import Chain
    from ..read.spec import Spec

StageArg = int | str | tuple[int | str, int | str]


# -- matching ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Matching:
    """How two id sequences correspond: which ids stay in order, move, appear or disappear.

    Example:
        >>> m = match_ids(["a", "b", "c", "d"], ["a", "c", "b", "e"])
        >>> sorted(m.stay), m.moved, m.inserted, m.removed
        (['a', 'b'], ('c',), ('e',), ('d',))
    """

    stay: frozenset[str]
    moved: tuple[str, ...]
    inserted: tuple[str, ...]
    removed: tuple[str, ...]


def match_ids(old: Sequence[str], new: Sequence[str]) -> Matching:
    """Match two sequences of unique ids with the fewest moves, in O(n log n).

    The ids common to both sequences that keep their relative order form a
    longest increasing subsequence of their old positions taken in new order;
    the remaining common ids are moves, and no smaller set of moves can turn
    one order into the other.

    Example:
        >>> match_ids(["a", "b", "c"], ["c", "a", "b"]).moved
        ('c',)
    """
    old_pos = {node_id: i for i, node_id in enumerate(old)}
    new_set = set(new)
    common = [node_id for node_id in new if node_id in old_pos]
    stay = frozenset(longest_increasing(common, old_pos))
    return Matching(stay,
                    tuple(node_id for node_id in common if node_id not in stay),
                    tuple(node_id for node_id in new if node_id not in old_pos),
                    tuple(node_id for node_id in old if node_id not in new_set))


def longest_increasing(items: Sequence[str], rank: dict[str, int]) -> list[str]:
    """A longest subsequence of ``items`` whose ranks strictly increase (patience sorting).

    Example:
        >>> longest_increasing(["x", "y", "z", "w"], {"x": 2, "y": 0, "z": 1, "w": 3})
        ['y', 'z', 'w']
    """
    tails: list[int] = []  # tails[k]: smallest rank ending an increasing run of length k + 1
    tail_at: list[int] = []  # tail_at[k]: index in items of that run's last item
    back = [-1] * len(items)  # back[i]: index of the item before items[i] in its run
    for i, item in enumerate(items):
        r = rank[item]
        k = bisect.bisect_left(tails, r)
        if k == len(tails):
            tails.append(r)
            tail_at.append(i)
        else:
            tails[k] = r
            tail_at[k] = i
        back[i] = tail_at[k - 1] if k else -1
    out: list[str] = []
    i = tail_at[-1] if tail_at else -1
    while i >= 0:
        out.append(items[i])
        i = back[i]
    out.reverse()
    return out


# -- diff -----------------------------------------------------------------------------------------

@gc_paused()
def diff(old: Spec, new: Spec, *, chain: str | None = None, stage: StageArg = "final",
         optimizer: Optimizer | None = None) -> Plan:
    """Compare one chain of two revisions and return the :class:`Plan` from ``old`` to ``new``.

    The plan is a promise: ``diff`` makes the preparation ``plan.apply`` makes that needs no live
    chain (the shape check of the new chain, and every ``init: preserve`` on stand-in modules; see
    ``revise.rehearse``), so what apply would refuse for reasons in the specs, diff refuses first.

    Args:
        old: the revision the live chain was built from.
        new: the revision to move to.
        chain: the chain's name; may be omitted when both specs have exactly one, of the same name.
        stage: the stage to compare both specs at (a number or ``"final"``), or a pair
            ``(old_stage, new_stage)``: ``diff(spec, spec, stage=(k, k + 1))`` is a growth step.
        optimizer: the optimizer the chain trains with, if known: ``optim`` overrides it cannot
            take are refused now rather than at apply.

    Raises:
        ValueError: unknown chain, or a stage out of range.
        SpecError: a changed node cannot be built, the new chain does not shape-check, or an ``init``
            cannot hold (located at its line in the spec).
        TypeError: ``old`` or ``new`` is not a :class:`Spec`.

    Example:
        >>> import chainspec
        >>> spec = chainspec.load("specs/blog.yaml")  # doctest: +SKIP
        >>> print(chainspec.diff(spec, spec, stage=(1, 2)))  # doctest: +SKIP
        chain 'net', stage 1 → 2 (specs/blog.yaml)
        <BLANKLINE>
          + b3 (conv_block) after b2   +73,984 params
        <BLANKLINE>
        Plan: 1 to insert; parameters +73,984.
    """
    plan = _plan(old, new, chain=chain, stage=stage)
    rehearse(plan, optimizer)
    return plan


def _plan(old: Spec, new: Spec, *, chain: str | None, stage: StageArg) -> Plan:
    """The plan, not yet rehearsed."""
    from ..read.spec import Spec

    for which, spec in (("old", old), ("new", new)):
        if not isinstance(spec, Spec):
            raise TypeError(f"diff compares two chainspec.Spec revisions; {which} is {type(spec).__name__}")
    old_stage, new_stage = _stages(stage)
    name = _chain_name(old, new, chain)
    old_chain, new_chain = old.resolved(name), new.resolved(name)
    old_index, new_index = old.stage_index(old_stage), new.stage_index(new_stage)
    old_nodes, new_nodes = old_chain.at(old_index), new_chain.at(new_index)
    old_ids = tuple(n.id for n in old_nodes)
    new_ids = tuple(n.id for n in new_nodes)
    matching = match_ids(old_ids, new_ids)
    facts = _Facts()
    by_id = {n.id: n for n in old_nodes}
    moved = set(matching.moved)
    ops: list[Op] = []
    for node_id in matching.removed:
        node = by_id[node_id]
        ops.append(Op("remove", node_id, node.type, params_before=facts.of(old, node).params, old=node))
    for position, node in enumerate(new_nodes):
        after = new_nodes[position - 1].id if position else None
        before = by_id.get(node.id)
        if before is None:
            mode, source, state = _copy_init(new, node, by_id)
            ops.append(Op("insert", node.id, node.type, position, after, params_after=facts.of(new, node).params,
                          init=mode, copy=source, copy_state=state, new=node))
            continue
        if node.id in moved:
            count = facts.of(new, node).params
            ops.append(Op("move", node.id, node.type, position, after, params_before=count, params_after=count,
                          old=before, new=node))
        change = _compare(old, new, before, node, position, after, facts)
        if change is not None:
            ops.append(change)
    same_input = old_chain.input_shape_at(old_index) == new_chain.input_shape_at(new_index)
    return Plan(chain=name, old_spec=old, new_spec=new, old_stage=old_index, new_stage=new_index, ops=ops,
                old_nodes=old_nodes, new_nodes=new_nodes, same_input=same_input)


def _stages(stage: StageArg) -> tuple[int | str, int | str]:
    if isinstance(stage, tuple):
        if len(stage) != 2:
            raise ValueError(f"stage must be one stage or a pair (old_stage, new_stage), got {stage!r}")
        return stage[0], stage[1]
    return stage, stage


def _chain_name(old: Spec, new: Spec, chain: str | None) -> str:
    if chain is not None:
        old.resolved(chain)  # ValueError with a hint when unknown
        new.resolved(chain)
        return chain
    old_names, new_names = old.chain_names, new.chain_names
    if len(old_names) == 1 and old_names == new_names:
        return old_names[0]
    if len(old_names) == 1 and len(new_names) == 1:
        raise ValueError(f"{old.source} has chain {old_names[0]!r} but {new.source} has {new_names[0]!r}; "
                         "a chain is matched by name: rename it back or pass chain=NAME")
    common = [n for n in old_names if n in new_names]
    raise ValueError(f"the specs have several chains ({', '.join(common) or 'none in common'}); pass chain=NAME")


def _compare(old: Spec, new: Spec, before: ResolvedNode, node: ResolvedNode, position: int, after: str | None,
             facts: _Facts) -> Op | None:
    """The update or replace op for a node present in both revisions, or None if it is unchanged."""
    optim_changes = _dict_changes(before.spec.optim, node.spec.optim, "optim.") + _wiring_changes(before, node)
    if before.tree == node.tree:
        if not optim_changes:
            return None
        count = facts.of(new, node).params
        return Op("update", node.id, node.type, position, after, tuple(optim_changes), count, count,
                  _init_name(node), before, node, rebuild=False)
    old_facts, new_facts = facts.of(old, before), facts.of(new, node)
    changes = _arg_changes(old, new, before, node) + optim_changes
    same_state = old_facts.leaves == new_facts.leaves and old_facts.state == new_facts.state
    kind: OpKind = "update" if same_state else "replace"
    if kind == "replace" and _init_name(node) == "copy":
        from .._errors import SpecError

        raise SpecError([new.problem((*node.path, "init"), "init: copy is for a node that joins the chain, not one "
                                     "whose parameters change", "use fresh, keep or preserve here")])
    return Op(kind, node.id, node.type, position, after, tuple(changes), old_facts.params, new_facts.params,
              _init_name(node), before, node)


def _init_name(node: ResolvedNode) -> str:
    """``fresh``, ``keep``, ``preserve`` or ``copy``."""
    init = node.spec.init
    return init if isinstance(init, str) else "copy"


def _copy_init(new: Spec, node: ResolvedNode, old_nodes: Mapping[str, ResolvedNode]
               ) -> tuple[str, str | None, bool]:
    """An inserted node's init: its mode, and for ``{copy: ID}`` the source id and whether its optimizer
    state comes too.

    Raises:
        SpecError: at ``init.source``, if the source is not in the old chain or is not defined alike.
    """
    init = node.spec.init
    if isinstance(init, str):
        return init, None, False
    from .._errors import SpecError

    source = old_nodes.get(init.source)
    where, label = (*node.path, "init", "copy"), f" ({node.id})"
    if source is None:
        raise SpecError([new._doc.problem(where, f"cannot copy {init.source!r}: it is not in the chain before this "
                                                 "revision", "copy a node the running chain has", label=label)])
    if source.tree != node.tree and tree_key(source.tree) != tree_key(node.tree):
        raise SpecError([new._doc.problem(where, f"cannot copy {init.source!r} ({source.type}): it is not defined "
                                                 f"as {node.id!r} ({node.type}) is",
                                          "copy a node of the same type and arguments", label=label)])
    return "copy", init.source, init.optimizer == "copy"


def _wiring_changes(before: ResolvedNode, node: ResolvedNode) -> list[Change]:
    """Changes of where a node takes its input from (``from``, ``merge``) and of its tied parameters."""
    changes = []
    if before.sources != node.sources:
        changes.append(Change("from", list(before.sources) or ABSENT, list(node.sources) or ABSENT))
    if before.merge != node.merge:
        changes.append(Change("merge", before.merge or ABSENT, node.merge or ABSENT))
    return changes + _dict_changes(dict(before.ties), dict(node.ties), "tie.")


def _arg_changes(old: Spec, new: Spec, before: ResolvedNode, node: ResolvedNode) -> list[Change]:
    changes: list[Change] = []
    if before.type != node.type:
        changes.append(Change("type", before.type, node.type))
    changes += _dict_changes(_node_args(old, before), _node_args(new, node), "")
    if not changes:  # same node-level args: a composite's definition or a default changed
        changes = _dict_changes(_flat_args(before.tree), _flat_args(node.tree), "")
    return changes


def _dict_changes(old: Any, new: Any, prefix: str) -> list[Change]:
    out = []
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key, ABSENT), new.get(key, ABSENT)
        if a is ABSENT or b is ABSENT or not _same_value(a, b):
            out.append(Change(f"{prefix}{key}", a, b))
    return out


def _same_value(a: Any, b: Any) -> bool:
    return bool(a == b) and isinstance(a, bool) == isinstance(b, bool)


def _node_args(spec: Spec, node: ResolvedNode) -> dict[str, Any]:
    """The node's own arguments with defaults and ``${...}`` applied, as the spec author sees them."""
    if isinstance(node.tree, Leaf):
        return dict(node.tree.args)
    model = spec.data
    typedef = model.types.get(node.spec.type)
    values: dict[str, Any] = dict(typedef.params) if typedef is not None else {}
    merged = {**model.defaults.get(node.spec.type, {}), **node.spec.args}
    budget = Budget(spec.limits)  # the work the spec was loaded under: this repeats part of it
    for key, raw in merged.items():
        try:
            values[key] = substitute(raw, dict(model.vars), budget)
        except ExpressionError:  # cannot happen in a validated spec; show the raw text rather than fail
            values[key] = raw
    return values


def _flat_args(tree: Tree, prefix: str = "") -> dict[str, Any]:
    """Every leaf's type and arguments, keyed by the dotted part path (``conv.out_channels``)."""
    if isinstance(tree, Leaf):
        out = {f"{prefix}type": tree.type} if prefix else {}
        out.update({f"{prefix}{k}": v for k, v in tree.args.items()})
        return out
    out = {}
    for part_id, sub in tree.parts:
        out.update(_flat_args(sub, f"{prefix}{part_id}."))
    return out


# -- meta-device facts about a node's module ----------------------------------------------------

@dataclass(frozen=True)
class NodeFacts:
    """What the diff needs to know about a node's module: leaf types, state shapes, parameter count."""

    leaves: tuple[tuple[str, str], ...]
    state: tuple[tuple[str, str, tuple[int, ...]], ...]
    params: int


class _Facts:
    """Builds modules on the meta device, once per distinct definition in a diff."""

    def __init__(self) -> None:
        self._cache: dict[Any, NodeFacts] = {}

    def of(self, spec: Spec, node: ResolvedNode) -> NodeFacts:
        """The facts of ``node``'s module; its parameter count leaves out the parameters it ties to
        another node's (they are that node's, counted there)."""
        key = tree_key(node.tree)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = _measure(spec, node)
        if node.ties:
            borrowed = sum(math.prod(shape) for name, kind, shape in found.state
                           if kind == "param" and name in node.ties)
            found = replace(found, params=found.params - borrowed)
        return found


def _measure(spec: Spec, node: ResolvedNode) -> NodeFacts:
    from .._errors import SpecError
    from ..build.modules import build_module, on_meta

    try:
        with on_meta():
            module = build_module(node.tree)
    except Exception as exc:
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise SpecError([spec.problem(node.path, f"cannot build node {node.id!r}: {text}")]) from None
    state = [(name, "param", tuple(p.shape)) for name, p in module.named_parameters()]
    state += [(name, "buffer", tuple(b.shape)) for name, b in module.named_buffers()]
    params = sum(p.numel() for p in module.parameters())
    return NodeFacts(tuple(leaf_types(node.tree)), tuple(sorted(state)), params)


@gc_paused()
def diff_all(old: Spec, new: Spec, *, chains: Iterable[str] | None = None,
             stage: StageArg | Mapping[str, StageArg] = "final", live: Mapping[str, Chain] | None = None) -> PlanSet:
    """Diff every chain (or ``chains``) of two revisions into one :class:`PlanSet`, ready to apply all at once.

    Args:
        old: the revision the live chains run.
        new: the revision to move to.
        chains: the chains to diff, by name (default: every chain of ``old``).
        stage: as for :func:`diff`, one for all chains or a dict by chain name.
        live: the live chains by name, if known: each plan then says which inserts bring back a
            removed node's trained weights (:meth:`Plan.restoring`).

    Raises:
        ValueError: an unknown chain or a stage out of range.
        SpecError: a changed node cannot be built.
        TypeError: ``old`` or ``new`` is not a :class:`Spec`.

    Example:
        >>> import chainspec
        >>> spec = chainspec.loads("chainspec: 1\\nchains: {g: {input_shape: [2], nodes: [{id: a, type: relu}]}}")
        >>> sorted(chainspec.diff_all(spec, spec))
        ['g']
    """
    names = list(chains) if chains is not None else list(old.chain_names)
    plans = PlanSet()
    for name in names:
        at = stage.get(name, "final") if isinstance(stage, Mapping) else stage
        plan = _plan(old, new, chain=name, stage=at)
        plans[name] = plan = plan.restoring(live[name]) if live is not None and name in live else plan
        rehearse(plan)  # once its restored inserts are known: they come back trained, not as identities
    return plans
