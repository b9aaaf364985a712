"""Channel layouts for the preserve sweep: what each channel flowing between two layers of a
widened chain carries, in terms of the old chain's channels.

A layout is ``None`` (the old channels, unchanged), a :class:`Channels` or a :class:`Lost` (no
longer known, with the reason). Channel ``j`` of a :class:`Channels` carries:

* ``scale[j] * old[source[j]]`` when ``source[j] >= 0``: a copy of an old channel (Net2Net
  replicas, or the tiles of a width that is a multiple), scaled by ``scale`` (1 when it is None);
* :data:`MEAN`: the mean of the old channels (a residual stream widened for LayerNorm);
* :data:`ZERO`: zero (a stream widened for RMSNorm, or a norm's output on the new channels);
* :data:`NEW`: a value of its own, which a consumer must not read (it gets zero weights).

Producers fill new rows by :meth:`Channels.pick`; consumers weight their inputs by
:meth:`Channels.consumer`. :func:`stream_channels` chooses how a widened embedding lays out the
residual stream, so that the chain's norms keep their function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: A channel with a value of its own: consumers give it zero weight.
NEW = -1
#: A channel carrying the mean of the old channels.
MEAN = -2
#: A channel that is zero.
ZERO = -3


@dataclass(frozen=True)
class Lost:
    """A channel layout that no longer matches the old one, and why.

    Example:
        >>> Lost("node 'a' mixes channels").reason
        "node 'a' mixes channels"
    """

    reason: str


@dataclass(frozen=True, eq=False)
class Channels:
    """What each new channel carries (see the module docstring): ``source`` per channel, an
    optional ``scale`` (1 where None), and whether the copies of each old channel add up to it
    (``whole``: a value split among its copies, which its consumer reads whole).

    Example:
        >>> layout = Channels(torch.tensor([0, 1, 0, MEAN]))
        >>> layout.pick(torch.tensor([[1.0, 3.0], [5.0, 7.0]]), dim=1)
        tensor([[1., 3., 1., 2.],
                [5., 7., 5., 6.]])
    """

    source: Tensor
    scale: Tensor | None = None
    #: The copies of each old channel add up to it (a norm's output split by shares): read each whole.
    whole: bool = False

    def __len__(self) -> int:
        return len(self.source)

    def to(self, device: torch.device) -> Channels:
        """The same layout with its tensors on ``device``."""
        scale = None if self.scale is None else self.scale.to(device)
        return Channels(self.source.to(device), scale, self.whole)

    def counts(self, old: int) -> Tensor:
        """How many new channels copy each of the ``old`` channels.

        Example:
            >>> Channels(torch.tensor([0, 1, 0, NEW])).counts(3)
            tensor([2, 1, 0])
        """
        return torch.bincount(self.source[self.source >= 0], minlength=old)

    def marks(self, *markers: int) -> bool:
        """Whether any channel is one of ``markers`` (:data:`NEW`, :data:`MEAN`, :data:`ZERO`)."""
        return bool(torch.isin(self.source, torch.tensor(markers, device=self.source.device)).any())

    def same_as(self, other: Channels) -> bool:
        """Whether two layouts describe the same channels."""
        if self.source.shape != other.source.shape or not bool((self.source == other.source).all()):
            return False
        if self.whole != other.whole:
            return False
        if self.scale is None or other.scale is None:
            return self.scale is None and other.scale is None
        return bool(torch.allclose(self.scale, other.scale.to(self.scale.device)))

    def pick(self, tensor: Tensor, dim: int) -> Tensor:
        """``tensor`` (old channels along ``dim``) laid out as these channels, without the scale:
        copies gathered, :data:`MEAN` channels the mean over ``dim``, :data:`ZERO` and :data:`NEW` zero.

        Example:
            >>> Channels(torch.tensor([1, ZERO])).pick(torch.tensor([2.0, 4.0]), dim=0)
            tensor([4., 0.])
        """
        moved = tensor.movedim(dim, 0)
        source = self.source.to(tensor.device)
        picked = moved[source.clamp(min=0)]
        mean = source == MEAN
        if bool(mean.any()):
            picked[mean] = moved.mean(0, keepdim=True).to(picked.dtype)
        empty = source < 0
        empty &= ~mean
        if bool(empty.any()):
            picked[empty] = 0
        return picked.movedim(0, dim)

    def scale_along(self, dim: int, ndim: int, like: Tensor) -> Tensor | float:
        """The scale shaped to multiply a ``ndim``-dimensional tensor along ``dim`` (1.0 if None)."""
        if self.scale is None:
            return 1.0
        shape = [1] * ndim
        shape[dim] = -1
        return self.scale.to(device=like.device, dtype=like.dtype).reshape(shape)

    def consumer(self, old: int, like: Tensor, rows: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """How a layer reading these channels weights them, to compute what it computed on the
        ``old`` channels: ``(old input of each new input, its weight factor, free)``.

        The copies of an old channel share the original's weight: their factors, times their
        scales, add up to one. With ``rows`` (the consumer's rows), each row draws its own uneven
        shares (from [0.5, 1.5] before normalising; torch's global RNG), a ``(rows, inputs)``
        factor: the function is the same, and the copies get different gradients, so that they
        learn apart (equal shares would keep them copies for good). Without, the shares are even:
        over its copy count (and scale), or 1 each when the copies add up to the original
        (``whole``). :data:`MEAN` and :data:`NEW` channels get zero weight; :data:`ZERO` channels
        are ``free``: what they are weighted by does not matter, and the consumer keeps its own
        initial weights there, so that the new channels learn.

        Example:
            >>> source, factor, free = Channels(torch.tensor([0, 0, ZERO])).consumer(1, torch.ones(1))
            >>> factor.tolist(), free.tolist()
            ([0.5, 0.5, 0.0], [False, False, True])
            >>> _, uneven, _ = Channels(torch.tensor([0, 0])).consumer(1, torch.ones(1), rows=3)
            >>> torch.allclose(uneven.sum(1), torch.ones(3)), bool((uneven[:, 0] != 0.5).all())
            (True, True)
        """
        source = self.source.to(like.device)
        valid = source >= 0
        picked = source.clamp(min=0)
        if self.whole and rows is None:
            return picked, valid.to(like.dtype), source == ZERO
        scale = torch.ones(len(source), device=like.device, dtype=like.dtype) if self.scale is None \
            else self.scale.to(like.device, like.dtype)
        if rows is None:
            draws = torch.ones(1, len(source), device=like.device, dtype=like.dtype)
        else:
            draws = (torch.rand(rows, len(source)) + 0.5).to(like.device, like.dtype)
        weighted = torch.where(valid, draws * scale, torch.zeros_like(draws))
        totals = torch.zeros(draws.shape[0], old, device=like.device, dtype=like.dtype)
        totals.index_add_(1, picked, weighted)
        share = draws / totals[:, picked].where(valid, torch.ones_like(draws))
        factor = torch.where(valid, share, torch.zeros_like(share))
        return picked, factor if rows is not None else factor[0], source == ZERO


Layout = Channels | Lost | None


def replicas(old: int, new: int, device: torch.device | str = "cpu") -> Tensor:
    """Old unit index of each new unit: the old units in order, then random copies (torch's global RNG).

    Example:
        >>> replicas(3, 3).tolist()
        [0, 1, 2]
    """
    extra = torch.randint(0, old, (new - old,)) if new > old else torch.empty(0, dtype=torch.long)
    return torch.cat([torch.arange(old), extra]).to(device)


def tiles(old: int, new: int, device: torch.device | str = "cpu") -> Channels:
    """The old channels tiled to a width that is a multiple: each copied alike, ``[x, x, ...]``.

    Example:
        >>> tiles(2, 6).source.tolist()
        [0, 1, 0, 1, 0, 1]
    """
    return Channels(torch.arange(new, device=device) % old)


def prefix(old: int, new: int) -> Channels:
    """Layout of a ``keep``/``fresh`` width change: the first channels are the old ones, the rest new.

    Example:
        >>> prefix(2, 3).source.tolist()
        [0, 1, -1]
    """
    return Channels(torch.cat([torch.arange(min(old, new)), torch.full((max(new - old, 0),), NEW)]))


def stream_channels(old: int, new: int, norms: set[str]) -> Channels:
    """How a widened embedding lays out the residual stream it starts, ``old`` → ``new`` channels,
    so that the norms reading it (``norms``: ``"layer"``, ``"rms"``) keep their function.

    * a multiple of the old width: the old channels tiled (``[x, x, ...]``); a tiled vector has the
      mean, variance and mean square of the original, so every norm keeps its output exactly;
    * otherwise, under LayerNorm: the old channels, then channels holding their mean (LEMON's
      average expansion: the mean and the sum of squared deviations stay the same); under RMSNorm:
      the old channels, then zeros (the sum of squares stays the same). A norm then rescales its
      weight by ``sqrt(old / new)`` and needs its ``eps`` times ``old / new``;
    * with no norm: the old channels, then random copies (Net2Net).

    Raises:
        ValueError: a width that is not a multiple, in a chain with both kinds of norm.

    Example:
        >>> stream_channels(2, 4, {"layer"}).source.tolist()
        [0, 1, 0, 1]
        >>> stream_channels(2, 3, {"rms"}).source.tolist()
        [0, 1, -3]
    """
    if new % old == 0:
        return tiles(old, new)
    if norms == {"layer", "rms"}:
        raise ValueError(f"a width {old} → {new} that is not a multiple keeps LayerNorm's function with mean "
                         "channels and RMSNorm's with zero channels, and this chain has both")
    if norms:
        fill = MEAN if "layer" in norms else ZERO
        return Channels(torch.cat([torch.arange(old), torch.full((new - old,), fill)]))
    return Channels(replicas(old, new))
