"""Growth with fade-in under DDP: a :class:`chainspec.Grower` whose phase changes happen on every rank in lockstep."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from ..revise.apply import StoreSnapshot
from ..revise.transaction import Transaction
from .ddp import current, unwrap
from .groups import DistributedError, Timeout, _gather, _rank, _src_index, _world, barrier
from .lockstep import Broadcast, _settle, _short, _sync_targets, _Target
from .tensors import _named_tensors

if TYPE_CHECKING:
    from ..grow.grower import Grower, GrowthEvent


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
