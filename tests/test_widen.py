"""init: fresh | keep | preserve, including Net2WiderNet and Net2DeeperNet function preservation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import chainspec
from chainspec import Chain
from chainspec.revise.widen import keep_overlap

BLOG = Path(__file__).resolve().parent.parent / "specs" / "blog.yaml"


def mlp(width: int = 16, *, init: str = "fresh", head_init: str | None = None, act: str = "leaky_relu",
        extra: str = "") -> str:
    head_init = head_init or init
    return f"""\
chainspec: 1
chains:
  net:
    input_shape: [8]
    nodes:
      - {{id: fc1, type: linear, args: {{in_features: 8, out_features: 16}}}}
      - {{id: act1, type: {act}}}
      - {{id: fc2, type: linear, args: {{in_features: 16, out_features: {width}}}, init: {init}}}
      - {{id: act2, type: {act}}}
{extra}      - {{id: fc3, type: linear, args: {{in_features: {width}, out_features: 4}}, init: {head_init}}}
"""


def trained(text: str, steps: int = 2, train_data: torch.Tensor | None = None) -> tuple[chainspec.Spec, Chain]:
    torch.manual_seed(0)
    spec = chainspec.loads(text, source="net.yaml")
    net = spec.build(stage="final", dtype=torch.float64)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    x = train_data if train_data is not None else inputs(spec)
    for _ in range(steps):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    return spec, net


def inputs(spec: chainspec.Spec) -> torch.Tensor:
    shape = spec.resolved().input_shape_at(0)
    gen = torch.Generator().manual_seed(1)
    return torch.randn((8, *shape), generator=gen, dtype=torch.float64)


def assert_same_function(old_text: str, new_text: str, *, train: bool = True) -> Chain:
    spec, net = trained(old_text)
    x = inputs(spec)
    net.train(train)
    with torch.no_grad():
        before = net(x)
    chainspec.diff(spec, chainspec.loads(new_text, source="new.yaml")).apply(net)
    with torch.no_grad():
        after = net(x)
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)
    return net


# -- keep ------------------------------------------------------------------------------------------

def test_keep_overlap_grows_and_shrinks() -> None:
    torch.manual_seed(0)
    old, wide, narrow = nn.Conv2d(4, 8, 3), nn.Conv2d(6, 12, 3), nn.Conv2d(2, 4, 3)
    keep_overlap(wide, old)
    keep_overlap(narrow, old)
    assert torch.equal(wide.weight[:8, :4], old.weight) and torch.equal(wide.bias[:8], old.bias)
    assert torch.equal(narrow.weight, old.weight[:4, :2])


def test_keep_through_a_spec_revision() -> None:
    spec, net = trained(mlp())
    fc2, fc3 = net["fc2"].module, net["fc3"].module
    plan = chainspec.diff(spec, chainspec.loads(mlp(24, init="keep")))
    assert [(op.kind, op.init) for op in plan.ops] == [("replace", "keep"), ("replace", "keep")]
    plan.apply(net)
    assert torch.equal(net["fc2"].module.weight[:16], fc2.weight)
    assert torch.equal(net["fc2"].module.bias[:16], fc2.bias)
    assert torch.equal(net["fc3"].module.weight[:, :16], fc3.weight)
    assert net["fc3"].module.weight.dtype == torch.float64


def test_fresh_is_the_types_own_initialisation() -> None:
    spec, net = trained(mlp())
    fc2 = net["fc2"].module
    chainspec.diff(spec, chainspec.loads(mlp(24))).apply(net)
    assert not torch.equal(net["fc2"].module.weight[:16], fc2.weight)


# -- preserve: Net2WiderNet --------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["leaky_relu", "relu", "tanh"])
def test_widening_an_mlp_preserves_its_function(act: str) -> None:
    net = assert_same_function(mlp(act=act), mlp(40, init="preserve", act=act))
    assert net["fc2"].module.weight.shape == (40, 16)


def test_widened_units_copy_old_ones_and_share_their_outgoing_weights_unevenly() -> None:
    spec, net = trained(mlp())
    old2, old3 = net["fc2"].module, net["fc3"].module
    chainspec.diff(spec, chainspec.loads(mlp(20, init="preserve"))).apply(net)
    new2, new3 = net["fc2"].module, net["fc3"].module
    assert torch.equal(new2.weight[:16], old2.weight)
    copies = [next(i for i in range(16) if torch.equal(new2.weight[j], old2.weight[i])) for j in range(16, 20)]
    for i in range(16):
        mine = [i] + [j for j, source in zip(range(16, 20), copies, strict=True) if source == i]
        if len(mine) == 1:  # not copied: its weights as they were
            assert torch.equal(new3.weight[:, i], old3.weight[:, i])
            continue
        # The copies' columns add up to the old column, each row splitting it by its own uneven shares.
        torch.testing.assert_close(new3.weight[:, mine].sum(1), old3.weight[:, i])
        shares = new3.weight[:, mine] / old3.weight[:, i:i + 1]
        assert bool((shares > 0.5 / (0.5 + 1.5 * (len(mine) - 1)) - 1e-6).all())
        assert (shares - 1 / len(mine)).abs().max() > 0.01  # not the even split
        assert not torch.allclose(shares[0], shares[1])  # each row draws its own


def test_replicas_come_from_torch_rng() -> None:
    spec, net_a = trained(mlp())
    _, net_b = trained(mlp())
    torch.manual_seed(7)
    chainspec.diff(spec, chainspec.loads(mlp(30, init="preserve"))).apply(net_a)
    torch.manual_seed(7)
    chainspec.diff(spec, chainspec.loads(mlp(30, init="preserve"))).apply(net_b)
    assert torch.equal(net_a["fc3"].module.weight, net_b["fc3"].module.weight)


def test_widening_conv_blocks_with_batch_norm_in_training() -> None:
    blog = BLOG.read_text()
    wider = blog.replace("args: {in_ch: 32, out_ch: 64}, stage: 1",
                         "args: {in_ch: 32, out_ch: 80}, stage: 1, init: preserve").replace(
        "args: {in_ch: 64, out_ch: 128}, stage: 2", "args: {in_ch: 80, out_ch: 128}, stage: 2, init: preserve")
    small = blog.replace("input_shape: [3, 32, 32]", "input_shape: [3, 8, 8]")
    net = assert_same_function(small, wider.replace("input_shape: [3, 32, 32]", "input_shape: [3, 8, 8]"))
    bn = net["b2"].module.bn
    assert bn.running_mean.shape == (80,)
    assert net.training
    net.eval()  # replicated running statistics keep eval mode exact too
    assert_same_function(small, wider.replace("input_shape: [3, 32, 32]", "input_shape: [3, 8, 8]"), train=False)


EQ = """\
chainspec: 1
chains:
  net:
    input_shape: [4, 8, 8]
    nodes:
      - {{id: c1, type: eq_conv2d, args: {{in_channels: 4, out_channels: {w}, padding: 1}}, init: preserve}}
      - {{id: a1, type: leaky_relu, args: {{negative_slope: 0.2}}}}
      - {{id: up, type: upsample}}
      - {{id: c2, type: eq_conv2d, args: {{in_channels: {w}, out_channels: 6, padding: 1}}, init: preserve}}
      - {{id: pool, type: adaptive_avgpool2d}}
      - {{id: flat, type: flatten}}
      - {{id: fc, type: eq_linear, args: {{in_features: 6, out_features: {h}}}, init: preserve}}
      - {{id: a2, type: relu}}
      - {{id: out, type: eq_linear, args: {{in_features: {h}, out_features: 2}}, init: preserve}}
"""


def test_equalized_layers_keep_their_function_through_scale_changes() -> None:
    net = assert_same_function(EQ.format(w=8, h=5), EQ.format(w=13, h=9))
    assert net["c2"].module.scale != pytest.approx(2 ** 0.5 / (8 * 9) ** 0.5)  # the consumer's scale changed
    assert net["c2"].module.weight.shape[1] == 13


def test_consumer_zeroes_brand_new_units_of_a_keep_widening() -> None:
    net = assert_same_function(mlp(), mlp(24, init="keep", head_init="preserve"))
    assert torch.count_nonzero(net["fc3"].module.weight[:, 16:]) == 0


def test_widening_both_sides_of_a_layer() -> None:
    text = mlp().replace("out_features: 16}}}\n      - {id: act1", "out_features: 16}}\n      - {id: act1")
    wider = text.replace("in_features: 8, out_features: 16}}", "in_features: 8, out_features: 20}, "
                         "init: preserve}").replace("in_features: 16, out_features: 16}", "in_features: 20, "
                                                                                          "out_features: 28}")
    wider = wider.replace("init: fresh", "init: preserve").replace("in_features: 16, out_features: 4",
                                                                    "in_features: 28, out_features: 4")
    assert_same_function(text, wider)


# -- preserve: Net2DeeperNet -------------------------------------------------------------------------

def test_inserted_linear_starts_as_identity() -> None:
    extra = ("      - {id: deep, type: linear, args: {in_features: 16, out_features: 16}, init: preserve}\n"
             "      - {id: deep_act, type: relu}\n")
    net = assert_same_function(mlp(act="relu"), mlp(act="relu", extra=extra))
    torch.testing.assert_close(net["deep"].module.weight, torch.eye(16, dtype=torch.float64))


CONV = """\
chainspec: 1
chains:
  net:
    input_shape: [3, 6, 6]
    nodes:
      - {id: c1, type: conv2d, args: {in_channels: 3, out_channels: 5, kernel_size: 3, padding: 1}}
      - {id: a1, type: relu}
      - {id: c2, type: conv2d, args: {in_channels: 5, out_channels: 2, kernel_size: 3, padding: 1}}
"""


@pytest.mark.parametrize("inserted", [
    "{id: mid, type: conv2d, args: {in_channels: 5, out_channels: 5, kernel_size: 3, padding: 1}, init: preserve}",
    "{id: mid, type: conv2d, args: {in_channels: 5, out_channels: 5, kernel_size: 5, padding: 2, bias: false}, "
    "init: preserve}",
    "{id: mid, type: eq_conv2d, args: {in_channels: 5, out_channels: 5, kernel_size: 3, padding: 1}, init: preserve}",
])
def test_inserted_conv_starts_as_identity(inserted: str) -> None:
    new = CONV.replace("      - {id: c2", f"      - {inserted}\n      - {{id: r, type: relu}}\n      - {{id: c2")
    assert_same_function(CONV, new)


@pytest.mark.parametrize(("inserted", "message"), [
    ("{id: mid, type: conv2d, args: {in_channels: 5, out_channels: 5, kernel_size: 3, padding: 1, stride: 2}, "
     "init: preserve}", "keep the spatial size"),
    ("{id: mid, type: batchnorm2d, args: {num_features: 5}, init: preserve}", "cannot make BatchNorm2d an identity"),
    ("{id: mid, type: conv2d, args: {in_channels: 5, out_channels: 5, kernel_size: 2, padding: 1}, init: preserve}",
     "odd kernel"),
])
def test_inserts_without_an_identity_are_refused(inserted: str, message: str) -> None:
    spec, net = trained(CONV)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    new = CONV.replace("      - {id: c2", f"      - {inserted}\n      - {{id: c2")
    new = new.replace("in_channels: 5, out_channels: 2, kernel_size: 3, padding: 1",
                      "in_channels: 5, out_channels: 2, kernel_size: 1")
    with pytest.raises(chainspec.SpecError, match=rf"new\.yaml:\d+:\d+: chains\.net\.nodes\[2\]\.init: .*{message}"):
        chainspec.diff(spec, chainspec.loads(new, source="new.yaml")).apply(net)
    assert net.ids() == ["c1", "a1", "c2"]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# -- preserve refusals -------------------------------------------------------------------------------

def test_preserve_cannot_shrink() -> None:
    spec, net = trained(mlp())
    with pytest.raises(chainspec.SpecError, match=r"nodes\[2\]\.init: init: preserve cannot shrink Linear"):
        chainspec.diff(spec, chainspec.loads(mlp(8, init="preserve"), source="new.yaml")).apply(net)
    assert net["fc2"].module.weight.shape == (16, 16)


def test_preserve_needs_a_channel_layout_it_can_follow() -> None:
    pixel = mlp().replace("{id: act2, type: leaky_relu}", "{id: act2, type: pixel_norm}")
    wider = mlp(24, init="preserve").replace("{id: act2, type: leaky_relu}", "{id: act2, type: pixel_norm}")
    spec, net = trained(pixel)
    with pytest.raises(chainspec.SpecError, match=r"nodes\[4\]\.init: .*input grows 16 → 24, but PixelNorm in node "
                                                  r"'act2' mixes or rearranges channels"):
        chainspec.diff(spec, chainspec.loads(wider, source="new.yaml")).apply(net)


def test_preserve_needs_the_same_layers() -> None:
    spec, net = trained(mlp())
    new = mlp().replace("{id: fc2, type: linear, args: {in_features: 16, out_features: 16}, init: fresh}",
                        "{id: fc2, type: eq_linear, args: {in_features: 16, out_features: 16}, init: preserve}")
    with pytest.raises(chainspec.SpecError, match="same layers before and after"):
        chainspec.diff(spec, chainspec.loads(new)).apply(net)


TRANSPOSED = """\
chainspec: 1
chains:
  net:
    input_shape: [3, 4, 4]
    nodes:
      - {{id: up, type: conv_transpose2d, args: {{in_channels: 3, out_channels: {w}}}, init: preserve}}
      - {{id: act, type: leaky_relu, args: {{negative_slope: 0.2}}}}
      - {{id: c, type: conv2d, args: {{in_channels: {w}, out_channels: 2, kernel_size: 1}}, init: preserve}}
"""

ONE_D = """\
chainspec: 1
chains:
  net:
    input_shape: [3, 10]
    nodes:
      - {{id: c1, type: conv1d, args: {{in_channels: 3, out_channels: {w}, padding: 1}}, init: preserve}}
      - {{id: bn, type: batchnorm1d, args: {{num_features: {w}}}, init: preserve}}
      - {{id: act, type: gelu}}
      - {{id: pool, type: maxpool2d, args: {{kernel_size: 1}}}}
      - {{id: c2, type: conv1d, args: {{in_channels: {w}, out_channels: 2, padding: 1}}, init: preserve}}
"""


@pytest.mark.parametrize("template", [TRANSPOSED, ONE_D], ids=["conv_transpose2d", "conv1d+batchnorm1d"])
def test_widening_other_layer_kinds(template: str) -> None:
    net = assert_same_function(template.format(w=4), template.format(w=7))
    assert sum(p.numel() for p in net.parameters()) > 0
