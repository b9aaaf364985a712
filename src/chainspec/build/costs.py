"""What each node of a chain costs to run: multiply-adds and activation memory, per sample.

Counted by shape inference, with no weights allocated: the closed-form shape rules of the
built-in types walk each node's definition (inside composites and residual blocks too) and
report every leaf's input and output shape, from which the multiply-adds of its matrix products
follow (:data:`MULTIPLY_ADDS`). A definition the rules do not cover (a registered type) runs once
on the meta device under ``torch.utils.flop_counter.FlopCounterMode``.

Multiply-adds count the matrix products only (linear and convolution layers, attention's
projections and its two score products), as FlopCounterMode and fvcore do; elementwise work
(activations, norms, pooling, the residual sum) is not counted. Activation memory is the bytes
of the node's output for one sample, in the summary's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from . import rules
from .modules import build_module, on_meta

if TYPE_CHECKING:
    from ..read.resolve import ResolvedNode, Tree
    from ..read.spec import Spec
    from .summary import ChainSummary

Shape = tuple[int, ...]

#: Definitions a cost table may run on the meta device (those the rules do not cover); past this,
#: their multiply-adds are left unknown, so that a table stays fast.
MAX_META_RUNS = 64


def _linear(args: Mapping[str, Any], shape: Shape, out: Shape) -> int:
    return int(args["in_features"]) * int(args["out_features"]) * math.prod(out[1:-1])


def _conv(args: Mapping[str, Any], shape: Shape, out: Shape) -> int:
    kernel = rules._pair(args["kernel_size"], len(out) - 2)
    return (int(args["out_channels"]) * int(args["in_channels"]) // int(args.get("groups", 1))
            * math.prod(kernel) * math.prod(out[2:]))


def _conv_transpose(args: Mapping[str, Any], shape: Shape, out: Shape) -> int:
    kernel = rules._pair(args["kernel_size"], len(shape) - 2)
    return (int(args["in_channels"]) * int(args["out_channels"]) // int(args.get("groups", 1))
            * math.prod(kernel) * math.prod(shape[2:]))


def _attention(args: Mapping[str, Any], shape: Shape, out: Shape) -> int:
    t, dim = shape[1], int(args["dim"])
    inner = dim if args.get("head_dim") is None else int(args["heads"]) * int(args["head_dim"])
    return t * dim * 3 * inner + 2 * t * t * inner + t * inner * dim  # q, k, v; scores and mix; output


#: Built-in type -> its multiply-adds for one sample, from its arguments and input and output shapes
#: (batch first, batch 1). Types not listed do no matrix products.
MULTIPLY_ADDS: dict[str, Callable[[Mapping[str, Any], Shape, Shape], int]] = {
    "linear": _linear, "eq_linear": _linear, "conv1d": _conv, "conv2d": _conv, "eq_conv2d": _conv,
    "conv_transpose2d": _conv_transpose, "causal_self_attention": _attention,
}


@dataclass(frozen=True)
class NodeCost:
    """A node's cost for one sample: multiply-adds (None: not counted) and the bytes of its output.

    Example:
        >>> NodeCost(640, 40).multiply_adds
        640
    """

    multiply_adds: int | None
    activation_bytes: int
    frozen_params: int = 0


class CostCounter:
    """Counts node costs, once per distinct (definition, input shape, dtype).

    Example:
        >>> from chainspec.read.resolve import Leaf
        >>> from chainspec.types.builtins import linear
        >>> CostCounter().multiply_adds(Leaf("linear", {"in_features": 4, "out_features": 2}, linear),
        ...                             (7, 4), torch.float32)
        56
    """

    def __init__(self) -> None:
        self._cache: dict[Any, int | None] = {}
        self.meta_runs = 0

    def multiply_adds(self, tree: Tree, shape: Shape, dtype: torch.dtype) -> int | None:
        """Multiply-adds of ``tree`` on one sample of per-sample ``shape`` and ``dtype``."""
        from ..read.resolve import tree_key

        key = (tree_key(tree), shape, dtype)
        if key not in self._cache:
            self._cache[key] = self._count(tree, shape, dtype)
        return self._cache[key]

    def frozen(self, tree: Tree) -> int:
        """Parameters of ``tree``'s module that do not train (``requires_grad=False``): none in a built-in
        type; a definition with registered types is built once on the meta device to see."""
        from ..read.resolve import Leaf, tree_key

        def leaves(node: Tree) -> list[Leaf]:
            return [node] if isinstance(node, Leaf) else [leaf for _, part in node.parts for leaf in leaves(part)]

        if all(rules._rule_of(leaf.factory) is not None for leaf in leaves(tree)):
            return 0
        key = ("frozen", tree_key(tree))
        if key not in self._cache:
            try:
                with on_meta():
                    module = build_module(tree)
                self._cache[key] = sum(p.numel() for p in module.parameters() if not p.requires_grad)
            except Exception:  # the shape check reports what cannot be built
                self._cache[key] = 0
        return self._cache[key] or 0

    def _count(self, tree: Tree, shape: Shape, dtype: torch.dtype) -> int | None:
        total = 0

        def seen(kind: str, args: Mapping[str, Any], given: Shape, made: Shape) -> None:
            nonlocal total
            count = MULTIPLY_ADDS.get(kind)
            if count is not None:
                total += count(args, given, made)

        module_dtype = dtype if dtype.is_floating_point else torch.float32
        found = rules.infer_state(tree, (1, *shape), dtype, module_dtype, seen=seen)
        if isinstance(found, tuple):
            return total
        if self.meta_runs >= MAX_META_RUNS:
            return None
        self.meta_runs += 1
        return _on_meta(tree, shape, dtype)


def _on_meta(tree: Tree, shape: Shape, dtype: torch.dtype) -> int | None:
    """Multiply-adds of a definition the rules do not cover: one run on the meta device, counted."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with on_meta():
            module = build_module(tree)
        x = torch.empty((1, *shape), dtype=dtype, device="meta") if dtype.is_floating_point else \
            torch.zeros((1, *shape), dtype=dtype, device="meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module(x)
    except Exception:  # the shape check reports what cannot run; here it is only not counted
        return None
    return int(counter.get_total_flops()) // 2


def chain_costs(spec: Spec, name: str, summary: ChainSummary, dtype: torch.dtype = torch.float32,
                counter: CostCounter | None = None) -> list[NodeCost]:
    """Each node's :class:`NodeCost` in a chain's :class:`~chainspec.build.summary.ChainSummary`.

    Example:
        >>> import chainspec
        >>> spec = chainspec.loads("chainspec: 1\\nchains: {net: {input_shape: [3, 32, 32], nodes: [{id: c, "
        ...                        "type: conv2d, args: {in_channels: 3, out_channels: 32, padding: 1}}]}}")
        >>> costs = chain_costs(spec, "net", spec.summary("net", stage=0))
        >>> costs[0].multiply_adds, costs[0].activation_bytes  # 3x3 conv, 3 -> 32 channels at 32x32
        (884736, 131072)
    """
    counter = counter if counter is not None else CostCounter()
    chain = spec.resolved(name)
    nodes: dict[str, ResolvedNode] = {node.id: node for node in chain.at(summary.stage)}
    input_dtype = getattr(torch, chain.input_dtype) if chain.input_dtype else dtype
    shapes: dict[str, tuple[Shape, torch.dtype]] = {"input": (summary.input_shape, input_dtype)}
    previous = shapes["input"]
    element = torch.empty((), dtype=dtype).element_size()
    costs: list[NodeCost] = []
    for row in summary.nodes:
        node = nodes[row.id]
        given = _input_of(node, previous, shapes)
        macs = counter.multiply_adds(node.tree, *given) if given is not None else None
        costs.append(NodeCost(macs, math.prod(row.output_shape) * element, counter.frozen(node.tree)))
        previous = shapes[row.id] = (row.output_shape, dtype)
    return costs


def _input_of(node: ResolvedNode, previous: tuple[Shape, torch.dtype],
              shapes: Mapping[str, tuple[Shape, torch.dtype]]) -> tuple[Shape, torch.dtype] | None:
    """The per-sample shape and dtype a node is given: the node before's output, or its merged sources."""
    if not node.sources:
        return previous
    given = [previous if source == "prev" else shapes.get(source) for source in node.sources]
    if any(g is None for g in given):
        return None
    if len(given) == 1 or node.merge == "add":
        return given[0]
    first, dtype = given[0]  # concat on the channel dimension
    return (sum(g[0][0] for g in given if g is not None), *first[1:]), dtype
