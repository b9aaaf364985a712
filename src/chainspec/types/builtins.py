"""The built-in node types: torch layers under spec-friendly names.

Each function's keyword arguments are the type's argument schema. torch is
imported inside the functions, so registering (and validating specs against)
these types costs no torch import.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from .._limits import FLOAT32_MAX, MAX_DIM
from .bounds import Bounds
from .registry import builtin

if TYPE_CHECKING:
    from torch import nn

#: A size (channels, features, kernel size, stride, groups): at least 1. The
#: upper bound is the format's limit on any dimension, so that ``10**30``
#: channels is a validation error, not an OverflowError or an allocation.
Size = Annotated[int, Bounds(ge=1, le=MAX_DIM)]
#: An amount of padding: at least 0.
Pad = Annotated[int, Bounds(ge=0, le=MAX_DIM)]
Size2 = Size | tuple[Size, Size]
Pad2 = Pad | tuple[Pad, Pad]
#: A probability, as dropout takes it.
Probability = Annotated[float, Bounds(ge=0.0, le=1.0)]
#: A finite number a float32 tensor can hold.
Real = Annotated[float, Bounds(ge=-FLOAT32_MAX, le=FLOAT32_MAX, finite=True)]
#: A norm's epsilon: a non-negative :data:`Real`.
Eps = Annotated[float, Bounds(ge=0.0, le=FLOAT32_MAX, finite=True)]
#: PG-GAN's default gain for equalized learning rate: He initialisation for leaky ReLU-ish activations.
SQRT2 = math.sqrt(2.0)

F = TypeVar("F", bound=Callable[..., Any])


def elementwise(factory: F) -> F:
    """Mark a type whose module gives back any floating-point input's shape and dtype unchanged.

    Shape checks then run such a node once, at the first input it gets, instead of once per
    input shape (see ``build.shapes.Probes``). Only for modules that work elementwise on inputs of
    every shape, as ``relu`` does.

    Example:
        >>> relu.chainspec_elementwise, conv2d.__dict__.get("chainspec_elementwise", False)
        (True, False)
    """
    setattr(factory, "chainspec_elementwise", True)  # noqa: B010 (a function attribute mypy would not know)
    return factory


@builtin("conv1d")
def conv1d(in_channels: Size, out_channels: Size, kernel_size: Size = 3, stride: Size = 1, padding: Pad | str = 0,
           dilation: Size = 1, groups: Size = 1, bias: bool = True, padding_mode: str = "zeros") -> nn.Module:
    """1-D convolution (``torch.nn.Conv1d``)."""
    from torch import nn

    return nn.Conv1d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)


@builtin("conv2d")
def conv2d(in_channels: Size, out_channels: Size, kernel_size: Size2 = 3, stride: Size2 = 1,
           padding: Pad2 | str = 0, dilation: Size2 = 1, groups: Size = 1, bias: bool = True,
           padding_mode: str = "zeros") -> nn.Module:
    """2-D convolution (``torch.nn.Conv2d``)."""
    from torch import nn

    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)


@builtin("conv_transpose2d")
def conv_transpose2d(in_channels: Size, out_channels: Size, kernel_size: Size2 = 4, stride: Size2 = 2,
                     padding: Pad2 = 1, output_padding: Pad2 = 0, groups: Size = 1, bias: bool = True,
                     dilation: Size2 = 1) -> nn.Module:
    """2-D transposed convolution (``torch.nn.ConvTranspose2d``)."""
    from torch import nn

    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups,
                              bias, dilation)


@builtin("linear")
def linear(in_features: Size, out_features: Size, bias: bool = True) -> nn.Module:
    """Fully connected layer (``torch.nn.Linear``) on the last dimension."""
    from torch import nn

    return nn.Linear(in_features, out_features, bias)


@builtin("batchnorm1d")
def batchnorm1d(num_features: Size, eps: Eps = 1e-5, momentum: Real = 0.1, affine: bool = True,
                track_running_stats: bool = True) -> nn.Module:
    """Batch normalisation over ``(N, C)`` or ``(N, C, L)`` (``torch.nn.BatchNorm1d``)."""
    from torch import nn

    return nn.BatchNorm1d(num_features, eps, momentum, affine, track_running_stats)


@builtin("batchnorm2d")
def batchnorm2d(num_features: Size, eps: Eps = 1e-5, momentum: Real = 0.1, affine: bool = True,
                track_running_stats: bool = True) -> nn.Module:
    """Batch normalisation over ``(N, C, H, W)`` (``torch.nn.BatchNorm2d``)."""
    from torch import nn

    return nn.BatchNorm2d(num_features, eps, momentum, affine, track_running_stats)


@builtin("layernorm")
def layernorm(normalized_shape: Size | tuple[Size, ...], eps: Eps = 1e-5, elementwise_affine: bool = True,
              bias: bool = True) -> nn.Module:
    """Layer normalisation over the trailing dimensions (``torch.nn.LayerNorm``)."""
    from torch import nn

    return nn.LayerNorm(normalized_shape, eps, elementwise_affine, bias)


@builtin("groupnorm")
def groupnorm(num_groups: Size, num_channels: Size, eps: Eps = 1e-5, affine: bool = True) -> nn.Module:
    """Group normalisation (``torch.nn.GroupNorm``)."""
    from torch import nn

    return nn.GroupNorm(num_groups, num_channels, eps, affine)


@builtin("instancenorm2d")
def instancenorm2d(num_features: Size, eps: Eps = 1e-5, momentum: Real = 0.1, affine: bool = False,
                   track_running_stats: bool = False) -> nn.Module:
    """Instance normalisation over ``(N, C, H, W)`` (``torch.nn.InstanceNorm2d``)."""
    from torch import nn

    return nn.InstanceNorm2d(num_features, eps, momentum, affine, track_running_stats)


@builtin("dropout")
@elementwise
def dropout(p: Probability = 0.5) -> nn.Module:
    """Dropout (``torch.nn.Dropout``)."""
    from torch import nn

    return nn.Dropout(p)


@builtin("relu")
@elementwise
def relu() -> nn.Module:
    """Rectified linear unit (``torch.nn.ReLU``)."""
    from torch import nn

    return nn.ReLU()


@builtin("leaky_relu")
@elementwise
def leaky_relu(negative_slope: Real = 0.01) -> nn.Module:
    """Leaky ReLU (``torch.nn.LeakyReLU``); PG-GAN uses a slope of 0.2."""
    from torch import nn

    return nn.LeakyReLU(negative_slope)


@builtin("gelu")
@elementwise
def gelu(approximate: Literal["none", "tanh"] = "none") -> nn.Module:
    """Gaussian error linear unit (``torch.nn.GELU``)."""
    from torch import nn

    return nn.GELU(approximate)


@builtin("silu")
@elementwise
def silu() -> nn.Module:
    """Sigmoid linear unit, a.k.a. swish (``torch.nn.SiLU``)."""
    from torch import nn

    return nn.SiLU()


@builtin("tanh")
@elementwise
def tanh() -> nn.Module:
    """Hyperbolic tangent (``torch.nn.Tanh``)."""
    from torch import nn

    return nn.Tanh()


@builtin("sigmoid")
@elementwise
def sigmoid() -> nn.Module:
    """Logistic sigmoid (``torch.nn.Sigmoid``)."""
    from torch import nn

    return nn.Sigmoid()


@builtin("identity")
@elementwise
def identity() -> nn.Module:
    """Passes its input through unchanged (``torch.nn.Identity``)."""
    from torch import nn

    return nn.Identity()


@builtin("flatten")
def flatten(start_dim: int = 1, end_dim: int = -1) -> nn.Module:
    """Flatten dimensions ``start_dim..end_dim`` (counted with the batch dimension at 0)."""
    from torch import nn

    return nn.Flatten(start_dim, end_dim)


@builtin("reshape")
def reshape(shape: tuple[Annotated[int, Bounds(ge=-1, le=MAX_DIM)], ...]) -> nn.Module:
    """Reshape each sample to ``shape`` (without the batch dimension; one entry may be -1).

    Args:
        shape: the per-sample shape, e.g. ``[512, 4, 4]``.
    """
    from .layers import Reshape

    return Reshape(shape)


@builtin("upsample")
def upsample(scale_factor: Annotated[float, Bounds(gt=0.0, le=MAX_DIM)] = 2.0,
             mode: Literal["nearest", "bilinear"] = "nearest") -> nn.Module:
    """Upsample by ``scale_factor`` with nearest or bilinear interpolation (``torch.nn.Upsample``)."""
    from torch import nn

    return nn.Upsample(scale_factor=scale_factor, mode=mode, align_corners=False if mode == "bilinear" else None)


@builtin("avgpool2d")
def avgpool2d(kernel_size: Size2 = 2, stride: Size2 | None = None, padding: Pad2 = 0) -> nn.Module:
    """2-D average pooling (``torch.nn.AvgPool2d``); stride defaults to the kernel size."""
    from torch import nn

    return nn.AvgPool2d(kernel_size, stride, padding)


@builtin("maxpool2d")
def maxpool2d(kernel_size: Size2 = 2, stride: Size2 | None = None, padding: Pad2 = 0) -> nn.Module:
    """2-D max pooling (``torch.nn.MaxPool2d``); stride defaults to the kernel size."""
    from torch import nn

    return nn.MaxPool2d(kernel_size, stride, padding)


@builtin("adaptive_avgpool2d")
def adaptive_avgpool2d(output_size: Size2 = 1) -> nn.Module:
    """2-D adaptive average pooling to a fixed output size (``torch.nn.AdaptiveAvgPool2d``)."""
    from torch import nn

    return nn.AdaptiveAvgPool2d(output_size)


@builtin("eq_conv2d")
def eq_conv2d(in_channels: Size, out_channels: Size, kernel_size: Size = 3, stride: Size = 1, padding: Pad = 0,
              bias: bool = True, gain: Real = SQRT2) -> nn.Module:
    """2-D convolution with equalized learning rate (Karras et al. 2018, section 4.1).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        stride: stride.
        padding: zero padding on each side.
        bias: add a learned bias (not scaled).
        gain: the He gain; weights are scaled by ``gain / sqrt(fan_in)`` at run time.
    """
    from .layers import EqualizedConv2d

    return EqualizedConv2d(in_channels, out_channels, kernel_size, stride, padding, bias, gain)


@builtin("eq_linear")
def eq_linear(in_features: Size, out_features: Size, bias: bool = True, gain: Real = SQRT2) -> nn.Module:
    """Fully connected layer with equalized learning rate (Karras et al. 2018, section 4.1).

    Args:
        in_features: input features.
        out_features: output features.
        bias: add a learned bias (not scaled).
        gain: the He gain; weights are scaled by ``gain / sqrt(fan_in)`` at run time.
    """
    from .layers import EqualizedLinear

    return EqualizedLinear(in_features, out_features, bias, gain)


@builtin("channel_bias")
def channel_bias(num_channels: Size) -> nn.Module:
    """A learned bias per channel, starting at zero (the official PG-GAN generator's first 4x4 map).

    Args:
        num_channels: the channels of the input (dim 1), one bias each.
    """
    from .layers import ChannelBias

    return ChannelBias(num_channels)


@builtin("pixel_norm")
def pixel_norm(eps: Eps = 1e-8) -> nn.Module:
    """Pixelwise feature-vector normalisation (Karras et al. 2018, section 4.2)."""
    from .layers import PixelNorm

    return PixelNorm(eps)


@builtin("minibatch_stddev")
def minibatch_stddev(group_size: Size = 4) -> nn.Module:
    """Appends the minibatch standard deviation as one extra channel (Karras et al. 2018, section 3)."""
    from .layers import MinibatchStddev

    return MinibatchStddev(group_size)


@builtin("subsample_pad")
def subsample_pad(in_channels: Size, out_channels: Size, stride: Size = 2) -> nn.Module:
    """A parameter-free residual shortcut: subsample by ``stride``, zero-pad the channels (ResNet "option A").

    Args:
        in_channels: the input's channels.
        out_channels: the channels after padding (at least ``in_channels``), split evenly before and after.
        stride: keep every ``stride``-th row and column.
    """
    from .layers import SubsamplePad

    return SubsamplePad(in_channels, out_channels, stride)


@builtin("token_embedding")
def token_embedding(num_embeddings: Size, embedding_dim: Size) -> nn.Module:
    """Integer token ids to vectors (``torch.nn.Embedding``): ``[T]`` ids to ``[T, embedding_dim]``.

    Args:
        num_embeddings: the vocabulary size; ids must be in ``0..num_embeddings-1``.
        embedding_dim: the width of each vector.
    """
    from torch import nn

    return nn.Embedding(num_embeddings, embedding_dim)


@builtin("position_embedding")
def position_embedding(max_len: Size, dim: Size) -> nn.Module:
    """Adds a learned vector per position to a ``[T, dim]`` input, for ``T <= max_len`` (GPT-2's ``wpe``).

    Args:
        max_len: the longest sequence (the context length).
        dim: the width of the vectors.
    """
    from .layers import PositionEmbedding

    return PositionEmbedding(max_len, dim)


@builtin("causal_self_attention")
def causal_self_attention(dim: Size, heads: Size, dropout: Probability = 0.0, bias: bool = True,
                          head_dim: Size | None = None) -> nn.Module:
    """Causal multi-head self-attention on ``[T, dim]`` (``scaled_dot_product_attention``, nanoGPT's layout).

    Args:
        dim: the model width; divisible by ``heads`` unless ``head_dim`` is given.
        heads: the number of attention heads.
        dropout: attention dropout and dropout after the output projection, in training.
        bias: biases in the query/key/value and output projections (``c_attn``, ``c_proj``).
        head_dim: the width of each head (default ``dim // heads``); with it, the heads together
            may be wider or narrower than ``dim``, and heads can be added at a fixed head width.
    """
    from .layers import CausalSelfAttention

    return CausalSelfAttention(dim, heads, dropout, bias, head_dim)


@builtin("rmsnorm")
def rmsnorm(dim: Size, eps: Eps = 1e-6) -> nn.Module:
    """Root-mean-square normalisation over the last dimension, with a learned scale per feature.

    Args:
        dim: the size of the last dimension.
        eps: added to the mean square.
    """
    from .layers import RMSNorm

    return RMSNorm(dim, eps)
