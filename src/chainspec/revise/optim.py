"""Optimizer surgery: parameters join and leave param groups, and their state goes with them.

Works on any ``torch.optim.Optimizer`` that keeps the standard layout
(``param_groups`` of dicts with a ``params`` list, ``state`` keyed by
parameter): SGD with momentum, Adam and AdamW are tested. Everything here is
linear in the optimizer's size per call, never per parameter.

The group rule (documented in docs/revisions.md):

1. A replaced node whose ``optim`` override is the same in both revisions
   puts its new parameters in the group that held its old ones.
2. Otherwise the *base group* is the group of the nearest node before it in
   the new chain that keeps its parameters, has parameters in the optimizer
   and has no ``optim`` override; failing that the nearest such node after
   it; failing that ``param_groups[0]``.
3. A node with an ``optim`` override uses a group whose hyperparameters are
   the base group's with the override applied: an existing group with exactly
   those values, else a new one (``add_param_group``).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

#: Group keys that are not hyperparameters.
_NOT_HYPER = ("params", "param_names")


@dataclass
class OptimizerSnapshot:
    """Everything :func:`restore` needs to put an optimizer back exactly as it was.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(2))
        >>> opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
        >>> snap = snapshot(opt)
        >>> remove_params(opt, [p])
        >>> snap.restore()
        >>> opt.param_groups[0]["params"][0] is p
        True
    """

    optimizer: Optimizer
    groups: list[dict[str, Any]]
    contents: list[dict[str, Any]]
    state: dict[Any, Any]

    def restore(self) -> None:
        """Put the groups (the same dict objects, with their old contents) and the state back."""
        self.optimizer.param_groups[:] = self.groups
        for group, contents in zip(self.groups, self.contents, strict=True):
            group.clear()
            group.update(contents)
        self.optimizer.state.clear()
        self.optimizer.state.update(self.state)


def snapshot(optimizer: Optimizer) -> OptimizerSnapshot:
    """Record an optimizer's groups and state (shallowly: surgery never mutates a tensor or a state dict)."""
    groups = list(optimizer.param_groups)
    contents = []
    for group in groups:
        saved = dict(group)
        for key in _NOT_HYPER:
            if key in saved:
                saved[key] = list(saved[key])
        contents.append(saved)
    return OptimizerSnapshot(optimizer, groups, contents, dict(optimizer.state))


def group_of_params(optimizer: Optimizer) -> dict[int, int]:
    """Map ``id(param)`` to the index of the group holding it.

    Example:
        >>> a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
        >>> group_of_params(opt)[id(b)]
        1
    """
    return {id(p): i for i, group in enumerate(optimizer.param_groups) for p in group["params"]}


def hyper(group: Mapping[str, Any]) -> dict[str, Any]:
    """A group's hyperparameters (everything but ``params`` and ``param_names``)."""
    return {k: v for k, v in group.items() if k not in _NOT_HYPER}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and bool(a == b)


def same_hyper(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """True when two hyperparameter dicts have the same keys and equal values (tensors compared by value).

    Example:
        >>> same_hyper({"lr": 0.1, "betas": (0.9, 0.99)}, {"lr": 0.1, "betas": [0.9, 0.99]})
        True
    """
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


def check_override(optimizer: Optimizer, override: Mapping[str, Any]) -> list[tuple[str, str, str | None]]:
    """Problems with a node's ``optim`` override for this optimizer, as ``(key, message, hint)``.

    Example:
        >>> opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
        >>> check_override(opt, {"lrr": 0.1})[0][2]
        "did you mean 'lr'?"
    """
    known = hyper(optimizer.param_groups[0]) if optimizer.param_groups else dict(optimizer.defaults)
    problems = []
    for key, value in override.items():
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"{type(optimizer).__name__} has {', '.join(known)}"
            problems.append((key, f"{type(optimizer).__name__} has no hyperparameter {key!r}", hint))
            continue
        current = known[key]
        if isinstance(current, tuple) and not (isinstance(value, list) and len(value) == len(current)):
            problems.append((key, f"{key} must be a list of {len(current)} numbers, got {value!r}", None))
        elif isinstance(current, bool) != isinstance(value, bool) and current is not None:
            problems.append((key, f"{key} must be {'true or false' if isinstance(current, bool) else 'a number'}, "
                                  f"got {value!r}", None))
    return problems


def with_override(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """The base group's hyperparameters with a node's override applied (lists become tuples, like betas).

    Example:
        >>> with_override({"lr": 0.1, "betas": (0.9, 0.999)}, {"betas": [0.0, 0.99]})
        {'lr': 0.1, 'betas': (0.0, 0.99)}
    """
    out = hyper(base)
    for key, value in override.items():
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def remove_params(optimizer: Optimizer, params: Iterable[Tensor]) -> None:
    """Take parameters out of their groups and drop their state, in one pass over the optimizer.

    Example:
        >>> p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([p, q], lr=0.1)
        >>> remove_params(opt, [p])
        >>> opt.param_groups[0]["params"] == [q]
        True
    """
    dead = {id(p): p for p in params}
    if not dead:
        return
    for group in optimizer.param_groups:
        members = group["params"]
        if not any(id(p) in dead for p in members):
            continue
        keep = [i for i, p in enumerate(members) if id(p) not in dead]
        # New lists, never in-place edits: a snapshot holds the old ones.
        if "param_names" in group:
            names = group["param_names"]
            group["param_names"] = [names[i] for i in keep]
        group["params"] = [members[i] for i in keep]
    for p in dead.values():
        optimizer.state.pop(p, None)


def add_params(optimizer: Optimizer, named: Sequence[tuple[str, Tensor]], group: dict[str, Any]) -> None:
    """Append parameters to an existing group (keeping ``param_names`` in step when the optimizer has them)."""
    group["params"] = [*group["params"], *(p for _, p in named)]
    if "param_names" in group:
        group["param_names"] = [*group["param_names"], *(n for n, _ in named)]


def group_with(optimizer: Optimizer, values: Mapping[str, Any]) -> dict[str, Any]:
    """The group whose hyperparameters are exactly ``values``, added (empty) if there is none."""
    for group in optimizer.param_groups:
        if same_hyper(hyper(group), values):
            return group
    new_group: dict[str, Any] = {**values, "params": []}
    if optimizer.param_groups and "param_names" in optimizer.param_groups[0]:
        new_group["param_names"] = []
    optimizer.add_param_group(new_group)
    return optimizer.param_groups[-1]


@dataclass
class NodeParams:
    """One node of the new chain, as the group rule sees it.

    Attributes:
        node_id: the node's id.
        params: its parameters in the new chain, with their names in the chain.
        new: True when the parameters are new (an inserted or replaced node) and must join the optimizer.
        old_params: for a replaced node, the parameters it had before.
        override: the node's ``optim`` override in the new revision.
        same_override: True when the override did not change between the revisions.
        regroup: True for a surviving node whose override changed: its parameters move group.
    """

    node_id: str
    params: list[tuple[str, Tensor]]
    new: bool = False
    old_params: list[Tensor] = field(default_factory=list)
    override: Mapping[str, Any] = field(default_factory=dict)
    same_override: bool = True
    regroup: bool = False


@dataclass
class Placement:
    """Where some parameters go: the base group's index and the override to apply to it."""

    node: NodeParams
    base: int
    override: Mapping[str, Any]


def place(optimizer: Optimizer, nodes: Sequence[NodeParams]) -> list[Placement]:
    """Apply the group rule to every node that needs a group, in one pass each way over the chain.

    Example:
        >>> a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([{"params": [a]}, {"params": [], "lr": 0.5}], lr=0.1)
        >>> [p.base for p in place(opt, [NodeParams("x", [("x.w", a)]), NodeParams("y", [("y.w", b)], new=True)])]
        [0]
    """
    where = group_of_params(optimizer)

    def anchor(node: NodeParams) -> int | None:
        if node.new or node.regroup or node.override:
            return None
        for _, p in node.params:
            if id(p) in where:
                return where[id(p)]
        return None

    before: list[int | None] = []
    last: int | None = None
    for node in nodes:
        before.append(last)
        found = anchor(node)
        last = found if found is not None else last
    after: list[int | None] = [None] * len(nodes)
    last = None
    for i in range(len(nodes) - 1, -1, -1):
        after[i] = last
        found = anchor(nodes[i])
        last = found if found is not None else last
    out = []
    for i, node in enumerate(nodes):
        if not (node.new or node.regroup) or not node.params:
            continue
        own = next((where[id(p)] for p in node.old_params if id(p) in where), None)
        if node.new and node.same_override and own is not None:
            out.append(Placement(node, own, {}))  # rule 1: the override, if any, is already the group's
            continue
        base = before[i] if before[i] is not None else after[i] if after[i] is not None else 0
        out.append(Placement(node, base, node.override))
    return out


def carry_out(optimizer: Optimizer, removed: Iterable[Tensor], placements: Sequence[Placement]) -> None:
    """Remove parameters, then put each placement's parameters in its group."""
    moving = [p for pl in placements if pl.node.regroup for _, p in pl.node.params]
    remove_params(optimizer, list(removed))
    # Moving parameters keep their state: take them out of their groups only.
    saved = {p: optimizer.state[p] for p in moving if p in optimizer.state}
    remove_params(optimizer, moving)
    optimizer.state.update(saved)
    bases = [optimizer.param_groups[pl.base] if optimizer.param_groups else None for pl in placements]
    for pl, base in zip(placements, bases, strict=True):
        if base is None:
            optimizer.add_param_group({"params": [p for _, p in pl.node.params], **dict(pl.override)})
            continue
        group = group_with(optimizer, with_override(base, pl.override)) if pl.override else base
        add_params(optimizer, pl.node.params, group)


#: Optimizer state keys that are moments of the gradient, and their power: a weight made as
#: ``c * old`` gets ``c ** power`` times the old moment (Staged training's rule, Shen et al. 2022:
#: doubling width halves first moments and quarters second moments).
MOMENT_POWERS: dict[str, int] = {
    "exp_avg": 1, "momentum_buffer": 1,  # Adam, AdamW, NAdam, RAdam, Adamax; SGD
    "exp_avg_sq": 2, "max_exp_avg_sq": 2, "square_avg": 2, "sum": 2,  # Adam(W) (amsgrad), RMSprop, Adagrad
    "exp_inf": 1, "grad_avg": 1,  # Adamax's infinity norm scales with the gradient; RMSprop centred
}


def carried_state(optimizer: Optimizer, carries: Iterable[Any]) -> list[tuple[Tensor, dict[str, Any]]]:
    """The optimizer state of each new parameter made from an old one (``revise.widen.Carry``).

    A moment tensor (:data:`MOMENT_POWERS`) shaped like the old parameter is mapped as the weight was,
    ``gather(moment) * factor ** power``; a step count (a scalar) is copied; any other tensor is left
    out, so the optimizer starts it afresh. A new parameter whose source has no state gets none.
    Reads the optimizer only.

    Example:
        >>> from chainspec.revise.widen import Carry
        >>> old = torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.Adam([old])
        >>> old.sum().backward(); opt.step()
        >>> new = torch.nn.Parameter(torch.ones(4))
        >>> halves = Carry(new, old, lambda t: t[torch.tensor([0, 1, 0, 1])], 0.5)
        >>> [(p is new, (s["exp_avg_sq"] / opt.state[old]["exp_avg_sq"][0]).tolist())
        ...  for p, s in carried_state(opt, [halves])]
        [(True, [0.25, 0.25, 0.25, 0.25])]
    """
    out: list[tuple[Tensor, dict[str, Any]]] = []
    for carry in carries:
        state = optimizer.state.get(carry.old)
        if not state:
            continue
        moved: dict[str, Any] = {}
        for key, value in state.items():
            if not isinstance(value, Tensor):
                moved[key] = copy.deepcopy(value)
            elif value.dim() == 0 or value.shape != carry.old.shape:
                if value.numel() == 1:
                    moved[key] = value.clone()  # a step count
            elif key in MOMENT_POWERS:
                moved[key] = carry.apply(value.detach(), MOMENT_POWERS[key]).to(value.dtype)
        out.append((carry.new, moved))
    return out


def clear_state(optimizer: Optimizer, params: Iterable[Tensor]) -> None:
    """Drop the optimizer state (moments, step counts) of some parameters: the ``reset`` policy."""
    for p in params:
        optimizer.state.pop(p, None)


def sort_params(optimizer: Optimizer, order: Mapping[int, int]) -> None:
    """Put the parameters listed in ``order`` (``id(param) -> rank``) in rank order within each group.

    Other parameters keep their slots, so an optimizer shared with another chain is left alone; a
    revised chain's parameters end up in the order a fresh build of the revised spec would give.

    Example:
        >>> a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([b, a], lr=0.1)
        >>> sort_params(opt, {id(a): 0, id(b): 1})
        >>> opt.param_groups[0]["params"][0] is a
        True
    """
    for group in optimizer.param_groups:
        members = group["params"]
        slots = [i for i, p in enumerate(members) if id(p) in order]
        ranked = sorted(slots, key=lambda i: order[id(members[i])])
        if ranked == slots:
            continue
        permutation = list(range(len(members)))
        for slot, source in zip(slots, ranked, strict=True):
            permutation[slot] = source
        group["params"] = [members[i] for i in permutation]
        if "param_names" in group:
            names = group["param_names"]
            group["param_names"] = [names[i] for i in permutation]
