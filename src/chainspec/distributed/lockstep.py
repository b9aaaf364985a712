"""Applying plans in lockstep: every rank moves to rank ``src``'s revision (or grows a stage) together, or none does.

In order: a barrier; rank ``src`` broadcasts the revision's text; each rank diffs it against the
revision it runs and the ranks compare plan digests before any of them touches its model; each rank
applies its plans, all or nothing, and keeps them only once every rank confirms it applied its own;
the new parameters and buffers are broadcast from ``src``, with the optimizer state carried to them;
each DDP whose parameters changed is re-wrapped; a barrier. :func:`apply_plan` and :func:`grow` are
the public entry points; the watcher and the grower use the pieces (:func:`_lockstep`, :func:`_settle`,
:func:`_sync_targets`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .._limits import Limits
from ..build.chain import Chain
from ..read.spec import Spec, loads
from ..revise.apply import apply_plans
from ..revise.diff import diff_all
from ..revise.plan import Plan, PlanSet
from .ddp import current, rewrap, unwrap
from .groups import (
    DistributedError,
    Timeout,
    _broadcast_object,
    _differing,
    _gather,
    _rank,
    _src_index,
    barrier,
    is_distributed,
)
from .tensors import _named_tensors, broadcast_module, broadcast_optimizer_state

if TYPE_CHECKING:
    from torch.optim import Optimizer

#: Which parameters and buffers a lockstep change broadcasts from rank ``src``: those it created, all, or none.
Broadcast = Literal["new", "all", "none"]


@dataclass
class LockstepResult:
    """What :func:`apply_plan` and :func:`grow` did on this rank.

    Attributes:
        plan: the plan applied (a :class:`chainspec.diff` Plan; a PlanSet by chain name for several chains).
        spec: the revision now in force (rank ``src``'s text): diff the next revision against it.
        model: the model to train from now on: the re-wrapped DDP (a dict for several chains).
        broadcast: the parameter and buffer names broadcast from rank ``src``, by chain name.

    Example:
        >>> result = apply_plan(ddp, revised, optimizer=opt)  # doctest: +SKIP
        >>> ddp, spec = result.model, result.spec  # doctest: +SKIP
    """

    plan: Plan | PlanSet
    spec: Spec
    model: nn.Module | dict[str, nn.Module]
    broadcast: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class _Target:
    """One chain taking part in a lockstep change: its model (DDP or chain), optimizer and stages."""

    name: str
    model: nn.Module
    optimizer: Optimizer | None
    chain: Chain = field(init=False)

    def __post_init__(self) -> None:
        self.model = current(self.model)
        inner = unwrap(self.model)
        if not isinstance(inner, Chain):
            raise TypeError(f"chain {self.name!r}: expected a chainspec.Chain or a DistributedDataParallel around "
                            f"one, got {type(inner).__name__}")
        self.chain = inner


def _targets(model: nn.Module | Mapping[str, nn.Module],
             optimizer: Optimizer | Mapping[str, Optimizer | None] | None, spec: Spec) -> dict[str, _Target]:
    if isinstance(model, Mapping):
        opts = optimizer if isinstance(optimizer, Mapping) else dict.fromkeys(model, optimizer)
        return {name: _Target(name, m, opts.get(name)) for name, m in model.items()}
    if isinstance(optimizer, Mapping):
        raise TypeError("one model takes one optimizer; pass models and optimizers as dicts by chain name")
    inner = unwrap(model)
    name = getattr(inner, "name", None)
    if name not in spec.chain_names:
        if len(spec.chain_names) != 1:
            raise ValueError(f"{spec.source} has several chains ({', '.join(spec.chain_names)}) and this one is "
                             f"named {name!r}; pass the models as a dict by chain name")
        name = spec.chain_names[0]
    return {name: _Target(name, model, optimizer)}


def _plan_key(plan: Plan) -> dict[str, Any]:
    """A plan's JSON form without file names: ranks may load the same spec from different paths."""
    data = plan.to_dict()
    data["old"] = {"stage": data["old"]["stage"]}
    data["new"] = {"stage": data["new"]["stage"]}
    return data


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip() or '(no message)').splitlines()[0]}"


#: What differing digests mean, by default: the ranks' plans differ.
_PLANS_DIFFER = ("the ranks computed different plans", "they run different revisions or stages")


def _settle(statuses: list[tuple[str, str]], here: int, local: BaseException | None, where: str,
            differ: tuple[str, str] = _PLANS_DIFFER) -> None:
    """Raise on every rank unless every rank reported ``("ok", digest)`` with rank ``src``'s digest.

    ``statuses`` holds each rank's ``("ok", digest)`` or ``("error", message)``. A rank that failed
    re-raises its own exception (all ranks usually fail alike, e.g. on an invalid revision); the others
    raise DistributedError naming the ranks that failed.
    """
    failed = [(i, msg) for i, (kind, msg) in enumerate(statuses) if kind == "error"]
    if failed:
        if local is not None:
            raise local
        ranks = ", ".join(f"rank {i}: {msg}" for i, msg in failed)
        raise DistributedError(f"{where} failed on other ranks ({ranks}); no rank changed its model")
    bad = _differing([d for _, d in statuses], here)
    if bad:
        what, why = differ
        raise DistributedError(
            f"{where}: {what} (rank {here}: {statuses[here][1]}, rank {bad[0]}: {statuses[bad[0]][1]}); {why}, "
            "so no rank changed its model. Build every rank from the same spec and stage, and call the lockstep "
            "helpers at the same step with the same arguments")


def _lockstep(old: Spec, new: Spec | str | None, targets: dict[str, _Target], *,
              stages: Callable[[_Target], tuple[int | str, int | str]], policy: str, src: int, group: Any,
              timeout: Timeout, broadcast: Broadcast, source: str | None, where: str,
              unchanged_keeps: bool = False, limits: Limits | None = None,
              shard: Callable[[nn.Module], Any] | None = None) -> LockstepResult:
    """Broadcast rank ``src``'s revision, agree on the plans, apply them, broadcast new tensors, re-wrap DDPs.

    With ``unchanged_keeps``, a revision that changes no chain (comments, layout) keeps the optimizer
    state even under ``policy="reset"``: a watched file's cosmetic save is no growth step. Revision
    text is loaded with ``limits`` (by default those of ``old``), rank ``src``'s on every rank.
    Each plan is marked with the inserts its chain restores (:meth:`Plan.restoring`) before the
    ranks compare digests, so they also agree on which trained nodes come back. With ``shard``
    (FSDP2's ``fully_shard``), each new module is broadcast whole from ``src`` and then sharded,
    before the optimizer sees its parameters; sharded tensors are not broadcast again afterwards.
    """
    if broadcast not in ("new", "all", "none"):
        raise ValueError(f"broadcast must be 'new', 'all' or 'none', got {broadcast!r}")
    here = _src_index(src, group)
    barrier(timeout=timeout, group=group, where=f"before {where}")
    payload: tuple[str | None, str, tuple[str, ...], Limits | None] | None = None
    if _rank() == src or not is_distributed():
        if isinstance(new, Spec):
            payload = (new.text, new.source, new.allow_imports, new.limits)
        elif isinstance(new, (str, bytes)):
            payload = (new.decode("utf-8", "replace") if isinstance(new, bytes) else new, source or old.source,
                       old.allow_imports, limits if limits is not None else old.limits)
        else:  # tell the other ranks too, rather than leave them waiting for a revision
            payload = (None, f"rank {src} must pass the new revision (a Spec or its text), got "
                             f"{type(new).__name__}", (), None)
    text, src_source, allow_imports, src_limits = _broadcast_object(payload, src=src, group=group,
                                                                    where=f"broadcasting the revision for {where}")
    if text is None:
        raise ValueError(f"{where}: {src_source}")
    # Agree on the plans before anyone touches a model.
    local: BaseException | None = None
    plans = PlanSet()
    try:
        revised = (old if text == old.text and src_source == old.source
                   else loads(text, source=src_source, allow_imports=allow_imports, limits=src_limits))
        plans = diff_all(old, revised, chains=targets, stage={name: stages(t) for name, t in targets.items()},
                         live={name: t.chain for name, t in targets.items()})
        if unchanged_keeps and plans.is_empty:
            policy = "keep"
        key = json.dumps({n: _plan_key(p) for n, p in plans.items()} | {"policy": policy}, sort_keys=True,
                         default=str)
        status = ("ok", hashlib.sha256(key.encode()).hexdigest()[:16])
    except Exception as exc:
        local, status = exc, ("error", _short(exc))
    _settle(_gather(status, group=group, where=f"comparing plans for {where}"), here, local, where)
    # Apply, all or nothing across the ranks: each rank applies its plans, then, before dropping its
    # snapshot, learns whether every rank did. If one failed (out of memory on one GPU, an interrupt),
    # the others roll back too, so the ranks stay in step; a rank that died or hangs makes the others'
    # confirmation time out, which rolls them back as well.
    before = {name: _named_tensors(t.chain) for name, t in targets.items()}  # keeps them alive: ids stay unique
    confirmed = False

    def confirm(done: tuple[str, str] = ("ok", "applied")) -> None:
        nonlocal confirmed
        confirmed = True
        applied = _gather(done, group=group, where=f"confirming {where}")
        failed = [f"rank {i}: {msg}" for i, (kind, msg) in enumerate(applied) if kind == "error"]
        if failed and done[0] == "ok":
            raise DistributedError(f"{where} failed on other ranks ({'; '.join(failed)}); every rank rolled back, "
                                   "so no rank changed its model")

    prepared: list[tuple[str, nn.Module, list[str]]] = []  # (node id, module, names broadcast whole)

    def prepare(node_id: str, module: nn.Module) -> nn.Module:  # only with shard: whole, then sharded
        if broadcast != "none":
            prepared.append((node_id, module, broadcast_module(module, src=src, group=group)))
        assert shard is not None
        sharded = shard(module)
        return sharded if isinstance(sharded, nn.Module) else module

    try:
        apply_plans([(plans[name], t.chain, t.optimizer) for name, t in targets.items()], policy=policy,
                    confirm=confirm, prepare=prepare if shard is not None else None)
    except BaseException as exc:  # rolled back here; tell the other ranks, unless they have been told
        if not confirmed and is_distributed():
            with contextlib.suppress(DistributedError):
                confirm(("error", _short(exc)))
        raise
    models, sent = _sync_targets(targets, before, broadcast=broadcast, src=src, group=group)
    for name in sent:  # and what prepare sent whole, under the names the chain gives it
        chain = targets[name].chain
        whole = [f"{node_id}.{key}" for node_id, module, keys in prepared
                 if node_id in chain and chain[node_id].module is module for key in keys]
        sent[name] = [*whole, *(key for key in sent[name] if key not in whole)]
    barrier(timeout=timeout, group=group, where=f"after {where}")
    return LockstepResult(plan=next(iter(plans.values())) if len(plans) == 1 else plans, spec=revised,
                          model=models if len(models) > 1 else next(iter(models.values())), broadcast=sent)


def _sync_targets(targets: Mapping[str, _Target], before: Mapping[str, list[tuple[str, Tensor]]], *,
                  broadcast: Broadcast, src: int, group: Any) -> tuple[dict[str, nn.Module], dict[str, list[str]]]:
    """Broadcast the tensors a change created (or all) from ``src``; re-wrap each DDP whose parameters changed.

    Returns the models to train from now on and the names broadcast, by chain name.
    """
    models: dict[str, nn.Module] = {}
    sent: dict[str, list[str]] = {}
    for name, target in targets.items():
        old_ids = {id(t) for _, t in before[name]}
        now = _named_tensors(target.chain)
        if broadcast != "none" and is_distributed():
            names = [n for n, t in now if (broadcast == "all" or id(t) not in old_ids)
                     and not callable(getattr(t, "full_tensor", None))]  # sharded ones were sent whole
            sent[name] = broadcast_module(target.chain, names=names, src=src, group=group)
            if target.optimizer is not None:  # moments carried to them follow the same values
                chosen = set(sent[name])
                broadcast_optimizer_state(target.optimizer, [t for n, t in target.chain.named_parameters()
                                                             if n in chosen], src=src, group=group)
        changed = [id(t) for _, t in before[name]] != [id(t) for _, t in now]
        model = current(target.model)
        models[name] = rewrap(model) if isinstance(model, DistributedDataParallel) and changed else model
    return models, sent


def apply_plan(old: Spec, new: Spec | str | None, model: nn.Module | Mapping[str, nn.Module],
               optimizer: Optimizer | Mapping[str, Optimizer | None] | None = None, *,
               stage: int | str | tuple[int | str, int | str] | None = None, policy: str = "keep", src: int = 0,
               group: Any = None, timeout: Timeout = None, broadcast: Broadcast = "new",
               source: str | None = None, shard: Callable[[nn.Module], Any] | None = None) -> LockstepResult:
    """Move a model from revision ``old`` to rank ``src``'s revision ``new``, on every rank in lockstep.

    Every rank must call it at the same step. In order: a barrier; rank ``src`` broadcasts the text of
    ``new``; each rank diffs it against ``old`` and the ranks compare plan digests (any disagreement or
    invalid revision raises on every rank, with no model changed); each rank applies its plan, all or
    nothing, optimizer included; the parameters and buffers the plan created are broadcast from ``src``;
    each DDP whose parameters changed is re-wrapped; a barrier.

    Args:
        old: the revision the model runs now (the same on every rank).
        new: on rank ``src``, the revision to move to: a Spec or spec text (other ranks may pass None).
        model: a Chain or a DistributedDataParallel around one; or a dict of them by chain name.
        optimizer: the optimizer training it (a dict by chain name for several models).
        stage: the stage to compare at, or ``(old_stage, new_stage)``; by default each chain's recorded
            ``stage`` (a revision at the current stage).
        policy: ``"keep"`` or ``"reset"`` optimizer state of surviving parameters.
        src: the global rank whose revision and new tensors everyone takes.
        group: the process group (default: the world).
        timeout: the barriers' timeout (seconds or timedelta; None: the process group's).
        broadcast: ``"new"`` (the tensors the plan created), ``"all"`` or ``"none"``.
        source: the name of ``new`` in error messages when it is text.
        shard: for a chain whose nodes are sharded with FSDP2, ``torch.distributed.fsdp.fully_shard``
            (or a function of a module that shards it): each new module is broadcast whole from ``src``,
            then sharded, before the optimizer sees its parameters (see docs/distributed.md).

    Returns:
        A :class:`LockstepResult`: the plan, the revision now in force, and the model to train from now on.

    Raises:
        SpecError, PlanError: the revision is invalid or cannot apply (raised on every rank; nothing changed).
        DistributedError: the ranks disagree, one fell out of step, or a collective timed out.

    Example:
        >>> result = apply_plan(spec, revised if rank == 0 else None, ddp, opt)  # doctest: +SKIP
        >>> ddp, spec = result.model, result.spec  # doctest: +SKIP
    """
    targets = _targets(model, optimizer, old)

    def stages(target: _Target) -> tuple[int | str, int | str]:
        if stage is None:
            current = _recorded_stage(target.chain)
            return current, current
        return stage if isinstance(stage, tuple) else (stage, stage)

    return _lockstep(old, new, targets, stages=stages, policy=policy, src=src, group=group, timeout=timeout,
                     broadcast=broadcast, source=source, where="applying a revision", shard=shard)


def _recorded_stage(chain: Chain) -> int | str:
    stage = getattr(chain, "stage", None)
    if not isinstance(stage, int):
        raise ValueError(f"chain {chain.name!r} records no stage (it was not built by Spec.build); pass stage=")
    return stage


def grow(spec: Spec, model: nn.Module | Mapping[str, nn.Module],
         optimizer: Optimizer | Mapping[str, Optimizer | None] | None = None, *, stage: int | None = None,
         policy: str = "keep", src: int = 0, group: Any = None, timeout: Timeout = None,
         broadcast: Broadcast = "new", shard: Callable[[nn.Module], Any] | None = None) -> LockstepResult:
    """Grow a model from stage ``k`` to ``k + 1`` of ``spec`` on every rank in lockstep (no fade-in).

    The growth plan is ``diff(spec, spec, stage=(k, k + 1))``, applied as :func:`apply_plan` applies a
    revision: agreed by digest, applied all or nothing, new parameters broadcast from ``src``, DDP
    re-wrapped. For PG-GAN's fade-in, use :class:`DistributedGrower`.

    Args:
        spec: the spec the model was built from (every rank's must hold the same chains).
        model: a Chain or a DDP around one, or a dict of them by chain name.
        optimizer: its optimizer (a dict by chain name for several models).
        stage: ``k``, the stage the model is at; by default each chain's recorded ``stage``.
        policy, src, group, timeout, broadcast, shard: as for :func:`apply_plan`.

    Example:
        >>> ddp = grow(spec, ddp, opt).model  # doctest: +SKIP
    """
    targets = _targets(model, optimizer, spec)

    def stages(target: _Target) -> tuple[int, int]:
        k = stage if stage is not None else _recorded_stage(target.chain)
        if not isinstance(k, int) or not 0 <= k < spec.stages - 1:
            raise ValueError(f"chain {target.name!r} is at stage {k!r}, which cannot grow: {spec.source} has "
                             f"stages 0..{spec.stages - 1}")
        return k, k + 1

    return _lockstep(spec, spec, targets, stages=stages, policy=policy, src=src, group=group, timeout=timeout,
                     broadcast=broadcast, source=None, where="growing", shard=shard)
