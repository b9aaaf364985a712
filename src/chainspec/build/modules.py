"""One expanded node into its ``nn.Module``: the only place a node type's factory is called."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..read.resolve import Group, ResolvedNode, Tree
from ..types.layers import Composite, Residual


def build_module(tree: Tree) -> nn.Module:
    """Instantiate the module for one expanded node (under whatever default device is active)."""
    if isinstance(tree, Group):
        if tree.kind == "residual":
            parts = {part_id: build_module(sub) for part_id, sub in tree.parts}
            return Residual(tree.type, parts["body"], parts.get("shortcut"), parts.get("after"))
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
    for tensor in itertools.chain(module.parameters(), module.buffers()):  # lazily: a chain has thousands
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return default


#: In-place random fills: on a meta tensor there is nothing to fill, but torch runs Python decompositions
#: for some of them (``normal_`` imports sympy and parts of torch._dynamo: over a second, once a process).
_FILLS = frozenset({"normal_", "uniform_", "random_", "bernoulli_", "exponential_", "geometric_", "log_normal_",
                    "cauchy_", "trunc_normal_", "orthogonal_", "sparse_"})
#: Out-of-place random factories, answered on the meta device with an empty tensor of the same size.
_DRAWS = {"randn": torch.empty, "rand": torch.empty, "randn_like": torch.empty_like, "rand_like": torch.empty_like}


class _MetaWithoutDraws(TorchFunctionMode):
    """Skip random draws whose values would be thrown away: fills of meta tensors, and draws made while
    the default device is meta. Shapes, dtypes and everything else run as they would."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _FILLS:
            target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        elif name in _DRAWS and "generator" not in kwargs:
            first = args[0] if args else None
            if isinstance(first, torch.Tensor) and first.is_meta:
                return _DRAWS[name](*args, **kwargs)
            if not isinstance(first, torch.Tensor) and torch.empty(0).is_meta:
                return _DRAWS[name](*args, **kwargs)
        return func(*args, **kwargs)


@contextmanager
def on_meta() -> Iterator[None]:
    """Build modules on the meta device, skipping their random initialisation (shapes only, no values).

    Example:
        >>> with on_meta():
        ...     nn.Embedding(65, 384).weight.is_meta
        True
    """
    with torch.device("meta"), _MetaWithoutDraws():
        yield
