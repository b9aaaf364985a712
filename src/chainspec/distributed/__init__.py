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

One module per job: ``groups`` (process groups, barriers, object
collectives), ``tensors`` (broadcasting and comparing parameters), ``ddp``
(wrapping and re-wrapping), ``lockstep`` (:func:`apply_plan`, :func:`grow`),
``watch`` (:class:`DistributedSpecWatcher`), ``grower``
(:class:`DistributedGrower`) and ``selfcheck`` (:func:`main`, run by
``python -m chainspec.distributed``).

Example:
    >>> import chainspec.distributed as csd  # doctest: +SKIP
    >>> ddp = csd.wrap(chain)  # doctest: +SKIP
    >>> result = csd.grow(spec, ddp, optimizer)  # stage k -> k + 1 on every rank  # doctest: +SKIP
    >>> ddp = result.model  # the re-wrapped DistributedDataParallel  # doctest: +SKIP
"""

from __future__ import annotations

from .ddp import current, rewrap, unwrap, wrap
from .ddp import ddp_kwargs as ddp_kwargs
from .groups import DistributedError, barrier, broadcast_text, is_distributed
from .groups import Timeout as Timeout
from .grower import DistributedGrower
from .lockstep import Broadcast as Broadcast
from .lockstep import LockstepResult, apply_plan, grow
from .selfcheck import main as main
from .tensors import assert_in_sync, broadcast_module, broadcast_optimizer_state
from .watch import DistributedSpecWatcher
from .watch import logger as logger

__all__ = [
    "DistributedError",
    "DistributedGrower",
    "DistributedSpecWatcher",
    "LockstepResult",
    "apply_plan",
    "assert_in_sync",
    "barrier",
    "broadcast_module",
    "broadcast_optimizer_state",
    "broadcast_text",
    "current",
    "grow",
    "is_distributed",
    "rewrap",
    "unwrap",
    "wrap",
]
