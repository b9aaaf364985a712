"""The one transaction core: all-or-nothing changes to chains, optimizers, torch's RNG and anything else.

``Plan.apply``, ``PlanSet.apply``, ``Grower`` (a growth step, a fade, a state load) and the
distributed lockstep all change live state in several places at once. Each opens a
:class:`Transaction`, *protects* what it is about to change (a chain, an optimizer, its own
fields), makes the changes, and either reaches the end of the ``with`` block (commit: the
snapshots are dropped) or raises, ``KeyboardInterrupt`` included, and everything protected is
put back exactly, newest first. Torch's RNG state and its default-device and grad modes are
protected from the start, so a failed change does not even consume random numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

import torch

from . import optim as _optim
from .torchstate import FunctionModes

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from ..build.chain import Chain


class RngSnapshot:
    """torch's RNG states and its function modes (default device, grad mode), restorable exactly.

    An interrupt as a ``with torch.device("meta")`` block ends can skip its exit and leave every
    later tensor on the meta device; restoring the modes undoes that too.

    Example:
        >>> saved = RngSnapshot()
        >>> a = torch.rand(1)
        >>> saved.restore()
        >>> bool(torch.rand(1) == a)
        True
    """

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.modes = FunctionModes()

    def restore(self) -> None:
        """Put the RNG states and modes back."""
        self.modes.restore()
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


class Transaction:
    """A set of changes that happen all together or not at all.

    Protect each thing before changing it; the protections are restored, newest first, by
    :meth:`rollback` (and when a ``with`` block raises). A restore cut short by a second exception
    (a second Ctrl-C) runs again: restores set state, they never adjust it. Code that must be safe
    against an interrupt at *any* line calls ``rollback`` from ``except BaseException:`` rather
    than using ``with``: an interrupt on a line of ``__exit__``, after the last change, would
    otherwise escape a change that did complete.

    Example:
        >>> from torch import nn
        >>> from chainspec.build.chain import Chain
        >>> chain = Chain([("a", nn.ReLU())])
        >>> try:
        ...     with Transaction() as change:
        ...         change.protect_chain(chain)
        ...         _ = chain.append("b", nn.Tanh())
        ...         raise RuntimeError("something failed half-way")
        ... except RuntimeError:
        ...     pass
        >>> chain.ids()
        ['a']
    """

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self._undo.append(RngSnapshot().restore)
        self._protected: set[int] = set()

    def protect(self, restore: Callable[[], None]) -> None:
        """Register ``restore``, to be called if the transaction fails."""
        self._undo.append(restore)

    def protect_chain(self, chain: Chain) -> None:
        """Protect a chain's links, modules and revision (once per chain, however often asked)."""
        if id(chain) not in self._protected:
            self._protected.add(id(chain))
            self._undo.append(chain.snapshot().restore)

    def protect_optimizer(self, optimizer: Optimizer | None) -> None:
        """Protect an optimizer's groups and state (once per optimizer; None is ignored)."""
        if optimizer is not None and id(optimizer) not in self._protected:
            self._protected.add(id(optimizer))
            self._undo.append(_optim.snapshot(optimizer).restore)

    def rollback(self) -> None:
        """Restore everything protected, newest first."""
        for restore in reversed(self._undo):
            try:
                restore()
            except BaseException:
                restore()

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None:
            self.rollback()
