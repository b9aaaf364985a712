"""Process-group basics: whether a group is up, ranks, barriers with a timeout, object broadcasts and gathers.

Every collective here runs under :func:`_collective`, which turns a failed or timed-out collective
into a :class:`DistributedError` naming the step; without an initialised process group each helper
returns at once with its single-process answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .._errors import ChainspecError

#: A barrier's timeout: seconds, a ``timedelta``, or None for the process group's own.
Timeout = timedelta | float | None


class DistributedError(ChainspecError, RuntimeError):
    """The ranks disagree, fell out of step, or a collective timed out.

    Raised on every rank that detects it; when the ranks merely disagree (different specs, stages or
    batch sizes) it is raised before any rank changes its model.

    Example:
        >>> issubclass(DistributedError, RuntimeError)
        True
    """


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
