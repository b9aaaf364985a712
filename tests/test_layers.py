"""The PG-GAN primitives and helper modules behind the built-in types, checked against their definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from chainspec import get_type
from chainspec.types.layers import (
    ChannelBias,
    Composite,
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchStddev,
    PixelNorm,
    Reshape,
)


@pytest.mark.parametrize(("layer", "fan_in"), [
    (lambda: EqualizedLinear(512, 256), 512),
    (lambda: EqualizedConv2d(64, 128, 3, padding=1), 64 * 9),
    (lambda: get_type("eq_linear").factory(in_features=512, out_features=256), 512),
    (lambda: get_type("eq_conv2d").factory(in_channels=64, out_channels=128, kernel_size=3), 64 * 9),
], ids=["linear", "conv", "eq_linear type", "eq_conv2d type"])
def test_equalized_weights_are_stored_as_unit_normals(layer, fan_in: int) -> None:
    torch.manual_seed(0)
    module = layer()
    w = module.weight.detach()
    assert abs(w.mean().item()) < 0.01 and abs(w.std().item() - 1) < 0.01  # N(0, 1), not He-scaled
    assert module.scale == pytest.approx(math.sqrt(2) / math.sqrt(fan_in))  # default gain sqrt(2)
    assert torch.equal(module.bias.detach(), torch.zeros_like(module.bias))


def test_equalized_linear_scales_at_run_time_and_not_the_bias() -> None:
    torch.manual_seed(0)
    layer = EqualizedLinear(8, 4, gain=0.5)
    with torch.no_grad():
        layer.bias.fill_(1.0)
    x = torch.randn(3, 8)
    scale = 0.5 / math.sqrt(8)
    assert torch.allclose(layer(x), x @ (layer.weight * scale).T + 1.0, atol=1e-6)
    # Because the scale is applied in forward, the stored weight's gradient carries it too:
    # this is what equalizes the learning rate across layers under Adam.
    layer(x).sum().backward()
    assert torch.allclose(layer.weight.grad, scale * torch.ones(4, 1) * x.sum(0), atol=1e-5)
    assert torch.equal(layer.bias.grad, torch.full((4,), 3.0))  # unscaled
    assert "gain=0.5" in repr(layer)


def test_equalized_conv2d_scales_at_run_time_and_not_the_bias() -> None:
    torch.manual_seed(0)
    conv = EqualizedConv2d(3, 5, 3, stride=1, padding=1)
    with torch.no_grad():
        conv.bias.copy_(torch.arange(5.0))
    x = torch.randn(2, 3, 6, 6)
    scale = math.sqrt(2) / math.sqrt(3 * 3 * 3)
    expected = F.conv2d(x, conv.weight * scale, torch.arange(5.0), 1, 1)
    assert torch.allclose(conv(x), expected, atol=1e-5)
    conv.weight.data.mul_(2)  # the scale is not baked into the stored weight
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight * scale, torch.arange(5.0), 1, 1), atol=1e-5)


def test_equalized_layers_without_bias() -> None:
    assert EqualizedLinear(3, 2, bias=False).bias is None
    conv = EqualizedConv2d(3, 2, 1, bias=False)
    assert conv.bias is None and conv(torch.randn(1, 3, 2, 2)).shape == (1, 2, 2, 2)


def test_channel_bias_adds_one_learned_value_per_channel() -> None:
    layer = get_type("channel_bias").factory(num_channels=3)
    assert isinstance(layer, ChannelBias) and torch.equal(layer.bias, torch.zeros(3))
    layer.bias.data = torch.tensor([1.0, 2.0, 3.0])
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(layer(x), x + torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1))
    assert torch.equal(layer(torch.zeros(2, 3)), torch.tensor([[1.0, 2.0, 3.0]] * 2))  # also (N, C)
    layer(x).sum().backward()
    assert torch.equal(layer.bias.grad, torch.full((3,), 32.0))  # summed over batch and pixels


def test_pixel_norm() -> None:
    norm = get_type("pixel_norm").factory()
    assert isinstance(norm, PixelNorm) and norm.eps == 1e-8
    x = torch.randn(2, 16, 4, 4)
    expected = x / torch.sqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)
    assert torch.allclose(norm(x), expected)
    assert torch.allclose(norm(x).pow(2).mean(dim=1), torch.ones(2, 4, 4), atol=1e-5)  # unit length per pixel
    assert torch.equal(norm(torch.zeros(1, 4, 2, 2)), torch.zeros(1, 4, 2, 2))  # eps keeps zeros finite
    assert torch.allclose(norm(torch.randn(3, 7)).pow(2).mean(dim=1), torch.ones(3), atol=1e-5)  # also (N, C)


def _stddev_reference(x: torch.Tensor, group: int) -> torch.Tensor:
    """The statistic written out one group at a time: groups are samples i, i + M, i + 2M, ..."""
    n = x.shape[0]
    g = min(group, n)
    m = n // g
    stats = []
    for j in range(m):
        members = x[j::m]  # the official reshape(G, M, ...) puts sample j + k*M in group j
        std = (members.var(dim=0, unbiased=False) + 1e-8).sqrt()
        stats.append(std.mean())
    column = torch.stack([stats[i % m] for i in range(n)])
    return column.view(n, 1, 1, 1).expand(n, 1, *x.shape[2:])


@pytest.mark.parametrize("batch", [8, 4, 2, 12])
def test_minibatch_stddev_adds_one_channel_with_the_group_statistic(batch: int) -> None:
    layer = get_type("minibatch_stddev").factory()
    assert isinstance(layer, MinibatchStddev) and layer.group_size == 4
    torch.manual_seed(batch)
    x = torch.randn(batch, 5, 3, 3)
    y = layer(x)
    assert y.shape == (batch, 6, 3, 3)
    assert torch.equal(y[:, :5], x)
    assert torch.allclose(y[:, 5:], _stddev_reference(x, 4), atol=1e-6)


def test_minibatch_stddev_refuses_a_batch_the_group_does_not_divide() -> None:
    with pytest.raises(ValueError, match="minibatch_stddev: batch size 6 is not divisible by group size 4"):
        MinibatchStddev(4)(torch.randn(6, 2, 2, 2))


def test_reshape_keeps_the_batch_dimension() -> None:
    assert Reshape((512, 4, 4))(torch.zeros(2, 8192)).shape == (2, 512, 4, 4)
    assert Reshape((-1, 2))(torch.zeros(3, 4, 2)).shape == (3, 4, 2)
    assert repr(Reshape((2, 3))) == "Reshape(shape=[2, 3])"


def test_composite_is_named_after_its_type() -> None:
    block = Composite("conv_block", [("conv", nn.Conv2d(3, 8, 3)), ("act", nn.ReLU())])
    assert repr(block).startswith("conv_block(\n  (conv): Conv2d")
    assert list(block.state_dict()) == ["conv.weight", "conv.bias"]
    assert block(torch.randn(1, 3, 5, 5)).shape == (1, 8, 3, 3)


def test_elementwise_builtins_keep_every_floating_shape_and_dtype() -> None:
    """Shape checks never run these (see ``build.shapes.Probes``): they must give back what they get."""
    from chainspec.types.registry import builtin_type_names, get_type

    marked = sorted(name for name in builtin_type_names()
                    if getattr(get_type(name).factory, "chainspec_elementwise", False))
    assert marked == ["dropout", "gelu", "identity", "leaky_relu", "relu", "sigmoid", "silu", "tanh"]
    for name in marked:
        module = get_type(name).factory()
        for shape in [(2,), (2, 3), (2, 1, 5), (3, 2, 4, 4), (1, 2, 3, 4, 5)]:
            for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                y = module(torch.randn(shape).to(dtype))
                assert y.shape == shape and y.dtype == dtype, (name, shape, dtype)
