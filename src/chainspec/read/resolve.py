"""Whole-document checks and expansion: from validated models to concrete node trees.

Everything here needs the registry or the whole document: type names, argument
names and types, ``${...}`` substitution, composite expansion and cycles, id
uniqueness and stage ranges. No torch import; the result says exactly what to
build, and :mod:`chainspec.build.compile` builds it.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .._errors import Problem
from .._limits import DEFAULT_LIMITS, MAX_DIM, Limits, limit_hint, limits_or_default, too_many_problems
from ..types.registry import _listed, close_match, get_type, import_allowed, is_import_path, is_registered, list_types
from .document import Document, Path, format_path
from .expr import Budget, ExpressionError, LimitError, substitute
from .format import SOURCE_WORDS
from .records import NodeData, PartData, SpecData, TypeData
from .reserved import id_problem
from .schedule import growth_problems

#: Deepest nesting of composite types (a composite holding a composite ...) by default; the bound
#: in force is ``Limits.max_composite_depth``. Real specs nest two or three; the bound keeps
#: expansion, the built module tree and everything torch does recursively over it far from the
#: recursion limit.
MAX_COMPOSITE_DEPTH = DEFAULT_LIMITS.max_composite_depth


@dataclass(frozen=True)
class Leaf:
    """A registered type with its final keyword arguments.

    Example:
        >>> Leaf("relu", {}, None).leaves
        1
    """

    type: str
    args: Mapping[str, Any]
    factory: Callable[..., Any] = field(compare=False)
    #: Leaf modules it builds: one.
    leaves: ClassVar[int] = 1
    #: Modules it builds, containers included: one.
    modules: ClassVar[int] = 1


@dataclass(frozen=True)
class Group:
    """A composite type: its parts, in order, by id.

    Expansion shares the trees of parts defined alike (a composite of ten parts of one type
    holds the same subtree ten times), so a tree is a DAG whose expanded size can be far larger
    than its memory. ``leaves`` is the number of leaf modules building it makes, and ``modules``
    that number with the composites' own containers, both known without walking it.

    Example:
        >>> relu = Leaf("relu", {}, None)
        >>> block = Group("block", (("a", relu), ("b", relu)))
        >>> net = Group("net", (("x", block), ("y", block)))
        >>> net.leaves, net.modules
        (4, 7)
    """

    type: str
    parts: tuple[tuple[str, Leaf | Group], ...]
    #: ``"sequence"``: the parts run one after the other. ``"residual"``: the parts are ``body``, and
    #: optionally ``shortcut`` and ``after`` (each a sequence), and the output is
    #: ``after(body(x) + shortcut(x))`` (see ``types.layers.Residual``).
    kind: str = "sequence"
    #: The key of the type's definition that lists these parts: ``nodes``, ``shortcut`` or ``after``.
    listed_in: str = "nodes"
    leaves: int = field(init=False, compare=False, repr=False)
    modules: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "leaves", sum(sub.leaves for _, sub in self.parts))
        object.__setattr__(self, "modules", 1 + sum(sub.modules for _, sub in self.parts))

    @property
    def location(self) -> tuple[str, str, str]:
        """Where the parts are listed in the spec: ``("types", type, field)``; a part's index follows."""
        return ("types", self.type, self.listed_in)


Tree = Leaf | Group


@dataclass(frozen=True)
class ResolvedNode:
    """One chain node, fully expanded: what to build and when it is active."""

    id: str
    type: str
    stage: int
    until: int | None
    tree: Tree
    path: Path
    spec: NodeData

    def active(self, stage: int) -> bool:
        """True when the node is part of the chain at ``stage``."""
        return self.stage <= stage and (self.until is None or stage < self.until)

    @property
    def sources(self) -> tuple[str, ...]:
        """The ids the node takes its input from (``prev``, ``input`` or earlier nodes); empty: the node before."""
        return tuple(self.spec.from_)

    @property
    def merge(self) -> str | None:
        """How the outputs of :attr:`sources` are combined: ``add``, ``concat`` or None (one source)."""
        return self.spec.merge

    @property
    def ties(self) -> Mapping[str, str]:
        """This node's tied parameters: its parameter path to ``other_node.parameter.path``."""
        return self.spec.tie


@dataclass(frozen=True)
class ResolvedChain:
    """A chain, resolved: its input shape and all nodes that ever take part in it."""

    name: str
    input_shape: tuple[int, ...]
    nodes: tuple[ResolvedNode, ...]
    #: The input shape at each stage, where ``input_shape`` holds ``${...stage...}`` entries (empty: fixed shape).
    input_shapes: tuple[tuple[int, ...], ...] = ()
    #: The input's dtype by name (``"int64"`` for token ids); None: the parameters' dtype.
    input_dtype: str | None = None

    @property
    def routed(self) -> bool:
        """Whether any node takes its input from somewhere other than the node before it."""
        return any(node.sources for node in self.nodes)

    @property
    def tied(self) -> bool:
        """Whether any node ties a parameter to another node's."""
        return any(node.ties for node in self.nodes)

    def at(self, stage: int) -> list[ResolvedNode]:
        """The nodes active at ``stage``, head to tail."""
        return [n for n in self.nodes if n.active(stage)]

    def input_shape_at(self, stage: int) -> tuple[int, ...]:
        """The per-sample input shape at ``stage`` (``input_shape`` is the one at stage 0)."""
        return self.input_shapes[stage] if self.input_shapes else self.input_shape


def resolve(model: SpecData, doc: Document, allow_imports: Iterable[str] = (), limits: Limits | None = None) -> tuple[
        dict[str, ResolvedChain], int, list[Problem]]:
    """Expand every chain of ``model`` within ``limits``; return the chains, the stage count and all problems."""
    resolver = _Resolver(model, doc, tuple(allow_imports), limits_or_default(limits))
    return resolver.run()


class _InLabel:
    """`` (in chains.net.nodes[0] (a))``: where a composite's part is expanded, rendered only when reported."""

    __slots__ = ("outer", "path")

    def __init__(self, path: Path, outer: Label) -> None:
        self.path, self.outer = path, outer

    def __str__(self) -> str:
        return f" (in {format_path(self.path)}{self.outer})"


Label = str | _InLabel

#: Scopes with at most this many vars are merged into one dict (fast lookups); larger ones are
#: layered over the vars (a ChainMap), so that thousands of vars are not copied at every expansion.
_MERGE_SCOPE = 64


def _layered(top: dict[str, Any], base: dict[str, Any]) -> dict[str, Any] | ChainMap[str, Any]:
    """``top`` over ``base``: a merged dict when ``base`` is small, else a layered view.

    Either way, writing a name writes it in the ``top`` layer only.
    """
    if len(base) <= _MERGE_SCOPE:
        return {**base, **top}
    return ChainMap(top, base)


class _Stop(Exception):
    """A bound on the whole load was reached (and reported): expanding further would only repeat it."""


class _Resolver:
    def __init__(self, model: SpecData, doc: Document, allow_imports: tuple[str, ...], limits: Limits) -> None:
        self.model = model
        self.doc = doc
        self.allow_imports = allow_imports
        self.limits = limits
        self.problems: list[Problem] = []
        self._seen: set[tuple[Any, ...]] = set()
        self.scope: dict[str, Any] = dict(model.vars)
        self.cyclic: set[str] = set()
        #: Composite types nesting deeper than the limit: how deep, and the next type on the deepest path.
        self.too_deep: dict[str, int] = {}
        self.nesting: dict[str, tuple[int, str | None]] = {}
        #: The expression work and value sizes of the whole load.
        self.budget = Budget(limits)
        #: Modules expanded so far, over all chains (every part of every composite, shared or not).
        self.modules = 0
        #: Successful composite expansions by (type, concrete argument values): shared, never redone.
        self.memo: dict[tuple[str, Any], Group] = {}
        self.leaf_memo: dict[tuple[str, Any], Leaf] = {}
        #: Did-you-mean hints already computed, by what was looked up.
        self.hints: dict[tuple[str, ...], str | None] = {}
        self._takes: dict[str, str] = {}
        #: Per-type defaults by canonical type name: (the key as written, the args).
        self.defaults: dict[str, tuple[str, dict[str, Any]]] = {}
        #: (canonical type, arg) of defaults already reported wrong, so that nodes using them do not repeat it.
        self.bad_defaults: set[tuple[str, str]] = set()

    def report(self, path: Path, message: str, hint: str | None = None, label: Label = "") -> None:
        self.report_problem(self.doc.problem(path, message, hint, label=str(label)))

    def report_problem(self, problem: Problem) -> None:
        # Compared by its parts, not its text: formatting thousands of problems only to compare them costs.
        key = (problem.line, problem.col or 1, problem.path, problem.message, problem.hint or None)
        if key not in self._seen:
            self._seen.add(key)
            self.problems.append(problem)
            if len(self.problems) >= self.limits.max_problems:
                self.problems.append(too_many_problems(self.limits, problem))
                raise _Stop

    def run(self) -> tuple[dict[str, ResolvedChain], int, list[Problem]]:
        try:
            self.check_types()
            self.check_defaults()
        except _Stop:  # reported where it was reached; the spec is refused
            return {}, self.stage_count(), self.problems
        stages = self.stage_count()
        try:
            chains = {name: self.chain(name, stages) for name in self.model.chains}
            for problem in growth_problems(self.model, self.doc, stages):
                self.report_problem(problem)
        except _Stop:
            return {}, stages, self.problems
        return chains, stages, self.problems

    # -- bounds ----------------------------------------------------------------------------------------------------
    def expression_failed(self, path: Path, exc: ExpressionError, label: Label = "") -> None:
        """Report a failed expression; stop the load if it spent a bound of the whole load."""
        self.report(path, str(exc), exc.hint, label)
        if isinstance(exc, LimitError) and exc.fatal:
            raise _Stop

    def count(self, modules: int, path: Path, label: Label) -> None:
        """Count ``modules`` more expanded modules (leaves and composites), at ``path``; stop the load past
        ``max_nodes``."""
        self.modules += modules
        if self.modules > self.limits.max_nodes:
            self.report(path, f"the spec expands to more than {self.limits.max_nodes:,} modules (every part of "
                        "every composite, over all chains)", limit_hint("max_nodes"), label)
            raise _Stop

    def hint(self, key: tuple[str, ...], word: str, candidates: Callable[[], Iterable[str]],
             cutoff: float) -> str | None:
        """A did-you-mean for ``word``: each looked up once, and only the first few of a load at all."""
        if key in self.hints:
            return self.hints[key]
        close = close_match(word, candidates(), cutoff) if self.budget.take_hint() else None
        self.hints[key] = close
        return close

    # -- document-level checks -------------------------------------------------
    def check_types(self) -> None:
        for name, typedef in self.model.types.items():
            if is_registered(name):
                self.report(("types", name), f"composite type {name!r} shadows the registered type of that name",
                            "rename the composite")
            self.check_part_ids(typedef.nodes, ("types", name, "nodes"))
            for key in ("shortcut", "after"):
                listed = getattr(typedef, key)
                self.check_part_ids(listed, ("types", name, key))
                if listed and not typedef.residual:
                    self.report(("types", name, key), f"{key!r} is only for residual types",
                                "add 'residual: true', or list these parts under 'nodes'")
            for param in typedef.params:
                if param in self.model.vars:
                    self.report(("types", name, "params", param),
                                f"parameter {param!r} hides the spec var of that name", "rename one of them")
        graph = {n: [p.type for p in (*t.nodes, *t.shortcut, *t.after) if p.type in self.model.types]
                 for n, t in self.model.types.items()}
        for cycle in _cycles(graph):
            self.cyclic.update(cycle)
            self.report(("types", cycle[0]), "cyclic composite types: " + _arrow([*cycle, cycle[0]]),
                        "a composite cannot contain itself, directly or through other composites")
        # Expansion and the built modules nest one level per composite: bound it
        # so that no spec can drive them into Python's recursion limit.
        self.nesting = _nesting(graph, self.cyclic)
        self.too_deep = {n: depth for n, (depth, _) in self.nesting.items()
                         if depth > self.limits.max_composite_depth}

    def check_part_ids(self, parts: list[PartData], path: Path) -> None:
        seen: dict[str, int] = {}
        for i, part in enumerate(parts):
            why = id_problem(part.id)
            if why:
                self.report((*path, i, "id"), why, "pick another id")
            if part.id in seen:
                first = format_path((*path, seen[part.id]))
                self.report((*path, i, "id"), f"duplicate id {part.id!r} (also at {first})", "ids must be unique")
            seen.setdefault(part.id, i)

    def canonical(self, type_name: str) -> str:
        """Registered type names are case-insensitive; composite names and import paths are not."""
        return type_name if type_name in self.model.types or is_import_path(type_name) else type_name.lower()

    def check_defaults(self) -> None:
        for type_name, args in self.model.defaults.items():
            canonical = self.canonical(type_name)
            if canonical in self.defaults:
                self.report(("defaults", type_name), f"defaults for {canonical!r} are given twice (also as "
                            f"{self.defaults[canonical][0]!r})", "merge them into one entry")
                continue
            self.defaults[canonical] = (type_name, args)
            if type_name in self.model.types:
                continue
            try:  # an import path is known if the caller allows it and it imports
                node_type = get_type(type_name, allow_imports=self.allow_imports)
            except (KeyError, ImportError, AttributeError) as exc:
                self.unknown_type(("defaults", type_name), type_name, exc)
                continue
            self.check_default_args(type_name, canonical, node_type, args)

    def check_default_args(self, written: str, canonical: str, node_type: Any, args: Mapping[str, Any]) -> None:
        """Check a type's defaults as far as they stand alone, also when no node uses the type.

        Required arguments may be left to the nodes, and an expression of a composite's
        parameters can only be checked where a node uses it.
        """
        values: dict[str, Any] = {}
        for key, raw in args.items():
            try:
                values[key] = substitute(raw, self.scope, self.budget)
            except ExpressionError as exc:  # reported where a node uses it, unless it spent the load's bound
                if isinstance(exc, LimitError) and exc.fatal:
                    self.expression_failed(("defaults", written, key), exc)
        _, problems = self.validate(node_type, values)
        for key, message, hint in problems:
            if key is not None:  # None: a missing required argument, which the nodes give
                self.report(("defaults", written, key), message, hint)
                self.bad_defaults.add((canonical, key))

    def stage_count(self) -> int:
        last = 0
        for name, chain in self.model.chains.items():
            for i, node in enumerate(chain.nodes):
                path = ("chains", name, "nodes", i)
                if node.until is not None and node.until <= node.stage:
                    self.report((*path, "until"), f"until ({node.until}) must be greater than stage ({node.stage})",
                                "the node is active for stage <= s < until")
                last = max(last, node.stage, (node.until or 1) - 1)
        declared = self.model.stages
        if declared is not None and last >= declared:
            for name, chain in self.model.chains.items():
                for i, node in enumerate(chain.nodes):
                    if node.stage >= declared:
                        self.report(("chains", name, "nodes", i, "stage"),
                                    f"stage {node.stage} is out of range; the spec declares stages: {declared}",
                                    f"use 0..{declared - 1} or raise 'stages'")
        return declared if declared is not None else last + 1

    # -- chains ----------------------------------------------------------------
    def chain(self, name: str, stages: int) -> ResolvedChain:
        spec = self.model.chains[name]
        self.check_part_ids(list(spec.nodes), ("chains", name, "nodes"))
        nodes = []
        for i, node in enumerate(spec.nodes):
            path: Path = ("chains", name, "nodes", i)
            tree = self.expand(node.type, node.args, self.scope, path, f" ({node.id})", ())
            if tree is not None:
                nodes.append(ResolvedNode(node.id, node.type, node.stage, node.until, tree, path, node))
        for lo, hi in _empty_stages(spec.nodes, stages):
            where = f"stage {lo}" if lo == hi else f"stages {lo}..{hi}"
            self.report(("chains", name, "nodes"), f"chain {name!r} has no nodes at {where}",
                        "every stage needs at least one active node")
        self.check_references(name, spec.nodes, stages)
        shapes = self.input_shapes(name, stages)
        return ResolvedChain(name, shapes[0], tuple(nodes), shapes if len(set(shapes)) > 1 else (),
                             spec.input_dtype)

    def check_references(self, name: str, nodes: list[NodeData], stages: int) -> None:
        """Check each node's ``from``, ``merge`` and ``tie``: the nodes they name exist, come before it (for
        ``from``), and are in the chain at every stage the node is."""
        index = {node.id: i for i, node in reversed(list(enumerate(nodes)))}
        for i, node in enumerate(nodes):
            path: Path = ("chains", name, "nodes", i)
            label = f" ({node.id})"
            if node.id in SOURCE_WORDS:
                self.report((*path, "id"), f"{node.id!r} is the word 'from' uses for "
                            f"{'the node before' if node.id == 'prev' else 'the chain input'}", "pick another id")
            sources = node.from_
            if node.merge is not None and len(sources) < 2:
                self.report((*path, "merge"), "merge combines several inputs, but 'from' names "
                            f"{len(sources) or 'no'} source{'s' if len(sources) != 1 else ''}",
                            "list two or more sources in 'from', or remove 'merge'", label)
            if len(sources) > 1 and node.merge is None:
                self.report((*path, "from"), f"takes {len(sources)} inputs but does not say how to merge them",
                            "add 'merge: add' or 'merge: concat'", label)
            seen: set[str] = set()
            for j, source in enumerate(sources):
                where: Path = (*path, "from", j)
                if source in seen:
                    self.report(where, f"{source!r} is named twice", "name each source once", label)
                seen.add(source)
                if source in SOURCE_WORDS:
                    continue
                self.check_reference(name, nodes, index, i, source, where, "takes the output of", label,
                                     earlier=True, stages=stages)
            for param, ref in node.tie.items():
                where = (*path, "tie", param)
                owner = ref.split(".", 1)[0]
                self.check_reference(name, nodes, index, i, owner, where, "ties a parameter to", label,
                                     earlier=False, stages=stages)

    def check_reference(self, name: str, nodes: list[NodeData], index: dict[str, int], i: int, ref: str,
                        where: Path, verb: str, label: str, *, earlier: bool, stages: int) -> None:
        """One reference from node ``i`` to node ``ref``: it exists, (``earlier``) comes before, and is active
        at every stage node ``i`` is."""
        node = nodes[i]
        if ref == node.id:
            self.report(where, f"a node cannot take its own {'output' if earlier else 'parameter'}",
                        "name another node", label)
            return
        j = index.get(ref)
        if j is None:
            close = self.hint(("node", name, ref), ref, lambda: list(index), 0.6)
            hint = f"did you mean {close!r}?" if close else f"the ids of chain {name!r} are listed under its nodes"
            extra = ", or 'prev' or 'input'" if earlier else ""
            self.report(where, f"no node {ref!r} in chain {name!r}{extra}", hint, label)
            return
        if earlier and j > i:
            self.report(where, f"{ref!r} comes after this node in the chain (a forward reference)",
                        "a node can only take the outputs of nodes before it", label)
            return
        source = nodes[j]
        end, source_end = node.until or stages, source.until or stages
        if source.stage > node.stage or source_end < end:
            first = node.stage if source.stage > node.stage else source_end
            self.report(where, f"{verb} {ref!r}, which is not in the chain at stage {first}",
                        f"{ref!r} is in the chain for stages {source.stage}..{source_end - 1}; keep it while "
                        f"{node.id!r} is ({node.stage}..{end - 1})", label)

    def input_shapes(self, name: str, stages: int) -> tuple[tuple[int, ...], ...]:
        """Evaluate the chain's input shape at every stage (entries may be ``${...}`` of ``stage``)."""
        raw = self.model.chains[name].input_shape
        if all(isinstance(d, int) for d in raw):
            return (tuple(int(d) for d in raw),)
        base = [d if isinstance(d, int) else 1 for d in raw]
        entries = [j for j, d in enumerate(raw) if isinstance(d, str)]
        shapes: list[tuple[int, ...]] = []
        bad: set[int] = set()  # report each entry once, at the first stage where it fails
        for stage in range(stages):
            # Each stage's shape is a new tuple of every entry: paid for like the items of a list.
            try:
                self.budget.spend(len(raw))
            except LimitError as exc:
                self.expression_failed(("chains", name, "input_shape"), exc)
            dims = list(base)
            scope = _layered({"stage": stage}, self.scope)
            for j in entries:
                if j in bad:
                    continue
                entry = raw[j]
                try:
                    value = substitute(entry, scope, self.budget)
                except ExpressionError as exc:
                    if isinstance(exc, LimitError) and exc.fatal:
                        self.expression_failed(("chains", name, "input_shape", j), exc)
                    self.report(("chains", name, "input_shape", j), f"{exc} (at stage {stage})", exc.hint)
                    bad.add(j)
                    continue
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIM:
                    what = (f"more than {MAX_DIM}" if isinstance(value, int) and value > MAX_DIM
                            else "not a positive integer")
                    self.report(("chains", name, "input_shape", j),
                                f"{entry!r} gives {_short(value)} at stage {stage}, {what}",
                                "an input dimension must be an integer >= 1 at every stage")
                    bad.add(j)
                    continue
                dims[j] = value
            shapes.append(tuple(dims))
        return tuple(shapes)

    def unknown_type(self, path: Path, type_name: str, reason: Exception | None = None) -> None:
        if is_import_path(type_name):
            if import_allowed(type_name, self.allow_imports):
                why = f" ({reason})" if isinstance(reason, (ImportError, AttributeError)) else ""
                self.report(path, f"cannot import node type {type_name!r}{why}", "check the module and attribute names")
            else:
                self.report(path, f"import path {type_name!r} is not allowed",
                            "the calling code must pass allow_imports=[...] naming its module")
            return
        close = self.hint(("type", type_name), type_name.lower(),
                          lambda: [*(t.name for t in list_types()), *self.model.types], 0.6)
        hint = f"did you mean {close!r}?" if close else "run 'chainspec types' to list the node types"
        self.report(path, f"unknown node type {type_name!r}", hint)

    def validate(self, node_type: Any, values: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[
            str | None, str, str | None]]]:
        """``node_type.validate``, with did-you-mean hints while the load may still compute them."""
        hints = self.budget.hints > 0
        kwargs, problems = node_type.validate(values, hints=hints)
        if hints:
            self.budget.hints = max(0, self.budget.hints - sum(1 for p in problems if p[2] and "did you mean" in p[2]))
        return kwargs, problems

    def expand(self, type_name: str, args: Mapping[str, Any], scope: Mapping[str, Any], path: Path, label: Label,
               stack: tuple[str, ...]) -> Tree | None:
        written, type_defaults = self.defaults.get(self.canonical(type_name), (type_name, {}))
        merged = {**type_defaults, **args}
        values: dict[str, Any] = {}
        failed: set[str] = set()
        for key, raw in merged.items():
            try:
                values[key] = substitute(raw, scope, self.budget)
            except ExpressionError as exc:
                arg_path = (*path, "args", key) if key in args else ("defaults", written, key)
                self.expression_failed(arg_path, exc, label)
                failed.add(key)
        typedef = self.model.types.get(type_name)
        if typedef is not None:
            return self.expand_type(type_name, typedef, values, not failed, path, label, stack)
        return self.expand_leaf(type_name, args, values, failed, written, path, label)

    def expand_type(self, type_name: str, typedef: TypeData, values: dict[str, Any], ok: bool, path: Path,
                    label: Label, stack: tuple[str, ...]) -> Group | None:
        """A composite, expanded once per distinct set of values and shared after that."""
        if type_name in self.cyclic:
            return None
        if type_name in self.too_deep:
            chain = self.deepest(type_name)
            self.report(("types", type_name), f"composite types nest {len(chain)} levels deep ({_arrow(chain)}); "
                        f"the limit is {self.limits.max_composite_depth}",
                        f"flatten the composite types, or {limit_hint('max_composite_depth')}")
            return None
        if not ok:
            return None
        key = _memo_key(type_name, values)
        done = self.memo.get(key) if key is not None else None
        if done is not None:  # defined alike before: the same tree, shared; its modules still count
            self.count(done.modules, path, label)
            return done
        group = self.expand_composite(type_name, typedef, values, path, label, (*stack, type_name))
        if group is not None and key is not None:
            self.memo[key] = group
        return group

    def expand_leaf(self, type_name: str, args: Mapping[str, Any], values: dict[str, Any], failed: set[str],
                    written: str, path: Path, label: Label) -> Leaf | None:
        """A registered type with its checked arguments (checked once per distinct set of values)."""
        key = _memo_key(self.canonical(type_name), values) if not failed else None
        leaf = self.leaf_memo.get(key) if key is not None else None
        if leaf is not None:  # the same type with the same values: checked already
            self.count(1, path, label)
            return leaf
        try:
            node_type = get_type(type_name, allow_imports=self.allow_imports)
        except (KeyError, ImportError, AttributeError) as exc:
            self.unknown_type((*path, "type"), type_name, exc)
            return None
        kwargs, arg_problems = self.validate(node_type, values)
        # An arg whose expression failed is already reported; it is not also missing.
        arg_problems = [p for p in arg_problems if not (p[0] is None and any(
            p[1] == f"missing required argument {k!r}" for k in failed))]
        for key_, message, hint in arg_problems:
            if key_ is not None and key_ not in args and (self.canonical(type_name), key_) in self.bad_defaults:
                continue  # reported once, at the default
            arg_path = (*path, "args", key_) if key_ in args or key_ is None else ("defaults", written, key_)
            if key_ is None:
                arg_path = (*path, "args") if (*path, "args") in self.doc.positions else path
            self.report(arg_path, message, hint, label)
        if arg_problems or failed:
            return None
        self.count(1, path, label)
        leaf = Leaf(node_type.name, kwargs, node_type.factory)
        if key is not None:
            self.leaf_memo[key] = leaf
        return leaf

    def takes(self, name: str, typedef: TypeData) -> str:
        """The parameters of a composite, listed for a hint (once per type: thousands may be reported)."""
        if name not in self._takes:
            self._takes[name] = _listed(list(typedef.params), "no parameters")
        return self._takes[name]

    def deepest(self, type_name: str) -> list[str]:
        """The deepest chain of composites nested from ``type_name``, itself first."""
        chain: list[str] = []
        current: str | None = type_name
        while current is not None:
            chain.append(current)
            current = self.nesting[current][1]
        return chain

    def expand_composite(self, name: str, typedef: TypeData, values: dict[str, Any], path: Path, label: Label,
                         stack: tuple[str, ...]) -> Tree | None:
        params = dict(typedef.params)
        bad = False
        for key in values:
            if key not in params:
                close = self.hint(("param", name, key), key, lambda: list(typedef.params), 0.5)
                hint = f"did you mean {close!r}?" if close else f"{name} takes {self.takes(name, typedef)}"
                self.report((*path, "args", key), f"unknown parameter {key!r} of composite type {name!r}", hint, label)
                bad = True
        params.update(values)
        missing = [k for k, v in params.items() if v is None]
        if missing:
            self.report((*path, "args") if (*path, "args") in self.doc.positions else path,
                        f"missing required parameter{'s' if len(missing) > 1 else ''} "
                        + ", ".join(repr(m) for m in missing) + f" of composite type {name!r}", None, label)
            bad = True
        if bad:
            return None
        inner_label = _InLabel(path, label)  # rendered only if a problem inside is reported
        # A default may be an expression of the spec vars, the given arguments and
        # the parameters declared before it: ``params: {ch: null, out: "${ch * 2}"}``.
        # The scopes are layered over the vars, never copies of them: a spec of thousands
        # of vars does not pay for them at every expansion.
        known = _layered(dict(values), self.scope)
        for key, default in typedef.params.items():
            if key not in values:
                try:
                    params[key] = substitute(default, known, self.budget)
                except ExpressionError as exc:
                    self.expression_failed(("types", name, "params", key), exc, inner_label)
                    return None
            known[key] = params[key]
        scope = _layered(params, self.scope)
        lists = {"nodes": typedef.nodes, "shortcut": typedef.shortcut, "after": typedef.after}
        groups: dict[str, Group] = {}
        for key, listed in lists.items():
            parts: list[tuple[str, Tree]] = []
            for j, part in enumerate(listed):
                sub = self.expand(part.type, part.args, scope, ("types", name, key, j), inner_label, stack)
                if sub is None:
                    return None
                parts.append((part.id, sub))
            if parts:
                groups[key] = Group(name, tuple(parts), listed_in=key)
        self.count(1, path, label)  # the composite's own container; its parts counted as they expanded
        if not typedef.residual:
            return groups["nodes"]
        self.count(len(groups), path, label)  # the body, shortcut and after containers
        named = {"nodes": "body", "shortcut": "shortcut", "after": "after"}
        return Group(name, tuple((named[key], group) for key, group in groups.items()), kind="residual")


def _empty_stages(nodes: Iterable[NodeData], stages: int) -> list[tuple[int, int]]:
    """The runs ``(first, last)`` of stages in ``0..stages-1`` where no node is active, in O(stages + nodes).

    Example:
        >>> from chainspec.read.model import NodeSpec
        >>> _empty_stages([NodeSpec(id="a", type="relu", stage=2, until=4)], 6)
        [(0, 1), (4, 5)]
    """
    delta = [0] * (stages + 1)
    for node in nodes:
        start, end = min(node.stage, stages), min(node.until or stages, stages)
        if start < end:
            delta[start] += 1
            delta[end] -= 1
    runs: list[tuple[int, int]] = []
    active = 0
    for stage in range(stages):
        active += delta[stage]
        if active == 0:
            if runs and runs[-1][1] == stage - 1:
                runs[-1] = (runs[-1][0], stage)
            else:
                runs.append((stage, stage))
    return runs


def _arrow(names: list[str]) -> str:
    """``a -> b -> c``, eliding the middle of long chains so a message stays one readable line.

    Example:
        >>> _arrow([f"t{i}" for i in range(100)])
        't0 -> t1 -> t2 -> t3 -> ... -> t98 -> t99'
    """
    return " -> ".join(names if len(names) <= 8 else [*names[:4], "...", *names[-2:]])


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per back edge of a depth-first search: linear in the size of the graph.

    Iterative, so that thousands of chained composite types cannot exhaust
    Python's recursion limit.

    Example:
        >>> _cycles({"a": ["b"], "b": ["a"], "c": []})
        [['a', 'b']]
    """
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []
    where: dict[str, int] = {}  # position of each node of the current path in ``path``
    for start in graph:
        if start in state:
            continue
        state[start], where[start] = 1, 0
        path.append(start)
        stack = [iter(graph.get(start, []))]
        while stack:
            for nxt in stack[-1]:
                if state.get(nxt) == 1:
                    found.append(path[where[nxt]:])
                elif nxt not in state:
                    state[nxt], where[nxt] = 1, len(path)
                    path.append(nxt)
                    stack.append(iter(graph.get(nxt, [])))
                    break
            else:  # every successor of the node on top is done
                stack.pop()
                done = path.pop()
                state[done] = 2
                del where[done]
    return found


def _nesting(graph: dict[str, list[str]], skip: set[str]) -> dict[str, tuple[int, str | None]]:
    """For each composite type outside ``skip``: how many levels its deepest chain of nested
    composites has (itself included), and the next type on that chain (None at the bottom).

    Iterative post-order over an acyclic graph (the cyclic types are in ``skip``), linear in its
    size: a chain of thousands of types is measured without building thousands of chains.

    Example:
        >>> _nesting({"a": ["b"], "b": ["c"], "c": []}, set())["a"]
        (3, 'b')
    """
    deepest: dict[str, tuple[int, str | None]] = {}
    for start in graph:
        if start in deepest or start in skip:
            continue
        todo = [(start, False)]
        while todo:
            name, ready = todo.pop()
            if name in deepest:
                continue
            children = [c for c in graph.get(name, []) if c not in skip]
            if ready:
                below = max(children, key=lambda c: deepest[c][0], default=None)
                deepest[name] = (1 + (deepest[below][0] if below is not None else 0), below)
            else:
                todo.append((name, True))
                todo.extend((c, False) for c in children if c not in deepest)
    return deepest


def _memo_key(type_name: str, values: Mapping[str, Any]) -> tuple[str, Any] | None:
    """A hashable key equal only for the same composite given the same concrete values (None: not keyable).

    Values compare by type as well (``1``, ``1.0`` and ``True`` are equal in Python but build
    different modules), floats by their text (``0.0`` and ``-0.0``).

    Example:
        >>> _memo_key("blk", {"ch": 1}) == _memo_key("blk", {"ch": 1.0})
        False
    """
    try:
        return type_name, tuple((k, _frozen(v)) for k, v in values.items())
    except TypeError:
        return None


def _frozen(value: Any) -> Any:
    """A hashable, type-exact form of an argument value (already bounded in size and depth)."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_frozen(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, float):
        return ("float", repr(value))
    hash(value)
    return (type(value).__name__, value)


def _short(value: Any) -> str:
    """``repr(value)``, at most a couple of hundred characters."""
    text = repr(value) if not isinstance(value, (list, tuple, dict)) or len(value) <= 50 else \
        f"a {type(value).__name__} of {len(value):,} items"
    return text if len(text) <= 200 else text[:100] + "..."


def tree_key(tree: Tree) -> Any:
    """A hashable key equal for trees that build the same module (args compared by value and repr).

    Example:
        >>> tree_key(Leaf("relu", {}, None)) == tree_key(Leaf("relu", {}, print))
        True
    """
    if isinstance(tree, Leaf):
        return ("leaf", tree.type, tuple(sorted((k, type(v).__name__, repr(v)) for k, v in tree.args.items())))
    return ("group", tree.type, tree.kind, tuple((part_id, tree_key(sub)) for part_id, sub in tree.parts))


def leaf_types(tree: Tree, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted path, type)`` of every leaf of a tree, in order.

    Example:
        >>> list(leaf_types(Group("blk", (("conv", Leaf("conv2d", {}, None)), ("act", Leaf("relu", {}, None))))))
        [('conv', 'conv2d'), ('act', 'relu')]
    """
    if isinstance(tree, Leaf):
        yield prefix, tree.type
        return
    for part_id, sub in tree.parts:
        yield from leaf_types(sub, f"{prefix}.{part_id}" if prefix else part_id)
