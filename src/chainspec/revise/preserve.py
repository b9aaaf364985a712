"""``init: preserve`` on a whole new chain: one sweep, head to tail, that makes the revised chain
compute what the old one did.

The sweep tracks a *layout* (``revise.channels``): for each channel flowing between nodes, what
it carries in terms of the old channels. A replaced ``preserve`` node is widened part by part:

* weight layers (Net2WiderNet, Chen et al. 2016): new output units copy old ones (the old units
  tiled, when the new width is a multiple; else randomly chosen ones), and the layer that consumes
  them shares each copied unit's incoming weights among its copies, by uneven shares that add up
  to the old weight in every row (``Channels.consumer``), so that the copies learn apart;
  per-channel layers between them (batch norm, activations, pooling) follow the copies;
* attention heads (``causal_self_attention`` at a fixed ``head_dim``): new heads copy old heads'
  query, key and value rows, and the output projection shares each copied head's columns;
* the model width of a transformer (the residual stream): a widened token embedding chooses the
  stream's layout (``channels.stream_channels``: tiles for a multiple, else mean channels under
  LayerNorm, zero channels under RMSNorm), the position embedding and every block's last
  projection write new channels the same way, so that each residual sum keeps the layout, and
  every norm is rescaled to give the old output on the old channels (LEMON, Wang et al. 2023).
  A norm's output over tiled channels is split among the copies (its scale and shift multiplied
  by uneven shares that sum to one over the copies), so that a layer reading it, an LM head tied
  to the token embedding included, copies its columns whole, and the copies learn apart.

An inserted ``preserve`` node starts as the identity (``widen.identity_init``).

Optimizer moments follow the weights: every new parameter filled from an old one is
``gather(old) * factor`` elementwise, recorded as a ``widen.Carry`` for ``revise.optim``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain as chained
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .._errors import SpecError
from ..types.layers import CausalSelfAttention, PositionEmbedding, Residual, RMSNorm
from .channels import MEAN, NEW, ZERO, Channels, Layout, Lost, prefix, replicas, stream_channels, tiles
from .widen import (
    CHANNELWISE,
    PER_CHANNEL,
    WEIGHT_LAYERS,
    ZERO_KEEPING,
    Carry,
    Entry,
    WidenError,
    identity_init,
    scale_of,
)

if TYPE_CHECKING:
    from .ops import Revising

#: Norm layers over the last dimension that a widened residual stream is rescaled through.
NORMS: tuple[type[nn.Module], ...] = (nn.LayerNorm, RMSNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
#: Channelwise layers that are linear: a scaled or averaged channel stays one through them.
LINEAR_CHANNELWISE: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.modules.dropout._DropoutNd, nn.Upsample, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd)


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


@dataclass
class _Sweeping:
    """The state of one sweep: the carries so far, the kinds of norm in the new chain (for the
    stream layout a widened embedding chooses), and the parameters written (a tied one is met twice)."""

    carries: list[Carry] = field(default_factory=list)
    norms: set[str] = field(default_factory=set)
    written: dict[int, Carry] = field(default_factory=dict)

    def carry(self, new: Tensor, old: Tensor, gather: Callable[[Tensor], Tensor],
              factor: Tensor | float = 1.0) -> None:
        if isinstance(new, nn.Parameter) and isinstance(old, nn.Parameter):  # buffers have no optimizer state
            carry = Carry(new, old, gather, factor)
            self.carries.append(carry)
            self.written[id(new)] = carry


def preserve(entries: Sequence[Entry]) -> Sweep:
    """Initialise every ``init: preserve`` node of a new chain so that the chain keeps its function.

    ``entries`` is the whole new chain, head to tail. Runs in one pass.

    Raises:
        WidenError: a preserve node's change cannot keep the function; the message names the layer.

    Example:
        >>> from chainspec.revise.widen import Entry
        >>> old, new = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        >>> sweep = preserve([Entry("mlp", new, old, "replace", "preserve")])
        >>> x = torch.randn(4, 2)
        >>> torch.allclose(new(x), old(x)), len(sweep.carries), sweep.output_changed
        (True, 4, False)
    """
    layout: Layout = None
    sweeping = _Sweeping(norms=_norm_kinds(entries))
    for entry in entries:
        if entry.kind == "gap":  # what feeds the next node is no longer what fed it
            layout = Lost(entry.init)
        elif entry.kind == "replace" and entry.init == "preserve":
            assert entry.old is not None and entry.module is not None
            with torch.no_grad():
                layout = _preserve_module(entry, entry.module, entry.old, layout, sweeping)
        elif entry.kind == "insert" and entry.init == "preserve":
            assert entry.module is not None
            identity_init(entry.module, entry.node_id)  # identities keep the layout
        else:
            layout = _track(entry, layout)
    return Sweep(sweeping.carries, layout is not None)


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


def _norm_kinds(entries: Sequence[Entry]) -> set[str]:
    """``"layer"`` and/or ``"rms"``: the kinds of norm in the new chain."""
    kinds = set()
    for entry in entries:
        for sub in entry.module.modules() if entry.module is not None else ():
            if isinstance(sub, nn.LayerNorm):
                kinds.add("layer")
            elif isinstance(sub, NORMS):
                kinds.add("rms")
    return kinds


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


# -- nodes the sweep does not initialise -------------------------------------------------------

def _track(entry: Entry, layout: Layout) -> Layout:
    """The layout after a node this sweep does not initialise."""
    assert entry.module is not None
    old_leaves = dict(_units(entry.old)) if entry.old is not None else {}
    for path, leaf in _units(entry.module):
        where = _where(entry, path, leaf)
        if isinstance(leaf, CausalSelfAttention):  # it mixes its input's channels, and gives back dim of them
            before = old_leaves.get(path)
            if entry.kind == "same" or (isinstance(before, CausalSelfAttention) and before.dim == leaf.dim):
                layout = None
            else:
                layout = Lost(f"the new layer {where} changes the width")
        elif isinstance(leaf, (*WEIGHT_LAYERS, nn.Embedding)):
            out_new = _out_in(leaf)[0]
            before = old_leaves.get(path)
            if entry.kind == "same":
                layout = None
            elif entry.kind == "insert" or before is None or type(before) is not type(leaf):
                layout = None if _out_in(leaf)[0] == _out_in(leaf)[1] else Lost(
                    f"the new layer {where} changes the width")
            else:
                out_old = _out_in(before)[0]
                layout = None if out_new == out_old else prefix(out_old, out_new)
        elif isinstance(leaf, PER_CHANNEL):
            layout = _past_per_channel(layout)
        elif isinstance(leaf, CHANNELWISE):
            layout = _past_channelwise(leaf, layout, where)
        elif isinstance(leaf, NORMS) and isinstance(layout, Channels) and not any(True for _ in leaf.parameters()):
            if not _tiled(layout):  # a norm without scale or shift gives tiles of its output over tiles
                layout = Lost(f"{where} has no learned scale to make up for channels that are not tiles of "
                              "the old ones (widen by a multiple)")
        elif layout is not None and not isinstance(layout, Lost) and not (
                entry.kind == "same" and isinstance(leaf, PositionEmbedding)):
            layout = Lost(f"{where} mixes or rearranges channels")
    return layout


def _tiled(layout: Layout) -> bool:
    """Whether every channel is an unscaled copy of an old one, each old one copied equally often."""
    if not isinstance(layout, Channels) or bool((layout.source < 0).any()):
        return False
    if layout.scale is not None and not bool((layout.scale == 1).all()):
        return False
    counts = layout.counts(int(layout.source.max()) + 1)
    return bool((counts == counts[0]).all())


def _past_per_channel(layout: Layout) -> Layout:
    """The layout after a per-channel layer with state (batch norm): copies stay copies; a channel
    holding a mean or zero comes out a value of its own."""
    if not isinstance(layout, Channels) or not layout.marks(MEAN, ZERO):
        return layout
    source = layout.source.clone()
    source[source < 0] = NEW
    return Channels(source, layout.scale, layout.whole)


def _past_channelwise(leaf: nn.Module, layout: Layout, where: str) -> Layout:
    """The layout after a parameterless channelwise layer: a linear one (dropout, average pooling)
    keeps it; a non-linear one keeps copies and zeros (where it maps 0 to 0), not scales or means."""
    if not isinstance(layout, Channels) or isinstance(leaf, LINEAR_CHANNELWISE):
        return layout
    if layout.scale is not None and not bool((layout.scale == 1).all()):
        return Lost(f"{where} is not linear, and its input channels are scaled copies")
    source = layout.source.clone()
    source[source == MEAN] = NEW
    if not isinstance(leaf, ZERO_KEEPING):
        source[source == ZERO] = NEW
    return Channels(source, whole=layout.whole)


def _where(entry: Entry, path: str, leaf: nn.Module) -> str:
    return f"{type(leaf).__name__} in node {entry.node_id!r}" + (f" ({path})" if path else "")


def _out_in(leaf: nn.Module) -> tuple[int, int]:
    weight = leaf.weight
    if isinstance(leaf, nn.Embedding):
        return weight.shape[1], weight.shape[1]
    if isinstance(leaf, nn.modules.conv._ConvTransposeNd):
        return weight.shape[1] * leaf.groups, weight.shape[0]
    return weight.shape[0], weight.shape[1] * getattr(leaf, "groups", 1)


# -- preserve nodes ----------------------------------------------------------------------------

def _preserve_module(entry: Entry, module: nn.Module, old_module: nn.Module, layout: Layout,
                     sweeping: _Sweeping, path_prefix: str = "", target: Channels | None = None) -> Layout:
    """Widen ``module`` from ``old_module`` part by part; a residual block's body and shortcut both take
    its input, and their outputs, added, must have the same layout. ``target``: the layout the last
    weighted part must write (the stream a residual body adds into)."""
    if isinstance(module, Residual) and isinstance(old_module, Residual):
        return _preserve_residual(entry, module, old_module, layout, sweeping, path_prefix)
    old_leaves = dict(_units(old_module, whole=(CausalSelfAttention, Residual)))
    new_leaves = [(path, leaf) for path, leaf in _units(module, whole=(CausalSelfAttention, Residual))]
    if [p for p, _ in new_leaves] != list(old_leaves) or any(
            type(old_leaves[p]) is not type(m) for p, m in new_leaves):
        before = ", ".join(f"{p or '-'}: {type(m).__name__}" for p, m in old_leaves.items())
        after = ", ".join(f"{p or '-'}: {type(m).__name__}" for p, m in new_leaves)
        raise WidenError(entry.node_id, f"init: preserve needs the same layers before and after "
                                        f"(before: {before}; after: {after})", "use init: keep or fresh")
    last = _last_writer(new_leaves) if target is not None else None
    for index, (path, leaf) in enumerate(new_leaves):
        old = old_leaves[path]
        full = f"{path_prefix}.{path}" if path_prefix and path else (path_prefix or path)
        where = f"{type(leaf).__name__} in node {entry.node_id!r}" + (f" ({full})" if full else "")
        writes = target if index == last else None
        if isinstance(leaf, Residual):
            layout = _preserve_module(entry, leaf, old, layout, sweeping, full)
        elif isinstance(leaf, CausalSelfAttention):
            layout = _widen_attention(entry, where, leaf, old, layout, sweeping, writes)
        elif isinstance(leaf, WEIGHT_LAYERS):
            layout = _widen_weight(entry, where, leaf, old, layout, sweeping, writes)
        elif isinstance(leaf, nn.Embedding):
            layout = _widen_embedding(entry, where, leaf, old, layout, sweeping)
        elif isinstance(leaf, PositionEmbedding):
            layout = _widen_position(entry, where, leaf, old, layout, sweeping)
        elif isinstance(leaf, NORMS):
            layout = _widen_norm(entry, where, leaf, old, layout, sweeping)
        elif isinstance(leaf, PER_CHANNEL):
            _widen_per_channel(entry, where, leaf, old, layout, sweeping)
            layout = _past_per_channel(layout)
        elif isinstance(leaf, CHANNELWISE):
            layout = _past_channelwise(leaf, layout, where)
        else:
            _copy_same(entry, where, leaf, old, sweeping)
            if layout is not None and not isinstance(layout, Lost):
                layout = Lost(f"{where} mixes or rearranges channels")
    return layout


def _preserve_residual(entry: Entry, module: Residual, old_module: Residual, layout: Layout,
                       sweeping: _Sweeping, path_prefix: str) -> Layout:
    where = f"{type(module).__name__} in node {entry.node_id!r}" + (f" ({path_prefix})" if path_prefix else "")
    if (module.shortcut is None) != (old_module.shortcut is None) or \
            (module.after is None) != (old_module.after is None):
        raise WidenError(entry.node_id, f"init: preserve needs the same parts in {where} before and after",
                         "use init: keep or fresh")
    inner = f"{path_prefix}." if path_prefix else ""
    # An identity shortcut adds the input as it is: the body must write its units the same way.
    target = layout if module.shortcut is None and isinstance(layout, Channels) else None
    body = _preserve_module(entry, module.body, old_module.body, layout, sweeping, f"{inner}body", target)
    shortcut = layout if module.shortcut is None else _preserve_module(
        entry, module.shortcut, old_module.shortcut, layout, sweeping, f"{inner}shortcut")
    if not _same_layout(body, shortcut):
        raise WidenError(entry.node_id, f"init: preserve cannot keep the sum of {where}: its body and its "
                                        "shortcut would make different copies of the units they add",
                         "widen a block with a projection shortcut with init: keep, or keep its width")
    if module.after is None:
        return body
    return _preserve_module(entry, module.after, old_module.after, body, sweeping, f"{inner}after")


def _last_writer(leaves: list[tuple[str, nn.Module]]) -> int | None:
    """The index of the last weight or attention layer, if only channelwise layers follow it."""
    for index in range(len(leaves) - 1, -1, -1):
        leaf = leaves[index][1]
        if isinstance(leaf, (*WEIGHT_LAYERS, CausalSelfAttention)):
            return index
        if not isinstance(leaf, LINEAR_CHANNELWISE):
            return None
    return None


def _same_layout(a: Layout, b: Layout) -> bool:
    if isinstance(a, Channels) and isinstance(b, Channels):
        return a.same_as(b)
    return (a is None and b is None) or (isinstance(a, Lost) and isinstance(b, Lost))


def _input_columns(entry: Entry, where: str, layout: Layout, m_in: int, n_in: int,
                   like: Tensor, rows: int | None = None) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(old input of each new input, its weight factor, free)`` for a layer whose inputs were widened
    or rearranged (``Channels.consumer``; uneven shares per row when ``rows`` is given), or None when
    they are the old ones."""
    if n_in == m_in and not isinstance(layout, Channels):
        return None
    if not isinstance(layout, Channels) or len(layout) != n_in:
        why = layout.reason if isinstance(layout, Lost) else "the chain's input changed"
        raise WidenError(entry.node_id, f"init: preserve cannot keep the function of {where}: its input grows "
                                        f"{m_in} → {n_in}, but {why}",
                         "give the node that widens its input init: preserve (or keep)")
    return layout.to(like.device).consumer(m_in, like, rows)


def _write(sweeping: _Sweeping, entry: Entry, where: str, new: Tensor, old: Tensor,
           gather: Callable[[Tensor], Tensor], factor: Tensor | float = 1.0, free: Tensor | None = None,
           free_dim: int = 1) -> None:
    """``new = gather(old) * factor``, except along ``free_dim`` where ``free``: those entries keep
    ``new``'s own initial values. A parameter already written (tied to one written before) is
    checked instead: the two rules must agree."""
    if id(new) in sweeping.written:
        _check_tied(sweeping.written[id(new)], entry, where, old, gather, factor, free, free_dim)
        return
    before = new.detach().clone() if free is not None and bool(free.any()) else None
    new.copy_(gather(old.detach().to(dtype=new.dtype, device=new.device)) * factor)
    if before is not None:
        assert free is not None
        index = [slice(None)] * new.dim()
        index[free_dim] = free
        new[tuple(index)] = before[tuple(index)]
    sweeping.carry(new, old, gather, factor)


def _check_tied(owner: Carry, entry: Entry, where: str, old: Tensor, gather: Callable[[Tensor], Tensor],
                factor: Tensor | float, free: Tensor | None, free_dim: int) -> None:
    """A tied parameter met again: the rule this layer needs must give what its owner wrote, on a probe."""
    probe = torch.randn(old.shape, generator=torch.Generator().manual_seed(0)).to(owner.new.device, owner.new.dtype)
    have, want = owner.apply(probe), gather(probe) * factor
    if free is not None and bool(free.any()):
        keep = [slice(None)] * have.dim()
        keep[free_dim] = ~free
        have, want = have[tuple(keep)], want[tuple(keep)]
    if have.shape != want.shape or not torch.allclose(have, want, rtol=1e-5, atol=1e-6):
        raise WidenError(entry.node_id, f"init: preserve cannot widen {where}: its weight is tied to a parameter "
                                        "widened before it, by a rule this layer cannot share",
                         "a norm with a learned scale just before this layer lets it copy the tied columns "
                         "whole; or untie the weight")


def _widen_weight(entry: Entry, where: str, leaf: nn.Module, old: nn.Module, layout: Layout,
                  sweeping: _Sweeping, target: Channels | None = None) -> Layout:
    """Widen a linear or convolution layer: new output units copy old ones (or are laid out as
    ``target``); the inputs are weighted by the layout they come in."""
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
    tied = id(leaf.weight) in sweeping.written  # met again: its owner's rule, which has even shares
    columns = _input_columns(entry, where, layout, m_in, n_in, w_new, None if tied else n_out)
    if target is not None and len(target) == n_out and n_out != m_out:
        rows = target.to(w_new.device)
    elif n_out % m_out == 0:  # each unit copied alike: a norm reading them keeps its function
        rows = tiles(m_out, n_out, w_new.device)
    else:
        rows = Channels(replicas(m_out, n_out, w_new.device))

    def view(tensor: Tensor) -> Tensor:  # (out, in, *kernel), a view: transposed convolutions swap the two
        return tensor.transpose(0, 1) if transposed else tensor

    def gather(tensor: Tensor) -> Tensor:
        tensor = rows.pick(view(tensor), 0)
        return view(tensor if columns is None else tensor[:, columns[0]])

    inputs = torch.ones(n_in, device=w_new.device, dtype=w_new.dtype) if columns is None else columns[1]
    inputs = inputs.reshape(-1, n_in)  # one row of factors for every row, or one for each
    factor = view((inputs * (scale_of(old) / scale_of(leaf))).reshape(inputs.shape + (1,) * (w_new.dim() - 2))
                  * rows.scale_along(0, w_new.dim(), w_new))
    free = None if columns is None else columns[2]
    _write(sweeping, entry, where, leaf.weight, old.weight, gather, factor, free, 0 if transposed else 1)
    bias_old, bias_new = getattr(old, "bias", None), getattr(leaf, "bias", None)
    if (bias_old is None) != (bias_new is None):
        raise WidenError(entry.node_id, f"init: preserve cannot add or drop the bias of {where}", "use init: keep")
    if bias_new is not None:
        _write(sweeping, entry, where, bias_new, bias_old, lambda tensor: rows.pick(tensor, 0),
               rows.scale_along(0, 1, bias_new))
    return rows.to(torch.device("cpu")) if n_out != m_out else None


@torch.no_grad()
def _widen_attention(entry: Entry, where: str, leaf: CausalSelfAttention, old: nn.Module, layout: Layout,
                     sweeping: _Sweeping, target: Channels | None = None) -> Layout:
    """Add heads: each new head copies a random old head's query, key and value rows, and the output
    projection shares each copied head's columns among its copies (duplicate heads attend alike, so
    their outputs are equal, and their shares add up to the old columns). A wider model (``dim``)
    reads its input by the layout it comes in and writes its output as ``target``."""
    assert isinstance(old, CausalSelfAttention)
    if leaf.head_dim != old.head_dim:
        raise WidenError(entry.node_id, f"init: preserve keeps each head's width, but {where} changes head_dim "
                                        f"{old.head_dim} → {leaf.head_dim}",
                         "add heads at a fixed head_dim (set head_dim in args)")
    if leaf.heads < old.heads:
        raise WidenError(entry.node_id, f"init: preserve cannot drop heads of {where} ({old.heads} → {leaf.heads})",
                         "use init: keep or fresh")
    if leaf.dim < old.dim:
        raise WidenError(entry.node_id, f"init: preserve cannot narrow {where} ({old.dim} → {leaf.dim})",
                         "use init: keep or fresh")
    device, d = leaf.c_attn.weight.device, leaf.head_dim
    if leaf.dim == old.dim:
        out = None
    elif target is not None and len(target) == leaf.dim:
        out = target.to(device)
    else:
        raise WidenError(entry.node_id, f"init: preserve widens {where} ({old.dim} → {leaf.dim}) only where it "
                                        "adds into a widened residual stream",
                         "widen the whole stream (embedding, blocks, norms and head) with init: preserve")
    heads = replicas(old.heads, leaf.heads, device)
    unit = (heads[:, None] * d + torch.arange(d, device=device)).reshape(-1)  # old inner index of each new one
    rows = torch.cat([part * old.heads * d + unit for part in range(3)])  # q, k and v
    columns = _input_columns(entry, where, layout, old.dim, leaf.dim, leaf.c_attn.weight, len(rows))
    inner = Channels(unit).consumer(old.heads * d, leaf.c_proj.weight, leaf.dim)[1]  # copied heads share columns

    def gather_attn(tensor: Tensor) -> Tensor:
        return tensor[rows] if columns is None else tensor[rows][:, columns[0]]

    def gather_proj(tensor: Tensor) -> Tensor:
        return tensor[:, unit] if out is None else out.pick(tensor[:, unit], 0)

    attn_factor = 1.0 if columns is None else columns[1]
    proj_factor = inner
    if out is not None:
        proj_factor = proj_factor * out.scale_along(0, 2, leaf.c_proj.weight)
    _write(sweeping, entry, where, leaf.c_attn.weight, old.c_attn.weight, gather_attn, attn_factor,
           None if columns is None else columns[2])
    _write(sweeping, entry, where, leaf.c_proj.weight, old.c_proj.weight, gather_proj, proj_factor)
    if (old.c_attn.bias is None) != (leaf.c_attn.bias is None):
        raise WidenError(entry.node_id, f"init: preserve cannot add or drop the biases of {where}", "use init: keep")
    if leaf.c_attn.bias is not None:
        _write(sweeping, entry, where, leaf.c_attn.bias, old.c_attn.bias, lambda tensor: tensor[rows])
        _write(sweeping, entry, where, leaf.c_proj.bias, old.c_proj.bias,
               (lambda tensor: tensor.clone()) if out is None else (lambda tensor: out.pick(tensor, 0)),
               1.0 if out is None else out.scale_along(0, 1, leaf.c_proj.bias))
    return None if out is None else out.to(torch.device("cpu"))


def _widen_embedding(entry: Entry, where: str, leaf: nn.Embedding, old: nn.Module, layout: Layout,
                     sweeping: _Sweeping) -> Layout:
    """A token embedding that widens starts the residual stream's layout (``stream_channels``); new
    tokens (a larger vocabulary) keep their own initial vectors."""
    assert isinstance(old, nn.Embedding)
    (m_tokens, m_dim), (n_tokens, n_dim) = tuple(old.weight.shape), tuple(leaf.weight.shape)
    if isinstance(layout, Lost):
        raise WidenError(entry.node_id, f"init: preserve cannot keep the function of {where}: {layout.reason}",
                         "give the node that changes its input init: preserve")
    if n_tokens < m_tokens or n_dim < m_dim:
        raise WidenError(entry.node_id, f"init: preserve cannot shrink {where} ({m_tokens}×{m_dim} becomes "
                                        f"{n_tokens}×{n_dim})", "use init: keep or fresh")
    if n_dim == m_dim:
        out = None
    else:
        try:
            out = stream_channels(m_dim, n_dim, sweeping.norms).to(leaf.weight.device)
        except ValueError as exc:
            raise WidenError(entry.node_id, f"init: preserve cannot widen {where}: {exc}", "widen by a multiple "
                             f"of {m_dim}") from None
    tokens = torch.cat([torch.arange(m_tokens), torch.zeros(n_tokens - m_tokens, dtype=torch.long)])
    tokens = tokens.to(leaf.weight.device)
    known = (torch.arange(n_tokens, device=tokens.device) < m_tokens).to(leaf.weight.dtype).reshape(-1, 1)

    def gather(tensor: Tensor) -> Tensor:
        return tensor[tokens] if out is None else out.pick(tensor[tokens], 1)

    free = torch.arange(n_tokens, device=tokens.device) >= m_tokens
    _write(sweeping, entry, where, leaf.weight, old.weight, gather, known, free, free_dim=0)
    return None if out is None else out.to(torch.device("cpu"))


def _widen_position(entry: Entry, where: str, leaf: PositionEmbedding, old: nn.Module, layout: Layout,
                    sweeping: _Sweeping) -> Layout:
    """A position table is added to the stream: its new columns are laid out as the stream's channels;
    new positions (a longer ``max_len``) keep their own initial vectors."""
    assert isinstance(old, PositionEmbedding)
    if leaf.max_len < old.max_len:
        raise WidenError(entry.node_id, f"init: preserve cannot shorten {where} ({old.max_len} → {leaf.max_len})",
                         "use init: keep or fresh")
    if leaf.dim != old.dim and not (isinstance(layout, Channels) and len(layout) == leaf.dim):
        why = layout.reason if isinstance(layout, Lost) else "the stream it adds to is not widened before it"
        raise WidenError(entry.node_id, f"init: preserve cannot widen {where} ({old.dim} → {leaf.dim}): {why}",
                         "widen the token embedding before it with init: preserve")
    stream = layout.to(leaf.weight.device) if isinstance(layout, Channels) else None
    positions = torch.arange(leaf.max_len, device=leaf.weight.device).clamp(max=old.max_len - 1)

    def gather(tensor: Tensor) -> Tensor:
        return tensor[positions] if stream is None else stream.pick(tensor[positions], 1)

    factor = (torch.arange(leaf.max_len, device=positions.device) < old.max_len).to(leaf.weight.dtype)
    factor = factor.reshape(-1, 1) * (1.0 if stream is None else stream.scale_along(1, 2, leaf.weight))
    free = torch.arange(leaf.max_len, device=positions.device) >= old.max_len
    _write(sweeping, entry, where, leaf.weight, old.weight, gather, factor, free, free_dim=0)
    return layout


def _norm_width(norm: nn.Module) -> tuple[int, ...]:
    if isinstance(norm, RMSNorm):
        return (norm.dim,)
    return tuple(norm.normalized_shape)


def _widen_norm(entry: Entry, where: str, leaf: nn.Module, old: nn.Module, layout: Layout,
                sweeping: _Sweeping) -> Layout:
    """A LayerNorm or RMSNorm over a widened stream.

    Over tiles of the old channels, it gives its old output split among the copies: its scale and
    shift are copied, times uneven shares that sum to one over each channel's copies (drawn as
    ``Channels.consumer`` draws them), so that a layer reading it may read each copy whole (a tied
    LM head does). Over the old channels plus mean (LayerNorm) or zero (RMSNorm) channels, its
    scale is multiplied by ``sqrt(old / new)`` on the old channels (a norm without one says its
    output is scaled by ``sqrt(new / old)`` there), which gives the old output exactly when its
    ``eps`` is the old one times ``old / new``; its output on the new channels is zero."""
    m_shape, n_shape = _norm_width(old), _norm_width(leaf)
    if m_shape == n_shape and not isinstance(layout, Channels):
        _copy_same(entry, where, leaf, old, sweeping)
        return layout
    if len(n_shape) != 1 or len(m_shape) != 1:
        raise WidenError(entry.node_id, f"init: preserve widens {where} only over its last dimension",
                         "use init: keep or fresh")
    m, n = m_shape[0], n_shape[0]
    if not isinstance(layout, Channels) or len(layout) != n:
        why = layout.reason if isinstance(layout, Lost) else "its input is not widened before it"
        raise WidenError(entry.node_id, f"init: preserve cannot keep the function of {where} ({m} → {n}): {why}",
                         "widen the stream it reads with init: preserve")
    channels = layout.to(leaf.weight.device if getattr(leaf, "weight", None) is not None else torch.device("cpu"))
    source, counts = channels.source, channels.counts(m)
    params = [(name, getattr(leaf, name), getattr(old, name)) for name in ("weight", "bias")
              if getattr(leaf, name, None) is not None]
    if any(getattr(old, name, None) is None for name, _, _ in params) or \
            len(params) != sum(getattr(old, name, None) is not None for name in ("weight", "bias")):
        raise WidenError(entry.node_id, f"init: preserve cannot add or drop the scale or shift of {where}",
                         "use init: keep")
    unscaled = channels.scale is None or bool((channels.scale == 1).all())
    if _tiled(channels) and bool((counts == counts[0]).all()):
        if leaf.eps != old.eps:
            raise WidenError(entry.node_id, f"init: preserve keeps the function of {where} over tiles of its old "
                                            f"channels only with its old eps {old.eps!r}, not {leaf.eps!r}",
                             "keep eps as it was when widening by a multiple")
        if not params:
            return Channels(source.cpu())
        # uneven shares of each channel among its copies, adding up to one (the draws a consumer makes per row)
        shares = Channels(source).consumer(m, params[0][1], rows=1)[1][0]
        for _, new_param, old_param in params:
            _write(sweeping, entry, where, new_param, old_param, lambda tensor: tensor[source], shares)
        return Channels(source.cpu(), shares.cpu(), whole=True)
    fill = MEAN if isinstance(leaf, nn.LayerNorm) else ZERO
    once = bool((counts == 1).all())
    if channels.marks(NEW):
        raise WidenError(entry.node_id, f"init: preserve cannot keep the function of {where} ({m} → {n}): new "
                                        "channels of its input hold values of their own (a node before it "
                                        "widened the stream with init: keep or fresh)",
                         "give every node that widens the stream init: preserve")
    if not (unscaled and once and bool((source[source < 0] == fill).all())):
        kind = "mean" if fill == MEAN else "zero"
        raise WidenError(entry.node_id, f"init: preserve cannot keep the function of {where} ({m} → {n}): its "
                                        f"input channels are neither the old ones tiled nor the old ones plus "
                                        f"{kind} channels", f"widen the stream by a multiple of {m}")
    eps_new, want = leaf.eps, None if old.eps is None else old.eps * m / n
    if want is None or eps_new is None or not math.isclose(eps_new, want, rel_tol=1e-6):
        raise WidenError(entry.node_id, f"init: preserve widens {where} {m} → {n} exactly only with eps "
                                        f"{want!r} (the old eps {old.eps!r} × {m}/{n}), not {eps_new!r}",
                         f"set eps: {want!r} in its args, or widen by a multiple of {m}")
    ratio = math.sqrt(m / n)
    kept = (source >= 0).to(leaf.weight.dtype if params else torch.float32)
    for name, new_param, old_param in params:
        _write(sweeping, entry, where, new_param, old_param, lambda tensor: tensor[source.clamp(min=0)],
               kept * (ratio if name == "weight" else 1.0))
        if name == "weight":  # the new channels read ~0: a typical scale, so that they learn like the rest
            new_param[source < 0] = old_param.detach().mean().to(new_param.dtype) * ratio
    out = torch.where(source >= 0, source, torch.full_like(source, ZERO)).cpu()
    if any(name == "weight" for name, _, _ in params):
        return Channels(out)
    return Channels(out, torch.where(out >= 0, 1 / ratio, 1.0))  # no scale to rescale: its readers do


def _widen_per_channel(entry: Entry, where: str, leaf: nn.Module, old: nn.Module, layout: Layout,
                       sweeping: _Sweeping) -> None:
    if isinstance(layout, Channels) and layout.scale is not None and not bool((layout.scale == 1).all()):
        raise WidenError(entry.node_id, f"init: preserve cannot keep the function of {where}: its input channels "
                                        "are scaled copies", "use init: keep or fresh")
    source = dict(chained(old.named_parameters(), old.named_buffers()))
    for name, tensor in chained(leaf.named_parameters(), leaf.named_buffers()):
        previous = source.get(name)
        if previous is None:
            continue
        before = previous
        previous = previous.detach().to(device=tensor.device, dtype=tensor.dtype)
        if tensor.dim() == 0 or tensor.shape == previous.shape:
            tensor.copy_(previous)
            sweeping.carry(tensor, before, _same)
        elif tensor.shape[0] < previous.shape[0]:
            raise WidenError(entry.node_id, f"init: preserve cannot shrink {where}", "use init: keep or fresh")
        else:
            if isinstance(layout, Channels) and len(layout) == tensor.shape[0]:
                index = layout.source.to(tensor.device)
            else:
                index = prefix(previous.shape[0], tensor.shape[0]).source.to(tensor.device)
            valid = index >= 0
            tensor[valid] = previous[index[valid]]
            mask = valid.to(tensor.dtype)
            sweeping.carry(tensor, before, lambda old_tensor, index=index: old_tensor[index.clamp(min=0)], mask)


def _copy_same(entry: Entry, where: str, leaf: nn.Module, old: nn.Module, sweeping: _Sweeping) -> None:
    source = dict(chained(old.named_parameters(), old.named_buffers()))
    for name, tensor in chained(leaf.named_parameters(), leaf.named_buffers()):
        previous = source.get(name)
        if previous is None or previous.shape != tensor.shape:
            raise WidenError(entry.node_id, f"init: preserve does not support changing the shape of "
                                            f"{where} ({name})", "use init: keep or fresh")
        if id(tensor) in sweeping.written:  # tied to a parameter this sweep filled
            continue
        tensor.copy_(previous.detach())
        sweeping.carry(tensor, previous, _same)


def _same(tensor: Tensor) -> Tensor:
    return tensor.clone()
