"""The torch modules behind chainspec's own node types (PG-GAN primitives, reshape, composites)."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _standard_normal(*shape: int) -> Tensor:
    """A tensor of N(0, 1) values on the default device: ``torch.randn(*shape)``, drawn the same way.

    On the meta device, where there are no values to draw, it is only allocated: ``torch.randn``
    there imports sympy (a third of a second, once a process), which would make a shape check
    that builds equalized layers slow to start.

    Example:
        >>> _ = torch.manual_seed(0); a = _standard_normal(2, 3)
        >>> _ = torch.manual_seed(0); torch.equal(a, torch.randn(2, 3))
        True
        >>> with torch.device("meta"):
        ...     _standard_normal(2, 3).is_meta
        True
    """
    tensor = torch.empty(*shape)
    return tensor if tensor.is_meta else tensor.normal_()


class EqualizedLinear(nn.Module):
    """Linear layer whose weights are stored as N(0, 1) and scaled by ``gain / sqrt(fan_in)`` at run time.

    Example:
        >>> layer = EqualizedLinear(512, 8192)
        >>> layer(torch.zeros(2, 512)).shape
        torch.Size([2, 8192])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gain: float = math.sqrt(2.0)) -> None:
        super().__init__()
        self.in_features, self.out_features, self.gain = in_features, out_features, gain
        self.weight = nn.Parameter(_standard_normal(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:  # (N, *, in) -> (N, *, out)
        return F.linear(x, self.weight * self.scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, gain={self.gain:.4g}"


class EqualizedConv2d(nn.Module):
    """2-D convolution with equalized learning rate: weights N(0, 1), scaled at run time, bias unscaled.

    Example:
        >>> conv = EqualizedConv2d(3, 16, 3, padding=1)
        >>> conv(torch.zeros(1, 3, 8, 8)).shape
        torch.Size([1, 16, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, gain: float = math.sqrt(2.0)) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.gain = kernel_size, stride, padding, gain
        self.weight = nn.Parameter(_standard_normal(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: Tensor) -> Tensor:  # (N, C_in, H, W) -> (N, C_out, H', W')
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, gain={self.gain:.4g}")


class ChannelBias(nn.Module):
    """A learned bias per channel, added along dim 1: ``x + bias.view(1, C, 1, ...)`` (starts at zero).

    The official PG-GAN generator biases its first 4x4 map this way: a dense
    layer without bias, a reshape to ``(C, 4, 4)``, then one bias per channel.

    Example:
        >>> ChannelBias(512)(torch.zeros(2, 512, 4, 4)).shape
        torch.Size([2, 512, 4, 4])
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:  # (N, C, ...) -> same
        return x + self.bias.view(1, -1, *([1] * (x.dim() - 2)))

    def extra_repr(self) -> str:
        return f"{self.num_channels}"


class PixelNorm(nn.Module):
    """Normalises each pixel's feature vector to unit length: ``x / sqrt(mean(x², dim=1) + eps)``.

    Example:
        >>> PixelNorm()(torch.ones(1, 4, 2, 2)).mean().item()
        1.0
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:  # (N, C, ...) -> same
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class MinibatchStddev(nn.Module):
    """Appends the average feature standard deviation over minibatch groups as one more channel.

    Follows the official implementation: groups of ``min(group_size, N)``
    samples (``N`` must be divisible by it), the standard deviation of each
    feature and pixel over the group, averaged, broadcast as a new channel.

    Example:
        >>> MinibatchStddev()(torch.randn(8, 512, 4, 4)).shape
        torch.Size([8, 513, 4, 4])
    """

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, C + 1, H, W)
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        if n % g:
            raise ValueError(f"minibatch_stddev: batch size {n} is not divisible by group size {g}")
        y = x.reshape(g, -1, c, h, w)  # (G, M, C, H, W)
        y = y - y.mean(dim=0, keepdim=True)
        y = (y.pow(2).mean(dim=0) + 1e-8).sqrt()  # (M, C, H, W)
        y = y.mean(dim=(1, 2, 3), keepdim=True)  # (M, 1, 1, 1)
        y = y.repeat(g, 1, h, w)  # (N, 1, H, W)
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


class Reshape(nn.Module):
    """Reshapes each sample, keeping the batch dimension.

    Example:
        >>> Reshape((512, 4, 4))(torch.zeros(2, 8192)).shape
        torch.Size([2, 512, 4, 4])
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: Tensor) -> Tensor:  # (N, *) -> (N, *shape)
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={list(self.shape)}"


class Composite(nn.Sequential):
    """The module of a composite node type: its parts in order, named by their ids.

    Example:
        >>> block = Composite("conv_block", [("conv", nn.Conv2d(3, 8, 3)), ("act", nn.ReLU())])
        >>> list(block.state_dict())
        ['conv.weight', 'conv.bias']
    """

    def __init__(self, type_name: str, parts: list[tuple[str, nn.Module]]) -> None:
        super().__init__(OrderedDict(parts))
        self.type_name = type_name

    def _get_name(self) -> str:
        return self.type_name


class Residual(nn.Module):
    """The module of a residual composite type: ``after(body(x) + shortcut(x))``.

    ``shortcut`` defaults to the input itself and ``after`` to nothing. The body's and the
    shortcut's outputs must have the same shape (no broadcasting: a mismatch is an error, not a
    silently broadcast sum).

    Example:
        >>> block = Residual("res", Composite("res", [("fc", nn.Linear(4, 4))]))
        >>> block(torch.zeros(2, 4)).shape, list(block.state_dict())
        (torch.Size([2, 4]), ['body.fc.weight', 'body.fc.bias'])
    """

    def __init__(self, type_name: str, body: nn.Module, shortcut: nn.Module | None = None,
                 after: nn.Module | None = None) -> None:
        super().__init__()
        self.type_name = type_name
        self.body = body
        self.shortcut = shortcut
        self.after = after

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        skip = x if self.shortcut is None else self.shortcut(x)
        if y.shape != skip.shape:
            raise RuntimeError(f"the residual body makes shape {list(y.shape[1:])} but the shortcut "
                               f"{list(skip.shape[1:])}; they are added, so they must match")
        # y stays alive through ``after``, as in a hand-written block: fewer page faults (README, Branched models)
        total = y + skip
        return total if self.after is None else self.after(total)

    def _get_name(self) -> str:
        return self.type_name


class SubsamplePad(nn.Module):
    """A parameter-free shortcut: keep every ``stride``-th pixel, then zero-pad the channels to ``out_channels``.

    The "option A" shortcut of the CIFAR ResNets (He et al. 2016, section 4.2); the added
    channels are split evenly before and after the existing ones.

    Example:
        >>> SubsamplePad(16, 32, 2)(torch.ones(1, 16, 8, 8)).shape
        torch.Size([1, 32, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"out_channels ({out_channels}) must be at least in_channels ({in_channels})")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, C_out, ceil(H / s), ceil(W / s))
        if x.dim() != 4:
            raise RuntimeError(f"expected input of shape (N, C, H, W), got {list(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise RuntimeError(f"expected input to have {self.in_channels} channels, but got {x.shape[1]} channels")
        x = x[:, :, ::self.stride, ::self.stride]
        extra = self.out_channels - self.in_channels
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class PositionEmbedding(nn.Module):
    """Adds a learned embedding of each position: ``x + weight[:T]`` for an input of shape ``(N, T, dim)``.

    Example:
        >>> PositionEmbedding(16, 8)(torch.zeros(2, 10, 8)).shape
        torch.Size([2, 10, 8])
    """

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.max_len, self.dim = max_len, dim
        self.weight = nn.Parameter(_standard_normal(max_len, dim))

    def forward(self, x: Tensor) -> Tensor:  # (N, T, dim) -> same
        if x.dim() != 3 or x.shape[2] != self.dim:
            raise RuntimeError(f"expected input of shape (N, T, {self.dim}), got {list(x.shape)}")
        t = x.shape[1]
        if t > self.max_len:
            raise RuntimeError(f"sequence length {t} is longer than max_len {self.max_len}")
        return x + self.weight[:t]

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, dim={self.dim}"


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention on ``scaled_dot_product_attention``, laid out as nanoGPT's.

    ``c_attn`` projects to queries, keys and values at once (``heads * head_dim`` each), ``c_proj``
    projects back to ``dim``; attention dropout (``dropout``, in training) and dropout after the
    projection. ``head_dim`` defaults to ``dim // heads``; set it to grow heads at a fixed head
    width (``init: preserve`` then copies heads, as it copies units of a widened layer).

    Example:
        >>> CausalSelfAttention(8, 2)(torch.zeros(2, 5, 8)).shape
        torch.Size([2, 5, 8])
        >>> CausalSelfAttention(8, 3, head_dim=4).c_attn
        Linear(in_features=8, out_features=36, bias=True)
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, bias: bool = True,
                 head_dim: int | None = None) -> None:
        super().__init__()
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}), or head_dim given")
            head_dim = dim // heads
        self.dim, self.heads, self.head_dim, self.dropout = dim, heads, head_dim, dropout
        self.explicit_head_dim = head_dim * heads != dim
        inner = heads * head_dim
        self.c_attn = nn.Linear(dim, 3 * inner, bias=bias)
        self.c_proj = nn.Linear(inner, dim, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (N, T, dim) -> same
        n, t, _ = x.shape
        inner = self.heads * self.head_dim
        q, k, v = self.c_attn(x).split(inner, dim=2)
        q, k, v = (z.view(n, t, self.heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(n, t, inner)
        return self.resid_dropout(self.c_proj(y))

    def extra_repr(self) -> str:
        head_dim = f", head_dim={self.head_dim}" if self.explicit_head_dim else ""
        return f"dim={self.dim}, heads={self.heads}{head_dim}, dropout={self.dropout}"


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension, with a learned scale.

    ``x * rsqrt(mean(x², -1) + eps) * weight`` (Zhang & Sennrich 2019), as ``torch.nn.RMSNorm``.

    Example:
        >>> RMSNorm(4)(torch.full((2, 4), 3.0))[0]
        tensor([1.0000, 1.0000, 1.0000, 1.0000], grad_fn=<SelectBackward0>)
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:  # (N, ..., dim) -> same
        if x.shape[-1] != self.dim:
            raise RuntimeError(f"expected input with last dimension {self.dim}, got {list(x.shape)}")
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"
