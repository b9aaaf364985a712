"""Whole-document checks and expansion: from validated models to concrete node trees.

Everything here needs the registry or the whole document: type names, argument
names and types, ``${...}`` substitution, composite expansion and cycles, id
uniqueness and stage ranges. No torch import; the result says exactly what to
build, and :mod:`chainspec._compile` builds it.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import Problem
from ._expr import ExpressionError, substitute
from ._model import MAX_DIM, NodeSpec, PartSpec, SpecModel, TypeDef
from ._registry import get_type, import_allowed, is_import_path, is_registered, suggest
from ._reserved import id_problem
from ._schedule import growth_problems
from ._yaml import Document, Path, format_path

#: Deepest nesting of composite types (a composite holding a composite ...).
#: Real specs nest two or three; the bound keeps expansion, the built module
#: tree and everything torch does recursively over it far from the recursion limit.
MAX_COMPOSITE_DEPTH = 32


@dataclass(frozen=True)
class Leaf:
    """A registered type with its final keyword arguments."""

    type: str
    args: Mapping[str, Any]
    factory: Callable[..., Any] = field(compare=False)


@dataclass(frozen=True)
class Group:
    """A composite type: its parts, in order, by id."""

    type: str
    parts: tuple[tuple[str, Leaf | Group], ...]


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
    spec: NodeSpec

    def active(self, stage: int) -> bool:
        """True when the node is part of the chain at ``stage``."""
        return self.stage <= stage and (self.until is None or stage < self.until)


@dataclass(frozen=True)
class ResolvedChain:
    """A chain, resolved: its input shape and all nodes that ever take part in it."""

    name: str
    input_shape: tuple[int, ...]
    nodes: tuple[ResolvedNode, ...]
    #: The input shape at each stage, where ``input_shape`` holds ``${...stage...}`` entries (empty: fixed shape).
    input_shapes: tuple[tuple[int, ...], ...] = ()

    def at(self, stage: int) -> list[ResolvedNode]:
        """The nodes active at ``stage``, head to tail."""
        return [n for n in self.nodes if n.active(stage)]

    def input_shape_at(self, stage: int) -> tuple[int, ...]:
        """The per-sample input shape at ``stage`` (``input_shape`` is the one at stage 0)."""
        return self.input_shapes[stage] if self.input_shapes else self.input_shape


def resolve(model: SpecModel, doc: Document, allow_imports: Iterable[str] = ()) -> tuple[
        dict[str, ResolvedChain], int, list[Problem]]:
    """Expand every chain of ``model``; return the chains, the stage count and all problems."""
    resolver = _Resolver(model, doc, tuple(allow_imports))
    return resolver.run()


class _Resolver:
    def __init__(self, model: SpecModel, doc: Document, allow_imports: tuple[str, ...]) -> None:
        self.model = model
        self.doc = doc
        self.allow_imports = allow_imports
        self.problems: list[Problem] = []
        self._seen: set[str] = set()
        self.scope: dict[str, Any] = dict(model.vars)
        self.cyclic: set[str] = set()
        self.too_deep: dict[str, list[str]] = {}
        #: Per-type defaults by canonical type name: (the key as written, the args).
        self.defaults: dict[str, tuple[str, dict[str, Any]]] = {}
        #: (canonical type, arg) of defaults already reported wrong, so that nodes using them do not repeat it.
        self.bad_defaults: set[tuple[str, str]] = set()

    def report(self, path: Path, message: str, hint: str | None = None, label: str = "") -> None:
        problem = self.doc.problem(path, message, hint, label=label)
        key = problem.format()
        if key not in self._seen:
            self._seen.add(key)
            self.problems.append(problem)

    def report_problem(self, problem: Problem) -> None:
        if problem.format() not in self._seen:
            self._seen.add(problem.format())
            self.problems.append(problem)

    def run(self) -> tuple[dict[str, ResolvedChain], int, list[Problem]]:
        self.check_types()
        self.check_defaults()
        stages = self.stage_count()
        chains = {name: self.chain(name, stages) for name in self.model.chains}
        for problem in growth_problems(self.model, self.doc, stages):
            self.report_problem(problem)
        return chains, stages, self.problems

    # -- document-level checks -------------------------------------------------
    def check_types(self) -> None:
        for name, typedef in self.model.types.items():
            if is_registered(name):
                self.report(("types", name), f"composite type {name!r} shadows the registered type of that name",
                            "rename the composite")
            self.check_part_ids(typedef.nodes, ("types", name, "nodes"))
            for param in typedef.params:
                if param in self.model.vars:
                    self.report(("types", name, "params", param),
                                f"parameter {param!r} hides the spec var of that name", "rename one of them")
        graph = {n: [p.type for p in t.nodes if p.type in self.model.types] for n, t in self.model.types.items()}
        for cycle in _cycles(graph):
            self.cyclic.update(cycle)
            self.report(("types", cycle[0]), "cyclic composite types: " + _arrow([*cycle, cycle[0]]),
                        "a composite cannot contain itself, directly or through other composites")
        # Expansion and the built modules nest one level per composite: bound it
        # so that no spec can drive them into Python's recursion limit.
        self.too_deep = {n: chain for n, chain in _nesting(graph, self.cyclic).items()
                         if len(chain) > MAX_COMPOSITE_DEPTH}

    def check_part_ids(self, parts: list[PartSpec], path: Path) -> None:
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
            with contextlib.suppress(ExpressionError):
                values[key] = substitute(raw, self.scope)
        _, problems = node_type.validate(values)
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
            tree = self.expand(node.type, node.args, dict(self.scope), path, f" ({node.id})", ())
            if tree is not None:
                nodes.append(ResolvedNode(node.id, node.type, node.stage, node.until, tree, path, node))
        for lo, hi in _empty_stages(spec.nodes, stages):
            where = f"stage {lo}" if lo == hi else f"stages {lo}..{hi}"
            self.report(("chains", name, "nodes"), f"chain {name!r} has no nodes at {where}",
                        "every stage needs at least one active node")
        shapes = self.input_shapes(name, stages)
        return ResolvedChain(name, shapes[0], tuple(nodes), shapes if len(set(shapes)) > 1 else ())

    def input_shapes(self, name: str, stages: int) -> tuple[tuple[int, ...], ...]:
        """Evaluate the chain's input shape at every stage (entries may be ``${...}`` of ``stage``)."""
        raw = self.model.chains[name].input_shape
        if all(isinstance(d, int) for d in raw):
            return (tuple(int(d) for d in raw),)
        shapes: list[tuple[int, ...]] = []
        bad: set[int] = set()  # report each entry once, at the first stage where it fails
        for stage in range(stages):
            dims: list[int] = []
            for j, entry in enumerate(raw):
                value: Any = entry
                if isinstance(entry, str) and j not in bad:
                    try:
                        value = substitute(entry, {**self.scope, "stage": stage})
                    except ExpressionError as exc:
                        self.report(("chains", name, "input_shape", j), f"{exc} (at stage {stage})")
                        bad.add(j)
                    else:
                        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIM:
                            what = (f"more than {MAX_DIM}" if isinstance(value, int) and value > MAX_DIM
                                    else "not a positive integer")
                            self.report(("chains", name, "input_shape", j),
                                        f"{entry!r} gives {value!r} at stage {stage}, {what}",
                                        "an input dimension must be an integer >= 1 at every stage")
                            bad.add(j)
                dims.append(value if j not in bad else 1)
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
        close = suggest(type_name, self.model.types)
        hint = f"did you mean {close!r}?" if close else "run 'chainspec types' to list the node types"
        self.report(path, f"unknown node type {type_name!r}", hint)

    def expand(self, type_name: str, args: Mapping[str, Any], scope: dict[str, Any], path: Path, label: str,
               stack: tuple[str, ...]) -> Tree | None:
        written, type_defaults = self.defaults.get(self.canonical(type_name), (type_name, {}))
        merged = {**type_defaults, **args}
        values: dict[str, Any] = {}
        failed: set[str] = set()
        for key, raw in merged.items():
            try:
                values[key] = substitute(raw, scope)
            except ExpressionError as exc:
                arg_path = (*path, "args", key) if key in args else ("defaults", written, key)
                self.report(arg_path, str(exc), None, label)
                failed.add(key)
        ok = not failed
        typedef = self.model.types.get(type_name)
        if typedef is not None:
            if type_name in self.cyclic:
                return None
            if type_name in self.too_deep:
                chain = self.too_deep[type_name]
                self.report(("types", type_name), f"composite types nest {len(chain)} levels deep ({_arrow(chain)}); "
                            f"the limit is {MAX_COMPOSITE_DEPTH}", "flatten the composite types")
                return None
            return self.expand_composite(type_name, typedef, values, path, label, (*stack, type_name)) if ok else None
        try:
            node_type = get_type(type_name, allow_imports=self.allow_imports)
        except (KeyError, ImportError, AttributeError) as exc:
            self.unknown_type((*path, "type"), type_name, exc)
            return None
        kwargs, arg_problems = node_type.validate(values)
        # An arg whose expression failed is already reported; it is not also missing.
        arg_problems = [p for p in arg_problems if not (p[0] is None and any(
            p[1] == f"missing required argument {k!r}" for k in failed))]
        for key, message, hint in arg_problems:
            if key is not None and key not in args and (self.canonical(type_name), key) in self.bad_defaults:
                continue  # reported once, at the default
            arg_path = (*path, "args", key) if key in args or key is None else ("defaults", written, key)
            if key is None:
                arg_path = (*path, "args") if (*path, "args") in self.doc.positions else path
            self.report(arg_path, message, hint, label)
        if arg_problems or not ok:
            return None
        return Leaf(node_type.name, kwargs, node_type.factory)

    def expand_composite(self, name: str, typedef: TypeDef, values: dict[str, Any], path: Path, label: str,
                         stack: tuple[str, ...]) -> Tree | None:
        params = dict(typedef.params)
        bad = False
        for key in values:
            if key not in params:
                close = difflib.get_close_matches(key, list(params), n=1, cutoff=0.5)
                takes = ", ".join(params) or "no parameters"
                hint = f"did you mean {close[0]!r}?" if close else f"{name} takes {takes}"
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
        inner_label = f" (in {format_path(path)}{label})" if stack else label
        # A default may be an expression of the spec vars, the given arguments and
        # the parameters declared before it: ``params: {ch: null, out: "${ch * 2}"}``.
        known = {**self.scope, **values}
        for key, default in typedef.params.items():
            if key not in values:
                try:
                    params[key] = substitute(default, known)
                except ExpressionError as exc:
                    self.report(("types", name, "params", key), str(exc), None, inner_label)
                    return None
            known[key] = params[key]
        scope = {**self.scope, **params}
        parts: list[tuple[str, Tree]] = []
        for j, part in enumerate(typedef.nodes):
            sub = self.expand(part.type, part.args, scope, ("types", name, "nodes", j), inner_label, stack)
            if sub is None:
                return None
            parts.append((part.id, sub))
        return Group(name, tuple(parts))


def _empty_stages(nodes: Iterable[NodeSpec], stages: int) -> list[tuple[int, int]]:
    """The runs ``(first, last)`` of stages in ``0..stages-1`` where no node is active, in O(stages + nodes).

    Example:
        >>> from chainspec._model import NodeSpec
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


def _nesting(graph: dict[str, list[str]], skip: set[str]) -> dict[str, list[str]]:
    """For each composite type outside ``skip``, its deepest chain of nested composites, itself first.

    Iterative post-order over an acyclic graph (the cyclic types are in ``skip``).

    Example:
        >>> _nesting({"a": ["b"], "b": ["c"], "c": []}, set())["a"]
        ['a', 'b', 'c']
    """
    deepest: dict[str, list[str]] = {}
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
                longest = max((deepest[c] for c in children), key=len, default=[])
                deepest[name] = [name, *longest]
            else:
                todo.append((name, True))
                todo.extend((c, False) for c in children if c not in deepest)
    return deepest
