"""The fade-in blend: old path at alpha = 0, new path at alpha = 1, stable state_dict keys, clean collapse."""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import chainspec
from chainspec.grow.blend import Blend, blend_ids, resize_adapter, wrap

TINY = Path(__file__).resolve().parents[1] / "specs" / "pggan_tiny.yaml"


@pytest.fixture(scope="module")
def spec() -> chainspec.Spec:
    return chainspec.load(TINY)


def fade(spec: chainspec.Spec, name: str, stage: int, alpha: float = 0.0,
         seed: int = 0) -> tuple[chainspec.Chain, chainspec.Chain, Blend]:
    """(the chain at stage - 1, a twin with the same weights fading into ``stage``, its blend)."""
    torch.manual_seed(seed)
    before = spec.build(name, stage=stage - 1)
    chain = copy.deepcopy(before)
    plan = chainspec.diff(spec, spec, chain=name, stage=(stage - 1, stage))
    removed = [op.node_id for op in plan.ops if op.kind == "remove"]
    inserted = [op.node_id for op in plan.ops if op.kind == "insert"]
    old = [(i, chain[i].module, chain[i].type) for i in removed]
    plan.apply(chain)
    new_ids = plan.new_ids
    start = new_ids.index(inserted[0])
    after = new_ids[start - 1] if start else None
    summary_old = spec.summary(name, stage=stage - 1)
    summary_new = spec.summary(name, stage=stage)
    if name == "generator":
        pre, post = None, resize_adapter(summary_old.output_shape, summary_new.output_shape)
    else:
        pre, post = resize_adapter(summary_new.input_shape, summary_old.input_shape), None
    blend = wrap(chain, old, inserted, after=after, pre=pre, post=post, alpha=alpha)
    return before, chain, blend


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_generator_blend_is_the_old_path_at_alpha_0(spec: chainspec.Spec, stage: int) -> None:
    before, chain, _ = fade(spec, "generator", stage, alpha=0.0)
    z = torch.randn(4, 32)
    with torch.no_grad():
        expected = F.interpolate(before(z), scale_factor=2, mode="nearest")  # the old image, upsampled
        got = chain(z)
    assert got.shape == expected.shape == (4, 3, 4 * 2**stage, 4 * 2**stage)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_discriminator_blend_is_the_old_path_at_alpha_0(spec: chainspec.Spec, stage: int) -> None:
    before, chain, _ = fade(spec, "discriminator", stage, alpha=0.0)
    res = 4 * 2**stage
    x = torch.randn(4, 3, res, res)
    with torch.no_grad():
        assert torch.equal(chain(x), before(F.avg_pool2d(x, 2)))  # the old critic on the downscaled image


@pytest.mark.parametrize("name", ["generator", "discriminator"])
def test_blend_is_the_new_path_at_alpha_1_and_collapses_to_it(spec: chainspec.Spec, name: str) -> None:
    _, chain, blend = fade(spec, name, 2, alpha=1.0)
    x = torch.randn(4, 32) if name == "generator" else torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        blended = chain(x)
        blend.collapse()
        assert chain.ids() == [n.id for n in spec.resolved(name).at(2)]
        assert torch.equal(blended, chain(x))


def test_blend_in_between_is_the_weighted_sum(spec: chainspec.Spec) -> None:
    _, chain, blend = fade(spec, "generator", 1, alpha=0.0)
    z = torch.randn(4, 32)
    with torch.no_grad():
        old = chain(z)
        blend.alpha = 1.0
        new = chain(z)
        blend.alpha = 0.3
        mixed = chain(z)
    torch.testing.assert_close(mixed, 0.7 * old + 0.3 * new)
    assert blend.alpha == pytest.approx(0.3)


def test_state_dict_keys_and_parameters_are_the_real_nodes(spec: chainspec.Spec) -> None:
    torch.manual_seed(0)
    before = spec.build("generator", stage=1)
    old_params = {k: v for k, v in before.named_parameters()}
    _, chain, _ = fade(spec, "generator", 2)
    after = spec.build("generator", stage=2)
    keys = set(chain.state_dict())
    # Exactly the union of both stages' keys: nothing is re-parented under a blend node.
    assert keys == set(before.state_dict()) | set(after.state_dict())
    assert not any(k.startswith("blend_") for k in keys)
    assert {n for n, _ in chain.named_parameters()} == keys  # no buffers: alpha is not persistent
    assert "to_rgb_8.conv.weight" in keys and "b16.conv0.conv.weight" in keys
    assert set(old_params) <= keys


def test_surviving_and_old_parameters_are_the_same_objects(spec: chainspec.Spec) -> None:
    torch.manual_seed(0)
    chain = spec.build("discriminator", stage=1)
    objects = {k: v for k, v in chain.named_parameters()}
    plan = chainspec.diff(spec, spec, chain="discriminator", stage=(1, 2))
    old = [("from_rgb_8", chain["from_rgb_8"].module, "from_rgb")]
    plan.apply(chain)
    wrap(chain, old, ["from_rgb_16", "b16"], after=None, pre=nn.AvgPool2d(2))
    now = dict(chain.named_parameters())
    for key, param in objects.items():
        assert now[key] is param


def test_chain_order_brackets_the_two_paths(spec: chainspec.Spec) -> None:
    _, g, _ = fade(spec, "generator", 1)
    _, d, _ = fade(spec, "discriminator", 1)
    assert g.ids() == ["b4", "blend_split", "to_rgb_4", "blend_swap", "b8", "to_rgb_8", "blend_merge"]
    assert d.ids() == ["blend_split", "from_rgb_4", "blend_swap", "from_rgb_8", "b8", "blend_merge", "b4"]


def test_gradients_reach_both_paths_mid_fade(spec: chainspec.Spec) -> None:
    _, chain, _ = fade(spec, "generator", 1, alpha=0.5)
    chain(torch.randn(4, 32)).square().mean().backward()
    for name in ("to_rgb_4.conv.weight", "to_rgb_8.conv.weight", "b8.conv0.conv.weight", "b4.dense.weight"):
        grad = dict(chain.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_alpha_0_gives_the_new_path_no_gradient(spec: chainspec.Spec) -> None:
    _, chain, _ = fade(spec, "generator", 1, alpha=0.0)
    chain(torch.randn(4, 32)).square().mean().backward()
    assert torch.count_nonzero(chain["to_rgb_8"].module.conv.weight.grad) == 0


def test_mid_fade_chain_survives_deepcopy_pickle_and_to(spec: chainspec.Spec) -> None:
    _, chain, blend = fade(spec, "generator", 1, alpha=0.25)
    z = torch.randn(4, 32)
    with torch.no_grad():
        y = chain(z)
        assert torch.equal(copy.deepcopy(chain)(z), y)
        assert torch.equal(pickle.loads(pickle.dumps(chain))(z), y)
        buffer = io.BytesIO()
        torch.save(chain, buffer)
        buffer.seek(0)
        assert torch.equal(torch.load(buffer, weights_only=False)(z), y)
        wide = chain.to(torch.float64)
        assert blend.merge.alpha.dtype == torch.float64
        torch.testing.assert_close(wide(z.double()), y.double(), rtol=1e-5, atol=1e-6)


def test_alpha_must_be_in_0_1(spec: chainspec.Spec) -> None:
    _, _, blend = fade(spec, "generator", 1)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha must be in"):
            blend.alpha = bad


def test_resize_adapters() -> None:
    assert isinstance(resize_adapter([3, 4, 4], [3, 16, 16]), nn.Upsample)
    pool = resize_adapter([8, 16], [8, 4])
    assert isinstance(pool, nn.AvgPool1d) and pool.kernel_size == (4,)
    with pytest.raises(chainspec.PlanError, match="same channels"):
        resize_adapter([3, 4, 4], [4, 8, 8])
    with pytest.raises(chainspec.PlanError, match="same integer factor"):
        resize_adapter([3, 4, 4], [3, 8, 12])
    with pytest.raises(chainspec.PlanError, match="same integer factor"):
        resize_adapter([3, 4, 4], [3, 6, 6])


def test_blend_ids_avoid_taken_ids() -> None:
    assert blend_ids(set()) == ("blend_split", "blend_swap", "blend_merge")
    assert blend_ids({"blend_merge", "blend_split_2"}) == ("blend_split_3", "blend_swap_3", "blend_merge_3")


def test_wrap_checks_where_the_new_path_is() -> None:
    chain = chainspec.Chain([("a", nn.Identity()), ("b", nn.Identity())])
    with pytest.raises(chainspec.PlanError, match="expected the new path"):
        wrap(chain, [("old", nn.Identity(), "identity")], ["b"], after=None)
    with pytest.raises(chainspec.PlanError, match="already has a node 'a'"):
        wrap(chain, [("a", nn.Identity(), "identity")], ["b"], after="a")


def test_running_a_blend_node_alone_is_a_clear_error() -> None:
    chain = chainspec.Chain([("a", nn.Identity())])
    blend = wrap(chain, [], ["a"], after=None)
    with pytest.raises(RuntimeError, match="without blend_split"):
        chain[blend.ids[1]].module(torch.zeros(1))
