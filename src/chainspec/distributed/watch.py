"""Hot reload under torch.distributed: rank ``src`` reads the spec file, every rank applies its revisions in lockstep.

:class:`DistributedSpecWatcher` is the watcher core of :mod:`chainspec.revise.watch` with two parts of
its own: :class:`BroadcastSource`, where rank ``src`` reads and checks each complete save and the
other ranks receive its decision, and an apply that runs the lockstep of :mod:`.lockstep`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from .._errors import ChainspecError
from .._limits import Limits
from ..read.spec import Spec, loads
from ..revise.diff import diff
from ..revise.plan import Plan, PlanSet
from ..revise.watch import SETTLE, FileSource, WatcherCore
from .ddp import current, unwrap
from .groups import DistributedError, Timeout, _broadcast_object, _rank, is_distributed
from .lockstep import Broadcast, _lockstep, _Target, _targets

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from ..build.chain import Chain

logger = logging.getLogger("chainspec.distributed")


class BroadcastSource(FileSource):
    """A watcher's revisions under torch.distributed: rank ``src`` reads the file and decides, every rank follows.

    On rank ``src`` it is a :class:`~chainspec.revise.watch.FileSource`: a save is taken once complete,
    loaded and checked (``check``: the watcher diffs every chain against the revision in force); then
    one small broadcast tells every rank what rank ``src`` decided: nothing new, a rejected save (why),
    or a revision. The other ranks never read the file: it need not exist on their machines. Every rank
    calls each method at the same step (each is a collective, :meth:`start` aside).

    Args:
        path: the spec file (read on rank ``src`` only).
        src: the global rank that reads it.
        group: the process group (default: the world).
        check: called on rank ``src`` with each loaded save; raises what rejects it.

    Example:
        >>> BroadcastSource("net.yaml", src=0).reads  # no process group: this process is rank src
        True
    """

    def __init__(self, path: str | os.PathLike[str], *, src: int = 0, group: Any = None,
                 check: Callable[[Spec], None] | None = None) -> None:
        super().__init__(path)
        self.src, self.group, self.check = src, group, check

    @property
    def reads(self) -> bool:
        """Whether this process is rank ``src`` (or there is no process group): the one that reads the file."""
        return not is_distributed() or _rank() == self.src

    def first(self, watcher: WatcherCore) -> Spec:
        """The file as rank ``src`` reads it, on every rank (a collective: every rank constructs the watcher).

        Raises:
            SpecError: on rank ``src``, the file cannot be read or is not a valid spec.
            ChainspecError: on the other ranks, the same, with rank ``src``'s message.
        """
        message: tuple[str, str] | None = None
        error: Exception | None = None
        if self.reads:
            try:
                # Reads at most limits.max_bytes + 1 bytes.
                message = ("ok", super().first(watcher).text)
            except (OSError, ChainspecError) as exc:
                error, message = exc, ("error", str(exc))
        kind, body = _broadcast_object(message, src=self.src, group=self.group,
                                       where="broadcasting the spec the watcher starts from")
        if kind == "error":
            raise error if error is not None else ChainspecError(f"rank {self.src} cannot read {self.path}: {body}")
        return loads(body, source=self.path, allow_imports=watcher.allow_imports, limits=watcher.limits)

    def poll(self, watcher: WatcherCore) -> Spec | str | None:
        """The next revision rank ``src`` took, on every rank: a Spec on rank ``src``, its text elsewhere; else None.

        Raises:
            DistributedError: the broadcast failed or timed out.
            Exception: what rejected the save (on rank ``src`` its own exception, elsewhere a
                :class:`chainspec.ChainspecError` carrying its message).
        """
        message: tuple[str, str] | None = None
        rejected: Exception | None = None
        new: Spec | None = None
        if self.reads:
            try:
                raw = self.changed()
            except OSError as exc:
                rejected, raw = exc, None
                message = ("rejected", str(exc))
            if raw is not None:
                try:
                    new = self.load(raw, watcher)
                    if self.check is not None:
                        self.check(new)  # a revision that cannot apply is rejected here, before any rank moves
                except Exception as exc:
                    rejected, message = exc, ("rejected", str(exc))
                else:
                    message = ("revision", new.text)
        message = _broadcast_object(message, src=self.src, group=self.group, where="polling the spec watcher")
        if message is None:
            return None
        kind, body = message
        if kind == "rejected":
            raise rejected or ChainspecError(f"{self.path}: revision rejected on rank {self.src}: {body}")
        return new if new is not None else body


class DistributedSpecWatcher(WatcherCore):
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

    _fatal = (DistributedError,)  # the ranks are out of step: raised, never reported and trained past
    _follows_chains = True  # each chain's recorded stage, so that revisions follow growth done by grow()
    _logger = logger
    _warning = "%s: revision not applied, the model is unchanged on every rank:\n%s"
    _chain_of = staticmethod(unwrap)

    def __init__(self, path: str | os.PathLike[str], model: nn.Module | Mapping[str, nn.Module],
                 optimizer: Optimizer | Mapping[str, Optimizer | None] | None = None, *, spec: Spec | None = None,
                 stage: int | str | None = None, policy: str = "keep", allow_imports: Iterable[str] = (),
                 on_error: Callable[[Exception], None] | None = None, settle: float = SETTLE, src: int = 0,
                 group: Any = None, timeout: Timeout = None, broadcast: Broadcast = "new",
                 limits: Limits | None = None) -> None:
        self.src, self.group, self.timeout, self.broadcast = src, group, timeout, broadcast
        source = BroadcastSource(path, src=src, group=group, check=self._check_revision)
        super().__init__(source, model, optimizer, spec=spec, stage=stage, policy=policy, allow_imports=allow_imports,
                         on_error=on_error, settle=settle, limits=limits)

    # -- where the model is ----------------------------------------------------------------------
    @property
    def model(self) -> nn.Module | dict[str, nn.Module]:
        """The model to train from now on: the re-wrapped DDP after a revision (a dict for several chains)."""
        for target in self._targets.values():
            target.model = current(target.model)  # follows re-wraps done elsewhere, e.g. by grow()
        models = {name: t.model for name, t in self._targets.items()}
        return next(iter(models.values())) if self.single else models

    def _check(self, models: Any, optimizer: Any) -> None:
        """Nothing before the spec is known: :meth:`_named` refuses a model that is not a chain (or a DDP of one)."""

    def _named(self, models: Any, optimizer: Any) -> tuple[dict[str, Chain], dict[str, Optimizer | None]]:
        """Each chain's model (a DDP or the chain), optimizer and chain, by its name in the spec."""
        self._targets: dict[str, _Target] = _targets(models, optimizer, self.spec)
        return ({name: t.chain for name, t in self._targets.items()},
                {name: t.optimizer for name, t in self._targets.items()})

    # -- polling, on every rank ---------------------------------------------------------------------------
    def poll(self) -> Plan | PlanSet | None:
        """Apply the file's new revision on every rank if there is a complete, valid one; return its plan, else None.

        Returns the :class:`chainspec.Plan` applied (a PlanSet by chain name for several chains); None when
        the file did not change, a change is still settling, or it holds an invalid revision (then see
        :attr:`error`). After a revision, train :attr:`model`, the re-wrapped DDP.

        Raises:
            DistributedError: the ranks disagree or a collective timed out.
        """
        return super().poll()

    def _check_revision(self, new: Spec) -> None:
        """Diff every chain against ``new`` at its stage (rank ``src``, before broadcasting): raise what rejects it."""
        for name in self._targets:
            stage = self._stage(name)
            diff(self.spec, new, chain=name, stage=(stage, stage))

    def _apply(self, new: Spec | str) -> tuple[Plan | PlanSet, Spec]:
        """Apply rank ``src``'s revision on every rank in lockstep (see :func:`apply_plan`); re-wrap the DDPs."""
        stages = {name: self._stage(name) for name in self._targets}
        result = _lockstep(self.spec, new if self.source.reads else None, self._targets,
                           stages=lambda t: (stages[t.name], stages[t.name]), policy=self.policy, src=self.src,
                           group=self.group, timeout=self.timeout, broadcast=self.broadcast, source=self.path,
                           where="applying a watched revision", unchanged_keeps=True, limits=self.limits)
        models = result.model if isinstance(result.model, dict) else {next(iter(self._targets)): result.model}
        for name, target in self._targets.items():
            target.model = models[name]
        return result.plan, result.spec
