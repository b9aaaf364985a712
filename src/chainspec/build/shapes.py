"""The one shape engine: every shape check (build, ``Spec.check``, ``validate --deep``, diff, apply).

Shape inference builds every module under ``torch.device("meta")``: no weight or
activation memory is allocated, so even the full 1024x1024 PG-GAN is checked in
milliseconds, and a mismatch is reported at the spec line of the node that cannot
take its input. A definition made only of built-in types gets its output shape in
closed form (``build.rules``), leaf by leaf; any other, and any case a rule leaves
open, runs a meta tensor through its module. Each distinct (node definition, input
shape) pair is worked out once (:class:`Probes`), and stages share every run of
nodes they have in common (:class:`StageChecker`).

torch's first meta-device run in a process imports ``torch._dynamo`` and sympy (one
to two seconds, once): :func:`_warm_up` pays it, outside any budget, only when a
check first builds a type that is not built in or runs a module, so a process whose
checks are all closed-form never does.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from .._errors import Problem
from .._gc import gc_paused
from ..read.document import Document, format_path
from ..read.resolve import Group, Leaf, ResolvedChain, ResolvedNode, Tree
from ..types.layers import EqualizedConv2d, MinibatchStddev
from . import rules
from .modules import build_module, on_meta
from .summary import ChainSummary, NodeSummary

#: Batch size of the meta tensor used for shape inference. Big enough for
#: batch norm (which needs two samples) and a full minibatch-stddev group.
PROBE_BATCH = 4


#: A shape state of the walk along a chain: the probe tensor's shape (batch first) and dtype.
State = tuple[tuple[int, ...], torch.dtype]

#: Most module runs ``Spec.check`` may make (each leaf of a composite counts), on the meta device or in
#: closed form. Real specs need a few hundred at most: the full PG-GAN's two networks at all nine stages
#: need 139.
MAX_CHECK_RUNS = 2_000
#: Most steps of the stage walk ``Spec.check`` may take (each a few microseconds): a step is a
#: lookup that misses the memo of (run of nodes, input shape) or a run of nodes re-indexed as a
#: stage adds or drops nodes.
MAX_CHECK_STEPS = 200_000
#: Most CPU seconds one ``Spec.check`` may take. A module run costs from 0.03 ms (a pool) to 8 ms (a
#: bilinear upsample: torch's meta kernels are Python code), so the counts above cannot bound the time
#: alone; this does, looked at before each module is built or run and every 64 steps.
MAX_CHECK_SECONDS = 0.75


class CheckTooCostly(BaseException):
    """Checking would take more meta-device runs, walk steps or time than allowed.

    A ``BaseException``, like ``KeyboardInterrupt``: raised from inside a module's run, it must
    not be taken for that module's failure by an ``except Exception``.
    """


class Budget:
    """Bounds on one check's work: module runs, walk steps and CPU seconds (None: unbounded).

    The clock is this thread's CPU time from the budget's creation, so time the process spends
    waiting for a shared CPU is not counted against the spec.

    Example:
        >>> budget = Budget(runs=10, steps=100, seconds=None)
        >>> budget.check_time()
        >>> Budget(seconds=0.0).check_time()
        Traceback (most recent call last):
        ...
        chainspec.build.shapes.CheckTooCostly: more than 0 s of CPU time
    """

    def __init__(self, *, runs: int | None = None, steps: int | None = None, seconds: float | None = None) -> None:
        self.runs, self.steps, self.seconds = runs, steps, seconds
        self.started = time.thread_time()

    def check_time(self, *_: Any) -> None:
        """Raise :class:`CheckTooCostly` once the CPU time is spent (also usable as a forward pre-hook)."""
        if self.seconds is not None and time.thread_time() - self.started >= self.seconds:
            raise CheckTooCostly(f"more than {self.seconds:g} s of CPU time")


_UNBOUNDED = Budget()


class Probes:
    """Shape probes, shared by every chain and stage one check looks at.

    Nodes are grouped by *definition* (what their module is built from: types, arguments,
    factories), and each distinct (definition, input shape) pair is built (on the meta device)
    and run once. A definition made only of built-in types is "run" in closed form
    (``build.rules``), unless ``closed_form`` is False; any other runs a meta tensor through its
    module, as does a case a rule leaves open. A definition made only of elementwise built-ins
    (``relu``, ``dropout``, ...) is built once and never run on a floating-point probe: it gives
    back the shape and dtype it gets. Runs (of either kind) and time are counted against
    ``budget``: past it, :class:`CheckTooCostly` is raised.

    Example:
        >>> from chainspec.read.resolve import Leaf
        >>> from chainspec.types.builtins import linear
        >>> probes = Probes()
        >>> d = probes.define(Leaf("linear", {"in_features": 4, "out_features": 2}, linear))
        >>> probes.run(d, ((4, 4), torch.float32))
        ((4, 2), torch.float32)
        >>> probes.measure(d), probes.built, probes.ran
        ((10, 40, 0), 1, 1)
    """

    def __init__(self, dtype: torch.dtype | None = None, *, budget: Budget | None = None,
                 closed_form: bool = True, trust_factories: bool = False) -> None:
        self.dtype = dtype
        self.budget = budget or _UNBOUNDED
        #: Whether a definition made of built-in types is measured in closed form (``rules.holdings``) rather
        #: than built on the meta device, where nothing else needs the build: for a caller that builds the
        #: real modules next and reports a factory's refusal itself (``build.compile.build_chain``).
        self.trust_factories = trust_factories and closed_form
        #: Whether built-in types get their shapes in closed form, and elementwise definitions give back the
        #: shape they get without a run. False: every (definition, input) pair is run on the meta device (the
        #: reference ``tests/test_shape_rules.py`` holds the closed forms to).
        self.closed_form = closed_form
        #: Modules built on the meta device so far (a composite counts each of its leaves).
        self.built = 0
        #: Modules run on a probe so far, on the meta device (up to a few milliseconds each) or in closed form.
        self.ran = 0
        #: Of those, the runs on the meta device.
        self.ran_on_meta = 0
        self._ids: dict[Any, int] = {}
        self._trees: dict[int, tuple[Tree, int]] = {}  # id(tree) -> (tree, definition index)
        self._defs: list[_Definition] = []
        self._results: dict[tuple[int, State], State | _Failure] = {}

    def define(self, tree: Tree) -> int:
        """The index of ``tree``'s definition (equal for trees that build the same module)."""
        known = self._trees.get(id(tree))
        if known is not None and known[0] is tree:  # the same tree object: nodes defined alike share it
            return known[1]
        index = self._define(tree)
        self._trees[id(tree)] = (tree, index)
        return index

    def _define(self, tree: Tree) -> int:
        key = _definition_key(tree)
        index = self._ids.get(key)
        if index is None:
            index = self._ids[key] = len(self._defs)
            definition = _Definition(tree)
            definition.elementwise = definition.elementwise and self.closed_form
            self._defs.append(definition)
        return index

    def measure(self, index: int) -> tuple[int, int, int]:
        """``(parameters, parameter bytes, buffer bytes)`` of a definition that was run at least once."""
        measured = self._defs[index].measured
        assert measured is not None, "measured on its first run"
        return measured

    def run(self, index: int, state: State) -> State | _Failure:
        """What definition ``index`` makes of a probe of shape and dtype ``state``: a new state or a failure."""
        key = (index, state)
        result = self._results.get(key)
        if result is None:
            definition = self._defs[index]
            if definition.elementwise and state[1].is_floating_point:
                if definition.measured is None and definition.failure is None and not self._held(definition):
                    self._build(definition)  # to measure it and to try its factory; running it tells nothing
                result = definition.failure or state
            else:
                result = definition.failure or self._probe(definition, state)
            self._results[key] = result
        return result

    def elementwise(self, index: int) -> bool:
        """Whether a definition gives back any floating-point probe unchanged (built once, to try its factory)."""
        definition = self._defs[index]
        if definition.elementwise and definition.measured is None and definition.failure is None:
            self._build(definition)
        return definition.elementwise and definition.failure is None

    def _held(self, definition: _Definition) -> bool:
        """Measure a built-in definition in closed form, when factories are trusted; whether it was."""
        if not (self.trust_factories and definition.closed):
            return False
        if definition.measured is None:
            definition.measured = rules.holdings(definition.tree, self.dtype or torch.get_default_dtype())
        return definition.measured is not None

    def _build(self, definition: _Definition) -> nn.Module | None:
        """Build a definition's module on the meta device (None if its factory fails), measuring the first."""
        self.budget.check_time()
        self.built += definition.leaves
        cold, started = not _warm and "sympy" not in sys.modules, time.thread_time()
        try:
            with on_meta():  # random initialisation skipped: only shapes are wanted
                module = build_module(definition.tree)
                if self.dtype is not None:
                    module = module.to(self.dtype)
        except Exception as exc:  # a factory rejecting legal-looking args, e.g. groups not dividing channels
            definition.failure = _Failure("build", exc)
            return None
        finally:
            if cold and "sympy" in sys.modules:  # a factory not built in paid torch's first meta-device use
                self.budget.started += time.thread_time() - started
        if definition.measured is None:
            definition.measured = _measure(module, tensors_only_registered=self.closed_form and definition.closed)
        return module

    def _probe(self, definition: _Definition, state: State) -> State | _Failure:
        runs = self.budget.runs
        if runs is not None and self.ran + definition.leaves > runs:
            raise CheckTooCostly(f"more than {runs:,} module runs on the meta device")
        self.ran += definition.leaves
        module = None if self._held(definition) else self._build(definition)
        if module is None and definition.failure is not None:
            return definition.failure
        if self.closed_form and definition.closed:
            tick = self.budget.check_time if self.budget.seconds is not None else None
            found = rules.infer_state(definition.tree, state[0], state[1], self.dtype or torch.get_default_dtype(),
                                      tick)
            if isinstance(found, rules.Refusal):
                return _Failure("misfit", refusal=found)
            if found is not None:
                return found
        if module is None:  # measured in closed form, but the rules leave this input to the meta device
            module = self._build(definition)
            if module is None:
                assert definition.failure is not None
                return definition.failure
        return self._run_on_meta(definition, module, state)

    def _run_on_meta(self, definition: _Definition, module: nn.Module, state: State) -> State | _Failure:
        """Run a meta tensor of ``state`` through ``module`` (a build of ``definition``): its output state."""
        self._warm()
        self.ran_on_meta += definition.leaves
        for sub in module.modules():
            if isinstance(sub, _RANKED):
                sub.register_forward_pre_hook(_check_rank)
            if isinstance(sub, _LAX_CHANNELS):
                sub.register_forward_pre_hook(_check_channels)
            if isinstance(sub, nn.modules.instancenorm._InstanceNorm):
                sub.register_forward_pre_hook(_check_spread)
            if self.budget.seconds is not None:
                sub.register_forward_pre_hook(self.budget.check_time)
        x = torch.empty(state[0], device="meta", dtype=state[1])
        try:
            y = module(x)
        except Exception as exc:
            return _Failure("shape", exc, module, definition.tree, x)
        if not isinstance(y, torch.Tensor):
            return _Failure("type", TypeError(type(y).__name__))
        if y.dim() == 0 or y.shape[0] != x.shape[0]:  # e.g. flatten from dim 0: samples merged or dropped
            return _Failure("batch", ValueError(str(list(y.shape))), x=x)
        return tuple(y.shape), y.dtype

    def _warm(self) -> None:
        """Pay torch's one-time cost of a first meta-device run (see :func:`_warm_up`) outside the budget."""
        self.budget.started += _warm_up()


class _Definition:
    """One distinct node definition: its tree, whether it is elementwise, and what it measured."""

    __slots__ = ("closed", "elementwise", "failure", "leaves", "measured", "tree")

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        leaves = list(_leaves(tree))
        self.leaves = len(leaves)
        self.elementwise = all(getattr(leaf.factory, "chainspec_elementwise", False) is True for leaf in leaves)
        self.closed = all(rules.covers(leaf) for leaf in leaves)  # all built in: built cheaply, shapes in closed form
        self.measured: tuple[int, int, int] | None = None
        self.failure: _Failure | None = None


class _Failure:
    """Why a definition cannot take a probe, rendered as a problem at whichever node has it."""

    def __init__(self, kind: str, exc: Exception | None = None, module: nn.Module | None = None,
                 tree: Tree | None = None, x: torch.Tensor | None = None, refusal: rules.Refusal | None = None
                 ) -> None:
        self.kind, self.exc, self.module, self.tree, self.x, self.refusal = kind, exc, module, tree, x, refusal
        self._part: Any = ()

    def problem(self, doc: Document, node: ResolvedNode, previous: str | None) -> Problem:
        label = f" ({node.id})"
        if self.kind == "misfit":  # found in closed form: worded and located as a meta-device run's would be
            assert self.refusal is not None
            path, label, source = _location(node, previous, self.refusal.where)
            return doc.problem(path, self.refusal.misfit.message(source), None, label=label)
        assert self.exc is not None
        if self.kind == "build":
            return doc.problem(node.path, f"cannot build: {_first_line(self.exc)}", None, label=label)
        if self.kind == "type":
            return doc.problem(node.path, f"returns {self.exc}, not a tensor", None, label=label)
        assert self.x is not None
        if self.kind == "batch":
            hint = "start_dim counts the batch as dimension 0; start at 1" if node.type == "flatten" else None
            return doc.problem(node.path, f"does not keep the batch dimension: a batch of {self.x.shape[0]} "
                                          f"in, shape {self.exc} out", hint, label=label)
        assert self.module is not None and self.tree is not None
        if self._part == ():  # which part of a composite fails: found once, whichever node has it
            self._part = _failing_part(self.module, self.tree, self.x)
        return _shape_problem(doc, node, self.module, self.x, previous, self.exc, self._part)


def _definition_key(tree: Tree) -> Any:
    """A hashable key equal for trees that build the same module: types, arguments (by value) and factories."""
    if isinstance(tree, Leaf):
        args = tuple(sorted((k, type(v).__name__, repr(v)) for k, v in tree.args.items()))
        return ("leaf", tree.type, id(tree.factory), args)
    return ("group", tree.type, tree.kind, tuple((part_id, _definition_key(sub)) for part_id, sub in tree.parts))


def _leaves(tree: Tree) -> Iterator[Leaf]:
    if isinstance(tree, Leaf):
        yield tree
    else:
        for _, sub in tree.parts:
            yield from _leaves(sub)


def _measure(module: nn.Module, *, tensors_only_registered: bool = False) -> tuple[int, int, int]:
    """``(parameters, parameter bytes, buffer bytes)`` of a (meta) module, each storage counted once.

    Buffer bytes cover registered buffers, persistent or not, and any other tensor the module or
    one of its submodules keeps as an attribute (directly or in a list, tuple or dict), unless
    ``tensors_only_registered`` says there is none and no tensor is registered twice (true of the
    built-in types' modules).

    Example:
        >>> _measure(nn.BatchNorm1d(4, device="meta"))  # weight, bias; running mean and var, a long count
        (8, 32, 40)
    """
    if tensors_only_registered:  # and none shared: one pass over the registered tensors
        params = param_bytes = buffer_bytes = 0
        for sub in module.modules():
            for p in sub._parameters.values():
                if p is not None:
                    params += p.numel()
                    param_bytes += p.numel() * p.element_size()
            for b in sub._buffers.values():
                if b is not None:
                    buffer_bytes += b.numel() * b.element_size()
        return params, param_bytes, buffer_bytes
    seen: set[int] = set()
    params = sum(p.numel() for p in module.parameters())
    param_bytes = sum(_storage_bytes(p, seen) for p in module.parameters())
    buffer_bytes = sum(_storage_bytes(b, seen) for b in module.buffers())
    for sub in module.modules():
        for name, value in vars(sub).items():
            if name not in ("_parameters", "_buffers", "_modules"):
                buffer_bytes += sum(_storage_bytes(t, seen) for t in _tensors_in(value, 3))
    return params, param_bytes, buffer_bytes


def _tensors_in(value: Any, depth: int) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif depth > 0 and isinstance(value, (list, tuple, dict)):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _tensors_in(item, depth - 1)


def _storage_bytes(tensor: torch.Tensor, seen: set[int]) -> int:
    """Bytes of the storage behind ``tensor``, or 0 if it was counted already (a view, a shared tensor)."""
    try:
        storage = tensor.untyped_storage()
        key, size = storage._cdata, storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):  # sparse and other storage-less layouts
        key, size = id(tensor), tensor.numel() * tensor.element_size()
    if key in seen:
        return 0
    seen.add(key)
    return int(size)


def _input_state(chain: ResolvedChain, stage: int, doc: Document, dtype: torch.dtype | None
                 ) -> tuple[State | None, list[Problem]]:
    """The probe's state at the chain input, or the problem if the input shape overflows a tensor."""
    input_shape = chain.input_shape_at(stage)
    if chain.input_dtype is not None:
        dtype = getattr(torch, chain.input_dtype)
    try:
        x = torch.empty((PROBE_BATCH, *input_shape), device="meta", dtype=dtype or torch.get_default_dtype())
    except RuntimeError as exc:  # each dimension is legal, but together they overflow a tensor's size
        where = ("chains", chain.name, "input_shape")
        return None, [doc.problem(where, f"input shape {list(input_shape)} is too large for a tensor: "
                                         f"{_first_line(exc)}", "use smaller dimensions")]
    return (tuple(x.shape), x.dtype), []


def infer(chain: ResolvedChain, stage: int, doc: Document, *, dtype: torch.dtype | None = None,
          nodes: list[ResolvedNode] | None = None, probes: Probes | None = None, trust_factories: bool = False
          ) -> tuple[ChainSummary | None, list[Problem]]:
    """Shape-check a chain at ``stage`` (or ``nodes``) without allocating; return its summary or the problems.

    Each distinct (definition, input shape) pair is built and run once: a chain of a thousand
    identical blocks costs one probe. ``probes``, shared across calls, carries that over.
    ``trust_factories`` (for a caller that builds the real modules next, and reports a factory's
    refusal itself) measures built-in definitions in closed form instead of building them.

    Example:
        >>> import chainspec
        >>> spec = chainspec.loads("chainspec: 1\\nchains: {n: {input_shape: [4], nodes: "
        ...                        "[{id: fc, type: linear, args: {in_features: 4, out_features: 2}}]}}")
        >>> summary, problems = infer(spec.resolved("n"), 0, spec._doc)
        >>> summary.output_shape, summary.params, summary.nbytes, problems
        ((2,), 10, 40, [])
    """
    if probes is None:
        probes = Probes(dtype, trust_factories=trust_factories)
    state, problems = _input_state(chain, stage, doc, dtype)
    if state is None:
        return None, problems
    nodes = nodes if nodes is not None else chain.at(stage)
    kept = {source for node in nodes for source in node.sources}  # outputs a later node takes by id
    by_id = {node.id: node for node in nodes}
    metas: dict[int, nn.Module] = {}  # meta-device builds of tied nodes and their owners, by definition
    outputs: dict[str, State] = {"input": state}
    rows: list[NodeSummary] = []
    previous: str | None = None
    for i, node in enumerate(nodes):
        if not i & 63:
            probes.budget.check_time()
        if node.sources:
            merged = _merged(doc, node, [(s, state if s == "prev" else outputs[s]) for s in node.sources], previous)
            if isinstance(merged, Problem):
                return None, [merged]
            state, previous = merged
        index = probes.define(node.tree)
        result = probes.run(index, state)
        if isinstance(result, _Failure):
            return None, [result.problem(doc, node, previous)]
        params, param_bytes, buffer_bytes = probes.measure(index)
        if node.ties:
            probes.budget.check_time()
            tied = _tied(doc, node, by_id, dtype, metas, probes)
            if isinstance(tied, Problem):
                return None, [tied]
            params, param_bytes = params - tied[0], param_bytes - tied[1]
        rows.append(NodeSummary(node.id, node.type, result[0][1:], params, param_bytes, buffer_bytes))
        state, previous = result, node.id
        if node.id in kept:
            outputs[node.id] = state
    return ChainSummary(chain.name, stage, chain.input_shape_at(stage), tuple(rows)), []


def _merged(doc: Document, node: ResolvedNode, inputs: list[tuple[str, State]], previous: str | None
            ) -> tuple[State, str] | Problem:
    """The state a node with ``from`` gets (its sources' outputs, merged), and what to call its maker."""
    def name(source: str) -> str:
        return ("the chain input" if source == "input" or (source == "prev" and previous is None)
                else f"{previous} (prev)" if source == "prev" else source)

    if len(inputs) == 1:
        source, state = inputs[0]
        return state, name(source) if source != "input" else "the chain input"
    shapes = [(name(source), state[0][1:]) for source, state in inputs]
    listed = " and ".join(f"{who} (shape {list(shape)})" for who, shape in shapes)
    dtypes = {state[1] for _, state in inputs}
    where = (*node.path, "from")
    label = f" ({node.id})"
    if len(dtypes) > 1:
        return doc.problem(where, f"cannot {node.merge} outputs of different dtypes: " + ", ".join(
            f"{who} ({str(state[1]).removeprefix('torch.')})" for who, state in
            ((name(s), st) for s, st in inputs)), None, label=label)
    first = inputs[0][1][0]
    if node.merge == "add":
        if any(state[0] != first for _, state in inputs):
            return doc.problem(where, f"cannot add {listed}: add needs equal shapes",
                               "make the shapes match, or merge with concat", label=label)
        return (first, inputs[0][1][1]), f"the sum of {', '.join(who for who, _ in shapes)}"
    if any(len(state[0]) != len(first) for _, state in inputs) or len(first) < 2 or any(
            state[0][2:] != first[2:] for _, state in inputs):
        return doc.problem(where, f"cannot concatenate {listed} on the channel dimension: every other "
                                  "dimension must match", "resample one of them (a pool, an upsample) to match",
                           label=label)
    channels = sum(state[0][1] for _, state in inputs)
    return ((first[0], channels, *first[2:]), inputs[0][1][1]), \
        f"the concatenation of {', '.join(who for who, _ in shapes)}"


def _tied(doc: Document, node: ResolvedNode, by_id: dict[str, ResolvedNode], dtype: torch.dtype | None,
          built: dict[int, nn.Module], probes: Probes) -> tuple[int, int] | Problem:
    """Check ``node``'s ties on meta-device builds; return the elements and bytes its tied parameters share.

    A tie is checked, not made (:func:`~chainspec.build.ties.planned_tie`), so one build serves every
    node of a definition (kept in ``built``, by ``probes``' definition index): thousands of nodes tied
    to one cost one build of each definition, not one per node."""
    from .ties import TieError, planned_tie

    def module_of(node_id: str) -> nn.Module:
        index = probes.define(by_id[node_id].tree)
        if index not in built:
            with on_meta():
                module = build_module(by_id[node_id].tree)
            built[index] = module.to(dtype) if dtype is not None else module
        return built[index]

    mine = module_of(node.id)
    shared = []
    for path, ref in node.ties.items():
        try:
            shared.append(planned_tie(mine, path, ref, module_of, node.id)[2])
        except TieError as exc:
            return doc.problem((*node.path, "tie", exc.param), exc.message, None, label=f" ({node.id})")
    return sum(p.numel() for p in shared), sum(p.numel() * p.element_size() for p in shared)


class _Fail:
    """A walk that fails at the ``index``-th node of a run of nodes (counted from 0)."""

    __slots__ = ("failure", "index")

    def __init__(self, index: int, failure: _Failure) -> None:
        self.index, self.failure = index, failure


#: Most distinct definitions a run of nodes lists for the fixed-point shortcut of the stage walk.
_FEW = 8


class StageChecker:
    """Shape-checks chains at many stages, sharing the work between stages and between equal runs of nodes.

    The nodes of a chain (all of them, in file order) are the leaves of a binary tree. At each
    stage a tree node stands for the run of *active* nodes below it, named by a *content* id that
    is equal for equal runs (equal definitions in the same order). The walk of a stage computes
    what the root's run makes of the input, remembering each (content, input) it works out:

    - a run met again with the same input, at another stage or elsewhere in the chain, costs a
      lookup: a thousand identical blocks form about ten distinct runs, not a thousand;
    - a run made only of elementwise definitions gives back any floating-point input, and a run
      whose few distinct definitions each give back the shape they get (tried in order of first
      appearance, so each is run on an input it really gets) gives it back, without a walk;
    - between stages only the tree nodes above a node that joins or leaves are re-indexed.

    So checking S stages of N nodes costs about the distinct (definition, input) pairs met plus
    log N steps per stage and per node joining or leaving, instead of S x N. Steps, time and (in
    the probes) module runs are counted against the probes' budget: past it,
    :class:`CheckTooCostly` is raised.

    Example:
        >>> import chainspec
        >>> spec = chainspec.loads("chainspec: 1\\nstages: 100\\nchains: {n: {input_shape: ['${stage + 1}'], "
        ...                        "nodes: [{id: a, type: relu}, {id: b, type: tanh}, {id: c, type: relu}]}}")
        >>> checker = StageChecker(spec._doc, Probes())
        >>> list(checker.check(spec.resolved("n"), range(100)))
        []
        >>> checker.probes.built, checker.probes.ran, checker.steps < 300
        (2, 0, True)
    """

    def __init__(self, doc: Document, probes: Probes) -> None:
        self.doc, self.probes, self.budget = doc, probes, probes.budget
        #: Steps taken so far (see the class docstring).
        self.steps = 0
        self._pairs: dict[tuple[int, int], int] = {}
        self._leaf: dict[int, int] = {}  # definition -> content id of the run of that one node
        self._few: list[tuple[int, ...] | None] = [()]  # content id -> its distinct definitions (None: many)
        self._elementwise: list[bool] = [True]  # content id -> made only of elementwise definitions
        self._memo: dict[tuple[int, State], State | _Fail] = {}

    def _tick(self) -> None:
        self.steps += 1
        if not self.steps & 63:
            self.budget.check_time()
            if self.budget.steps is not None and self.steps > self.budget.steps:
                raise CheckTooCostly(f"more than {self.budget.steps:,} steps")

    def _content_of(self, definition: int) -> int:
        content = self._leaf.get(definition)
        if content is None:
            content = self._leaf[definition] = len(self._few)
            self._few.append((definition,))
            self._elementwise.append(self.probes.elementwise(definition))
        return content

    def _join(self, left: int, right: int) -> int:
        if not left:
            return right
        if not right:
            return left
        content = self._pairs.get((left, right))
        if content is None:
            content = self._pairs[(left, right)] = len(self._few)
            a, b = self._few[left], self._few[right]
            few = None if a is None or b is None else a + tuple(d for d in b if d not in a)
            self._few.append(few if few is not None and len(few) <= _FEW else None)
            self._elementwise.append(self._elementwise[left] and self._elementwise[right])
        return content

    def check(self, chain: ResolvedChain, stages: Iterable[int]) -> Iterator[tuple[int, Problem]]:
        """Check ``chain`` at each of ``stages`` (in increasing order); yield each stage's problem, if any."""
        if not chain.nodes:
            return
        if chain.routed or chain.tied:  # each stage walked in full; still one probe per (definition, input)
            for stage in sorted(set(stages)):
                self.budget.check_time()
                nodes = chain.at(stage)
                self.steps += len(nodes)
                if self.budget.steps is not None and self.steps > self.budget.steps:
                    raise CheckTooCostly(f"more than {self.budget.steps:,} steps")
                if nodes:
                    _, problems = infer(chain, stage, self.doc, nodes=nodes, probes=self.probes)
                    if problems:
                        yield stage, problems[0]
            return
        tree = _ChainTree(self, chain)
        inputs: dict[tuple[int, ...], tuple[State | None, list[Problem]]] = {}
        for stage in sorted(set(stages)):
            self.budget.check_time()
            tree.move_to(stage)
            if not tree.count[1]:
                continue  # a stage without nodes is reported when the spec loads
            shape = chain.input_shape_at(stage)
            if shape not in inputs:
                inputs[shape] = _input_state(chain, stage, self.doc, self.probes.dtype)
            state, found = inputs[shape]
            if state is None:
                yield stage, found[0]
                continue
            result = tree.walk(1, state)
            if isinstance(result, _Fail):
                k = result.index
                yield stage, result.failure.problem(self.doc, tree.nth(k), tree.nth(k - 1).id if k else None)


@gc_paused()  # a collection of the caller's whole heap must not land in the check's CPU budget
def check_stages(chains: Iterable[ResolvedChain], stages: Iterable[int], doc: Document, *,
                 budget: float = 1.0) -> list[Problem]:
    """Shape-check ``chains`` at every one of ``stages``; return the problems, by stage, then chain.

    The work is bounded by :data:`MAX_CHECK_RUNS`, :data:`MAX_CHECK_STEPS` and
    :data:`MAX_CHECK_SECONDS`, each times ``budget`` (``math.inf``: unbounded); past one of
    them the check stops, and one more problem says so. Equal problems found at several
    stages are listed once.

    Example:
        >>> import chainspec
        >>> spec = chainspec.loads("chainspec: 1\\nstages: 3\\nchains: {n: {input_shape: [4], nodes: ["
        ...                        "{id: fc, type: linear, args: {in_features: 4, out_features: 2}},"
        ...                        "{id: bad, type: linear, args: {in_features: 3, out_features: 1}, stage: 2}]}}")
        >>> [p.message for p in check_stages([spec.resolved("n")], range(3), spec._doc)]
        ['expects 3 input features, but fc produces 2 (shape [2])']
    """
    if not budget > 0:
        raise ValueError(f"budget must be a positive number (math.inf for no bound), got {budget!r}")

    def bound(limit: float) -> Any:
        return None if budget == float("inf") else type(limit)(limit * budget)

    stages, chains = list(stages), list(chains)
    limits = Budget(runs=bound(MAX_CHECK_RUNS), steps=bound(MAX_CHECK_STEPS), seconds=bound(MAX_CHECK_SECONDS))
    checker = StageChecker(doc, Probes(budget=limits))
    found: dict[tuple[int, int], Problem] = {}
    refused: list[Problem] = []
    for c, chain in enumerate(chains):
        try:
            for stage, problem in checker.check(chain, stages):
                found[(stage, c)] = problem
        except CheckTooCostly as exc:
            refused.append(doc.problem(
                ("chains", chain.name),
                f"shape-checking {len(set(stages))} stage(s) of {len(chain.nodes):,} nodes takes {exc}; "
                "it was stopped there",
                "check only the stages you need (`chainspec build --stage N`, Spec.check(stages)), or give "
                "Spec.check a larger budget for a spec you trust"))
            break
    problems: list[Problem] = []
    seen: set[str] = set()
    for stage in stages:
        for c in range(len(chains)):
            problem = found.get((stage, c))
            if problem is not None and problem.format() not in seen:
                seen.add(problem.format())
                problems.append(problem)
    return problems + refused


_warm = False


def _warm_up() -> float:
    """Pay what torch's first meta-device kernels cost once a process (importing ``torch._dynamo`` and
    sympy: one to two seconds); return the CPU seconds it took this thread (0.0 once warm).

    Called only before a module is run on the meta device or a type that is not built in is built
    there, so that a process whose checks are all closed-form never pays it; the caller moves its
    budget's start by the seconds returned, so that the cost is never a spec's.

    Example:
        >>> _warm_up() >= 0.0 and _warm_up() == 0.0
        True
    """
    global _warm
    if _warm:
        return 0.0
    started = time.thread_time()
    x = torch.empty((PROBE_BATCH, 2), device="meta")
    torch.relu(torch.nn.functional.linear(x, torch.empty((2, 2), device="meta")))
    torch.empty(2, device="meta").normal_()  # the decompositions of random draws, as in a weight's init
    _warm = True
    return time.thread_time() - started


class _ChainTree:
    """The binary tree over one chain's nodes that :class:`StageChecker` walks, at one stage at a time."""

    def __init__(self, checker: StageChecker, chain: ResolvedChain) -> None:
        self.checker, self.nodes = checker, chain.nodes
        self.size = size = 1 << (len(self.nodes) - 1).bit_length()  # leaves: size .. size + len(nodes) - 1
        self.leaf_content = [checker._content_of(checker.probes.define(node.tree)) for node in self.nodes]
        self.definition = [checker._few[c][0] for c in self.leaf_content]  # type: ignore[index]
        self.content, self.count = [0] * (2 * size), [0] * (2 * size)
        self.stage: int | None = None
        self.joins: dict[int, list[int]] = {}  # stage -> the nodes that join or leave the chain there
        for i, node in enumerate(self.nodes):
            self.joins.setdefault(node.stage, []).append(i)
            if node.until is not None:
                self.joins.setdefault(node.until, []).append(i)

    def _set(self, i: int, active: bool) -> None:
        self.content[self.size + i], self.count[self.size + i] = (self.leaf_content[i], 1) if active else (0, 0)

    def _reindex(self, j: int) -> None:
        self.checker._tick()
        content, count = self.content, self.count
        content[j] = self.checker._join(content[2 * j], content[2 * j + 1])
        count[j] = count[2 * j] + count[2 * j + 1]

    def move_to(self, stage: int) -> None:
        """Make the tree stand for the chain at ``stage`` (later than the last one, if any)."""
        if self.stage is None:
            for i, node in enumerate(self.nodes):
                self._set(i, node.active(stage))
            for j in range(self.size - 1, 0, -1):
                self._reindex(j)
        else:
            dirty: set[int] = set()
            for s in range(self.stage + 1, stage + 1):
                for i in self.joins.get(s, ()):
                    active = self.nodes[i].active(stage)
                    if active != bool(self.count[self.size + i]):
                        self._set(i, active)
                        dirty.add((self.size + i) >> 1)
            while dirty and self.size > 1:  # one level at a time, up to the root
                for j in dirty:
                    self._reindex(j)
                dirty = {j >> 1 for j in dirty if j > 1}
        self.stage = stage

    def walk(self, j: int, state: State) -> State | _Fail:
        """What the run of active nodes under tree node ``j`` makes of ``state``."""
        checker, content, count = self.checker, self.content, self.count
        key = (content[j], state)
        result = checker._memo.get(key)
        if result is not None:
            return result
        checker._tick()
        if j >= self.size:
            out = checker.probes.run(self.definition[j - self.size], state)
            result = _Fail(0, out) if isinstance(out, _Failure) else out
        else:
            few = checker._few[content[j]]
            if checker._elementwise[content[j]] and state[1].is_floating_point:
                result = state  # elementwise all along
            elif few is not None and all(checker.probes.run(d, state) == state for d in few):
                result = state  # every definition in the run gives the input back: so does the run
            elif not count[2 * j + 1]:
                result = self.walk(2 * j, state)
            elif not count[2 * j]:
                result = self.walk(2 * j + 1, state)
            else:
                result = self.walk(2 * j, state)
                if not isinstance(result, _Fail):
                    result = self.walk(2 * j + 1, result)
                    if isinstance(result, _Fail):
                        result = _Fail(result.index + count[2 * j], result.failure)
        checker._memo[key] = result
        return result

    def nth(self, k: int) -> ResolvedNode:
        """The ``k``-th active node (from 0) at the current stage."""
        j = 1
        while j < self.size:
            if self.count[2 * j] > k:
                j = 2 * j
            else:
                k -= self.count[2 * j]
                j = 2 * j + 1
        return self.nodes[j - self.size]


#: Modules that accept a wrong channel count on the meta device (transposed convs,
#: whose CPU and CUDA kernels refuse it) or everywhere with only a warning (instance
#: norms without affine weights or running stats ignore ``num_features``).
_LAX_CHANNELS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.modules.instancenorm._InstanceNorm)


#: Modules with per-channel weights or statistics, with the per-sample shapes (batch left out)
#: they are meant for. Most also take an unbatched input: given a sample of one dimension less,
#: torch reads the probe batch as the channels, so a conv2d with 4 input channels would "fit"
#: samples of shape [3, 8] and then fail, or mix samples, at any other batch size. (Pools hold
#: nothing per channel: on a sample of one dimension less they pool each sample on its own.)
_RANKS: tuple[tuple[tuple[type[nn.Module], ...], tuple[int, ...], str], ...] = (
    ((nn.Conv1d, nn.ConvTranspose1d, nn.InstanceNorm1d), (2,), "[C, L]"),
    ((nn.BatchNorm1d,), (1, 2), "[C] or [C, L]"),
    ((nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d, EqualizedConv2d, MinibatchStddev),
     (3,), "[C, H, W]"),
)
_RANKED = tuple(cls for classes, _, _ in _RANKS for cls in classes)


class _MisfitError(RuntimeError):
    """A module cannot take its sample, for a reason the closed-form rules word too (``misfit``)."""

    def __init__(self, misfit: rules.Misfit) -> None:
        super().__init__(f"expects {misfit.expects}, got {misfit.got}")
        self.misfit = misfit


def _check_rank(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Refuse a sample whose number of dimensions the module is not meant for (see ``_RANKS``)."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor):
        return
    for classes, ranks, form in _RANKS:
        if isinstance(module, classes):
            if x.dim() - 1 not in ranks:
                raise _MisfitError(rules.Misfit.rank(form, tuple(x.shape[1:])))
            return


def _check_spread(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Refuse, in the rules' words, what an instance norm refuses in training: one value per channel."""
    x = args[0] if args else None
    if module.training and isinstance(x, torch.Tensor) and x.dim() >= 3 and x.shape[2:].numel() <= 1:
        raise _MisfitError(rules.Misfit.spread(tuple(x.shape[1:])))


def _check_channels(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Refuse, on the meta device too, an input whose channel count the module cannot take."""
    x = args[0] if args else None
    expected = getattr(module, "in_channels", None) or getattr(module, "num_features", None)
    if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[1] != expected:
        raise RuntimeError(f"expected input to have {expected} channels, but got {x.shape[1]} channels")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


#: Attributes that say how many channels or features a module expects, and which
#: input dimension (per sample, without the batch) holds them.
_EXPECTS: tuple[tuple[str, int, str], ...] = (
    ("in_channels", 0, "input channels"),
    ("num_features", 0, "input channels"),
    ("num_channels", 0, "input channels"),
    ("in_features", -1, "input features"),
)


def _shape_problem(doc: Document, node: ResolvedNode, module: nn.Module, x: torch.Tensor, previous: str | None,
                   exc: Exception, failure: tuple[tuple[tuple[str, ...], int, str | None], nn.Module, torch.Tensor,
                                                  Exception]
                   | None) -> Problem:
    """Say which node (or which part of a composite node) cannot take its input, and what it expected.

    ``failure`` is what :func:`_failing_part` found for the node's module on ``x``.
    """
    path, label, source = _location(node, previous, None if failure is None else failure[0])
    if failure is not None:  # the innermost part that fails, on its own input (the node's, at the node)
        _, module, x, exc = failure
    shape = tuple(x.shape[1:])
    if isinstance(exc, _MisfitError):
        return doc.problem(path, exc.misfit.message(source), None, label=label)
    first = _first_leaf(module)
    for attr, dim, what in _EXPECTS:
        expected = getattr(first, attr, None)
        if isinstance(expected, int) and shape:
            actual = shape[dim] if len(shape) >= abs(dim) + (dim >= 0) else None
            if actual is not None and actual != expected:
                return doc.problem(path, rules.Misfit.count(expected, what, shape, dim).message(source), None,
                                   label=label)
            break
    return doc.problem(path, f"cannot take input of shape {list(shape)} ({source} it): {_first_line(exc)}", None,
                       label=label)


def _location(node: ResolvedNode, previous: str | None, where: tuple[tuple[str, ...], int, str | None] | None
              ) -> tuple[tuple[Any, ...], str, str]:
    """``(path, label, source)`` of a problem at ``node``, or at the part ``where`` of its composite.

    A part inside a composite that cannot take what the part before it makes puts the
    composite's definition at fault: that part is reported, at its line in ``types:``, with
    the chain node it is in. (When the first part fails, the node's input is wrong, and the
    node is reported.) ``source`` names what made the input.
    """
    path, label = node.path, f" ({node.id})"
    if where is not None and where[2] is not None:
        listed, index, previous = where
        path, label = (*listed, index), f" (in {format_path(node.path)} ({node.id}))"
    return path, label, f"{previous} produces" if previous else "the chain input has"


def _failing_part(module: nn.Module, tree: Tree, x: torch.Tensor) -> tuple[
        tuple[tuple[str, ...], int, str | None], nn.Module, torch.Tensor, Exception] | None:
    """Run a composite part by part (on meta tensors) to find the innermost part that fails.

    Returns ``((composite type, part index, id of the part before it), part module,
    the part's input, the error)`` for the innermost part that cannot take what
    the part before it makes (the part before is None when the composite's first
    part fails on the composite's own input), or None when ``tree`` is not a
    composite or no single part fails.
    """
    if not isinstance(tree, Group):
        return None
    if tree.kind == "residual":  # body and shortcut take the block's input; after, their sum
        parts = dict(tree.parts)
        outs = []
        for key in ("body", "shortcut", "after"):
            if key not in parts:
                continue
            part = module._modules[key]
            assert part is not None
            if key == "after" and outs[0].shape != (outs[1] if len(outs) > 1 else x).shape:
                return None  # the body and the shortcut cannot be added: the block's own sum is at fault
            inner_x = x if key != "after" else outs[0] + (outs[1] if len(outs) > 1 else x)
            try:
                outs.append(part(inner_x))
            except Exception as exc:
                inner = _failing_part(part, parts[key], inner_x)
                if inner is not None and inner[0][2] is not None:
                    return inner
                if key != "after":  # the block's own input does not fit: the block is at fault,
                    # worded by the part that refuses it (as the closed-form rules word it)
                    return inner if inner is not None else ((tree.location, 0, None), part, inner_x, exc)
                after = parts[key]
                assert isinstance(after, Group)
                first = part._modules[after.parts[0][0]]
                assert first is not None
                return (after.location, 0, rules.SUM), first, inner_x, exc  # made inside the block
        return None
    previous: str | None = None
    for index, (part_id, sub) in enumerate(tree.parts):
        part = module._modules[part_id]
        assert part is not None
        try:
            y = part(x)
        except Exception as exc:
            inner = _failing_part(part, sub, x)
            if inner is not None and (inner[0][2] is not None or index == 0):
                return inner  # a later part inside this one fails (or its first, on this one's input)
            return (tree.location, index, previous), part, x, exc  # this part cannot take its input
        x, previous = y, part_id
    return None


def _first_leaf(module: nn.Module) -> nn.Module:
    for sub in module.modules():
        if not list(sub.children()):
            return sub
    return module
