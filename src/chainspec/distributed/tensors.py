"""Tensors across ranks: broadcast a module's parameters and buffers from one rank, check they are equal everywhere."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .ddp import unwrap
from .groups import DistributedError, _collective, _differing, _gather, _rank, _src_index, is_distributed


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


def broadcast_optimizer_state(optimizer: Any, params: Iterable[Tensor], *, src: int = 0,
                              group: Any = None) -> int:
    """Copy rank ``src``'s optimizer state of ``params`` (its tensors, in place) to every rank.

    A lockstep revision broadcasts the parameters it created; a widening with ``init: preserve``
    also carried optimizer moments to them along a random layout drawn on each rank, so those
    moments are broadcast with them. The ranks first compare what each holds, so state that
    differs in structure is a :class:`DistributedError`, not a hang.

    Returns:
        The number of state tensors broadcast.

    Example:
        >>> broadcast_optimizer_state(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), [])
        0
    """
    if not is_distributed():
        return 0
    tensors = [(i, key, value) for i, param in enumerate(params)
               for key, value in sorted(optimizer.state.get(param, {}).items())
               if isinstance(value, Tensor)]
    layout = [(i, key, tuple(t.shape), str(t.dtype)) for i, key, t in tensors]
    layouts = _gather(layout, group=group, where="comparing the optimizer state to broadcast")
    here = _src_index(src, group)
    bad = _differing(layouts, here)
    if bad:
        raise DistributedError(f"the ranks hold different optimizer state for the new parameters: rank {src} "
                               f"has {layouts[here]}, rank {bad[0]} has {layouts[bad[0]]}")
    with torch.no_grad(), _collective("broadcasting optimizer state", group):
        for _, _, tensor in tensors:
            dist.broadcast(tensor, src=src, group=group)
    return len(tensors)


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
