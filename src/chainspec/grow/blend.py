"""The fade-in blend: ``(1 - alpha) * old_path + alpha * new_path`` inside a linear chain.

While a new stage fades in, the region of the chain that the growth plan
replaces runs twice: once through the old nodes, once through the new ones.
A :class:`Chain` runs its nodes one after the other, so the blend is three
parameter-free nodes around the two paths, sharing one small state object::

    ... prev -> blend_split -> [old path] -> blend_swap -> [new path] -> blend_merge -> next ...

* ``blend_split`` remembers the region's input and passes it (through the
  *pre* adapter, e.g. a 2x2 average pool for a discriminator) to the old path;
* ``blend_swap`` remembers the old path's output and passes the region's
  input on to the new path;
* ``blend_merge`` returns ``(1 - alpha) * post(old) + alpha * new``, where
  *post* is the adapter after the old path (e.g. a 2x nearest upsample for a
  generator).

The old and new nodes stay ordinary nodes of the chain, under their own ids:
their state_dict keys, their Parameter objects and their optimizer state do
not change when the blend comes or goes. At alpha = 1 the blend *collapses*:
the three blend nodes and the old path leave the chain, which is then exactly
the chain of the new stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._errors import PlanError
from ..build.chain import Chain, Node
from ..build.modules import placement_of

#: Base ids of the three blend nodes (a suffix is added if a chain already uses one).
BLEND_IDS = ("blend_split", "blend_swap", "blend_merge")


class _Shared:
    """What the three blend nodes pass to each other during one forward: the region input, the old output."""

    __slots__ = ("old", "x")

    def __init__(self) -> None:
        self.x: Tensor | None = None
        self.old: Tensor | None = None

    def __getstate__(self) -> dict[str, bool]:
        return {"empty": True}  # never pickle or deep-copy activations (a falsy state would skip __setstate__)

    def __setstate__(self, state: dict[str, bool]) -> None:
        self.x = self.old = None


class BlendSplit(nn.Module):
    """First blend node: remembers the region's input, feeds it (through ``pre``) to the old path.

    Example:
        >>> shared = _Shared()
        >>> split = BlendSplit(shared, nn.AvgPool2d(2))
        >>> split(torch.ones(1, 3, 8, 8)).shape, shared.x.shape
        (torch.Size([1, 3, 4, 4]), torch.Size([1, 3, 8, 8]))
    """

    def __init__(self, shared: _Shared, pre: nn.Module | None = None) -> None:
        super().__init__()
        self.shared = shared
        self.pre = pre

    def forward(self, x: Tensor) -> Tensor:
        self.shared.x = x
        return self.pre(x) if self.pre is not None else x


class BlendSwap(nn.Module):
    """Middle blend node: keeps the old path's output, hands the region's input to the new path."""

    def __init__(self, shared: _Shared) -> None:
        super().__init__()
        self.shared = shared

    def forward(self, old: Tensor) -> Tensor:
        x = self.shared.x
        if x is None:
            raise RuntimeError("blend_swap ran without blend_split before it; run the whole chain")
        self.shared.old, self.shared.x = old, None
        return x


class BlendMerge(nn.Module):
    """Last blend node: ``(1 - alpha) * post(old) + alpha * new``.

    ``alpha`` is a non-persistent buffer, changed in place: it follows
    ``.to()``, never appears in the state_dict (the chain's keys stay those of
    its real nodes), and is not a constant ``torch.compile`` would specialise on.
    """

    alpha: Tensor

    def __init__(self, shared: _Shared, post: nn.Module | None = None, alpha: float = 0.0) -> None:
        super().__init__()
        self.shared = shared
        self.post = post
        self.register_buffer("alpha", torch.tensor(float(alpha)), persistent=False)
        self.alpha_value = float(alpha)  # the same, readable without a device sync (or on the meta device)

    def forward(self, new: Tensor) -> Tensor:
        old = self.shared.old
        if old is None:
            raise RuntimeError("blend_merge ran without blend_swap before it; run the whole chain")
        self.shared.old = None
        if self.post is not None:
            old = self.post(old)
        a = self.alpha.to(new.dtype)
        # Not torch.lerp: (1 - a) * old + a * new is exactly old at a = 0 and exactly new at a = 1.
        return (1 - a) * old + a * new

    def extra_repr(self) -> str:
        return f"alpha={self.alpha_value:.4f}"


def resize_adapter(source: Sequence[int], target: Sequence[int]) -> nn.Module | None:
    """A parameter-free module turning per-sample shape ``source`` into ``target``, or None if they are equal.

    The leading (channel) dimension must match; the trailing spatial dimensions
    must all scale by the same integer factor: a larger target is a nearest
    upsample, a smaller one an average pool (PG-GAN's adapters).

    Raises:
        PlanError: the shapes are not related that way.

    Example:
        >>> resize_adapter([3, 4, 4], [3, 8, 8])
        Upsample(scale_factor=2.0, mode='nearest')
        >>> resize_adapter([3, 8, 8], [3, 4, 4])
        AvgPool2d(kernel_size=2, stride=2, padding=0)
        >>> resize_adapter([512, 4, 4], [512, 4, 4]) is None
        True
    """
    source, target = tuple(source), tuple(target)
    if source == target:
        return None
    why = f"cannot adapt shape {list(source)} to {list(target)}"
    if len(source) != len(target) or len(source) < 2 or source[0] != target[0]:
        raise PlanError(f"{why}: only the spatial size may differ (same rank, same channels)")
    spatial = list(zip(source[1:], target[1:], strict=True))
    up = all(t >= s for s, t in spatial)
    ratios = {(t / s) if up else (s / t) for s, t in spatial}
    factor = ratios.pop() if len(ratios) == 1 else None
    if factor is None or factor != int(factor) or factor < 2:
        raise PlanError(f"{why}: every spatial dimension must scale by the same integer factor")
    if up:
        return nn.Upsample(scale_factor=float(factor), mode="nearest")
    pools: dict[int, type[nn.Module]] = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
    if len(spatial) not in pools:
        raise PlanError(f"{why}: average pooling covers 1 to 3 spatial dimensions, not {len(spatial)}")
    return pools[len(spatial)](int(factor))


@dataclass
class Blend:
    """A fade-in in progress on one chain: the blend nodes' ids, the two paths, and alpha.

    Create it with :func:`wrap`; set :attr:`alpha`; call :meth:`collapse` at the end.

    Example:
        >>> chain = Chain([("stem", nn.Linear(4, 4)), ("new", nn.Linear(4, 4))])
        >>> blend = wrap(chain, [("old", nn.Identity(), "identity")], ["new"], after="stem")
        >>> chain.ids()
        ['stem', 'blend_split', 'old', 'blend_swap', 'new', 'blend_merge']
        >>> blend.alpha = 0.25
        >>> [n.id for n in blend.collapse()], chain.ids()
        (['blend_split', 'old', 'blend_swap', 'blend_merge'], ['stem', 'new'])
    """

    chain: Chain
    ids: tuple[str, str, str]
    old_ids: tuple[str, ...]
    new_ids: tuple[str, ...]

    @property
    def merge(self) -> BlendMerge:
        """The merge node's module (holds alpha and the post adapter)."""
        module = self.chain[self.ids[2]].module
        assert isinstance(module, BlendMerge)
        return module

    @property
    def alpha(self) -> float:
        """The weight of the new path, in [0, 1]."""
        return self.merge.alpha_value

    @alpha.setter
    def alpha(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= 1.0 or math.isnan(value):
            raise ValueError(f"alpha must be in [0, 1], got {value}")
        merge = self.merge
        merge.alpha.fill_(value)
        merge.alpha_value = value

    def old_modules(self) -> dict[str, nn.Module]:
        """The old path's modules, by node id."""
        return {node_id: self.chain[node_id].module for node_id in self.old_ids}

    def collapse(self) -> list[Node]:
        """Take the blend nodes and the old path out of the chain; return the detached nodes, in chain order."""
        split, swap, merge = self.ids
        removed = [self.chain.remove(split)]
        removed += [self.chain.remove(node_id) for node_id in self.old_ids]
        removed += [self.chain.remove(swap), self.chain.remove(merge)]
        return removed


def blend_ids(taken: set[str] | Sequence[str]) -> tuple[str, str, str]:
    """The three blend node ids, suffixed with ``_2``, ``_3``, ... until none is in ``taken``.

    Example:
        >>> blend_ids({"blend_swap"})
        ('blend_split_2', 'blend_swap_2', 'blend_merge_2')
    """
    taken = set(taken)
    suffix, n = "", 1
    while any(base + suffix in taken for base in BLEND_IDS):
        n += 1
        suffix = f"_{n}"
    split, swap, merge = (base + suffix for base in BLEND_IDS)
    return split, swap, merge


def wrap(chain: Chain, old: Sequence[tuple[str, nn.Module, str]], new_ids: Sequence[str], *, after: str | None,
         pre: nn.Module | None = None, post: nn.Module | None = None, alpha: float = 0.0,
         ids: tuple[str, str, str] | None = None) -> Blend:
    """Put the old path back beside the new one and blend them; return the :class:`Blend`.

    ``chain`` already holds the new path (``new_ids``, contiguous, right after
    ``after``, or at the head when ``after`` is None); ``old`` lists the old
    path's ``(id, module, type)`` in order. Each module goes into the chain
    under its own id, so its state_dict keys are those it always had.

    Raises:
        PlanError: the new path is not where ``after`` says, or an id is taken.
    """
    new_ids = tuple(new_ids)
    first = chain[after].next if after is not None else chain.head
    for node_id in new_ids:
        if first is None or first.id != node_id:
            found = first.id if first is not None else "the end of the chain"
            raise PlanError(f"cannot blend in chain {chain.name!r}: expected the new path {list(new_ids)} "
                            f"after {after or 'the head'}, found {found!r}")
        first = first.next
    split_id, swap_id, merge_id = ids or blend_ids(chain.ids())
    shared = _Shared()
    modules = [(split_id, BlendSplit(shared, pre), "blend_split"),
               *old, (swap_id, BlendSwap(shared), "blend_swap")]
    device, dtype = placement_of(chain)
    anchor = after
    for node_id, module, node_type in modules:
        if node_id in chain:
            raise PlanError(f"cannot blend in chain {chain.name!r}: it already has a node {node_id!r}")
        if anchor is None:
            chain.prepend(node_id, module, node_type=node_type)
        else:
            chain.insert_after(anchor, node_id, module, node_type=node_type)
        anchor = node_id
    merge = BlendMerge(shared, post, alpha).to(device=device, dtype=dtype)
    chain.insert_after(new_ids[-1] if new_ids else swap_id, merge_id, merge, node_type="blend_merge")
    return Blend(chain, (split_id, swap_id, merge_id), tuple(node_id for node_id, _, _ in old), new_ids)


