"""Helpers the widening tests share: a few AdamW steps, and which old row each new row copies."""

from __future__ import annotations

import torch
from torch import nn


def adamw_steps(net: nn.Module, x: torch.Tensor, steps: int = 3, lr: float = 1e-2) -> torch.optim.AdamW:
    """An AdamW optimizer for ``net`` after ``steps`` steps on ``mean(net(x) ** 2)``, so that it has moments.

    Example:
        >>> opt = adamw_steps(nn.Linear(2, 2), torch.ones(1, 2), steps=1)
        >>> len(opt.state)
        2
    """
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    return opt


def copies_of(new_rows: torch.Tensor, old_rows: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """For each row of ``new_rows``, the index of the row of ``old_rows`` it equals (``exact``, or up to
    rounding); each must have exactly one.

    Example:
        >>> copies_of(torch.tensor([[1.0], [2.0], [1.0]]), torch.tensor([[1.0], [2.0]])).tolist()
        [0, 1, 0]
    """
    if exact:
        equal = (new_rows[:, None, :] == old_rows[None, :, :]).all(-1)
    else:
        equal = torch.isclose(new_rows[:, None, :], old_rows[None, :, :], rtol=1e-5, atol=1e-7).all(-1)
    assert bool((equal.sum(1) == 1).all()), "every new row copies exactly one old row"
    return equal.float().argmax(1)
