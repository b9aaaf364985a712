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
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from .._errors import printable
from ..read.expr import Budget, ExpressionError, substitute
from ..read.resolve import Leaf, ResolvedNode, Tree

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from ..build.chain import Chain
    from ..read.spec import Spec

OpKind = Literal["insert", "remove", "move", "update", "replace"]

#: The marker each op kind prints with, as in ``terraform plan``.
MARKERS: dict[str, str] = {"insert": "+", "remove": "-", "move": ">", "update": "~", "replace": "!"}

#: How a replace starts its new weights, as the plan prints it.
INIT_NOTES = {"fresh": "weights reinitialized", "keep": "overlapping weights kept",
              "preserve": "function preserved"}

StageArg = int | str | tuple[int | str, int | str]


class _Absent:
    """Stands for an argument or part that one side of a change does not have."""

    def __repr__(self) -> str:
        return "(none)"


ABSENT: Any = _Absent()


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


# -- ops and plans ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    """One changed field of a node: an argument, a part's argument, its type or an optimizer override.

    Example:
        >>> Change("negative_slope", 0.2, 0.1).format()
        'negative_slope 0.2 → 0.1'
    """

    field: str
    old: Any
    new: Any

    def format(self) -> str:
        """Render as ``field old → new``."""
        return f"{self.field} {format_value(self.old)} → {format_value(self.new)}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"field", "old", "new"}`` (an absent side is null)."""
        return {"field": self.field, "old": jsonable(self.old), "new": jsonable(self.new)}


@dataclass(frozen=True)
class Op:
    """One step of a :class:`Plan`.

    Attributes:
        kind: ``insert``, ``remove``, ``move``, ``update`` or ``replace``.
        node_id: the node it acts on.
        type: the node's type (in the new revision; in the old one for a remove).
        position: the node's index in the new chain (None for a remove).
        after: the id of the node it follows in the new chain, None at the head (insert and move).
        changes: what changed (update and replace).
        params_before: the node's parameter count before the op.
        params_after: its parameter count after the op.
        init: how a replace or insert starts its new weights (``fresh``, ``keep`` or ``preserve``).
        restored: an insert whose module, trained weights and optimizer state come back from the
            chain's store of removed nodes (see :meth:`Plan.restoring`), rather than new weights.

    Example:
        >>> Op("update", "act", "leaky_relu", 2, "b2", (Change("negative_slope", 0.2, 0.1),)).describe()
        'act (leaky_relu): negative_slope 0.2 → 0.1'
    """

    kind: OpKind
    node_id: str
    type: str
    position: int | None = None
    after: str | None = None
    changes: tuple[Change, ...] = ()
    params_before: int = 0
    params_after: int = 0
    init: str = "fresh"
    #: The node in the old / new revision (what apply builds from); not part of the op's identity.
    old: ResolvedNode | None = field(default=None, repr=False, compare=False)
    new: ResolvedNode | None = field(default=None, repr=False, compare=False)
    #: False for an update that only changes optimizer overrides: the module is not rebuilt.
    rebuild: bool = field(default=True, repr=False, compare=False)
    restored: bool = False

    @property
    def marker(self) -> str:
        """``+``, ``-``, ``>``, ``~`` or ``!``."""
        return MARKERS[self.kind]

    @property
    def param_delta(self) -> int:
        """Parameters added (positive) or dropped (negative) by this op."""
        return self.params_after - self.params_before

    def describe(self) -> str:
        """The text after the marker: the node, its type and what happens to it."""
        head = f"{self.node_id} ({self.type})"
        where = f"after {self.after}" if self.after is not None else "at the head"
        if self.kind == "insert":
            if self.restored:
                return f"{head} {where} (restored)"
            return f"{head} {where}" + (" (identity init)" if self.init == "preserve" else "")
        if self.kind == "remove":
            return head
        if self.kind == "move":
            return f"{head} moved {where}"
        text = f"{head}: " + ", ".join(c.format() for c in self.changes)
        if self.kind == "replace" and (self.params_before or self.params_after):
            text += f" ({INIT_NOTES.get(self.init, self.init)})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the op."""
        return {"kind": self.kind, "marker": self.marker, "node_id": self.node_id, "type": self.type,
                "position": self.position, "after": self.after,
                "changes": [c.to_dict() for c in self.changes], "params_before": self.params_before,
                "params_after": self.params_after, "param_delta": self.param_delta, "init": self.init,
                "restored": self.restored}


class Plan:
    """What it takes to turn a chain built from one revision into the next.

    Build it with :func:`diff`. ``ops`` lists removes first (old order), then
    for each node of the new chain, head to tail, its insert or move and its
    update or replace. ``str(plan)`` renders it like ``terraform plan``;
    ``plan.to_dict()`` gives the same as JSON; ``plan.apply(chain, optimizer)``
    carries it out on a live chain, all or nothing; ``plan.restoring(chain)``
    marks the inserts that bring back a node the chain kept when a revision
    removed it (``(restored)``).

    Example:
        >>> import chainspec
        >>> old = chainspec.loads('''
        ... chainspec: 1
        ... chains:
        ...   net:
        ...     input_shape: [4]
        ...     nodes:
        ...       - {id: fc, type: linear, args: {in_features: 4, out_features: 8}}
        ...       - {id: act, type: leaky_relu, args: {negative_slope: 0.2}}
        ... ''')
        >>> new = chainspec.loads(old.text.replace("0.2", "0.1"))
        >>> plan = chainspec.diff(old, new)
        >>> [(op.kind, op.node_id) for op in plan.ops]
        [('update', 'act')]
        >>> net = old.build()
        >>> plan.apply(net)
        >>> net["act"].module.negative_slope
        0.1
    """

    def __init__(self, *, chain: str, old_spec: Spec, new_spec: Spec, old_stage: int, new_stage: int,
                 ops: list[Op], old_nodes: Sequence[ResolvedNode] = (), new_nodes: Sequence[ResolvedNode] = (),
                 same_input: bool = True) -> None:
        self.chain = chain
        self.old_spec = old_spec
        self.new_spec = new_spec
        self.old_stage = old_stage
        self.new_stage = new_stage
        self.ops = ops
        #: The nodes of the chain before and after, head to tail.
        self.old_nodes = tuple(old_nodes)
        self.new_nodes = tuple(new_nodes)
        self.old_ids = tuple(n.id for n in self.old_nodes)
        self.new_ids = tuple(n.id for n in self.new_nodes)
        #: False when the chain's input shape differs between the revisions.
        self.same_input = same_input

    def __repr__(self) -> str:
        return f"<Plan chain={self.chain!r} stage {self.old_stage}→{self.new_stage}: {self.summary()}>"

    @property
    def is_empty(self) -> bool:
        """True when the plan has no ops: applying it changes nothing in the chain or its optimizer.

        Except that ``apply(..., policy="reset")`` still clears the chain's optimizer state, as at a
        growth step of PG-GAN where this chain does not change (``SpecWatcher`` skips the reset).
        """
        return not self.ops

    @property
    def param_delta(self) -> int:
        """The change in the chain's parameter count."""
        return sum(op.param_delta for op in self.ops if op.kind != "move")

    def counts(self) -> dict[str, int]:
        """How many ops of each kind, in marker order (insert, remove, move, update, replace).

        Example:
            >>> Plan(chain="c", old_spec=None, new_spec=None, old_stage=0, new_stage=0, ops=[]).counts()["insert"]
            0
        """
        counts = dict.fromkeys(MARKERS, 0)
        for op in self.ops:
            counts[op.kind] += 1
        return counts

    def summary(self) -> str:
        """One line: the op counts and the parameter change, or ``no changes``."""
        if self.is_empty:
            return "no changes"
        restored = sum(op.restored for op in self.ops)
        parts = [f"{n} to {kind}" + (f" ({restored} restored)" if kind == "insert" and restored else "")
                 for kind, n in self.counts().items() if n]
        return ", ".join(parts) + f"; parameters {self.param_delta:+,}"

    def __str__(self) -> str:
        stages = (f"stage {self.old_stage}" if self.old_stage == self.new_stage
                  else f"stage {self.old_stage} → {self.new_stage}")
        sources = (self.old_spec.source if self.old_spec.source == self.new_spec.source
                   else f"{self.old_spec.source} → {self.new_spec.source}")
        header = f"chain {self.chain!r}, {stages} ({sources})"
        if self.is_empty:
            return f"{header}\nNo changes: the chain matches the revision."
        rows = [(f"  {op.marker} {op.describe()}", f"{op.param_delta:+,} params" if op.param_delta else "")
                for op in self.ops]
        width = max(len(left) for left, _ in rows)
        lines = [header, ""]
        lines += [f"{left:<{width}}   {right}".rstrip() for left, right in rows]
        lines += ["", f"Plan: {self.summary()}."]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (what ``chainspec diff --format json`` prints per chain)."""
        return {"chain": self.chain,
                "old": {"source": self.old_spec.source, "stage": self.old_stage},
                "new": {"source": self.new_spec.source, "stage": self.new_stage},
                "empty": self.is_empty, "counts": self.counts(), "param_delta": self.param_delta,
                "ops": [op.to_dict() for op in self.ops]}

    def restoring(self, chain: Chain) -> Plan:
        """This plan as it would apply to ``chain``: each insert whose module the chain still keeps is restored.

        A revision that removes a node keeps its module and optimizer state in the chain's store of
        removed nodes (see :class:`chainspec.revise.apply.RemovedNodes`); an insert of the same id with the
        same definition then brings them back instead of new weights. :func:`diff` has no chain, so
        its plan cannot know; this returns a copy whose ops say so (``+ fc2 (linear) after fc
        (restored)``, ``"restored": true`` in :meth:`to_dict`). :meth:`apply` decides the same way,
        and marks the plan it applied.

        Example:
            >>> import chainspec
            >>> text = '''
            ... chainspec: 1
            ... chains:
            ...   net:
            ...     input_shape: [4]
            ...     nodes:
            ...       - {id: fc, type: linear, args: {in_features: 4, out_features: 4}}
            ...       - {id: fc2, type: linear, args: {in_features: 4, out_features: 4}}
            ... '''
            >>> full = chainspec.loads(text)
            >>> short = chainspec.loads(text.split("      - {id: fc2")[0])
            >>> net = full.build()
            >>> weight = net["fc2"].module.weight
            >>> chainspec.diff(full, short).apply(net)  # fc2 leaves the chain; its module is kept
            >>> back = chainspec.diff(short, full)
            >>> [op.restored for op in back.ops], [op.restored for op in back.restoring(net).ops]
            ([False], [True])
            >>> back.apply(net)
            >>> print(back)
            chain 'net', stage 0 (<string>)
            <BLANKLINE>
              + fc2 (linear) after fc (restored)   +20 params
            <BLANKLINE>
            Plan: 1 to insert (1 restored); parameters +20.
            >>> net["fc2"].module.weight is weight
            True
        """
        from .apply import restorable

        return self._marked(set(restorable(self, chain)))

    def _marked(self, restored: set[str]) -> Plan:
        """A copy whose inserts are marked restored exactly when their id is in ``restored``."""
        plan = copy.copy(self)
        plan.ops = [op if op.restored == (op.kind == "insert" and op.node_id in restored)
                    else replace(op, restored=not op.restored) for op in self.ops]
        return plan

    def apply(self, chain: Chain, optimizer: Optimizer | None = None, *, policy: str = "keep") -> None:
        """Carry out the plan on a live chain (and its optimizer), all or nothing.

        Every new module is built and the whole new chain shape-checked before
        anything is spliced; if anything fails (even ``KeyboardInterrupt``),
        the chain, its parameters and the optimizer are exactly as before.

        A removed node's module (and its optimizer state) is kept in the chain's store of removed
        nodes, and an insert of the same id with the same definition brings it back (see
        :meth:`restoring`); once applied, the plan's ops say which inserts were restored.

        Args:
            chain: the chain built from the plan's old revision (same ids, same order).
            optimizer: the optimizer training it, if any; new parameters join it and
                removed ones leave it (see docs/revisions.md for the group rule).
            policy: ``"keep"`` (surviving parameters keep their optimizer state) or
                ``"reset"`` (the chain's optimizer state is cleared, as PG-GAN does at each growth step).

        Raises:
            PlanError: the chain is not the plan's old revision, or a bad policy.
            SpecError: the new revision does not shape-check, or an ``init``/``optim`` setting cannot apply.
            TypeError: ``chain`` is not a :class:`Chain`, or ``optimizer`` not an optimizer.
        """
        from .apply import apply_plans

        apply_plans([(self, chain, optimizer)], policy=policy)


class PlanSet(dict[str, Plan]):
    """The plans of several chains of one revision, by chain name (what a multi-chain watcher returns).

    Example:
        >>> PlanSet().is_empty
        True
    """

    @property
    def is_empty(self) -> bool:
        """True when no chain changes."""
        return all(p.is_empty for p in self.values())

    @property
    def param_delta(self) -> int:
        """The change in parameter count over all chains."""
        return sum(p.param_delta for p in self.values())

    def __str__(self) -> str:
        return "\n\n".join(str(p) for p in self.values())

    def to_dict(self) -> dict[str, Any]:
        """``{"empty": ..., "chains": {name: plan.to_dict()}}``."""
        return {"empty": self.is_empty, "chains": {name: p.to_dict() for name, p in self.items()}}


# -- diff -----------------------------------------------------------------------------------------

def diff(old: Spec, new: Spec, *, chain: str | None = None, stage: StageArg = "final") -> Plan:
    """Compare one chain of two revisions and return the :class:`Plan` from ``old`` to ``new``.

    Args:
        old: the revision the live chain was built from.
        new: the revision to move to.
        chain: the chain's name; may be omitted when both specs have exactly one, of the same name.
        stage: the stage to compare both specs at (a number or ``"final"``), or a pair
            ``(old_stage, new_stage)``: ``diff(spec, spec, stage=(k, k + 1))`` is a growth step.

    Raises:
        ValueError: unknown chain, or a stage out of range.
        SpecError: a changed node cannot be built (located at its line in the spec).
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
            ops.append(Op("insert", node.id, node.type, position, after, params_after=facts.of(new, node).params,
                          init=node.spec.init, new=node))
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
    optim_changes = _dict_changes(before.spec.optim, node.spec.optim, "optim.")
    if before.tree == node.tree:
        if not optim_changes:
            return None
        count = facts.of(new, node).params
        return Op("update", node.id, node.type, position, after, tuple(optim_changes), count, count,
                  node.spec.init, before, node, rebuild=False)
    old_facts, new_facts = facts.of(old, before), facts.of(new, node)
    changes = _arg_changes(old, new, before, node) + optim_changes
    same_state = old_facts.leaves == new_facts.leaves and old_facts.state == new_facts.state
    kind: OpKind = "update" if same_state else "replace"
    return Op(kind, node.id, node.type, position, after, tuple(changes), old_facts.params, new_facts.params,
              node.spec.init, before, node)


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
    model = spec.model
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
        key = tree_key(node.tree)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = _measure(spec, node)
        return found


def tree_key(tree: Tree) -> Any:
    """A hashable key equal for trees that build the same module (args compared by value and repr).

    Example:
        >>> from chainspec.read.resolve import Leaf
        >>> tree_key(Leaf("relu", {}, None)) == tree_key(Leaf("relu", {}, print))
        True
    """
    if isinstance(tree, Leaf):
        return ("leaf", tree.type, tuple(sorted((k, type(v).__name__, repr(v)) for k, v in tree.args.items())))
    return ("group", tree.type, tuple((part_id, tree_key(sub)) for part_id, sub in tree.parts))


def leaf_types(tree: Tree, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted path, type)`` of every leaf of a tree, in order.

    Example:
        >>> from chainspec.read.resolve import Group, Leaf
        >>> list(leaf_types(Group("blk", (("conv", Leaf("conv2d", {}, None)), ("act", Leaf("relu", {}, None))))))
        [('conv', 'conv2d'), ('act', 'relu')]
    """
    if isinstance(tree, Leaf):
        yield prefix, tree.type
        return
    for part_id, sub in tree.parts:
        yield from leaf_types(sub, f"{prefix}.{part_id}" if prefix else part_id)


def _measure(spec: Spec, node: ResolvedNode) -> NodeFacts:
    import torch

    from .._errors import SpecError
    from ..build.modules import build_module

    try:
        with torch.device("meta"):
            module = build_module(node.tree)
    except Exception as exc:
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise SpecError([spec.problem(node.path, f"cannot build node {node.id!r}: {text}")]) from None
    state = [(name, "param", tuple(p.shape)) for name, p in module.named_parameters()]
    state += [(name, "buffer", tuple(b.shape)) for name, b in module.named_buffers()]
    params = sum(p.numel() for p in module.parameters())
    return NodeFacts(tuple(leaf_types(node.tree)), tuple(sorted(state)), params)


# -- rendering helpers ----------------------------------------------------------------------------

def format_value(value: Any) -> str:
    """Render an argument value the way the plan prints it.

    Example:
        >>> format_value((3, 3)), format_value("nearest"), format_value(None), format_value(True)
        ('[3, 3]', 'nearest', 'null', 'true')
    """
    if value is ABSENT:
        return "(none)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{printable(str(k))}: {format_value(v)}" for k, v in value.items()) + "}"
    # A value from the spec may hold escape sequences: a printed plan must not drive the terminal.
    return printable(str(value))


def jsonable(value: Any) -> Any:
    """Turn an argument value into JSON-ready data (tuples become lists, absent becomes null).

    Example:
        >>> jsonable({"k": (1, 2)})
        {'k': [1, 2]}
    """
    if value is ABSENT:
        return None
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
