"""Watching a spec file: apply each complete, valid save to the live model.

``poll()`` is meant to be called every training step: when the file has not
changed it costs one ``stat()``. A change is applied only once it is
*complete*: the same bytes and the same ``stat()`` signature on two reads at
least ``settle`` seconds apart (:class:`SettledReader`). A poll never waits:
it notes a change and a later poll applies it. The new text is validated,
diffed against the revision in force and applied, all or nothing. An invalid
revision (a typo, a channel mismatch) is reported with its ``file:line:col``
and leaves the model untouched; the next valid save is diffed against the
last revision that was applied.

One core does this for both watchers: :class:`WatcherCore` holds the chains,
their optimizers and stages, the policy and the revision in force, and
applies each new revision; a *source* supplies the revisions. Here the source
is :class:`FileSource` (this process reads the file) and the watcher is
:class:`SpecWatcher`; ``chainspec.distributed.DistributedSpecWatcher`` is the
same core with a source where one rank reads and broadcasts, and a lockstep
apply.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Any

from .._errors import SpecError
from .._limits import Limits, limits_or_default
from ..read.document import read_head, too_big
from ..read.spec import Spec, load, loads
from .apply import POLICIES, apply_plans
from .diff import diff_all
from .plan import Plan, PlanSet

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from ..build.chain import Chain

logger = logging.getLogger("chainspec.watch")

#: Seconds a changed file must stay the same (bytes and ``stat()``) before it is applied, by default.
#: Long enough for a save written in several ``write()`` calls, or copied over a network file system,
#: to finish; short next to the time it takes to edit a spec. 0 reads twice at once (for writers that
#: replace the file atomically, by a rename).
SETTLE = 0.3
#: The most seconds one poll waits on a pipe swapped in for the watched file: a training loop's poll
#: must not stall for ``Limits.read_timeout`` on a FIFO whose writer stays open and idle.
POLL_READ_TIMEOUT = 0.05

#: What one ``stat()`` says of a file: (mtime in ns, size, inode).
Signature = tuple[int, int, int]


def stat_signature(path: str | os.PathLike[str]) -> Signature | None:
    """What one ``stat()`` says of a watched file: (mtime in ns, size, inode), or None if it is missing.

    A save changes it (an editor's rename-over changes the inode even within one mtime tick).

    Example:
        >>> stat_signature("/nonexistent/net.yaml") is None
        True
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _settle_seconds(seconds: object) -> float:
    """``seconds`` as a settle time; ``ValueError`` unless it is a number of seconds >= 0."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise ValueError(f"settle must be a number of seconds >= 0, got {seconds!r}")
    return float(seconds)


@dataclass(frozen=True)
class _Seen:
    """A read of the file: its signature before the read, its bytes, when it was read and its size if too big."""

    signature: Signature
    raw: bytes
    at: float
    size: int | None


class SettledReader:
    """Reads a watched file, and hands over its bytes only once a save is complete.

    A change counts once the file holds the same bytes, with the same ``stat()`` signature (mtime,
    size, inode) before and after reading, on two reads at least ``settle`` seconds apart. A save
    written in several ``write()`` calls is so never taken half-written, as long as its writer pauses
    less than ``settle`` between them. :meth:`poll` never waits: it notes a change and a later
    call hands it over; when nothing changed (or a noted change is still settling) it costs one
    ``stat()``. Content equal to what was last handed over is not handed over again.

    Args:
        path: the file.
        settle: seconds between the two reads (0: both in one call).
        limits: ``max_bytes`` (at most one byte more is read) and ``read_timeout`` (the longest a
            read may take, for a file replaced by a pipe) bound every read.
        seen: bytes already known (the revision in force): the file holding them is no change.

    Attributes:
        size: the file's size when the bytes last handed over were more than ``limits.max_bytes``, else None.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "net.yaml")
        >>> with open(path, "w") as f:
        ...     _ = f.write("chainspec: 1\\n")
        >>> reader = SettledReader(path, settle=0)
        >>> reader.poll()
        b'chainspec: 1\\n'
        >>> reader.poll() is None  # unchanged since
        True
    """

    def __init__(self, path: str | os.PathLike[str], *, settle: float = SETTLE,
                 limits: Limits | None = None, seen: bytes | None = None) -> None:
        self.path = os.fspath(path)
        self.settle = settle
        self.limits = limits_or_default(limits)
        self.size: int | None = None
        self._seen = seen
        self._signature: Signature | None = None  # of the file when it last held self._seen
        self._pending: _Seen | None = None  # a change noted, not yet settled
        if seen is not None:
            before = stat_signature(self.path)
            raw = self._read_or_none()
            if before is not None and raw == seen and stat_signature(self.path) == before:
                self._signature = before

    @property
    def settle(self) -> float:
        """Seconds between the two reads that must find the same save (0: both in one :meth:`poll`)."""
        return self._settle

    @settle.setter
    def settle(self, seconds: float) -> None:
        self._settle = _settle_seconds(seconds)

    @property
    def read_timeout(self) -> float:
        """Seconds one read may wait on a pipe: ``limits.read_timeout``, at most :data:`POLL_READ_TIMEOUT`."""
        return min(self.limits.read_timeout, POLL_READ_TIMEOUT)

    def _read_or_none(self) -> bytes | None:
        try:
            return read_head(self.path, self.limits.max_bytes, self.read_timeout)[0]
        except OSError:
            return None

    def _read(self, signature: Signature) -> _Seen:
        # Never more than a spec may hold: a watched file replaced by a huge one (or a link to
        # /dev/zero) must not be read whole into a training process, nor a FIFO stall it.
        raw, size = read_head(self.path, self.limits.max_bytes, self.read_timeout)
        return _Seen(signature, raw, monotonic(), size)

    def poll(self) -> bytes | None:
        """The file's bytes if a complete change is ready, else None (nothing changed, or not settled yet).

        Raises:
            OSError: the file exists but cannot be read; that state is not read again until it changes.
        """
        try:
            st = os.stat(self.path)
        except OSError:
            self._pending = None  # between an editor's unlink and rename: try again next time
            return None
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        pending = self._pending
        if pending is None and signature == self._signature:
            return None
        if pending is not None and signature == pending.signature:
            if monotonic() - pending.at < self.settle:
                return None  # still settling: one stat(), no read
            return self._confirm(pending)
        # A new change (or another change while one was settling): first read.
        try:
            first = self._read(signature)
        except OSError:
            self._pending, self._signature = None, signature
            raise
        if first.raw == self._seen:
            self._pending, self._signature = None, signature  # touched, or saved back as it was
            return None
        self._pending = first
        return self._confirm(first) if self.settle <= 0 else None

    def _confirm(self, pending: _Seen) -> bytes | None:
        """Second read: the bytes if they and the signature (before and after reading) are still the same."""
        try:
            second = self._read(pending.signature)
        except OSError:
            self._pending, self._signature = None, pending.signature
            raise
        after = stat_signature(self.path)
        if second.raw != pending.raw or after != pending.signature:
            # Still being written: start over from this read (the next poll sees the new signature, if any).
            self._pending = _Seen(after, second.raw, second.at, second.size) if after is not None else None
            return None
        self._pending, self._signature, self._seen, self.size = None, pending.signature, second.raw, second.size
        return second.raw


def check_chains_and_optimizers(chains: object, optimizer: object) -> None:
    """Refuse, as ``TypeError``, what a watcher cannot watch: anything but a chain or a dict of chains,
    and an optimizer that is neither an optimizer, a dict of them, nor None.

    Example:
        >>> check_chains_and_optimizers("net", None)
        Traceback (most recent call last):
        ...
        TypeError: a watcher watches a chainspec.Chain or a dict of them by name, got str
    """
    from torch.optim import Optimizer

    from ..build.chain import Chain

    values = list(chains.values()) if isinstance(chains, Mapping) else [chains]
    bad = [v for v in values if not isinstance(v, Chain)]
    if bad or not values:
        got = type(bad[0]).__name__ if bad else "an empty dict"
        raise TypeError(f"a watcher watches a chainspec.Chain or a dict of them by name, got {got}")
    optimizers = list(optimizer.values()) if isinstance(optimizer, Mapping) else [optimizer]
    wrong = next((o for o in optimizers if o is not None and not isinstance(o, Optimizer)), None)
    if wrong is not None:
        raise TypeError("optimizer must be a torch.optim.Optimizer, a dict of them by chain name, or None; "
                        f"got {type(wrong).__name__}")


class FileSource:
    """Where a watcher's new revisions come from: the spec file, as this process reads it.

    Each complete save (see :class:`SettledReader`) is loaded within the watcher's ``limits`` and
    ``allow_imports`` and handed to the watcher as a :class:`~chainspec.Spec`; a save that is not a
    valid spec raises what rejects it. ``chainspec.distributed``'s source extends it: one rank reads
    the file and every rank receives what that rank decided.

    Args:
        path: the spec file.
        settle: seconds a changed file must stay the same, on two reads, before it is taken.

    Attributes:
        path: the file.
        reader: the :class:`SettledReader` that reads it once a watcher has started the source (None
            before, and on a process that does not read the file).

    Example:
        >>> source = FileSource("specs/net.yaml", settle=0.5)
        >>> source.settle, source.reads
        (0.5, True)
    """

    def __init__(self, path: str | os.PathLike[str], *, settle: float = SETTLE) -> None:
        self.path = os.fspath(path)
        self._settle = _settle_seconds(settle)
        self.reader: SettledReader | None = None

    @property
    def reads(self) -> bool:
        """Whether this process reads the file (always, here)."""
        return True

    @property
    def settle(self) -> float:
        """Seconds a changed file must stay the same, on two reads, before it is taken."""
        return self._settle

    @settle.setter
    def settle(self, seconds: float) -> None:
        self._settle = _settle_seconds(seconds)
        if self.reader is not None:
            self.reader.settle = self._settle

    def first(self, watcher: WatcherCore) -> Spec:
        """The revision the file holds now: where a watcher starts when neither it nor its chains are given one.

        Raises:
            SpecError: the file cannot be read or is not a valid spec.
        """
        return load(self.path, allow_imports=watcher.allow_imports, limits=watcher.limits)

    def start(self, watcher: WatcherCore) -> None:
        """Watch from the watcher's revision in force: the file holding it is no change."""
        if self.reads:
            self.reader = SettledReader(self.path, settle=self._settle, limits=watcher.limits,
                                        seen=watcher.spec.text.encode("utf-8"))

    def poll(self, watcher: WatcherCore) -> Spec | str | None:
        """The next revision: the file's next complete save, loaded; None while there is none.

        Raises:
            OSError: the file exists but cannot be read (that state is not read again until it changes).
            SpecError: the save is not a valid spec, or is bigger than ``watcher.limits`` allow.
        """
        raw = self.changed()
        return None if raw is None else self.load(raw, watcher)

    def changed(self) -> bytes | None:
        """The file's bytes once a change is complete (see :class:`SettledReader`), else None.

        Raises:
            OSError: the file exists but cannot be read.
        """
        assert self.reader is not None, "start() the source first"
        return self.reader.poll()

    def load(self, raw: bytes, watcher: WatcherCore) -> Spec:
        """A save of the file, ``raw``, loaded as a revision within the watcher's limits.

        Raises:
            SpecError: ``raw`` is not a valid spec, or is bigger than ``watcher.limits`` allow.
        """
        limits = watcher.limits
        if len(raw) > limits.max_bytes:
            size = self.reader.size if self.reader is not None else None
            raise SpecError([too_big(self.path, size, limits.max_bytes)])
        return loads(raw, source=self.path, allow_imports=watcher.allow_imports, limits=limits)


class WatcherCore:
    """The core of both spec watchers: the chains, their optimizers and stages, the revision in force, the apply.

    A *source* supplies new revisions: :class:`FileSource` (this process reads the file) or the
    distributed watcher's, where rank ``src`` reads it and broadcasts its decision. :meth:`poll`
    diffs every chain against the revision in force at its stage and applies the plans together,
    all or nothing; a rejected revision (what the source or the apply raised) is reported to
    ``on_error``, else logged as a warning, and changes nothing. :class:`SpecWatcher` is this core
    with a :class:`FileSource`; ``chainspec.distributed.DistributedSpecWatcher`` gives it a
    broadcasting source, a lockstep :meth:`_apply` and models wrapped in DDP (:meth:`_named`).

    Args:
        source: where new revisions come from.
        models, optimizer, spec, stage, policy, allow_imports, on_error, settle, limits: as for
            :class:`SpecWatcher` (``models`` is its ``chain_or_chains``).

    Attributes:
        source: where new revisions come from (``path`` is its file).
        spec, limits, error: as for :class:`SpecWatcher`.
        chains, optimizers: the chains revised, by their names in the spec, and each one's optimizer (or None).
        stages: the stage each chain is revised at, by chain name (unless the watcher follows the
            stage each chain records, as the distributed one does).

    Raises:
        SpecError: as for :class:`SpecWatcher`.
        TypeError: as for :class:`SpecWatcher`.
        ValueError: as for :class:`SpecWatcher`, and a bad ``settle``.

    Example:
        >>> import os, tempfile, chainspec
        >>> path = os.path.join(tempfile.mkdtemp(), "net.yaml")
        >>> text = "chainspec: 1\\nchains: {net: {input_shape: [2], nodes: [{id: a, type: relu}]}}\\n"
        >>> with open(path, "w") as f:
        ...     _ = f.write(text)
        >>> net = chainspec.load(path).build()
        >>> watcher = WatcherCore(FileSource(path), net, settle=0)
        >>> with open(path, "w") as f:
        ...     _ = f.write(text.replace("type: relu}", "type: relu}, {id: b, type: tanh}"))
        >>> [(op.kind, op.node_id) for op in watcher.poll().ops]
        [('insert', 'b')]
    """

    #: Exceptions a poll raises rather than reports as a rejected revision (the distributed watcher's
    #: DistributedError: the ranks are out of step, and training must not go on).
    _fatal: tuple[type[Exception], ...] = ()
    #: Whether each poll revises a chain at the stage the chain records then (so that revisions follow
    #: growth done elsewhere; else at ``stage``, else "final"), rather than at the one in ``stages``.
    _follows_chains = False
    #: The logger, and the message, for a rejected revision when there is no ``on_error``.
    _logger = logger
    _warning = "%s: revision not applied, the model is unchanged:\n%s"

    def __init__(self, source: FileSource, models: Any, optimizer: Any = None, *, spec: Spec | None = None,
                 stage: int | str | None = None, policy: str = "keep", allow_imports: Iterable[str] = (),
                 on_error: Callable[[Exception], None] | None = None, settle: float = SETTLE,
                 limits: Limits | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be 'keep' or 'reset', got {policy!r}")
        self._check(models, optimizer)
        source.settle = settle  # checked before anything is read (by every rank alike)
        self.source = source
        self.path = source.path
        self.single = not isinstance(models, Mapping)
        self.policy, self.stage = policy, stage
        self.allow_imports = tuple(allow_imports)
        self.on_error = on_error
        self.error: Exception | None = None
        current = spec if spec is not None else self._recorded_spec(models)
        self.limits = limits_or_default(limits if limits is not None or current is None
                                        else getattr(current, "limits", None))
        self.spec: Spec = current if current is not None else source.first(self)
        self.chains, self.optimizers = self._named(models, optimizer)
        self.stages: dict[str, int | str] = {name: stage if stage is not None else _recorded_stage(chain)
                                             for name, chain in self.chains.items()}
        source.start(self)

    @property
    def settle(self) -> float:
        """Seconds a changed file must stay the same, on two reads, before it is applied."""
        return self.source.settle

    @settle.setter
    def settle(self, seconds: float) -> None:
        self.source.settle = seconds

    # -- what is watched -----------------------------------------------------------------------------
    def _check(self, models: Any, optimizer: Any) -> None:
        """Refuse, before anything is read, what cannot be watched (see :func:`check_chains_and_optimizers`)."""
        check_chains_and_optimizers(models, optimizer)

    @staticmethod
    def _chain_of(model: Any) -> Any:
        """The chain a model stands for (a chain is its own; the distributed watcher unwraps a DDP)."""
        return model

    def _recorded_spec(self, models: Any) -> Spec | None:
        """The revision the chains record (``chain.spec``), if they all record the same one."""
        chains = [self._chain_of(m) for m in (models.values() if isinstance(models, Mapping) else [models])]
        specs = {id(getattr(c, "spec", None)): getattr(c, "spec", None) for c in chains}
        found = next(iter(specs.values())) if len(specs) == 1 else None
        return found if isinstance(found, Spec) else None

    def _named(self, models: Any, optimizer: Any) -> tuple[dict[str, Chain], dict[str, Optimizer | None]]:
        """The chains by their names in the spec, and each one's optimizer.

        One chain named otherwise takes the name of the spec's only chain; any other name the spec
        does not have is a ``ValueError``.
        """
        chains: dict[str, Chain] = {models.name: models} if self.single else dict(models)
        if isinstance(optimizer, Mapping):
            optimizers: dict[str, Optimizer | None] = {name: optimizer.get(name) for name in chains}
        else:
            optimizers = dict.fromkeys(chains, optimizer)
        names = self.spec.chain_names
        if self.single:
            (name, chain), = chains.items()
            if name not in names and len(names) == 1:
                chains, optimizers = {names[0]: chain}, {names[0]: optimizers[name]}
        unknown = [name for name in chains if name not in names]
        if unknown:
            raise ValueError(f"{self.spec.source} has no chain {unknown[0]!r}; it has {', '.join(names)}: "
                             "pass the chains in a dict by their names in the spec")
        return chains, optimizers

    def _stage(self, name: str) -> int | str:
        """The stage chain ``name`` is revised at now."""
        if not self._follows_chains:
            return self.stages[name]
        recorded = getattr(self.chains[name], "stage", None)
        if isinstance(recorded, int):
            return recorded
        return self.stage if self.stage is not None else "final"

    # -- polling ---------------------------------------------------------------------------------------
    def poll(self) -> Plan | PlanSet | None:
        """Apply the file's revision if it changed, the save is complete and it is valid; return its plan, else None.

        Returns the :class:`Plan` applied (a :class:`PlanSet` by chain name when watching several
        chains), possibly empty when only comments or layout changed; None when the file did not
        change, a change is still settling (see ``settle``), the file is being replaced, or it holds
        an invalid revision (then see :attr:`error`). An insert that brings back a node an earlier
        revision removed restores its weights and optimizer state, and the plan says ``(restored)``.
        """
        try:
            new = self.source.poll(self)
            if new is None:
                return None
            applied, spec = self._apply(new)
        except self._fatal:
            raise
        except Exception as exc:  # rejected, and rolled back: training goes on with the revision in force
            self._report(exc)
            return None
        self.spec, self.error = spec, None
        return applied

    def _apply(self, new: Spec | str) -> tuple[Plan | PlanSet, Spec]:
        """Apply revision ``new`` to every chain, all or nothing; return what :meth:`poll` returns, and ``new``."""
        stages = {name: self.spec.stage_index(self._stage(name)) for name in self.chains}
        plans = diff_all(self.spec, new, chains=self.chains, stage={n: (s, s) for n, s in stages.items()},
                         live=self.chains)
        # A revision that changes no chain (comments, layout) leaves the optimizers alone, even
        # with policy="reset": it is no growth step. Applying it still records the new spec.
        apply_plans([(plans[name], chain, self.optimizers[name]) for name, chain in self.chains.items()],
                    policy="keep" if plans.is_empty else self.policy)
        self.stages = {name: plan.new_stage for name, plan in plans.items()}
        return (next(iter(plans.values())) if self.single else plans), new

    def _report(self, exc: Exception) -> None:
        self.error = exc
        if self.on_error is not None:
            self.on_error(exc)
        elif self.source.reads:
            self._logger.warning(self._warning, self.path, exc)


def _recorded_stage(chain: Chain) -> int | str:
    """The stage ``chain`` records (set by ``Spec.build`` and each apply), else ``"final"``."""
    recorded = getattr(chain, "stage", None)
    return recorded if isinstance(recorded, int) else "final"


class SpecWatcher(WatcherCore):
    """Watches a spec file and applies each complete, valid revision to one chain (or several) while training.

    Args:
        path: the spec file.
        chain_or_chains: the live chain, or a dict of chains by their names in the spec.
        optimizer: the optimizer training them: one optimizer, or a dict by chain name.
        spec: the revision the chains run now; by default ``chain.spec`` (set by ``Spec.build``, an
            apply or a checkpoint load), else the file as it is now.
        stage: the stage to build each revision at; by default the chain's ``stage`` (set by
            ``Spec.build``), else ``"final"``.
        policy: ``"keep"`` or ``"reset"`` optimizer state of surviving parameters (see ``Plan.apply``).
        allow_imports: module prefixes import-path node types may use (as in :func:`chainspec.load`).
        on_error: called with the exception when a revision is rejected; by default it is logged as a
            warning on the ``chainspec.watch`` logger.
        settle: seconds a changed file must stay the same, on two reads, before it is applied
            (default :data:`SETTLE`, 0.3 s), so that a save written in several steps is never taken
            half-written; 0 reads twice at once.
        limits: the bounds a revision is loaded with (see :class:`chainspec.Limits`); by default
            those the revision in force was loaded with.

    Attributes:
        spec: the revision in force.
        limits: the bounds each revision is read and loaded with.
        error: the exception that rejected the last revision, or None after a successful one.

    Raises:
        SpecError: no revision is given and the file cannot be read or is not a valid spec.
        TypeError: ``chain_or_chains`` is not a chain or a dict of chains, or ``optimizer`` not an
            optimizer (or a dict of them).
        ValueError: a bad ``policy``, or a chain the spec does not have.

    Example:
        >>> watcher = SpecWatcher("specs/net.yaml", net, optimizer=opt)  # doctest: +SKIP
        >>> for step in range(steps):  # doctest: +SKIP
        ...     if (plan := watcher.poll()) is not None:
        ...         print(plan)
        ...     train_step()
    """

    def __init__(self, path: str | os.PathLike[str], chain_or_chains: Chain | Mapping[str, Chain],
                 optimizer: Optimizer | Mapping[str, Optimizer] | None = None, *, spec: Spec | None = None,
                 stage: int | str | None = None, policy: str = "keep", allow_imports: Iterable[str] = (),
                 on_error: Callable[[Exception], None] | None = None, settle: float = SETTLE,
                 limits: Limits | None = None) -> None:
        super().__init__(FileSource(path), chain_or_chains, optimizer, spec=spec, stage=stage, policy=policy,
                         allow_imports=allow_imports, on_error=on_error, settle=settle, limits=limits)
