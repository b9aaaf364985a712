"""``SpecWatcher``: apply each complete, valid save of a spec file to the live model.

``poll()`` is meant to be called every training step: when the file has not
changed it costs one ``stat()``. When it has, the new text is validated,
diffed against the revision in force and applied, all or nothing. An invalid
revision (a half-saved file, a typo, a channel mismatch) is reported with its
``file:line:col`` and leaves the model untouched; the next valid save is
diffed against the last revision that was applied.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from ._apply import apply_plans
from ._diff import Plan, PlanSet, diff
from ._errors import SpecError
from ._spec import Spec, loads
from ._yaml import MAX_BYTES, read_head, too_big

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from ._chain import Chain

logger = logging.getLogger("chainspec.watch")


class SpecWatcher:
    """Watches a spec file and applies each valid revision to one chain (or several) while training.

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
        settle: seconds a change must be old before it is read, for editors that write in several steps.

    Attributes:
        spec: the revision in force.
        error: the exception that rejected the last revision, or None after a successful one.

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
                 on_error: Callable[[Exception], None] | None = None, settle: float = 0.0) -> None:
        if policy not in ("keep", "reset"):
            raise ValueError(f"policy must be 'keep' or 'reset', got {policy!r}")
        self.path = os.fspath(path)
        self.single = not isinstance(chain_or_chains, Mapping)
        self.chains: dict[str, Chain] = ({chain_or_chains.name: chain_or_chains} if self.single  # type: ignore[union-attr]
                                         else dict(chain_or_chains))  # type: ignore[arg-type]
        if isinstance(optimizer, Mapping):
            self.optimizers: dict[str, Optimizer | None] = {name: optimizer.get(name) for name in self.chains}
        else:
            self.optimizers = dict.fromkeys(self.chains, optimizer)
        self.policy = policy
        self.allow_imports = tuple(allow_imports)
        self.on_error = on_error
        self.settle = settle
        self.error: Exception | None = None
        self._signature: tuple[int, int, int] | None = None
        self._seen: bytes | None = None
        current = spec if spec is not None else self._spec_of_chains()
        if current is None:
            raw = self._read_bytes()
            current = loads(raw, source=self.path, allow_imports=self.allow_imports)
            self._seen = raw
            self._signature = self._stat_signature()
        elif self._read_text_or_none() == current.text:
            self._seen = current.text.encode("utf-8")
            self._signature = self._stat_signature()
        self.spec: Spec = current
        self.stages = {name: self._stage_of(chain, stage) for name, chain in self.chains.items()}
        if self.single:
            # One chain: its name in the spec is the spec's only chain when the chain was named otherwise.
            (name, chain), = self.chains.items()
            if name not in current.chain_names and len(current.chain_names) == 1:
                self.chains = {current.chain_names[0]: chain}
                self.optimizers = {current.chain_names[0]: self.optimizers[name]}
                self.stages = {current.chain_names[0]: self.stages[name]}
        unknown = [name for name in self.chains if name not in current.chain_names]
        if unknown:
            raise ValueError(f"{current.source} has no chain {unknown[0]!r}; it has {', '.join(current.chain_names)}: "
                             "pass the chains in a dict by their names in the spec")

    def _spec_of_chains(self) -> Spec | None:
        specs = {id(getattr(c, "spec", None)): getattr(c, "spec", None) for c in self.chains.values()}
        found = next(iter(specs.values())) if len(specs) == 1 else None
        return found if isinstance(found, Spec) else None

    def _stage_of(self, chain: Chain, stage: int | str | None) -> int | str:
        if stage is not None:
            return stage
        recorded = getattr(chain, "stage", None)
        return recorded if isinstance(recorded, int) else "final"

    def _stat_signature(self) -> tuple[int, int, int] | None:
        return stat_signature(self.path)

    def _read_bytes(self) -> bytes:
        # Never more than a spec may hold: a watched file replaced by a huge one (or a link to
        # /dev/zero) must not be read whole into a training process, nor a FIFO block it.
        return read_head(self.path)[0]

    def _size(self) -> int | None:
        try:
            size = os.stat(self.path).st_size
        except OSError:
            return None
        return size if size > MAX_BYTES else None

    def _read_text_or_none(self) -> str | None:
        try:
            return self._read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def poll(self) -> Plan | PlanSet | None:
        """Apply the file's revision if it changed and is valid; return its plan, else None.

        Returns the :class:`Plan` applied (a :class:`PlanSet` by chain name when watching several
        chains), possibly empty when only comments or layout changed; None when the file did not
        change, is being replaced, or holds an invalid revision (then see :attr:`error`).
        """
        try:
            st = os.stat(self.path)
        except OSError:
            return None  # between an editor's unlink and rename: try again next time
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self._signature:
            return None
        if self.settle and time.time() - st.st_mtime < self.settle:
            return None
        self._signature = signature
        try:
            raw = self._read_bytes()
        except OSError as exc:
            self._report(exc)
            return None
        if raw == self._seen:
            return None
        self._seen = raw
        return self._revise(raw)

    def _revise(self, raw: bytes) -> Plan | PlanSet | None:
        try:
            if len(raw) > MAX_BYTES:
                raise SpecError([too_big(os.fspath(self.path), self._size())])
            new = loads(raw, source=self.path, allow_imports=self.allow_imports)
            plans = PlanSet()
            for name in self.chains:
                stage = self.spec.stage_index(self.stages[name])
                plans[name] = diff(self.spec, new, chain=name, stage=(stage, stage))
            # A revision that changes no chain (comments, layout) leaves the optimizers alone, even
            # with policy="reset": it is no growth step. Applying it still records the new spec.
            apply_plans([(plans[name], chain, self.optimizers[name]) for name, chain in self.chains.items()],
                        policy="keep" if plans.is_empty else self.policy)
        except Exception as exc:  # rejected, and rolled back: training goes on with the revision in force
            self._report(exc)
            return None
        self.spec = new
        self.stages = {name: plan.new_stage for name, plan in plans.items()}
        self.error = None
        return next(iter(plans.values())) if self.single else plans

    def _report(self, exc: Exception) -> None:
        self.error = exc
        if self.on_error is not None:
            self.on_error(exc)
        else:
            logger.warning("%s: revision not applied, the model is unchanged:\n%s", self.path, exc)


def stat_signature(path: str | os.PathLike[str]) -> tuple[int, int, int] | None:
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
