"""One expanded node into its ``nn.Module``: the only place a node type's factory is called."""

from __future__ import annotations

from contextlib import nullcontext

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
    return module


def instantiate(node: ResolvedNode, *, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> nn.Module:
    """Build one node's module on ``device`` with ``dtype``."""
    with torch.device(device) if device is not None else nullcontext():
        module = build_module(node.tree)
    if dtype is not None:
        module = module.to(dtype)
    return module
