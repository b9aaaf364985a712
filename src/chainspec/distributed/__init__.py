"""Growing and revising chains under ``torch.distributed`` and DistributedDataParallel, in lockstep.

Under DDP a structural change needs three things: every rank applies the same
plan at the same step; the new parameters are identical on every rank; and
each ``DistributedDataParallel`` is rebuilt, because its reducer (gradient
buckets, autograd hooks) is made for the parameters it saw when it was
constructed. The helpers here do all three:

* :func:`apply_plan` / :func:`grow`: rank ``src`` broadcasts the spec text of
  the revision (``broadcast_object_list``); every rank diffs it against the
  revision it runs, and the ranks compare digests of their plans before any
  of them touches its model. Then each rank applies the plan (all or
  nothing, optimizer included, and across the ranks: a rank keeps its
  change only once every rank confirms it applied its own, so a failure on
  one rank rolls all of them back), the new parameters and buffers are broadcast
  from ``src``, and each DDP is re-wrapped with the keyword arguments it was
  built with. Optimizer state survives: the optimizer holds the chain's
  Parameter objects, which the splice keeps, and the diff engine adds the new
  ones to it.
* :class:`DistributedSpecWatcher`: hot reload; only rank ``src`` reads the file,
  and a valid revision reaches the other ranks as text.
* :class:`DistributedGrower`: a :class:`chainspec.Grower` whose growth, fade-in
  and collapse happen in lockstep, all or nothing across the ranks, with the
  same broadcast and re-wrap.

Nothing here can hang forever: a barrier before and after every change runs
with a timeout (``monitored_barrier`` on gloo, which names the missing ranks),
and every other collective runs under the process group's timeout
(``init_process_group(timeout=...)``). When the ranks disagree (different
specs, stages or batch sizes), every rank raises :class:`DistributedError`
before any of them changes its model.

Without an initialised process group every helper degrades to its
single-process behaviour, so the same script runs under ``python`` and under
``torchrun``.

Example:
    >>> import chainspec.distributed as csd  # doctest: +SKIP
    >>> ddp = csd.wrap(chain)  # doctest: +SKIP
    >>> result = csd.grow(spec, ddp, optimizer)  # stage k -> k + 1 on every rank  # doctest: +SKIP
    >>> ddp = result.model  # the re-wrapped DistributedDataParallel  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .._errors import ChainspecError, SpecError
from .._limits import Limits, limits_or_default
from ..build.chain import Chain
from ..read.document import too_big
from ..read.spec import Spec, load, loads
from ..revise.apply import StoreSnapshot, apply_plans
from ..revise.diff import diff, diff_all
from ..revise.plan import Plan, PlanSet
from ..revise.transaction import Transaction
from ..revise.watch import SETTLE, SettledReader

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from ..grow.grower import Grower, GrowthEvent

__all__ = [
    "DistributedError",
    "DistributedGrower",
    "DistributedSpecWatcher",
    "LockstepResult",
    "apply_plan",
    "assert_in_sync",
    "barrier",
    "broadcast_module",
    "broadcast_text",
    "current",
    "grow",
    "is_distributed",
    "rewrap",
    "unwrap",
    "wrap",
]

logger = logging.getLogger("chainspec.distributed")

Timeout = timedelta | float | None
Broadcast = Literal["new", "all", "none"]
#: Where :func:`wrap` records a DDP's constructor keyword arguments, for :func:`rewrap`.
_KWARGS_ATTR = "_chainspec_ddp_kwargs"
#: Where :func:`rewrap` records, on the old DDP, the DDP that replaced it (see :func:`current`).
_REPLACED_ATTR = "_chainspec_replaced_by"
#: DistributedDataParallel attributes that give back a constructor argument of the same name, for DDPs
#: not built by :func:`wrap`. Anything else (bucket sizes, mixed precision, ...) must be passed to rewrap.
_INFERRED = ("device_ids", "output_device", "dim", "process_group", "find_unused_parameters",
             "gradient_as_bucket_view")


class DistributedError(ChainspecError, RuntimeError):
    """The ranks disagree, fell out of step, or a collective timed out.

    Raised on every rank that detects it; when the ranks merely disagree (different specs, stages or
    batch sizes) it is raised before any rank changes its model.

    Example:
        >>> issubclass(DistributedError, RuntimeError)
        True
    """


# -- process-group basics ------------------------------------------------------------------------

def is_distributed(group: Any = None) -> bool:
    """True when a process group is initialised (so the helpers run collectives), else False.

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized()


def _rank(group: Any = None) -> int:
    return dist.get_rank(group) if is_distributed() else 0


def _world(group: Any = None) -> int:
    return dist.get_world_size(group) if is_distributed() else 1


def _as_timedelta(timeout: Timeout) -> timedelta | None:
    if timeout is None or isinstance(timeout, timedelta):
        return timeout
    return timedelta(seconds=float(timeout))


@contextmanager
def _collective(where: str, group: Any = None) -> Iterator[None]:
    """Turn a failed or timed-out collective into a DistributedError that says which step it was."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as exc:  # DistBackendError, gloo/nccl timeouts and closed connections
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise DistributedError(
            f"rank {_rank(group)} of {_world(group)}: {where} failed: {first}; every rank must reach this "
            "point at the same step (same schedule, same batch sizes, same poll interval), and a rank that "
            "died or hangs elsewhere makes the others time out here") from exc


def barrier(*, timeout: Timeout = None, group: Any = None, where: str = "barrier") -> None:
    """Wait until every rank arrives, or raise :class:`DistributedError` after ``timeout``.

    On gloo this is ``monitored_barrier(wait_all_ranks=True)``, whose error names the ranks that did
    not arrive; on other backends (nccl) ``barrier()``, bounded by the process group's timeout.
    Without a process group it returns at once.

    Args:
        timeout: seconds or a ``timedelta``; None: the process group's timeout.
        group: the process group (default: the world).
        where: what the ranks are synchronising for, for the error message.

    Example:
        >>> barrier(timeout=5.0)  # no process group: returns at once
    """
    if not is_distributed():
        return
    limit = _as_timedelta(timeout)
    with _collective(f"{where} (barrier, timeout {limit or 'of the process group'})", group):
        if dist.get_backend(group) == "gloo":
            dist.monitored_barrier(group=group, timeout=limit, wait_all_ranks=True)
        elif dist.get_backend(group) == "nccl" and torch.cuda.is_available():
            dist.barrier(group=group, device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier(group=group)


def broadcast_text(text: str | None, *, src: int = 0, group: Any = None) -> str | None:
    """Rank ``src``'s ``text`` (or None) on every rank; the other ranks' ``text`` is ignored.

    Args:
        text: the value on rank ``src``.
        src: the global rank that sends.
        group: the process group (default: the world).

    Example:
        >>> broadcast_text("chainspec: 1")  # no process group: returned as is
        'chainspec: 1'
    """
    return _broadcast_object(text, src=src, group=group, where="broadcasting text")


def _broadcast_object(value: Any, *, src: int, group: Any, where: str) -> Any:
    if not is_distributed():
        return value
    box = [value if _rank() == src else None]
    with _collective(where, group):
        dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def _gather(value: Any, *, group: Any, where: str) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` without a process group)."""
    if not is_distributed():
        return [value]
    out: list[Any] = [None] * _world(group)
    with _collective(where, group):
        dist.all_gather_object(out, value, group=group)
    return out


def _differing(values: list[Any], src_index: int) -> list[int]:
    return [i for i, v in enumerate(values) if v != values[src_index]]


def _src_index(src: int, group: Any) -> int:
    """Position of global rank ``src`` in the group's rank order (what all_gather_object lists)."""
    if not is_distributed() or group is None:
        return src if is_distributed() else 0
    return dist.get_group_rank(group, src)


# -- tensors -----------------------------------------------------------------------------------------

def _named_tensors(module: nn.Module) -> list[tuple[str, Tensor]]:
    """Every parameter and buffer, with its state_dict-style name, in module order."""
    return [*module.named_parameters(), *module.named_buffers()]


def broadcast_module(module: nn.Module, *, names: Iterable[str] | None = None, src: int = 0,
                     group: Any = None) -> list[str]:
    """Copy parameters and buffers of rank ``src`` into ``module`` on every rank, in place.

    The ranks first compare the names, shapes and dtypes they are about to broadcast, so a mismatch
    is a :class:`DistributedError` naming the tensor, not a crash or a hang inside the backend.

    Args:
        module: the module on this rank (a chain; pass ``ddp.module`` for a DDP).
        names: the parameters and buffers to broadcast, by name; None: all of them.
        src: the global rank whose values win.
        group: the process group (default: the world).

    Returns:
        The names broadcast, in order.

    Example:
        >>> broadcast_module(nn.Linear(2, 2))  # no process group: nothing to do
        []
    """
    if not is_distributed():
        return []
    wanted = None if names is None else set(names)
    tensors = [(n, t) for n, t in _named_tensors(module) if wanted is None or n in wanted]
    if wanted is not None:
        missing = wanted - {n for n, _ in tensors}
        if missing:
            raise DistributedError(f"rank {_rank()}: cannot broadcast {sorted(missing)}: the module has no "
                                   "parameter or buffer of that name")
    layout = [(n, tuple(t.shape), str(t.dtype)) for n, t in tensors]
    layouts = _gather(layout, group=group, where="comparing the tensors to broadcast")
    here = _src_index(src, group)
    bad = _differing(layouts, here)
    if bad:
        raise DistributedError(_layout_mismatch(layouts, here, bad[0], src))
    with torch.no_grad(), _collective("broadcasting parameters and buffers", group):
        for _, tensor in tensors:
            dist.broadcast(tensor.detach(), src=src, group=group)
    return [n for n, _ in tensors]


def _layout_mismatch(layouts: list[Any], here: int, other: int, src: int) -> str:
    mine, theirs = layouts[here], layouts[other]
    for a, b in zip(mine, theirs, strict=False):
        if a != b:
            return (f"the ranks hold different tensors: rank {src} has {a[0]} {list(a[1])} {a[2]} where rank "
                    f"{other} has {b[0]} {list(b[1])} {b[2]}; the models differ in structure, so they cannot "
                    "be synchronised (build them from the same spec and stage on every rank)")
    return (f"the ranks hold different tensors: rank {src} has {len(mine)}, rank {other} has {len(theirs)}; "
            "build the models from the same spec and stage on every rank")


def _digest(tensor: Tensor) -> str:
    flat = tensor.detach().reshape(-1).contiguous().cpu()
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def assert_in_sync(module: nn.Module, *, group: Any = None, what: str = "model") -> None:
    """Raise :class:`DistributedError` unless every parameter and buffer is bitwise equal on all ranks.

    Compares sha256 digests (one small object collective), so it is cheap enough for a periodic check.

    Example:
        >>> assert_in_sync(nn.Linear(2, 2))  # no process group: trivially in sync
    """
    if not is_distributed():
        return
    digests = {name: _digest(t) for name, t in _named_tensors(unwrap(module))}
    every = _gather(digests, group=group, where=f"comparing the {what}'s tensors")
    for rank_index, theirs in enumerate(every[1:], start=1):
        if theirs != every[0]:
            keys = sorted(set(theirs) | set(every[0]))
            differ = [k for k in keys if theirs.get(k) != every[0].get(k)]
            raise DistributedError(f"the {what} differs between ranks: {len(differ)} tensors differ between "
                                   f"group rank 0 and group rank {rank_index}, first {differ[:5]}")


# -- DistributedDataParallel -----------------------------------------------------------------------------

def wrap(module: nn.Module, **ddp_kwargs: Any) -> DistributedDataParallel:
    """``DistributedDataParallel(module, **ddp_kwargs)``, remembering the kwargs for :func:`rewrap`.

    Example:
        >>> ddp = wrap(chain, device_ids=[local_rank])  # doctest: +SKIP
    """
    ddp = DistributedDataParallel(module, **ddp_kwargs)
    ddp.__dict__[_KWARGS_ATTR] = dict(ddp_kwargs)
    return ddp


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel, or ``model`` itself.

    Example:
        >>> unwrap(nn.ReLU())
        ReLU()
    """
    return model.module if isinstance(model, DistributedDataParallel) else model


def ddp_kwargs(ddp: DistributedDataParallel) -> dict[str, Any]:
    """The constructor kwargs of ``ddp``: those :func:`wrap` recorded, else the ones its attributes give back."""
    recorded = ddp.__dict__.get(_KWARGS_ATTR)
    if recorded is not None:
        return dict(recorded)
    kwargs = {name: getattr(ddp, name) for name in _INFERRED if hasattr(ddp, name)}
    if getattr(ddp, "static_graph", False):
        kwargs["static_graph"] = True
    return kwargs


def _stale_forward(*args: Any, **kwargs: Any) -> Any:
    raise DistributedError("this DistributedDataParallel was replaced after its chain changed (its reducer only "
                           "knows the old parameters); use the one the lockstep helper returned "
                           "(result.model, watcher.model or grower.models[name])")


def rewrap(ddp: DistributedDataParallel, **overrides: Any) -> DistributedDataParallel:
    """A new DistributedDataParallel around ``ddp.module``, with the same constructor kwargs (plus ``overrides``).

    Needed after every structural change: DDP's reducer is built at construction for the parameters it
    saw then. The new DDP syncs the module from rank 0 as any DDP does. The old one is disabled (calling
    it raises :class:`DistributedError`), so a stale reference cannot silently train without gradient
    averaging. Every rank must call it (construction is a collective).

    The kwargs are those :func:`wrap` recorded; for a DDP built directly they are read back from its
    attributes (``device_ids``, ``output_device``, ``dim``, ``process_group``, ``find_unused_parameters``,
    ``gradient_as_bucket_view``, ``static_graph``): pass any other (``bucket_cap_mb``,
    ``broadcast_buffers``, ``mixed_precision``, ...) again as ``overrides``, or build with :func:`wrap`.

    Example:
        >>> ddp = rewrap(ddp)  # doctest: +SKIP
    """
    kwargs = {**ddp_kwargs(ddp), **overrides}
    module = ddp.module
    with _collective("re-wrapping DistributedDataParallel"):
        new = wrap(module, **kwargs)
    ddp.__dict__["forward"] = _stale_forward
    ddp.__dict__[_REPLACED_ATTR] = new
    return new


def current(model: nn.Module) -> nn.Module:
    """The DDP that now stands for ``model``: follows :func:`rewrap`'s replacements (``model`` itself if none).

    Lets code that kept a reference from before a growth step find the live DDP.

    Example:
        >>> current(nn.ReLU())
        ReLU()
    """
    while isinstance(model, DistributedDataParallel) and _REPLACED_ATTR in model.__dict__:
        model = model.__dict__[_REPLACED_ATTR]
    return model


# -- applying plans in lockstep ----------------------------------------------------------------------

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
              unchanged_keeps: bool = False, limits: Limits | None = None) -> LockstepResult:
    """Broadcast rank ``src``'s revision, agree on the plans, apply them, broadcast new tensors, re-wrap DDPs.

    With ``unchanged_keeps``, a revision that changes no chain (comments, layout) keeps the optimizer
    state even under ``policy="reset"``: a watched file's cosmetic save is no growth step. Revision
    text is loaded with ``limits`` (by default those of ``old``), rank ``src``'s on every rank.
    Each plan is marked with the inserts its chain restores (:meth:`Plan.restoring`) before the
    ranks compare digests, so they also agree on which trained nodes come back.
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

    try:
        apply_plans([(plans[name], t.chain, t.optimizer) for name, t in targets.items()], policy=policy,
                    confirm=confirm)
    except BaseException as exc:  # rolled back here; tell the other ranks, unless they have been told
        if not confirmed and is_distributed():
            with contextlib.suppress(DistributedError):
                confirm(("error", _short(exc)))
        raise
    models, sent = _sync_targets(targets, before, broadcast=broadcast, src=src, group=group)
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
            names = None if broadcast == "all" else [n for n, t in now if id(t) not in old_ids]
            sent[name] = broadcast_module(target.chain, names=names, src=src, group=group)
        changed = [id(t) for _, t in before[name]] != [id(t) for _, t in now]
        model = current(target.model)
        models[name] = rewrap(model) if isinstance(model, DistributedDataParallel) and changed else model
    return models, sent


def apply_plan(old: Spec, new: Spec | str | None, model: nn.Module | Mapping[str, nn.Module],
               optimizer: Optimizer | Mapping[str, Optimizer | None] | None = None, *,
               stage: int | str | tuple[int | str, int | str] | None = None, policy: str = "keep", src: int = 0,
               group: Any = None, timeout: Timeout = None, broadcast: Broadcast = "new",
               source: str | None = None) -> LockstepResult:
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
                     broadcast=broadcast, source=source, where="applying a revision")


def _recorded_stage(chain: Chain) -> int | str:
    stage = getattr(chain, "stage", None)
    if not isinstance(stage, int):
        raise ValueError(f"chain {chain.name!r} records no stage (it was not built by Spec.build); pass stage=")
    return stage


def grow(spec: Spec, model: nn.Module | Mapping[str, nn.Module],
         optimizer: Optimizer | Mapping[str, Optimizer | None] | None = None, *, stage: int | None = None,
         policy: str = "keep", src: int = 0, group: Any = None, timeout: Timeout = None,
         broadcast: Broadcast = "new") -> LockstepResult:
    """Grow a model from stage ``k`` to ``k + 1`` of ``spec`` on every rank in lockstep (no fade-in).

    The growth plan is ``diff(spec, spec, stage=(k, k + 1))``, applied as :func:`apply_plan` applies a
    revision: agreed by digest, applied all or nothing, new parameters broadcast from ``src``, DDP
    re-wrapped. For PG-GAN's fade-in, use :class:`DistributedGrower`.

    Args:
        spec: the spec the model was built from (every rank's must hold the same chains).
        model: a Chain or a DDP around one, or a dict of them by chain name.
        optimizer: its optimizer (a dict by chain name for several models).
        stage: ``k``, the stage the model is at; by default each chain's recorded ``stage``.
        policy, src, group, timeout, broadcast: as for :func:`apply_plan`.

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
                     broadcast=broadcast, source=None, where="growing")


# -- hot reload -----------------------------------------------------------------------------------------

class DistributedSpecWatcher:
    """Hot reload under torch.distributed: rank ``src`` watches the spec file, every rank applies its revisions.

    Every rank calls :meth:`poll` at the same step (each call is one small broadcast, so poll every
    N steps if that matters). On rank ``src`` it costs one ``stat()`` when the file has not changed;
    a change is taken only once the save is complete, exactly as :class:`chainspec.SpecWatcher`
    decides it (the same bytes and ``stat()`` on two reads at least ``settle`` seconds apart, noted
    by one poll and taken by a later one; rank ``src`` decides and the others follow). The new text
    is validated and diffed there, and a valid revision is broadcast as text and applied on every
    rank by :func:`apply_plan` (plans agreed by digest, new parameters broadcast from ``src``, DDP
    re-wrapped). An invalid revision (a typo, a channel mismatch) is reported with its
    ``file:line:col``, on rank ``src`` by default, and leaves every model untouched; the next valid
    save is diffed against the last revision applied. The other ranks never read the file: it need
    not exist on their machines. A node that a revision removed and a later one inserts again
    comes back with its trained weights and optimizer state on every rank (``(restored)`` in the plan).

    Args:
        path: the spec file (read on rank ``src`` only).
        model: the live model: a Chain or a DistributedDataParallel around one, or a dict of them by
            chain name (for example ``{"generator": g, "discriminator": d}``).
        optimizer: its optimizer, or a dict by chain name.
        spec: the revision the model runs now; by default the chains' recorded ``spec`` (set by
            ``Spec.build``, an apply or a checkpoint load), else the file as rank ``src`` reads it.
        stage: the stage to revise at when a chain records none; by default each chain's recorded
            ``stage``, so revisions follow growth done by :func:`grow`.
        policy: ``"keep"`` or ``"reset"`` optimizer state of surviving parameters.
        allow_imports: module prefixes import-path node types may use (as in :func:`chainspec.load`).
        on_error: called on every rank with the exception when a revision is rejected (on ranks other
            than ``src`` a :class:`chainspec.ChainspecError` carrying the message); by default rank
            ``src`` logs it as a warning on the ``chainspec.distributed`` logger.
        settle: seconds a changed file must stay the same, on two reads by rank ``src``, before it is
            applied (default 0.3 s, as :class:`chainspec.SpecWatcher`); 0 reads twice at once.
        limits: the bounds a revision is loaded with (see :class:`chainspec.Limits`), on every rank;
            by default those the revision in force was loaded with.
        src, group, timeout, broadcast: as for :func:`apply_plan`.

    Attributes:
        spec: the revision in force.
        limits: the bounds each revision is read and loaded with, on every rank.
        model: the model to train from now on (re-wrapped after each revision; a dict for several chains).
        error: the exception that rejected the last revision, or None after a successful one.

    Example:
        >>> watcher = DistributedSpecWatcher("net.yaml", ddp, optimizer=opt, spec=spec)  # doctest: +SKIP
        >>> for step in range(steps):  # doctest: +SKIP
        ...     if step % 50 == 0 and watcher.poll() is not None:
        ...         ddp = watcher.model
        ...     train_step(ddp)
    """

    def __init__(self, path: str | os.PathLike[str], model: nn.Module | Mapping[str, nn.Module],
                 optimizer: Optimizer | Mapping[str, Optimizer | None] | None = None, *, spec: Spec | None = None,
                 stage: int | str | None = None, policy: str = "keep", allow_imports: Iterable[str] = (),
                 on_error: Callable[[Exception], None] | None = None, settle: float = SETTLE, src: int = 0,
                 group: Any = None, timeout: Timeout = None, broadcast: Broadcast = "new",
                 limits: Limits | None = None) -> None:
        if policy not in ("keep", "reset"):
            raise ValueError(f"policy must be 'keep' or 'reset', got {policy!r}")
        self.path = os.fspath(path)
        self.policy, self.src, self.group, self.timeout, self.broadcast = policy, src, group, timeout, broadcast
        self.allow_imports = tuple(allow_imports)
        self.on_error, self.stage = on_error, stage
        self._settle = SettledReader(self.path, settle=settle).settle  # validated on every rank alike
        self.error: Exception | None = None
        self._rejected: Exception | None = None
        self._pending: Spec | None = None
        self._single = not isinstance(model, Mapping)
        chains = [unwrap(m) for m in (model.values() if isinstance(model, Mapping) else [model])]
        recorded = {id(getattr(c, "spec", None)): getattr(c, "spec", None) for c in chains}
        found = next(iter(recorded.values())) if len(recorded) == 1 else None
        current = spec or (found if isinstance(found, Spec) else None)
        self.limits = limits_or_default(limits if limits is not None or current is None
                                        else getattr(current, "limits", None))
        self.spec: Spec = current or self._read_initial()
        self._targets = _targets(model, optimizer, self.spec)
        # Rank src reads the file, and decides when a save is complete; the other ranks never do.
        self._file: SettledReader | None = (
            SettledReader(self.path, settle=self._settle, limits=self.limits,
                          seen=self.spec.text.encode("utf-8")) if self._is_src() else None)

    @property
    def settle(self) -> float:
        """Seconds a changed file must stay the same, on two reads by rank ``src``, before it is applied."""
        return self._settle

    @settle.setter
    def settle(self, seconds: float) -> None:
        self._settle = SettledReader(self.path, settle=seconds).settle
        if self._file is not None:
            self._file.settle = self._settle

    # -- where the model is ----------------------------------------------------------------------
    @property
    def model(self) -> nn.Module | dict[str, nn.Module]:
        """The model to train from now on: the re-wrapped DDP after a revision (a dict for several chains)."""
        for target in self._targets.values():
            target.model = current(target.model)  # follows re-wraps done elsewhere, e.g. by grow()
        models = {name: t.model for name, t in self._targets.items()}
        return next(iter(models.values())) if self._single else models

    def _is_src(self) -> bool:
        return not is_distributed() or _rank() == self.src

    # -- the file, on rank src -------------------------------------------------------------------------
    def _read_initial(self) -> Spec:
        """The file as rank ``src`` reads it, on every rank (a collective: every rank constructs the watcher)."""
        message: tuple[str, str] | None = None
        error: Exception | None = None
        if self._is_src():
            try:
                # Reads at most limits.max_bytes + 1 bytes.
                current = load(self.path, allow_imports=self.allow_imports, limits=self.limits)
                message = ("ok", current.text)
            except (OSError, ChainspecError) as exc:
                error, message = exc, ("error", str(exc))
        kind, body = _broadcast_object(message, src=self.src, group=self.group,
                                       where="broadcasting the spec the watcher starts from")
        if kind == "error":
            raise error if error is not None else ChainspecError(f"rank {self.src} cannot read {self.path}: {body}")
        return loads(body, source=self.path, allow_imports=self.allow_imports, limits=self.limits)

    def _changed(self) -> bytes | None:
        """The file's bytes once a change is complete (see :class:`chainspec.SpecWatcher`), else None."""
        assert self._file is not None
        return self._file.poll()

    def _check(self, raw: bytes) -> tuple[str, str]:
        """``("revision", text)`` when ``raw`` is a valid revision that diffs cleanly, else ``("rejected", why)``."""
        try:
            if len(raw) > self.limits.max_bytes:
                size = self._file.size if self._file is not None else None
                raise SpecError([too_big(self.path, size, self.limits.max_bytes)])
            new = loads(raw, source=self.path, allow_imports=self.allow_imports, limits=self.limits)
            for name, target in self._targets.items():
                current = self._stage_of(target)
                diff(self.spec, new, chain=name, stage=(current, current))
        except Exception as exc:
            self._rejected = exc
            return ("rejected", str(exc))
        self._pending = new
        return ("revision", new.text)

    def _stage_of(self, target: _Target) -> int | str:
        recorded = getattr(target.chain, "stage", None)
        if isinstance(recorded, int):
            return recorded
        return self.stage if self.stage is not None else "final"

    # -- polling, on every rank ---------------------------------------------------------------------------
    def poll(self) -> Plan | PlanSet | None:
        """Apply the file's new revision on every rank if there is a complete, valid one; return its plan, else None.

        Returns the :class:`chainspec.Plan` applied (a PlanSet by chain name for several chains); None when
        the file did not change, a change is still settling, or it holds an invalid revision (then see
        :attr:`error`). After a revision, train :attr:`model`, the re-wrapped DDP.

        Raises:
            DistributedError: the ranks disagree or a collective timed out.
        """
        message: tuple[str, str] | None = None
        self._rejected = None
        if self._is_src():
            try:
                raw = self._changed()
            except OSError as exc:
                self._rejected, raw = exc, None
                message = ("rejected", str(exc))
            if raw is not None:
                message = self._check(raw)
        message = _broadcast_object(message, src=self.src, group=self.group, where="polling the spec watcher")
        if message is None:
            return None
        kind, body = message
        if kind == "rejected":
            self._report(self._rejected or ChainspecError(f"{self.path}: revision rejected on rank {self.src}: {body}"))
            return None
        stages = {name: self._stage_of(t) for name, t in self._targets.items()}
        try:
            pending, self._pending = self._pending, None
            result = _lockstep(self.spec, pending if self._is_src() else None, self._targets,
                               stages=lambda t: (stages[t.name], stages[t.name]), policy=self.policy,
                               src=self.src, group=self.group, timeout=self.timeout, broadcast=self.broadcast,
                               source=self.path, where="applying a watched revision", unchanged_keeps=True,
                               limits=self.limits)
        except DistributedError:
            raise
        except Exception as exc:  # every rank rejected it alike and rolled back: training goes on
            self._report(exc)
            return None
        models = result.model if isinstance(result.model, dict) else {next(iter(self._targets)): result.model}
        for name, target in self._targets.items():
            target.model = models[name]
        self.spec = result.spec
        self.error = None
        return result.plan

    def _report(self, exc: Exception) -> None:
        self.error = exc
        if self.on_error is not None:
            self.on_error(exc)
        elif self._is_src():
            logger.warning("%s: revision not applied, the model is unchanged on every rank:\n%s", self.path, exc)


# -- growth with fade-in ----------------------------------------------------------------------------------

class DistributedGrower:
    """A :class:`chainspec.Grower` whose growth steps happen on every rank in lockstep.

    Every rank builds the same chains and the same Grower, wraps them in DDP (or not), and calls
    :meth:`step` after each optimizer step with the **global** batch size (the images all ranks
    trained on together), so that every rank counts the same schedule. Most steps cost nothing
    extra. At a step that crosses a phase boundary (a fade begins, a fade collapses, a stage grows)
    the ranks meet at a barrier and compare their schedule positions, every rank grows, the ranks
    compare the resulting structures, the new parameters and buffers are broadcast from ``src``, and
    each DDP whose parameters changed is re-wrapped: train :attr:`models` from then on.

    Args:
        grower: the Grower (same spec, schedule and starting stage on every rank).
        models: the DDP of each chain, by chain name; a chain without one trains as is.
        src, group, timeout, broadcast: as for :func:`apply_plan`.

    Attributes:
        grower: the wrapped Grower (``alpha``, ``stage``, ``state_dict()``, ``save()`` live there).
        models: the model to train for each chain: its current DDP, or the chain.

    Example:
        >>> chains = spec.build_all(stage=0, device=device)  # doctest: +SKIP
        >>> ddps = {n: csd.wrap(c, device_ids=[local_rank]) for n, c in chains.items()}  # doctest: +SKIP
        >>> grower = csd.DistributedGrower(chainspec.Grower(spec, chains, opts), ddps)  # doctest: +SKIP
        >>> for real in loader:  # doctest: +SKIP
        ...     train_step(grower.models, real, alpha=grower.alpha)
        ...     grower.step(len(real) * world_size)
    """

    def __init__(self, grower: Grower, models: Mapping[str, nn.Module] | None = None, *, src: int = 0,
                 group: Any = None, timeout: Timeout = None, broadcast: Broadcast = "new") -> None:
        if broadcast not in ("new", "all", "none"):
            raise ValueError(f"broadcast must be 'new', 'all' or 'none', got {broadcast!r}")
        given = dict(models or {})
        unknown = [name for name in given if name not in grower.chains]
        if unknown:
            raise ValueError(f"models given for {unknown}, which the grower does not drive; it has "
                             f"{list(grower.chains)}")
        self._targets: dict[str, _Target] = {}
        for name, chain in grower.chains.items():
            model = given.get(name, chain)
            if unwrap(model) is not chain:
                raise ValueError(f"the model given for {name!r} does not wrap the grower's chain {name!r}; "
                                 "wrap the very chains the Grower was given")
            self._targets[name] = _Target(name, model, grower.optimizers.get(name))
        self.grower = grower
        self.src, self.group, self.timeout, self.broadcast = src, group, timeout, broadcast

    @property
    def models(self) -> dict[str, nn.Module]:
        """The model to train for each chain, by name: its current DDP (re-wrapped after growth), or the chain."""
        for target in self._targets.values():
            target.model = current(target.model)
        return {name: t.model for name, t in self._targets.items()}

    @property
    def alpha(self) -> float:
        """The fade-in weight of the new layers (see :attr:`chainspec.Grower.alpha`)."""
        return self.grower.alpha

    @property
    def stage(self) -> int:
        """The current stage (see :attr:`chainspec.Grower.stage`)."""
        return self.grower.stage

    def __repr__(self) -> str:
        return f"<DistributedGrower rank {_rank(self.group)} of {_world(self.group)}: {self.grower!r}>"

    def _crossing(self, batch_size: int | None) -> bool:
        """Whether counting this step crosses a phase boundary (so the grower will act), on every rank alike."""
        grower = self.grower
        end = grower.phase.end
        if end is None:
            return False
        if grower.schedule.unit == "images":
            if batch_size is None or isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
                return False  # Grower.step raises its ValueError on every rank alike
            return grower.images + int(batch_size) >= end
        return grower.steps + 1 >= end

    def _fingerprint(self) -> str:
        data = {name: [t.chain.ids(), [(n, list(x.shape)) for n, x in _named_tensors(t.chain)]]
                for name, t in self._targets.items()}
        data["schedule"] = [self.grower.position, self.grower.stage, self.grower.phase.kind, self.grower.alpha]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def step(self, batch_size: int | None = None) -> list[GrowthEvent]:
        """Count one training step of ``batch_size`` images (global, over all ranks); grow in lockstep when due.

        Returns the grower's events for this step (usually none).

        Raises:
            DistributedError: the ranks are at different points of the schedule (different batch sizes),
                grew differently, or a collective timed out.
        """
        grower = self.grower
        crossing = self._crossing(batch_size)
        here = _src_index(self.src, self.group)
        if crossing:
            barrier(timeout=self.timeout, group=self.group, where="before a growth step")
            where = [grower.position, grower.images, grower.steps, grower.stage, grower.phase.kind, batch_size]
            positions = _gather(("ok", json.dumps(where)), group=self.group,
                                where="comparing schedule positions before a growth step")
            _settle(positions, here, None, "a growth step",
                    ("the ranks are at different points of the schedule",
                     "they were given different batch sizes or skipped steps"))
        before = {name: _named_tensors(t.chain) for name, t in self._targets.items()}
        if not crossing:
            events = grower.step(batch_size)
            if all([id(x) for _, x in before[n]] == [id(x) for _, x in _named_tensors(t.chain)]
                   for n, t in self._targets.items()):
                return events
            # The schedule changed the chains at a step not foreseen as a boundary: every rank follows the
            # same schedule, so every rank is here; synchronise as for any growth step.
            local: BaseException | None = None
            status = ("ok", self._fingerprint())
        else:
            # All or nothing across the ranks: a rank keeps its growth step only once every rank reports
            # the same result; otherwise (out of memory on one GPU, a Ctrl-C, a dead rank) each rolls back.
            local = None
            events = []
            snapshot = _GrowerSnapshot(grower, self._targets.values())
            try:
                events = grower.step(batch_size)
                status = ("ok", self._fingerprint())
            except BaseException as exc:
                snapshot.restore()
                if not isinstance(exc, Exception):  # tell the others before leaving, so they need not time out
                    with contextlib.suppress(DistributedError):
                        _gather(("error", _short(exc)), group=self.group, where="confirming a growth step")
                    raise
                local, status = exc, ("error", _short(exc))
        try:
            statuses = _gather(status, group=self.group, where="confirming a growth step")
            if crossing:
                _settle(statuses, here, local, "a growth step",
                        ("the ranks grew into different structures", "their chains or schedules differ"))
        except BaseException:
            if crossing and local is None:
                snapshot.restore()
            raise
        if not crossing:
            _settle(statuses, here, local, "a growth step",
                    ("the ranks grew into different structures", "their chains or schedules differ"))
        models, _ = _sync_targets(self._targets, before, broadcast=self.broadcast, src=self.src, group=self.group)
        for name, target in self._targets.items():
            target.model = models[name]
        barrier(timeout=self.timeout, group=self.group, where="after a growth step")
        return events


class _GrowerSnapshot:
    """A grower's schedule position and fades, its chains, optimizers and torch's RNG, restorable exactly.

    A :class:`~chainspec.revise.transaction.Transaction` underneath, like every other apply.
    """

    def __init__(self, grower: Grower, targets: Iterable[_Target]) -> None:
        targets = list(targets)
        self.change = Transaction()
        for target in targets:
            self.change.protect_chain(target.chain)
            self.change.protect(StoreSnapshot(target.chain).restore)  # a growth step keeps the nodes it removes
        for optimizer in (*grower.optimizers.values(), *(t.optimizer for t in targets)):
            self.change.protect_optimizer(optimizer)
        attrs = {k: dict(v) if isinstance(v, dict) else v for k, v in vars(grower).items()}
        alphas = [(blend, blend.alpha) for blend in grower.blends.values()]

        def restore_grower() -> None:
            vars(grower).clear()
            vars(grower).update({k: dict(v) if isinstance(v, dict) else v for k, v in attrs.items()})
            for blend, alpha in alphas:
                blend.alpha = alpha

        self.change.protect(restore_grower)

    def restore(self) -> None:
        """Put the grower, its chains, their stores, the optimizers and torch's RNG back."""
        self.change.rollback()


# -- a self-check to run under torchrun -----------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Grow a spec's chains through their stages under DDP on random data, checking the ranks stay equal.

    Run it under torchrun, one process per GPU (nccl) or on CPUs (gloo); it exits 1 if the ranks ever
    hold different weights after a growth step::

        torchrun --standalone --nproc-per-node=2 -m chainspec.distributed specs/pggan_tiny.yaml

    Example:
        >>> main(["specs/pggan_tiny.yaml", "--steps-per-phase", "1"])  # without torchrun: one process  # doctest: +SKIP
        0
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m chainspec.distributed",
        description="Grow a spec's chains under DDP on random data and check that the ranks stay equal.")
    parser.add_argument("spec", help="the spec file (every chain is built and grown)")
    parser.add_argument("--batch", type=int, default=8, help="per-rank batch size (default 8)")
    parser.add_argument("--steps-per-phase", type=int, default=4, help="training steps per stabilise or fade phase")
    parser.add_argument("--fade", choices=("yes", "no"), default="yes", help="fade new stages in (default) or not")
    parser.add_argument("--backend", choices=("nccl", "gloo"), default=None,
                        help="default: nccl when CUDA is available, else gloo")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds every collective may take")
    args = parser.parse_args(argv)

    spec = load(args.spec)
    if spec.stages < 2:
        parser.error(f"{args.spec} has one stage: nothing to grow")
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before any object collective: they run on the current device
    if launched:
        dist.init_process_group(backend, timeout=timedelta(seconds=args.timeout))
    try:
        return _grow_and_check(spec, args, device, backend, launched=launched)
    except DistributedError as exc:
        print(f"rank {_rank()}: {exc}", flush=True)
        return 1
    finally:
        if launched:
            _shut_down()  # _grow_and_check has returned: its DDP wrappers are garbage now


def _grow_and_check(spec: Spec, args: Any, device: torch.device, backend: str, *, launched: bool) -> int:
    """The self-check's training loop (see :func:`main`); returns 0 when every growth step kept the ranks equal."""
    from ..grow.grower import Grower
    from ..read.schedule import Schedule

    rank, world = _rank(), _world()
    say = print if rank == 0 else (lambda *a, **k: None)
    chains = spec.build_all(stage=0, device=device)
    optimizers = {n: torch.optim.Adam(c.parameters(), lr=1e-3, betas=(0.0, 0.99)) for n, c in chains.items()}
    ddp = {"device_ids": [device.index]} if device.type == "cuda" else {}
    models = {n: wrap(c, **ddp) for n, c in chains.items()} if launched else dict(chains)
    images = args.steps_per_phase * args.batch * world
    schedule = Schedule.lengths(spec.stages, stabilize=images, fade=images if args.fade == "yes" else 0)
    grower = DistributedGrower(Grower(spec, chains, optimizers, schedule=schedule), models, timeout=args.timeout)
    say(f"{args.spec}: {', '.join(chains)} on {world} rank(s), {backend}, {device.type}; "
        f"{len(schedule.phases) - 1} phases of {args.steps_per_phase} steps")
    step, start = 0, time.perf_counter()
    while not grower.grower.done:
        for name, model in grower.models.items():
            shape = spec.resolved(name).input_shape_at(grower.stage)
            out = model(torch.randn(args.batch, *shape, device=device))
            out.float().pow(2).mean().backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
        tick = time.perf_counter()
        events = grower.step(args.batch * world)
        step += 1
        for event in events:
            for name, chain in chains.items():
                assert_in_sync(chain, what=f"chain {name!r}")
            params = sum(p.numel() for c in chains.values() for p in c.parameters())
            say(f"  step {step:4d}: {event.kind:9s} stage {event.stage}, alpha {grower.alpha:.2f}, "
                f"{params:,} parameters, in sync on every rank ({time.perf_counter() - tick:.3f} s)")
    say(f"done: {step} steps, {time.perf_counter() - start:.1f} s; every growth step kept the ranks equal")
    return 0


def _shut_down() -> None:
    """Leave the process group cleanly: DDP's reducers go first, then every rank waits for the others."""
    import gc

    gc.collect()  # DDP wrappers and their reducers go while the group they use still exists
    with contextlib.suppress(Exception):  # a rank that already failed: nobody to wait for
        dist.barrier()
    dist.destroy_process_group()
