"""How new weights start: ``init: fresh | keep | preserve`` for replaced and inserted nodes.

``fresh`` leaves a new module as its type initialises it. ``keep`` copies the
overlapping slice of every old tensor of the same name and rank.
``preserve`` makes the revised chain compute the same function as before:

* widening a layer (Net2WiderNet, Chen et al. 2016): the new output units
  copy randomly chosen old ones, and the layer that consumes them divides the
  incoming weights of each copied unit by its number of copies. Per-channel
  layers in between (batch norm, activations, pooling, upsampling) copy their
  per-channel state along; a consumer whose new inputs are brand-new units (a
  ``keep`` or ``fresh`` widening) gives them zero incoming weights instead.
* inserting a node (Net2DeeperNet): linear and convolution layers start as
  the identity; a residual block starts with its body's last weighted layer
  zeroed (a projection, or an affine norm's scale and shift), so that it adds
  nothing to its input, norm layers inside it included.

* adding attention heads (``causal_self_attention`` with a fixed
  ``head_dim``): the new heads copy randomly chosen old heads (their query,
  key and value rows), and the output projection divides each copied head's
  columns by its number of copies.

The sweep over the new chain tracks a *layout*: for each channel flowing
between nodes, which old channel it corresponds to (``-1`` for a new one).

Optimizer moments follow the weights: every new parameter that the sweep
fills from an old one is ``gather(old) * factor`` elementwise, and
:func:`preserve` returns that map as a :class:`Carry`, so that the optimizer
state can be carried the same way (first moments times ``factor``, second
moments times ``factor ** 2``; see ``revise.optim.carried_state``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain as chained
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from .._errors import ChainspecError, SpecError
from ..types.layers import CausalSelfAttention, EqualizedConv2d, EqualizedLinear, Residual, RMSNorm

if TYPE_CHECKING:
    from .ops import Revising

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


@dataclass(frozen=True)
class Lost:
    """A channel layout that no longer matches the old one, and why."""

    reason: str


#: None: the same channels as before; a tensor: the old channel of each channel (-1: new); Lost: unknown.
Layout = Tensor | Lost | None


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
    weight.div_(_scale(leaf))
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


def _carry(carries: list[Carry], new: Tensor, old: Tensor, gather: Callable[[Tensor], Tensor],
           factor: Tensor | float = 1.0) -> None:
    if isinstance(new, nn.Parameter) and isinstance(old, nn.Parameter):  # buffers have no optimizer state
        carries.append(Carry(new, old, gather, factor))


def _same(tensor: Tensor) -> Tensor:
    return tensor.clone()


def _scale(leaf: nn.Module) -> float:
    """The run-time weight multiplier (equalized learning rate layers), 1 for plain layers."""
    return float(leaf.scale) if isinstance(leaf, (EqualizedLinear, EqualizedConv2d)) else 1.0


# -- preserve: the sweep -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Sweep:
    """What a preserve sweep did: how each new parameter was made from an old one (for its optimizer
    state), and whether the chain's output units are no longer the old ones (widened at the end).

    Example:
        >>> Sweep([], False).output_changed
        False
    """

    carries: list[Carry]
    output_changed: bool


def preserve(entries: Sequence[Entry]) -> Sweep:
    """Initialise every ``init: preserve`` node of a new chain so that the chain keeps its function.

    ``entries`` is the whole new chain, head to tail. Runs in one pass.

    Raises:
        WidenError: a preserve node's change cannot keep the function; the message names the layer.

    Example:
        >>> old, new = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        >>> sweep = preserve([Entry("mlp", new, old, "replace", "preserve")])
        >>> x = torch.randn(4, 2)
        >>> torch.allclose(new(x), old(x)), len(sweep.carries), sweep.output_changed
        (True, 4, False)
    """
    layout: Layout = None
    carries: list[Carry] = []
    for entry in entries:
        if entry.kind == "gap":  # what feeds the next node is no longer what fed it
            layout = Lost(entry.init)
        elif entry.kind == "replace" and entry.init == "preserve":
            assert entry.old is not None
            layout = _preserve_node(entry, layout, carries)
        elif entry.kind == "insert" and entry.init == "preserve":
            assert entry.module is not None
            identity_init(entry.module, entry.node_id)  # identities keep the layout
        else:
            layout = _track(entry, layout)
    return Sweep(carries, layout is not None)


def preserve_plan(plan: Revising, new_module: Callable[[str], nn.Module], old_module: Callable[[str], nn.Module],
                  restored: Collection[str] = ()) -> Sweep:
    """Run :func:`preserve` over the new chain of ``plan``, errors located at the failing node's ``init``.

    ``new_module(id)`` is the module a node of the new chain will have (built for inserted and
    replaced nodes), ``old_module(id)`` the one a replaced node has now. Inserts in ``restored``
    come back trained, not as identities. Where removed or moved nodes fed a node, the sweep
    knows its input is not what it was. Apply runs this on the new modules; ``diff`` runs it on
    stand-ins, so that it refuses what apply would.

    Raises:
        SpecError: a node's ``init: preserve`` cannot keep the function (at the node's ``init``).

    Example:
        >>> import chainspec
        >>> old = chainspec.loads("chainspec: 1\\nchains: {n: {input_shape: [4], nodes: [{id: fc, type: linear, "
        ...                       "args: {in_features: 4, out_features: 4}}]}}")
        >>> new = chainspec.loads("chainspec: 1\\nchains: {n: {input_shape: [4], nodes: [{id: fc, type: linear, "
        ...                       "args: {in_features: 4, out_features: 6}, init: preserve}]}}")
        >>> net, wide = old.build(), new.build()
        >>> sweep = preserve_plan(chainspec.diff(old, new), lambda i: wide[i].module, lambda i: net[i].module)
        >>> len(sweep.carries), sweep.output_changed  # weight and bias; the chain's output gained units
        (2, True)
    """
    changed = {op.node_id: op for op in plan.ops if op.kind in ("insert", "replace")}
    removed = {op.node_id for op in plan.ops if op.kind == "remove"}
    fed_by = dict(zip(plan.old_ids, (None, *plan.old_ids[:-1]), strict=True))  # old id -> its old predecessor
    entries: list[Entry] = []
    last_kept: str | None = None  # the last node so far that was in the old chain
    for node_id in plan.new_ids:
        op = changed.get(node_id)
        if node_id in fed_by:
            before = fed_by[node_id]
            if before != last_kept:
                why = (f"node {before!r} before it is removed" if before in removed
                       else "the nodes before it were moved")
                entries.append(Entry(node_id, None, None, "gap", why))
            last_kept = node_id
        if op is not None and op.kind == "insert":
            init = "restored" if node_id in restored else op.init  # trained weights: not an identity
            entries.append(Entry(node_id, new_module(node_id), None, "insert", init))
        elif op is not None and op.kind == "replace":
            entries.append(Entry(node_id, new_module(node_id), old_module(node_id), "replace", op.init))
        else:
            entries.append(Entry(node_id, new_module(node_id), None, "same"))
    try:
        return preserve(entries)
    except WidenError as exc:
        op = changed.get(exc.node_id)
        path = (*op.new.path, "init") if op is not None and op.new is not None else ()
        raise SpecError([plan.new_spec.problem(path, exc.message, exc.hint)]) from None


def _units(module: nn.Module, whole: tuple[type[nn.Module], ...] = (CausalSelfAttention,)
           ) -> Iterator[tuple[str, nn.Module]]:
    """The leaves of ``module`` in order, a module of a ``whole`` type (an attention layer) standing for
    itself, its parts not listed.

    Example:
        >>> [p for p, _ in _units(nn.Sequential(nn.LayerNorm(8), CausalSelfAttention(8, 2)))]
        ['0', '1']
    """
    inside: str | None = None  # the module whose parts are being skipped
    for name, sub in module.named_modules():
        if inside is not None and name.startswith(f"{inside}."):
            continue
        inside = None
        if isinstance(sub, whole):
            inside = name
            yield name, sub
        elif next(sub.children(), None) is None:
            yield name, sub


def _track(entry: Entry, layout: Layout) -> Layout:
    """The layout after a node this sweep does not initialise."""
    assert entry.module is not None
    old_leaves = dict(_units(entry.old)) if entry.old is not None else {}
    for path, leaf in _units(entry.module):
        if isinstance(leaf, CausalSelfAttention):  # it mixes its input's channels, and gives back dim of them
            before = old_leaves.get(path)
            if entry.kind == "same" or (isinstance(before, CausalSelfAttention) and before.dim == leaf.dim):
                layout = None
            else:
                layout = Lost(f"the new layer {_where(entry, path, leaf)} changes the width")
        elif isinstance(leaf, WEIGHT_LAYERS):
            out_new = _out_in(leaf)[0]
            before = old_leaves.get(path)
            if entry.kind == "same":
                layout = None
            elif entry.kind == "insert" or before is None or not isinstance(before, WEIGHT_LAYERS):
                layout = None if _out_in(leaf)[0] == _out_in(leaf)[1] else Lost(
                    f"the new layer {_where(entry, path, leaf)} changes the width")
            else:
                out_old = _out_in(before)[0]
                layout = None if out_new == out_old else _prefix(out_old, out_new)
        elif isinstance(leaf, (*PER_CHANNEL, *CHANNELWISE)):
            continue
        elif layout is not None and not isinstance(layout, Lost):
            layout = Lost(f"{_where(entry, path, leaf)} mixes or rearranges channels")
    return layout


def _prefix(old: int, new: int) -> Tensor:
    """Layout of a ``keep``/``fresh`` width change: the first channels are the old ones, the rest new."""
    return torch.cat([torch.arange(min(old, new)), torch.full((max(new - old, 0),), -1)])


def _where(entry: Entry, path: str, leaf: nn.Module) -> str:
    return f"{type(leaf).__name__} in node {entry.node_id!r}" + (f" ({path})" if path else "")


def _out_in(leaf: nn.Module) -> tuple[int, int]:
    weight = leaf.weight
    if isinstance(leaf, nn.modules.conv._ConvTransposeNd):
        return weight.shape[1] * leaf.groups, weight.shape[0]
    return weight.shape[0], weight.shape[1] * getattr(leaf, "groups", 1)


@torch.no_grad()
def _preserve_node(entry: Entry, layout: Layout, carries: list[Carry]) -> Layout:
    assert entry.old is not None and entry.module is not None
    return _preserve_module(entry, entry.module, entry.old, layout, carries)


def _preserve_module(entry: Entry, module: nn.Module, old_module: nn.Module, layout: Layout,
                     carries: list[Carry], prefix: str = "") -> Layout:
    """Widen ``module`` from ``old_module`` part by part; a residual block's body and shortcut both take
    its input, and their outputs, added, must have the same layout."""
    if isinstance(module, Residual) and isinstance(old_module, Residual):
        where = f"{type(module).__name__} in node {entry.node_id!r}" + (f" ({prefix})" if prefix else "")
        if (module.shortcut is None) != (old_module.shortcut is None) or \
                (module.after is None) != (old_module.after is None):
            raise WidenError(entry.node_id, f"init: preserve needs the same parts in {where} before and after",
                             "use init: keep or fresh")
        inner = f"{prefix}." if prefix else ""
        body = _preserve_module(entry, module.body, old_module.body, layout, carries, f"{inner}body")
        shortcut = layout if module.shortcut is None else _preserve_module(
            entry, module.shortcut, old_module.shortcut, layout, carries, f"{inner}shortcut")
        if not _same_layout(body, shortcut):
            raise WidenError(entry.node_id, f"init: preserve cannot keep the sum of {where}: its body and its "
                                            "shortcut would make different copies of the units they add",
                             "widen a block with a projection shortcut with init: keep, or keep its width")
        if module.after is None:
            return body
        return _preserve_module(entry, module.after, old_module.after, body, carries, f"{inner}after")
    old_leaves = dict(_units(old_module, whole=(CausalSelfAttention, Residual)))
    new_leaves = [(path, leaf) for path, leaf in _units(module, whole=(CausalSelfAttention, Residual))]
    if [p for p, _ in new_leaves] != list(old_leaves) or any(
            type(old_leaves[p]) is not type(m) for p, m in new_leaves):
        before = ", ".join(f"{p or '-'}: {type(m).__name__}" for p, m in old_leaves.items())
        after = ", ".join(f"{p or '-'}: {type(m).__name__}" for p, m in new_leaves)
        raise WidenError(entry.node_id, f"init: preserve needs the same layers before and after "
                                        f"(before: {before}; after: {after})", "use init: keep or fresh")
    for path, leaf in new_leaves:
        old = old_leaves[path]
        full = f"{prefix}.{path}" if prefix and path else (prefix or path)
        where = f"{type(leaf).__name__} in node {entry.node_id!r}" + (f" ({full})" if full else "")
        if isinstance(leaf, Residual):
            layout = _preserve_module(entry, leaf, old, layout, carries, full)
        elif isinstance(leaf, CausalSelfAttention):
            layout = _widen_attention(entry, where, leaf, old, layout, carries)
        elif isinstance(leaf, WEIGHT_LAYERS):
            layout = _widen_weight(entry, where, leaf, old, layout, carries)
        elif isinstance(leaf, PER_CHANNEL):
            _widen_per_channel(entry, where, leaf, old, layout, carries)
        elif isinstance(leaf, CHANNELWISE):
            continue
        else:
            _copy_same(entry, where, leaf, old, carries)
            if layout is not None and not isinstance(layout, Lost):
                layout = Lost(f"{where} mixes or rearranges channels")
    return layout


def _same_layout(a: Layout, b: Layout) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and bool((a == b).all())
    return (a is None and b is None) or (isinstance(a, Lost) and isinstance(b, Lost))


def _widen_weight(entry: Entry, where: str, leaf: nn.Module, old: nn.Module, layout: Layout,
                  carries: list[Carry]) -> Layout:
    transposed = isinstance(leaf, nn.modules.conv._ConvTransposeNd)
    w_old: Tensor = old.weight.detach()
    w_old = w_old.transpose(0, 1) if transposed else w_old
    w_new: Tensor = leaf.weight.transpose(0, 1) if transposed else leaf.weight
    (m_out, m_in), (n_out, n_in) = tuple(w_old.shape[:2]), tuple(w_new.shape[:2])
    if w_old.shape[2:] != w_new.shape[2:]:
        raise WidenError(entry.node_id, f"init: preserve cannot change the kernel of {where} "
                                        f"({list(w_old.shape[2:])} → {list(w_new.shape[2:])})", "use init: keep")
    if (n_out, n_in) != (m_out, m_in) and (getattr(leaf, "groups", 1) != 1 or getattr(old, "groups", 1) != 1):
        raise WidenError(entry.node_id, f"init: preserve cannot widen {where} with groups", "use init: keep")
    if n_out < m_out or n_in < m_in:
        raise WidenError(entry.node_id, f"init: preserve cannot shrink {where} ({m_in}→{m_out} becomes "
                                        f"{n_in}→{n_out}): dropping units changes the function",
                         "use init: keep or fresh")
    columns = _input_columns(entry, where, layout, m_in, n_in, w_new)
    rows = _replicas(m_out, n_out, w_new.device)

    def view(tensor: Tensor) -> Tensor:  # (out, in, *kernel), a view: transposed convolutions swap the two
        return tensor.transpose(0, 1) if transposed else tensor

    def gather(tensor: Tensor) -> Tensor:
        tensor = view(tensor)[rows]
        return view(tensor if columns is None else tensor[:, columns[0]])

    inputs = torch.ones(n_in, device=w_new.device, dtype=w_new.dtype) if columns is None else columns[1]
    factor = view((inputs * (_scale(old) / _scale(leaf))).reshape((1, -1) + (1,) * (w_new.dim() - 2)))
    leaf.weight.copy_(gather(old.weight.detach().to(dtype=w_new.dtype, device=w_new.device)) * factor)
    _carry(carries, leaf.weight, old.weight, gather, factor)
    bias_old, bias_new = getattr(old, "bias", None), getattr(leaf, "bias", None)
    if (bias_old is None) != (bias_new is None):
        raise WidenError(entry.node_id, f"init: preserve cannot add or drop the bias of {where}", "use init: keep")
    if bias_new is not None:
        bias_new.copy_(bias_old.detach()[rows])
        _carry(carries, bias_new, bias_old, lambda tensor: tensor[rows])
    return rows.cpu() if n_out != m_out else None


def _input_columns(entry: Entry, where: str, layout: Layout, m_in: int, n_in: int,
                   like: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(old input of each new input, its weight factor)`` for a layer whose inputs were widened or
    rearranged, or None when they are the old ones.

    Each copy of a replicated input gets the original's weight over its copy count; a brand-new
    input starts with zero weight.
    """
    if n_in == m_in and not isinstance(layout, Tensor):
        return None
    if not isinstance(layout, Tensor) or len(layout) != n_in:
        why = layout.reason if isinstance(layout, Lost) else "the chain's input changed"
        raise WidenError(entry.node_id, f"init: preserve cannot keep the function of {where}: its input grows "
                                        f"{m_in} → {n_in}, but {why}",
                         "give the node that widens its input init: preserve (or keep)")
    layout = layout.to(like.device)
    valid = layout >= 0
    source = layout.clamp(min=0)
    counts = torch.bincount(layout[valid], minlength=m_in).clamp(min=1)
    return source, valid.to(like.dtype) / counts[source].to(like.dtype)  # in the weights' precision


@torch.no_grad()
def _widen_attention(entry: Entry, where: str, leaf: CausalSelfAttention, old: nn.Module, layout: Layout,
                     carries: list[Carry]) -> Layout:
    """Add heads: each new head copies a random old head's query, key and value rows, and the output
    projection divides each copied head's columns by its number of copies (duplicate heads attend
    alike, so their outputs are equal)."""
    assert isinstance(old, CausalSelfAttention)
    if leaf.head_dim != old.head_dim:
        raise WidenError(entry.node_id, f"init: preserve keeps each head's width, but {where} changes head_dim "
                                        f"{old.head_dim} → {leaf.head_dim}",
                         "add heads at a fixed head_dim (set head_dim in args)")
    if leaf.heads < old.heads:
        raise WidenError(entry.node_id, f"init: preserve cannot drop heads of {where} ({old.heads} → {leaf.heads})",
                         "use init: keep or fresh")
    if leaf.dim != old.dim:
        raise WidenError(entry.node_id, f"init: preserve adds heads but cannot change the width of {where} "
                                        f"({old.dim} → {leaf.dim})", "use init: keep or fresh")
    device, d = leaf.c_attn.weight.device, leaf.head_dim
    heads = _replicas(old.heads, leaf.heads, device)
    unit = (heads[:, None] * d + torch.arange(d, device=device)).reshape(-1)  # old inner index of each new one
    rows = torch.cat([part * old.heads * d + unit for part in range(3)])  # q, k and v
    columns = _input_columns(entry, where, layout, old.dim, leaf.dim, leaf.c_attn.weight)
    counts = torch.bincount(heads, minlength=old.heads)[heads].repeat_interleave(d)

    def gather_attn(tensor: Tensor) -> Tensor:
        return tensor[rows] if columns is None else tensor[rows][:, columns[0]]

    attn_factor = 1.0 if columns is None else columns[1].reshape(1, -1)
    proj_factor = (1 / counts.to(leaf.c_proj.weight.dtype)).reshape(1, -1)
    pairs = ((leaf.c_attn, old.c_attn, gather_attn, attn_factor),
             (leaf.c_proj, old.c_proj, lambda tensor: tensor[:, unit], proj_factor))
    for new_layer, old_layer, gather, factor in pairs:
        new_layer.weight.copy_(gather(old_layer.weight.detach()) * factor)
        _carry(carries, new_layer.weight, old_layer.weight, gather, factor)
    if (old.c_attn.bias is None) != (leaf.c_attn.bias is None):
        raise WidenError(entry.node_id, f"init: preserve cannot add or drop the biases of {where}", "use init: keep")
    if leaf.c_attn.bias is not None:
        leaf.c_attn.bias.copy_(old.c_attn.bias.detach()[rows])
        _carry(carries, leaf.c_attn.bias, old.c_attn.bias, lambda tensor: tensor[rows])
        leaf.c_proj.bias.copy_(old.c_proj.bias.detach())
        _carry(carries, leaf.c_proj.bias, old.c_proj.bias, _same)
    return None


def _replicas(m_out: int, n_out: int, device: torch.device) -> Tensor:
    """Old unit index of each new unit: the old units in order, then random copies (torch's global RNG)."""
    extra = torch.randint(0, m_out, (n_out - m_out,)) if n_out > m_out else torch.empty(0, dtype=torch.long)
    return torch.cat([torch.arange(m_out), extra]).to(device)


def _widen_per_channel(entry: Entry, where: str, leaf: nn.Module, old: nn.Module, layout: Layout,
                       carries: list[Carry]) -> None:
    source = dict(chained(old.named_parameters(), old.named_buffers()))
    for name, tensor in chained(leaf.named_parameters(), leaf.named_buffers()):
        previous = source.get(name)
        if previous is None:
            continue
        before = previous
        previous = previous.detach().to(device=tensor.device, dtype=tensor.dtype)
        if tensor.dim() == 0 or tensor.shape == previous.shape:
            tensor.copy_(previous)
            _carry(carries, tensor, before, _same)
        elif tensor.shape[0] < previous.shape[0]:
            raise WidenError(entry.node_id, f"init: preserve cannot shrink {where}", "use init: keep or fresh")
        else:
            if isinstance(layout, Tensor) and len(layout) == tensor.shape[0]:
                index = layout.to(tensor.device)
            else:
                index = _prefix(previous.shape[0], tensor.shape[0]).to(tensor.device)
            valid = index >= 0
            tensor[valid] = previous[index[valid]]
            mask = valid.to(tensor.dtype)
            _carry(carries, tensor, before, lambda old_tensor, index=index: old_tensor[index.clamp(min=0)], mask)


def _copy_same(entry: Entry, where: str, leaf: nn.Module, old: nn.Module, carries: list[Carry]) -> None:
    source = dict(chained(old.named_parameters(), old.named_buffers()))
    for name, tensor in chained(leaf.named_parameters(), leaf.named_buffers()):
        previous = source.get(name)
        if previous is None or previous.shape != tensor.shape:
            raise WidenError(entry.node_id, f"init: preserve does not support changing the shape of "
                                            f"{where} ({name})", "use init: keep or fresh")
        tensor.copy_(previous.detach())
        _carry(carries, tensor, previous, _same)
