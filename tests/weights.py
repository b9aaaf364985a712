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


def assert_same_first_step(net: nn.Module, opt: torch.optim.Optimizer, reference: nn.Module,
                           states: dict[str, dict[str, torch.Tensor]], x: torch.Tensor) -> None:
    """``reference`` (a model built at the grown size), given ``net``'s weights and, per parameter name,
    the optimizer state in ``states``, takes the same AdamW step on ``x`` as ``net`` with ``opt``.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> opt = adamw_steps(net, torch.ones(1, 2), steps=1)
        >>> states = {name: {k: v.clone() for k, v in opt.state[p].items()} for name, p in net.named_parameters()}
        >>> assert_same_first_step(net, opt, nn.Linear(2, 2), states, torch.ones(1, 2))
    """
    reference.load_state_dict(net.state_dict())
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=opt.param_groups[0]["lr"])
    for name, param in reference.named_parameters():
        ref_opt.state[param] = {key: value.clone() for key, value in states[name].items()}
    for model, optimizer in ((net, opt), (reference, ref_opt)):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    for (key, a), (_, b) in zip(net.state_dict().items(), reference.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=key)
