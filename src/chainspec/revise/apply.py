"""Applying plans to live chains: build and check everything first, then splice, all or nothing.

An apply runs in two phases. *Prepare* touches nothing: it checks that the
chain is the plan's old revision, shape-checks the whole new chain on the
meta device, builds every new module on the chain's device and dtype,
initialises it (``init``), and works out the optimizer changes. *Commit*
splices the chain (each op O(1)), updates the optimizer and records the new
revision on the chain. A snapshot taken between the phases restores the
chain's links and modules, the optimizer's groups and state and torch's RNG
exactly if anything raises in either phase, ``KeyboardInterrupt`` included.

A removed node's module is not dropped: it goes, with its optimizer state, to
the chain's :class:`RemovedNodes` (bounded), and an insert of the same id with
the same definition takes it back instead of building new weights. The store
is attached to its chain by :func:`removed_nodes` (a weak mapping keyed by the
chain) and is rolled back with the rest.
"""

from __future__ import annotations

import copy
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .._errors import PlanError, Problem, SpecError
from .._gc import gc_paused
from ..build.chain import Chain
from ..build.memory import check_fits
from ..build.modules import instantiate, placement_of
from ..build.shapes import infer
from ..build.ties import TieError, planned_tie
from ..read.resolve import tree_key
from ..read.spec import Spec
from . import optim as _optim
from .preserve import preserve_plan
from .transaction import Transaction
from .widen import keep_overlap

if TYPE_CHECKING:
    from .ops import Op, Revising

#: What ``policy`` may be: surviving parameters keep their optimizer state, or lose it.
POLICIES = ("keep", "reset")


#: Called on each new module (id, module) once its weights are set, before the optimizer sees it;
#: returns the module to splice (the distributed lockstep broadcasts and shards it here).
Prepare = Callable[[str, nn.Module], nn.Module]


def apply_plans(items: Sequence[tuple[Revising, Chain, Optimizer | None]], *, policy: str = "keep",
                confirm: Callable[[], None] | None = None, prepare: Prepare | None = None) -> None:
    """Apply several plans (for example a generator's and a discriminator's) as one all-or-nothing step.

    ``confirm``, if given, is called once everything is applied, before the snapshot is dropped; if it
    raises, the apply is rolled back as if it had failed. The distributed helpers use it to commit only
    once every rank has applied its plans. ``prepare``, if given, is called on each new module (not one
    brought back from the store of removed nodes) once its weights are set and before the optimizer
    sees its parameters; FSDP2 (``fully_shard``) swaps the parameters there, and the optimizer state
    an ``init`` carried follows them by name.

    Example:
        >>> import chainspec
        >>> spec = chainspec.load("specs/blog.yaml")  # doctest: +SKIP
        >>> g = spec.build(stage=0)  # doctest: +SKIP
        >>> apply_plans([(chainspec.diff(spec, spec, stage=(0, 1)), g, None)])  # doctest: +SKIP
    """
    if policy not in POLICIES:
        raise PlanError(f"policy must be 'keep' or 'reset', got {policy!r}")
    for _, chain, optimizer in items:
        if not isinstance(chain, Chain):
            raise TypeError(f"a plan applies to a chainspec.Chain, got {type(chain).__name__}")
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    chains = [chain for _, chain, _ in items]
    if len({id(c) for c in chains}) != len(chains):
        raise PlanError("the same chain is given twice; apply one plan per chain")
    change = Transaction()
    # One try from here on: an interrupt between any two lines (even while protecting) is rolled back. Not a
    # `with` block: an interrupt at a line of its __exit__, after the last change, would escape a finished apply.
    try:
        with gc_paused():  # a rollback starts the collector again (the transaction recorded its state)
            jobs = [_Job(plan, chain, optimizer, policy, prepare) for plan, chain, optimizer in items]
            for job in jobs:
                change.protect_chain(job.chain)
            for job in jobs:
                change.protect_optimizer(job.optimizer)
            for job in jobs:
                change.protect(_KeptSnapshot(job).restore)
                change.protect(job.restore_ties)
            for job in jobs:
                job.splice()
            for job in jobs:
                job.update_optimizer()
            for job in jobs:
                job.record()
            if confirm is not None:
                confirm()
    except BaseException:
        change.rollback()
        raise


def override_problems(plan: Revising, optimizer: Optimizer) -> list[Problem]:
    """The ``optim`` overrides of ``plan``'s new or regrouped nodes that ``optimizer`` cannot take, located.

    Apply refuses a plan with any (before changing anything); ``diff`` given the optimizer refuses it
    first (``revise.rehearse``).

    Example:
        >>> import chainspec, torch
        >>> old = chainspec.loads("chainspec: 1\\nchains: {n: {input_shape: [2], nodes: [{id: a, type: relu}]}}")
        >>> new = chainspec.loads("chainspec: 1\\nchains: {n: {input_shape: [2], nodes: [{id: a, type: relu}, "
        ...                       "{id: b, type: linear, args: {in_features: 2, out_features: 2}, "
        ...                       "optim: {lrr: 0.1}}]}}")
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> [p.message.split(";")[0] for p in override_problems(chainspec.diff(old, new), opt)]
        ["SGD has no hyperparameter 'lrr'"]
    """
    regrouping = {op.node_id for op in plan.ops if op.kind == "update"
                  and any(c.field.startswith("optim.") for c in op.changes)}
    fresh = {op.node_id for op in plan.ops if op.kind in ("insert", "replace")}
    problems = []
    for node in plan.new_nodes:
        if (node.id in fresh or node.id in regrouping) and node.spec.optim:
            for key, message, hint in _optim.check_override(optimizer, node.spec.optim):
                problems.append(plan.new_spec.problem((*node.path, "optim", key), message, hint))
    return problems


def _full(tensor: Any) -> Any:
    """The whole of a sharded tensor (a ``DTensor``'s ``full_tensor()``, a collective), or the tensor itself."""
    full = getattr(tensor, "full_tensor", None)
    return full() if callable(full) else tensor


class _Job:
    """One plan being applied to one chain: prepared in ``__init__``, committed by the other methods."""

    def __init__(self, plan: Revising, chain: Chain, optimizer: Optimizer | None, policy: str,
                 prepare: Prepare | None = None) -> None:
        self.plan, self.chain, self.optimizer, self.policy = plan, chain, optimizer, policy
        _check_chain(plan, chain)
        # A chain with no tensors left (every weighted node removed) still has the device and
        # dtype it was built with: new nodes go there, not to torch's defaults.
        device, dtype = placement_of(chain, default=chain.placement or (torch.get_default_device(), None))
        self.device, self.dtype = device, dtype
        if not (plan.is_empty and plan.same_input):
            shape_check(plan, dtype, device)  # and what it builds must fit where it goes
        # Inserts the chain's store of removed nodes can restore, and the plan as it applies here.
        self.restored = restorable(plan, chain)
        self.ops = plan._marked(set(self.restored)).ops
        self.built: dict[str, nn.Module] = {}
        self.changed: dict[str, Op] = {}  # id -> its insert, replace or update op
        for op in plan.ops:
            if op.kind == "replace" and op.init in ("keep", "preserve") and op.new is not None and any(
                    callable(getattr(p, "full_tensor", None)) for p in chain[op.node_id].module.parameters()):
                raise SpecError([plan.new_spec.problem(
                    (*op.new.path, "init"), f"init: {op.init} reads the old weights of node {op.node_id!r} whole, "
                                            "but they are sharded (FSDP2)", "use init: fresh for a sharded node")])
            if op.kind in ("insert", "replace") or (op.kind == "update" and op.rebuild):
                self.changed[op.node_id] = op
                kept = self.restored.get(op.node_id)
                self.built[op.node_id] = kept.module if kept is not None else self._build(op)
        # init: copy: the source's weights now; its optimizer state (cloned now: the source may be leaving)
        # for the new parameters once they are in the optimizer. init: preserve adds the carried moments.
        self.copied_state: list[tuple[Tensor, dict[str, Any]]] = []
        for op in plan.ops:
            if op.kind == "insert" and op.init == "copy" and op.node_id not in self.restored:
                self._copy(op, optimizer)
        self.ties: list[tuple[nn.Module, str, nn.Parameter]] = []  # (holder, name, parameter) set at commit
        self.untie: list[tuple[nn.Module, str, Any]] = []  # what those holders had, for a rollback
        if plan.new_spec.resolved(plan.chain).tied or any(op.old is not None and op.old.ties for op in plan.ops):
            self._tie()
        if any(op.init == "preserve" and op.kind in ("insert", "replace") and op.node_id not in self.restored
               for op in self.changed.values()):
            self._preserve()
        if prepare is not None:
            self._prepare(prepare)
        # What the store keeps of each removed node (read now: the commit takes its state out of the optimizer).
        leaving = [_kept_node(op, chain[op.node_id].module, optimizer) for op in plan.ops if op.kind == "remove"]
        self.leaving = [kept for kept in leaving if kept is not None]
        self.removed: list[Tensor] = []
        self.placements: list[_optim.Placement] = []
        if optimizer is not None:
            self._plan_optimizer(optimizer)

    # -- prepare ---------------------------------------------------------------------------------
    def _build(self, op: Op) -> nn.Module:
        assert op.new is not None
        old = self.chain[op.node_id].module if op.kind != "insert" else None
        device, dtype = (self.device, self.dtype) if old is None else placement_of(
            old, default=(self.device, self.dtype))
        try:
            if op.kind == "update":
                # Its own initialisation is thrown away (_adopt): drawing it must not shift the RNG stream.
                with _rng_untouched(device):
                    module = instantiate(op.new, device=device, dtype=dtype)
            else:
                module = instantiate(op.new, device=device, dtype=dtype)
        except Exception as exc:
            text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise SpecError([self.plan.new_spec.problem(op.new.path, f"cannot build node {op.node_id!r}: "
                                                                     f"{text}")]) from exc
        module.train(old.training if old is not None else self.chain.training)
        if op.kind == "update":
            assert old is not None
            _adopt(module, old, op.node_id)
        elif op.kind == "replace" and op.init == "keep":
            assert old is not None
            keep_overlap(module, old)
        return module

    def _prepare(self, prepare: Prepare) -> None:
        """Hand each new module to ``prepare``; carried optimizer state follows its parameters by name."""
        names = {id(p): (node_id, name) for node_id, module in self.built.items()
                 for name, p in module.named_parameters()}
        for node_id in list(self.built):  # an update's module adopts the old (already prepared) parameters
            if node_id not in self.restored and self.changed[node_id].kind in ("insert", "replace"):
                self.built[node_id] = prepare(node_id, self.built[node_id])
        now = {(node_id, name): p for node_id, module in self.built.items() for name, p in module.named_parameters()}
        self.copied_state = [(now[names[id(param)]] if id(param) in names else param, state)
                             for param, state in self.copied_state]

    def _copy(self, op: Op, optimizer: Optimizer | None) -> None:
        """Start an inserted node as a copy of ``op.copy``: weights and buffers, and optimizer state if asked."""
        assert op.copy is not None
        source = self.chain[op.copy].module
        module = self.built[op.node_id]
        with torch.no_grad():  # a sharded (FSDP2) source gives its full tensors
            module.load_state_dict({key: _full(value) for key, value in source.state_dict().items()})
        if optimizer is None or not op.copy_state:
            return
        theirs = dict(source.named_parameters())
        for name, param in module.named_parameters():
            state = optimizer.state.get(theirs[name])
            if state:
                self.copied_state.append((param, {k: v.clone() if isinstance(v, Tensor) else copy.deepcopy(v)
                                                  for k, v in state.items()}))

    def _tie(self) -> None:
        """Tie the new modules' parameters now, and plan the re-ties of kept modules (made at commit).

        A kept node whose tie changes, or whose owner is rebuilt, gets the owner's new parameter at
        commit; a failed apply puts its old one back.
        """
        chain = self.chain
        kept = {node.id: node for node in self.plan.old_nodes}

        def owner(node_id: str) -> nn.Module:
            return self.built[node_id] if node_id in self.built else chain[node_id].module

        for node in self.plan.new_nodes:
            if not node.ties:
                continue
            module = owner(node.id)
            before = kept.get(node.id)
            if node.id not in self.built and before is not None and dict(before.ties) == dict(node.ties) and \
                    not any(ref.partition(".")[0] in self.built for ref in node.ties.values()):
                continue  # tied as before, to owners kept as they were
            for path, ref in node.ties.items():
                try:
                    holder, name, param = planned_tie(module, path, ref, owner, node.id)
                except TieError as exc:
                    raise SpecError([self.plan.new_spec.problem((*node.path, "tie", path), exc.message)]) from None
                if node.id in self.built:
                    setattr(holder, name, param)  # not in the chain yet: tied now, before the optimizer is planned
                else:
                    self.ties.append((holder, name, param))
                    self.untie.append((holder, name, holder._parameters[name]))

    def retie(self) -> None:
        """Commit: give the kept modules that are re-tied their owners' parameters."""
        for holder, name, param in self.ties:
            setattr(holder, name, param)

    def restore_ties(self) -> None:
        """Rollback: the kept modules' parameters as they were (harmless to run twice)."""
        for holder, name, param in self.untie:
            holder._parameters[name] = param

    def _preserve(self) -> None:
        sweep = preserve_plan(self.plan, lambda node_id: self.built[node_id] if node_id in self.built
                              else self.chain[node_id].module,
                              lambda node_id: self.chain[node_id].module, restored=set(self.restored))
        if self.optimizer is not None:  # moments follow the weights they were made from
            self.copied_state.extend(_optim.carried_state(self.optimizer, sweep.carries))

    def _plan_optimizer(self, optimizer: Optimizer) -> None:
        plan, chain = self.plan, self.chain
        updates = {op.node_id: op for op in plan.ops if op.kind == "update"}
        for op in plan.ops:
            if op.kind in ("remove", "replace"):  # not a parameter it borrows: its owner's state stays
                borrowed = op.old.ties if op.old is not None else {}
                self.removed.extend(p for name, p in chain[op.node_id].module.named_parameters()
                                    if name not in borrowed)
        regrouping = {node_id for node_id, op in updates.items() if any(c.field.startswith("optim.")
                                                                       for c in op.changes)}
        if not self.removed and not regrouping and not any(op.kind in ("insert", "replace") for op in plan.ops):
            return
        problems = override_problems(plan, optimizer)
        if problems:
            raise SpecError(problems)
        nodes: list[_optim.NodeParams] = []
        for node in plan.new_nodes:
            op = self.changed.get(node.id)
            fresh = op is not None and op.kind in ("insert", "replace")
            module = self.built.get(node.id) or chain[node.id].module
            params = [(f"{node.id}.{name}", p) for name, p in module.named_parameters()
                      if name not in node.ties]  # a borrowed parameter is placed with its owner
            old_params = list(chain[node.id].module.parameters()) if fresh and op.kind == "replace" else []
            same = op is None or op.old is None or dict(op.old.spec.optim) == dict(node.spec.optim)
            nodes.append(_optim.NodeParams(node.id, params, fresh, old_params, node.spec.optim, same,
                                           node.id in regrouping))
        self.placements = _optim.place(optimizer, nodes)

    # -- commit ----------------------------------------------------------------------------------
    def splice(self) -> None:
        chain = self.chain
        for op in self.plan.ops:
            if op.kind == "remove":
                chain.remove(op.node_id)
        # New order, head to tail: each node's predecessor is already in place (see docs/revisions.md).
        for op in self.plan.ops:
            if op.kind == "insert":
                module = self.built[op.node_id]
                if op.node_id in self.restored:
                    module.train(chain.training)  # as a new module would be (undone by _KeptSnapshot)
                if op.after is None:
                    chain.prepend(op.node_id, module, node_type=op.type)
                else:
                    chain.insert_after(op.after, op.node_id, module, node_type=op.type)
            elif op.kind == "move":
                chain.move_after(op.node_id, op.after)
            elif op.kind in ("update", "replace"):
                if op.node_id in self.built:
                    chain.replace(op.node_id, self.built[op.node_id], node_type=op.type)
                else:
                    chain[op.node_id].type = op.type
        if any(op.kind in ("insert", "move") for op in self.plan.ops):
            # Register the modules in chain order, as a fresh build would: parameters(), state_dict()
            # and an optimizer made from them then match those of the revised spec built from scratch.
            chain.order_modules()
        for node in self.plan.new_nodes:  # where each node takes its input from, as the new revision says
            if node.sources or node.id in chain.routes:
                chain.route(node.id, node.sources, node.merge)
        self.retie()

    def update_optimizer(self) -> None:
        if self.optimizer is None:
            return
        _optim.carry_out(self.optimizer, self.removed, self.placements)
        for param, state in self.copied_state:  # init: copy or preserve, with the sources' optimizer state
            self.optimizer.state[param] = state
        for kept in self.restored.values():  # restored parameters get their state back, in their own optimizer
            if kept.optimizer is not None and kept.optimizer() is self.optimizer:
                for param, state in kept.state:
                    self.optimizer.state[param] = state
        if self.placements or any(op.kind == "move" for op in self.plan.ops):
            _optim.sort_params(self.optimizer, {id(p): i for i, p in enumerate(self.chain.parameters())})
        if self.policy == "reset":
            _optim.clear_state(self.optimizer, self.chain.parameters())

    def record(self) -> None:
        self.chain.record_revision(self.plan.new_spec, self.plan.new_stage, (self.device, self.dtype))
        if self.restored or self.leaving:
            store = removed_nodes(self.chain)
            for kept in self.restored.values():
                store._take(kept)
            for kept in self.leaving:
                store._keep(kept)
        self.plan.ops = self.ops  # the plan now says which inserts were restored


def shape_check(plan: Revising, dtype: torch.dtype | None, device: torch.device | str | None = None, *,
                remember: bool = False) -> None:
    """Shape-check the whole new chain on the meta device, as ``Spec.summary`` does; refuse what cannot fit.

    Each distinct (definition, input shape) pair is built and run once (see
    ``build.shapes.Probes``), so a chain of many identical blocks costs one probe per
    kind of block plus a lookup per node, and a failure is reported at its node's
    line in the spec. With ``device``, the modules the plan builds (inserted,
    replaced or rebuilt nodes) must fit in its free memory, their parameters and
    buffers counted as the meta-device build measured them. With ``remember`` (diff's
    rehearsal), the summary stays on the plan, and a later check of the same chain
    in the same dtype (``apply``'s) reuses it.

    Raises:
        SpecError: a node cannot take the output of the node before it, or the new modules cannot fit.

    Example:
        >>> import chainspec
        >>> old = chainspec.load("specs/blog.yaml")  # doctest: +SKIP
        >>> shape_check(chainspec.diff(old, old, stage=(0, 1)), None, "cpu")  # doctest: +SKIP
    """
    spec = plan.new_spec
    resolved = spec.resolved(plan.chain)
    dtype = dtype or torch.get_default_dtype()
    # diff's rehearsal checks with ``remember``, and apply reuses that summary rather than walk the chain again.
    key = (dtype, id(spec), plan.new_stage, plan.new_ids)
    known = plan._shapes
    if known is not None and known[0] == key:
        summary = known[1]
    else:
        summary, problems = infer(resolved, plan.new_stage, spec._doc, dtype=dtype, nodes=list(plan.new_nodes))
        if problems or summary is None:
            raise SpecError(problems)
        if remember:
            plan._shapes = (key, summary)
    if device is not None:
        built = {op.node_id for op in plan.ops if op.kind in ("insert", "replace") or (op.kind == "update"
                                                                                        and op.rebuild)}
        rows = tuple(row for row in summary.nodes if row.id in built)
        check_fits(replace(summary, nodes=rows), resolved, spec._doc, device=device, dtype=dtype)


def _factories(tree: Any) -> tuple[int, ...]:
    """The identities of a tree's factories: a re-registered type must not reuse a cached probe."""
    if hasattr(tree, "factory"):
        return (id(tree.factory),)
    return tuple(i for _, sub in tree.parts for i in _factories(sub))


def _check_chain(plan: Revising, chain: Chain) -> None:
    ids = tuple(node.id for node in chain)
    if ids == plan.old_ids:
        detail = _revision_difference(plan, chain)
        if detail is None:
            return
    else:
        detail = next((f"node {i} is {have!r}, the plan expects {want!r}"
                       for i, (have, want) in enumerate(zip(ids, plan.old_ids, strict=False)) if have != want),
                      f"it has {len(ids)} nodes, the plan expects {len(plan.old_ids)}")
    raise PlanError(f"chain {chain.name!r} is not the revision this plan starts from ({plan.old_spec.source}, "
                    f"chain {plan.chain!r}, stage {plan.old_stage}): {detail}; diff against the revision "
                    "the chain runs now (chain.spec, chain.stage)")


def _revision_difference(plan: Revising, chain: Chain) -> str | None:
    """How the revision a chain records (``chain.spec`` at ``chain.stage``) differs from the plan's old one.

    Same ids are not enough: a replace keeps them, so a plan applied twice would otherwise rebuild
    nodes that already have their new shapes. A chain that records no revision (fresh from
    ``Spec.build``) is taken at its word. None when they agree.
    """
    recorded, stage = chain.spec, chain.stage
    if recorded is None or (recorded is plan.old_spec and stage == plan.old_stage):
        return None


    if not isinstance(recorded, Spec) or not isinstance(stage, int):
        return None
    try:
        nodes = recorded.resolved(plan.chain).at(stage)
    except ValueError:
        return f"it runs {recorded.source}, which has no chain {plan.chain!r}"
    for have, want in zip(nodes, plan.old_nodes, strict=False):
        if have.id != want.id or (have.tree != want.tree and tree_key(have.tree) != tree_key(want.tree)):
            return (f"node {want.id!r} is as in {recorded.source} (stage {stage}), not as in "
                    f"{plan.old_spec.source} (stage {plan.old_stage})")
    return None


# -- the store of removed nodes ----------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class KeptNode:
    """A node a revision removed from a chain: its module, kept with its optimizer state.

    Attributes:
        node_id: the node's id.
        type: its type in the spec.
        key: its definition, as :func:`definition_key` gives it: only an insert of the same id with
            an equal key restores it.
        module: the very module it had (its Parameter objects, with their trained values).
        state: ``(parameter, optimizer state)`` for each of its parameters the optimizer had state for.
        optimizer: a weak reference to the optimizer the state comes from (None without one); the
            state only goes back into that optimizer.
        nbytes: what it holds: its parameters, buffers and optimizer state, in bytes.

    Example:
        >>> kept = KeptNode("fc", "linear", None, nn.Linear(2, 2), (), None, 24)
        >>> kept.node_id, kept.nbytes
        ('fc', 24)
    """

    node_id: str
    type: str
    key: Any
    module: nn.Module
    state: tuple[tuple[Tensor, Any], ...]
    optimizer: weakref.ref[Optimizer] | None
    nbytes: int


class RemovedNodes:
    """The modules of the nodes that revisions removed from one chain, kept so that a later revision can restore them.

    Every ``plan.apply`` (and so every :class:`chainspec.SpecWatcher` revision and growth step) puts
    each node it removes here, with its optimizer state; an insert of the same id with the same
    definition (the same resolved tree) takes it back: the very same module and Parameter objects,
    bit for bit, and their optimizer state (reset with ``policy="reset"``, as for any node). A
    failed apply leaves the store exactly as it was. Get a chain's store with :func:`removed_nodes`.

    It is bounded, per chain: at most :attr:`max_nodes` modules and :attr:`max_bytes` bytes
    (parameters, buffers and optimizer state), the oldest removal going first; a node larger than
    ``max_bytes`` on its own is not kept. Set either on one store, or on the class for every chain;
    ``max_nodes = 0`` keeps nothing. The kept tensors stay where they were (a GPU's memory for a
    model on a GPU). The store lives in memory only: a checkpoint does not save it, and a copy of
    the chain does not share it. Replaced nodes are not kept: their new weights start as their
    ``init`` says, from the old ones.

    Attributes:
        max_nodes: most modules kept (default 16).
        max_bytes: most bytes kept (default 256 MiB).

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
        >>> chainspec.diff(full, short).apply(net)
        >>> kept = removed_nodes(net)
        >>> kept.ids(), kept.nbytes
        (['fc2'], 80)
        >>> kept.max_nodes = 4  # for this chain only
        >>> chainspec.diff(short, full).apply(net)  # fc2 comes back, and leaves the store
        >>> len(kept)
        0
    """

    max_nodes: int = 16
    max_bytes: int = 256 * 2**20

    def __init__(self) -> None:
        self._kept: OrderedDict[tuple[str, Any], KeptNode] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def __iter__(self) -> Iterator[KeptNode]:
        """The kept nodes, oldest removal first."""
        return iter(list(self._kept.values()))

    def __repr__(self) -> str:
        return (f"<RemovedNodes {self.ids()}: {self.nbytes:,} bytes (at most {self.max_nodes} nodes, "
                f"{self.max_bytes:,} bytes)>")

    @property
    def nbytes(self) -> int:
        """Bytes held by the kept nodes (parameters, buffers and optimizer state)."""
        return sum(kept.nbytes for kept in self._kept.values())

    def ids(self) -> list[str]:
        """The ids of the kept nodes, oldest removal first (an id kept with two definitions appears twice)."""
        return [kept.node_id for kept in self._kept.values()]

    def find(self, node_id: str, key: Any) -> KeptNode | None:
        """The node kept for ``node_id`` with definition ``key`` (see :func:`definition_key`), or None."""
        return self._kept.get((node_id, key))

    def clear(self) -> None:
        """Forget every kept node (their memory is freed once nothing else holds them)."""
        self._kept.clear()

    def _keep(self, kept: KeptNode) -> None:
        self._kept.pop((kept.node_id, kept.key), None)
        self._kept[(kept.node_id, kept.key)] = kept
        limit_nodes, limit_bytes = max(0, int(self.max_nodes)), max(0, int(self.max_bytes))
        total = self.nbytes
        while self._kept and (len(self._kept) > limit_nodes or total > limit_bytes):
            _, oldest = self._kept.popitem(last=False)
            total -= oldest.nbytes

    def _take(self, kept: KeptNode) -> None:
        self._kept.pop((kept.node_id, kept.key), None)


#: Each chain's store of removed nodes, by chain (weakly: the store goes when its chain goes).
_STORES: weakref.WeakKeyDictionary[Chain, RemovedNodes] = weakref.WeakKeyDictionary()


def removed_nodes(chain: Chain) -> RemovedNodes:
    """The store of nodes that revisions removed from ``chain`` (created empty on first use).

    Example:
        >>> from chainspec.build.chain import Chain
        >>> net = Chain([("fc", nn.Linear(2, 2))])
        >>> removed_nodes(net) is removed_nodes(net), len(removed_nodes(net))
        (True, 0)
    """
    store = _STORES.get(chain)
    if store is None:
        store = _STORES[chain] = RemovedNodes()
    return store


def definition_key(tree: Any) -> Any:
    """What must be equal for a kept module to stand for a node: its resolved tree, as the diff compares it.

    Example:
        >>> from chainspec.read.resolve import Leaf
        >>> definition_key(Leaf("relu", {}, None)) == definition_key(Leaf("relu", {}, None))
        True
    """
    return tree_key(tree), _factories(tree)


def restorable(plan: Revising, chain: Chain) -> dict[str, KeptNode]:
    """The inserts of ``plan`` that ``chain``'s store can restore, by node id.

    A kept module is restored when the insert has its id and definition, it would be built on the
    same device and floating dtype as the kept one, and it is not in the chain already.

    Example:
        >>> import chainspec
        >>> spec = chainspec.loads("chainspec: 1\\nchains: {n: {input_shape: [2], nodes: [{id: a, type: relu}]}}")
        >>> restorable(chainspec.diff(spec, spec), spec.build())
        {}
    """
    store = _STORES.get(chain)
    if not store:
        return {}
    found: dict[str, KeptNode] = {}
    live: set[int] | None = None
    placement: tuple[torch.device, torch.dtype] | None = None
    for op in plan.ops:
        if op.kind != "insert" or op.new is None:
            continue
        kept = store.find(op.node_id, definition_key(op.new.tree))
        if kept is None:
            continue
        if placement is None:
            device, dtype = placement_of(chain, default=chain.placement or (torch.get_default_device(), None))
            placement = (device, dtype or torch.get_default_dtype())
        have = _floating(kept.module)
        if have is not None and (have.device, have.dtype) != placement:
            continue
        if live is None:
            live = {id(t) for t in (*chain.parameters(), *chain.buffers())}
        if any(id(t) in live for t in (*kept.module.parameters(), *kept.module.buffers())):
            continue
        found[op.node_id] = kept
    return found


def _floating(module: nn.Module) -> Tensor | None:
    return next((t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()), None)


def _kept_node(op: Op, module: nn.Module, optimizer: Optimizer | None) -> KeptNode | None:
    """What the store keeps of a node ``op`` removes; None for a node without tensors (nothing to lose)."""
    assert op.old is not None
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}
    if not tensors:
        return None
    state: list[tuple[Tensor, Any]] = []
    if optimizer is not None:
        borrowed = op.old.ties  # another node's parameters: their state stays with that node
        for name, p in module.named_parameters():
            if name in borrowed:
                continue
            entry = optimizer.state.get(p)
            if entry is not None:
                state.append((p, entry))
                tensors.update((id(v), v) for v in entry.values() if isinstance(v, Tensor))
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    return KeptNode(op.node_id, op.type, definition_key(op.old.tree), module, tuple(state),
                    weakref.ref(optimizer) if optimizer is not None else None, nbytes)


class StoreSnapshot:
    """A chain's store of removed nodes (or its absence), restorable exactly; restoring twice is harmless.

    Example:
        >>> from chainspec.build.chain import Chain
        >>> net = Chain([("fc", nn.Linear(2, 2))])
        >>> snap = StoreSnapshot(net)
        >>> removed_nodes(net).max_nodes = 1
        >>> snap.restore()  # no store before: none after
        >>> net in _STORES
        False
    """

    def __init__(self, chain: Chain) -> None:
        self.chain, self.store = chain, _STORES.get(chain)
        self.entries = list(self.store._kept.items()) if self.store is not None else []

    def restore(self) -> None:
        """Put the store back as it was (the same object, with the same entries in the same order)."""
        if self.store is None:
            _STORES.pop(self.chain, None)
        else:
            self.store._kept.clear()
            self.store._kept.update(self.entries)
            _STORES[self.chain] = self.store


class _KeptSnapshot(StoreSnapshot):
    """What an apply changes besides the chain and the optimizer: its store, its plan's ops, restored modules' modes."""

    def __init__(self, job: _Job) -> None:
        super().__init__(job.chain)
        self.plan, self.ops = job.plan, job.plan.ops
        self.modes = [(m, m.training) for kept in job.restored.values() for m in kept.module.modules()]

    def restore(self) -> None:
        super().restore()
        self.plan.ops = self.ops
        for module, mode in self.modes:
            module.training = mode


def _rng_untouched(device: torch.device) -> Any:
    """A context that gives back torch's CPU RNG state (and ``device``'s, for CUDA) on exit."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.random.fork_rng(devices=[index])
    return torch.random.fork_rng(devices=[])


def _adopt(new: nn.Module, old: nn.Module, node_id: str) -> None:
    """Move the old module's parameter and buffer objects into its rebuilt twin (an update keeps its state)."""
    for slot, named in (("_parameters", old.named_parameters()), ("_buffers", old.named_buffers())):
        for name, tensor in named:
            owner_path, _, leaf = name.rpartition(".")
            owner = new.get_submodule(owner_path) if owner_path else new
            table = getattr(owner, slot)
            if leaf not in table:
                raise PlanError(f"node {node_id!r}: the rebuilt module has no {name!r} to carry over; "
                                "this change should be a replace (please report it)")
            table[leaf] = tensor
