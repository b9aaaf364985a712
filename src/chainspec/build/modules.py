"""One expanded node into its ``nn.Module``: the only place a node type's factory is called."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ..read.resolve import Group, ResolvedNode, Tree
from ..types.layers import Composite


def build_module(tree: Tree) -> nn.Module:
    """Instantiate the module for one expanded node (under whatever default device is active)."""
    if isinstance(tree, Group):
        return Composite(tree.type, [(part_id, build_module(sub)) for part_id, sub in tree.parts])
    module = tree.factory(**tree.args)
    if not isinstance(module, nn.Module):
        raise TypeError(f"node type {tree.type!r} returned {type(module).__name__}, not an nn.Module")
    if "_modules" not in module.__dict__:  # a subclass whose __init__ never called nn.Module.__init__
        raise TypeError(f"node type {tree.type!r} built a {type(module).__name__} that is not set up as an "
                        "nn.Module: its __init__ must call super().__init__() first")
    return module


def instantiate(node: ResolvedNode, *, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> nn.Module:
    """Build one node's module on ``device`` with ``dtype``."""
    with torch.device(device) if device is not None else nullcontext():
        module = build_module(node.tree)
    if dtype is not None:
        module = module.to(dtype)
    return module


def placement_of(module: nn.Module, default: Any = (None, None)) -> Any:
    """The device and dtype of a module's first floating-point parameter or buffer, else ``default``.

    Where a new module that joins ``module`` (a chain, a node) must be built: a chain whose last
    weighted node left passes its recorded ``chain.placement`` as the default.

    Example:
        >>> placement_of(nn.Linear(2, 2).double())
        (device(type='cpu'), torch.float64)
        >>> placement_of(nn.ReLU())
        (None, None)
    """
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return default
