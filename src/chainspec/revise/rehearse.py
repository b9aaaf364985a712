"""What ``diff`` checks before it hands out a plan: the preparation ``apply`` would make, on stand-ins.

A plan is a promise: whatever ``plan.apply`` would refuse for reasons found in the two specs,
``diff`` refuses first, located at the node. Two of apply's preparation steps need no live chain:

* the shape check of the whole new chain (``apply.shape_check``);
* ``init: preserve``: the sweep apply runs (``preserve.preserve_plan``), on modules built from the
  specs (the nodes it initialises on the CPU, every other node on the meta device), with torch's
  random number generator left as it was.

Given the optimizer (``diff(..., optimizer=opt)``), it also checks the ``optim`` overrides of the
new nodes against it, as apply does. What needs the live chain is checked when the plan is
applied: the store of removed nodes (an insert it restores is not an identity), the optimizer's
groups, and the memory free on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from .._errors import SpecError
from ..build.modules import build_module, on_meta
from ..build.ties import TieError, planned_tie
from ..read.resolve import Leaf, tree_key
from .apply import override_problems, shape_check
from .preserve import preserve_plan

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from .ops import Revising


def rehearse(plan: Revising, optimizer: Optimizer | None = None) -> None:
    """Refuse, as ``plan.apply`` would, a plan whose new chain does not shape-check or whose
    ``init: preserve`` cannot keep the function; inserts marked restored are not identities. Given
    the ``optimizer`` the chain trains with, refuse ``optim`` overrides it cannot take, too.
    Records on the plan whether the chain's output keeps its units (``plan.same_output``).

    Raises:
        SpecError: located at the node (its ``init`` for a preserve that cannot hold).

    Example:
        >>> import chainspec
        >>> old = chainspec.loads("chainspec: 1\\nchains: {n: {input_shape: [4], nodes: ["
        ...                       "{id: fc, type: linear, args: {in_features: 4, out_features: 4}}]}}")
        >>> new = chainspec.loads("chainspec: 1\\nchains: {n: {input_shape: [4], nodes: [{id: fc, "
        ...                       "type: linear, args: {in_features: 4, out_features: 2}, init: preserve}]}}")
        >>> try:
        ...     chainspec.diff(old, new)
        ... except chainspec.SpecError as exc:
        ...     print(str(exc).partition(".init: ")[2][:66])
        init: preserve cannot shrink Linear in node 'fc' (4→4 becomes 4→2)
    """
    if plan.is_empty and plan.same_input:
        return
    shape_check(plan, None, remember=True)  # apply reuses it
    if optimizer is not None:
        problems = override_problems(plan, optimizer)
        if problems:
            raise SpecError(problems)
    preserving = {op.node_id for op in plan.ops if op.init == "preserve" and op.kind in ("insert", "replace")
                  and not op.restored}
    if not preserving:
        return
    new_nodes = {node.id: node for node in plan.new_nodes}
    old_nodes = {node.id: node for node in plan.old_nodes}
    stand_ins: dict[object, nn.Module] = {}
    built: dict[str, nn.Module] = {}

    def new_module(node_id: str) -> nn.Module:
        tree = new_nodes[node_id].tree
        if node_id in preserving:
            if node_id not in built:
                built[node_id] = build_module(tree)
                _tie_stand_in(built[node_id], new_nodes[node_id], preserving, new_module)
            return built[node_id]
        key = tree_key(tree)
        if key not in stand_ins:  # only its shapes are read: one meta-device build per definition
            with on_meta():
                stand_ins[key] = build_module(tree)
        return stand_ins[key]

    with torch.random.fork_rng(devices=[]):  # replicas are drawn: the caller's random stream stays as it was
        sweep = preserve_plan(plan, new_module, lambda node_id: build_module(old_nodes[node_id].tree),
                              restored={op.node_id for op in plan.ops if op.restored})
    plan.same_output = not sweep.output_changed  # new units at the end: the output is not the old one


def _tie_stand_in(module: nn.Module, node: Leaf, preserving: set[str], new_module: Callable[[str], nn.Module]) -> None:
    """Tie a stand-in's parameters to those of the preserve nodes it borrows from, as apply ties the
    new modules before its sweep: the sweep checks that a tied parameter is widened one way."""
    for path, ref in node.ties.items():
        owner_id = ref.partition(".")[0]
        if owner_id in preserving:
            try:
                holder, name, param = planned_tie(module, path, ref, new_module, node.id)
            except TieError:
                continue  # apply reports it, at the tie
            setattr(holder, name, param)
