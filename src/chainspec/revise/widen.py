"""How new weights start: ``init: fresh | keep | preserve`` for replaced and inserted nodes, and
the pieces the preserve sweep (``revise.preserve``) is made of.

``fresh`` leaves a new module as its type initialises it. ``keep`` copies the
overlapping slice of every old tensor of the same name and rank (:func:`keep_overlap`).
``preserve`` makes the revised chain compute the same function as before; for an inserted
node (Net2DeeperNet) that means starting as the identity (:func:`identity_init`): linear and
convolution layers become identity maps, and a residual block starts with its body's last
weighted layer zeroed (a projection, or an affine norm's scale and shift), so that it adds
nothing to its input, norm layers inside it included. Widening a replaced node is the sweep's.

Every new parameter the sweep fills from an old one is ``gather(old) * factor`` elementwise,
recorded as a :class:`Carry`, so that the optimizer state can be carried the same way (first
moments times ``factor``, second moments times ``factor ** 2``; see ``revise.optim.carried_state``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain as chained
from typing import Literal

import torch
from torch import Tensor, nn

from .._errors import ChainspecError
from ..types.layers import EqualizedConv2d, EqualizedLinear, Residual, RMSNorm

#: Layers with a ``weight`` of shape ``(out, in, *kernel)`` (transposed convolutions: ``(in, out, *kernel)``).
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd, EqualizedLinear, EqualizedConv2d)
#: Layers whose state is one value per channel (batch and instance norm).
PER_CHANNEL: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase,)
#: Parameterless layers that treat every channel alike and alone: copies of a channel stay copies.
CHANNELWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh,
    nn.Identity, nn.modules.dropout._DropoutNd, nn.Upsample, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)


class WidenError(ChainspecError):
    """A node's ``init`` mode cannot apply to its change; says which node and layer, and what to use instead.

    Example:
        >>> str(WidenError("b2", "cannot shrink", "use init: keep"))
        "node 'b2': cannot shrink; use init: keep"
    """

    def __init__(self, node_id: str, message: str, hint: str | None = None) -> None:
        self.node_id, self.message, self.hint = node_id, message, hint
        super().__init__(f"node {node_id!r}: {message}" + (f"; {hint}" if hint else ""))


@dataclass
class Entry:
    """One node of the new chain for the preserve sweep (or, ``kind="gap"``, where old nodes that fed the
    next one were removed or moved: ``init`` then says which)."""

    node_id: str
    module: nn.Module | None
    old: nn.Module | None
    kind: Literal["insert", "replace", "same", "gap"]
    init: str = "fresh"


def leaves(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(dotted path, module)`` of every module without children, in order.

    Example:
        >>> [p for p, _ in leaves(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))]
        ['0', '1']
    """
    for name, sub in module.named_modules():
        if next(sub.children(), None) is None:
            yield name, sub


# -- keep ----------------------------------------------------------------------------------------

@torch.no_grad()
def keep_overlap(new: nn.Module, old: nn.Module) -> None:
    """Copy into ``new`` the overlapping slice of each tensor of ``old`` with the same name and rank.

    Example:
        >>> old, new = nn.Linear(2, 3), nn.Linear(2, 4)
        >>> keep_overlap(new, old)
        >>> bool((new.weight[:3] == old.weight).all())
        True
    """
    source = dict(chained(old.named_parameters(), old.named_buffers()))
    for name, tensor in chained(new.named_parameters(), new.named_buffers()):
        previous = source.get(name)
        if previous is None or previous.dim() != tensor.dim():
            continue
        region = tuple(slice(0, min(a, b)) for a, b in zip(tensor.shape, previous.shape, strict=True))
        tensor[region] = previous[region].to(device=tensor.device, dtype=tensor.dtype)


# -- preserve: Net2DeeperNet ----------------------------------------------------------------------

@torch.no_grad()
def identity_init(module: nn.Module, node_id: str) -> None:
    """Start an inserted node as the identity (Net2DeeperNet): weight layers become identity maps.

    Raises:
        WidenError: a layer of the node cannot be an identity (different in and out widths, a stride,
            a kernel or padding that changes the size, groups, or a stateful layer such as batch norm).

    Example:
        >>> fc = nn.Linear(3, 3)
        >>> identity_init(fc, "extra")
        >>> torch.equal(fc(torch.ones(1, 3)), torch.ones(1, 3))
        True
    """
    for path, leaf in _identity_parts(module):
        where = f"{type(leaf).__name__}" + (f" ({path})" if path else "")
        if isinstance(leaf, Residual):
            _residual_identity(leaf, where, node_id)
        elif isinstance(leaf, WEIGHT_LAYERS):
            _identity_weight(leaf, where, node_id)
        elif any(True for _ in chained(leaf.parameters(False), leaf.buffers(False))) or \
                not isinstance(leaf, IDENTITY_LIKE):
            raise WidenError(node_id, f"init: preserve cannot make {where} an identity",
                             "only linear and convolution layers, residual blocks, identity, dropout and "
                             "(on non-negative inputs) relu start as an identity; use init: fresh")


def _identity_parts(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The leaves of ``module`` in order, a residual block standing for itself (its parts are not leaves)."""
    if isinstance(module, Residual) or next(module.children(), None) is None:
        yield prefix, module
        return
    for name, sub in module.named_children():
        yield from _identity_parts(sub, f"{prefix}.{name}" if prefix else name)


#: Parameterless layers an inserted node may hold and still start as the identity: exactly (identity;
#: dropout, in eval), or on non-negative inputs only (relu, leaky_relu: a growth certificate measures it).
IDENTITY_LIKE: tuple[type[nn.Module], ...] = (nn.Identity, nn.modules.dropout._DropoutNd, nn.ReLU, nn.LeakyReLU)
#: Of those, the ones that are the identity only on non-negative inputs.
IDENTITY_IF_NON_NEGATIVE: tuple[str, ...] = ("relu", "leaky_relu")
#: Layers that make zeros of zeros: after the zeroed layer of a residual body, they keep it zero.
ZERO_KEEPING: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Hardtanh, nn.Identity,
    nn.modules.dropout._DropoutNd, nn.Upsample, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.Flatten)
#: Norm layers whose learned scale and shift, zeroed, make their output zero.
AFFINE_NORMS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, RMSNorm)


def _residual_identity(block: Residual, where: str, node_id: str) -> None:
    """Start a residual block as the identity: its body's last weighted layer is zeroed, so the body adds 0.

    The shortcut must be the input itself, and the parts after the sum must give back what they get:
    ``identity``, or ``relu`` where the block's input is never negative (as after another block's ReLU);
    a ReLU after the sum is the identity only there, which a growth certificate measures.
    """
    if block.shortcut is not None:
        raise WidenError(node_id, f"init: preserve needs the shortcut of {where} to be the input itself",
                         "a projection or subsample shortcut changes the input; use init: fresh")
    if block.after is not None:
        for path, leaf in leaves(block.after):
            if not isinstance(leaf, (nn.Identity, nn.ReLU)):
                raise WidenError(node_id, f"init: preserve cannot keep {type(leaf).__name__} (after.{path}) of "
                                          f"{where} an identity", "only identity or relu may follow the sum")
    body = list(leaves(block.body))
    last = next((i for i in range(len(body) - 1, -1, -1) if any(True for _ in body[i][1].parameters(False))), None)
    if last is None:
        raise WidenError(node_id, f"init: preserve needs a layer with weights in the body of {where}",
                         "use init: fresh")
    path, layer = body[last]
    if not isinstance(layer, (*WEIGHT_LAYERS, *AFFINE_NORMS)):
        raise WidenError(node_id, f"init: preserve cannot zero {type(layer).__name__} (body.{path}) of {where}",
                         "the body must end in a linear, convolution or affine norm layer")
    for later_path, later in body[last + 1:]:
        if not isinstance(later, ZERO_KEEPING):
            raise WidenError(node_id, f"init: preserve needs the body of {where} to keep zeros after "
                                      f"{path}, but {type(later).__name__} ({later_path}) does not",
                             "end the body with its last weighted layer, or use init: fresh")
    for tensor in layer.parameters(False):
        tensor.zero_()


def _identity_weight(leaf: nn.Module, where: str, node_id: str) -> None:
    weight: Tensor = leaf.weight
    if isinstance(leaf, nn.modules.conv._ConvTransposeNd):
        raise WidenError(node_id, f"init: preserve does not support {where} when inserted", "use init: fresh")
    out_dim, in_dim = weight.shape[0], weight.shape[1]
    if out_dim != in_dim:
        raise WidenError(node_id, f"init: preserve needs {where} to keep the width, but it maps {in_dim} → {out_dim}",
                         "an inserted layer is an identity only with as many outputs as inputs")
    if getattr(leaf, "groups", 1) != 1:
        raise WidenError(node_id, f"init: preserve needs groups=1 in {where}", "use init: fresh")
    kernel = tuple(weight.shape[2:])
    if kernel:
        stride = _tuple(getattr(leaf, "stride", 1), len(kernel))
        dilation = _tuple(getattr(leaf, "dilation", 1), len(kernel))
        padding = getattr(leaf, "padding", 0)
        same = padding == "same" or _tuple(padding, len(kernel)) == tuple(
            d * (k - 1) // 2 for d, k in zip(dilation, kernel, strict=True))
        if any(s != 1 for s in stride) or any(k % 2 == 0 for k in kernel) or not same:
            raise WidenError(node_id, f"init: preserve needs {where} to keep the spatial size "
                                      f"(stride 1, odd kernel, padding (kernel-1)/2), got stride {stride}, "
                                      f"kernel {kernel}, padding {padding}", "use init: fresh")
        nn.init.dirac_(weight)
    else:
        weight.copy_(torch.eye(out_dim, dtype=weight.dtype, device=weight.device))
    weight.div_(scale_of(leaf))
    if getattr(leaf, "bias", None) is not None:
        leaf.bias.zero_()


def _tuple(value: object, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n  # type: ignore[return-value]


@dataclass(frozen=True)
class Carry:
    """How a new parameter was made from an old one: ``new == gather(old) * factor``, elementwise.

    The optimizer state of ``old`` is carried to ``new`` by the same map (see
    ``revise.optim.carried_state``); a ``factor`` of 0 marks a brand-new unit.

    Example:
        >>> old = nn.Parameter(torch.tensor([2.0, 4.0]))
        >>> carry = Carry(nn.Parameter(torch.tensor([1.0, 1.0, 2.0])), old,
        ...               lambda t: t[torch.tensor([0, 0, 1])], torch.tensor([0.5, 0.5, 0.5]))
        >>> carry.apply(old.detach())
        tensor([1., 1., 2.])
    """

    new: Tensor
    old: Tensor
    gather: Callable[[Tensor], Tensor]
    factor: Tensor | float = 1.0

    def apply(self, tensor: Tensor, power: int = 1) -> Tensor:
        """``gather(tensor) * factor ** power``: a tensor shaped like ``old`` mapped to ``new``'s shape."""
        factor = self.factor if isinstance(self.factor, float) else self.factor.to(tensor.device, tensor.dtype)
        return self.gather(tensor) * factor ** power


def scale_of(leaf: nn.Module) -> float:
    """The run-time weight multiplier (equalized learning rate layers), 1 for plain layers.

    Example:
        >>> scale_of(nn.Linear(4, 4)), round(scale_of(EqualizedLinear(2, 2, gain=1.0)), 4)
        (1.0, 0.7071)
    """
    return float(leaf.scale) if isinstance(leaf, (EqualizedLinear, EqualizedConv2d)) else 1.0
