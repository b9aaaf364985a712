"""Function-preserving widening of a transformer's model width: the residual stream itself.

A trained GPT (token and position embeddings, two pre-norm blocks, a final norm and an LM head,
tied to the token embedding or not) is revised to a wider ``dim`` with every node ``init:
preserve``: by a multiple (32 → 64, the old channels tiled) and by an amount that is not one
(32 → 48: mean channels under LayerNorm, zero channels under RMSNorm, with the norms' ``eps``
scaled). The tests check, independently of the code under test:

- the revised chain computes the same function (max |Δ output| ≤ 1e-5 in float32, at nanoGPT's
  embedding scale), measured by the growth certificate and again here;
- what the stream carries: the activations between the blocks, read by forward hooks, are the old
  ones tiled, or the old ones followed by their mean (or zeros);
- the weights by construction (tiled embedding columns, norms split among the copies by uneven
  shares that add up to one, mean rows of the last projections) and every new tensor a new
  Parameter, a tied head still tied;
- the Adam moments follow the weights, and the first step after growth equals the step of a model
  built at the new size and given the transformed state by hand;
- what cannot keep the function is refused at ``diff``, located, and ``apply`` leaves the chain and
  the optimizer as they were.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch

import chainspec
from chainspec import SpecError
from chainspec.revise.diff import _plan  # the plan as apply gets it, before diff's rehearsal
from weights import adamw_steps, assert_same_first_step, copies_of

GPT = """\
chainspec: 1
vars: {{dim: {dim}, context: 16, vocab: 17}}
defaults:
  linear: {{bias: false}}
  {norm_defaults}
types:
  attention:
    residual: true
    nodes:
      - {{id: ln, type: {norm}}}
      - {{id: attn, type: causal_self_attention, args: {{dim: "${{dim}}", heads: "${{dim // 8}}", head_dim: 8,
         dropout: 0.0, bias: false}}}}
  mlp:
    residual: true
    nodes:
      - {{id: ln, type: {norm}}}
      - {{id: c_fc, type: linear, args: {{in_features: "${{dim}}", out_features: "${{2 * dim}}"}}}}
      - {{id: gelu, type: gelu}}
      - {{id: c_proj, type: linear, args: {{in_features: "${{2 * dim}}", out_features: "${{dim}}"}}}}
  block:
    nodes:
      - {{id: attn, type: attention}}
      - {{id: mlp, type: mlp}}
chains:
  gpt:
    input_shape: ["${{context}}"]
    input_dtype: int64
    nodes:
      - {{id: wte, type: token_embedding, args: {{num_embeddings: "${{vocab}}", embedding_dim: "${{dim}}"}}{init}}}
      - {{id: wpe, type: position_embedding, args: {{max_len: "${{context}}", dim: "${{dim}}"}}{init}}}
      - {{id: h0, type: block{init}}}
      - {{id: h1, type: block{init}}}
      - {{id: ln_f, type: {norm}{init}}}
      - {{id: lm_head, type: linear, args: {{in_features: "${{dim}}", out_features: "${{vocab}}"}}{tie}{init}}}
"""

X = torch.randint(0, 17, (3, 16), generator=torch.Generator().manual_seed(5))
EPS = {"layernorm": 1e-5, "rmsnorm": 1e-6}


def gpt(dim: int = 32, *, norm: str = "layernorm", tied: bool = True, init: str = "", eps: float | None = None,
        affine: bool = True, final_affine: bool | None = None) -> chainspec.Spec:
    """The GPT at width ``dim``; a width that is not a multiple of 32 gets the norms' eps scaled by 32/dim.
    ``affine``: the norms' learned scale and shift (``final_affine``: ln_f's, if it differs)."""
    if eps is None and dim % 32:
        eps = EPS[norm] * 32 / dim
    extra = (f", eps: {eps!r}" if eps is not None else "") + ("" if affine else ", elementwise_affine: false")
    norm_defaults = (f'layernorm: {{normalized_shape: "${{dim}}"{extra}}}' if norm == "layernorm"
                     else f'rmsnorm: {{dim: "${{dim}}"{extra}}}')
    text = GPT.format(dim=dim, norm=norm, norm_defaults=norm_defaults, init=f", init: {init}" if init else "",
                      tie=", tie: {weight: wte.weight}" if tied else "")
    if final_affine is not None:
        text = text.replace(f"{{id: ln_f, type: {norm}", f"{{id: ln_f, type: {norm}, args: {{elementwise_affine: "
                                                          f"{str(final_affine).lower()}}}")
    return chainspec.loads(text, source=f"gpt_{dim}.yaml")


def trained(spec: chainspec.Spec) -> tuple[chainspec.Chain, torch.optim.Optimizer]:
    """Built, its embeddings at nanoGPT's scale (std 0.02), and trained three AdamW steps."""
    torch.manual_seed(0)
    net = spec.build()
    with torch.no_grad():
        net.wte.weight.normal_(std=0.02)
        net.wpe.weight.normal_(std=0.02)
    return net, adamw_steps(net, X)


def stream(net: chainspec.Chain) -> dict[str, torch.Tensor]:
    """The residual stream after each node, by forward hooks."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [net[node].module.register_forward_hook(
        lambda _m, _i, out, node=node: seen.__setitem__(node, out.detach().clone())) for node in ("wpe", "h0", "h1")]
    with torch.no_grad():
        net(X)
    for hook in hooks:
        hook.remove()
    return seen


def widen(dim: int, **kw: Any) -> tuple[Any, ...]:
    """Train the 32-wide GPT, then widen it to ``dim`` with ``init: preserve``, a probe certifying it."""
    old_spec, new_spec = gpt(32, **kw), gpt(dim, init="preserve", **kw)
    net, opt = trained(old_spec)
    before_net, before_opt = copy.deepcopy((net, opt))
    olds = dict(before_net.named_parameters())
    old_state = {name: before_opt.state[p] for name, p in olds.items()}
    net.eval()
    with torch.no_grad():
        before = net(X)
    old_stream = stream(net)
    certificate = chainspec.diff(old_spec, new_spec).apply(net, opt, probe=X)
    return new_spec, net, opt, before, old_stream, certificate, olds, old_state


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("dim", [64, 48], ids=["multiple", "not-a-multiple"])
def test_the_model_width_widens_and_keeps_the_function(dim: int, norm: str, tied: bool) -> None:
    _, net, _, before, _, certificate, olds, _ = widen(dim, norm=norm, tied=tied)
    assert certificate is not None and certificate.claimed and certificate.holds
    with torch.no_grad():
        assert (net(X) - before).abs().max() <= 1e-5
    assert net.wte.weight.shape == (17, dim) and net.wpe.weight.shape == (16, dim)
    assert net.h1.attn.body.attn.heads == dim // 8 and net.h1.mlp.body.c_fc.weight.shape == (2 * dim, dim)
    assert (net.lm_head.weight is net.wte.weight) == tied
    for name, param in net.named_parameters():  # nothing aliases the old model's tensors
        assert all(param.data_ptr() != old.data_ptr() for old in olds.values()), name


def test_a_multiple_tiles_the_stream_and_each_norm_splits_its_output() -> None:
    _, net, _, _, old_stream, _, olds, _ = widen(64)
    new_stream = stream(net)
    for node, old in old_stream.items():  # what flows between the blocks: the old activations, tiled
        torch.testing.assert_close(new_stream[node], torch.cat([old, old], -1), rtol=1e-5, atol=1e-6)
    w = olds["wte.weight"].detach()
    assert torch.equal(net.wte.weight.detach(), torch.cat([w, w], 1))
    for norm in ("ln_f", "h0.attn.body.ln", "h1.mlp.body.ln"):  # the output split between the two copies
        g, b = olds[f"{norm}.weight"].detach(), olds[f"{norm}.bias"].detach()
        new_g, new_b = net.get_parameter(f"{norm}.weight").detach(), net.get_parameter(f"{norm}.bias").detach()
        torch.testing.assert_close(new_g[:32] + new_g[32:], g)  # the shares of a channel add up to one ...
        share = new_g / torch.cat([g, g])
        assert bool(((share > 0.25) & (share < 0.75)).all()), norm  # ... each drawn, uneven ...
        assert (share - 0.5).abs().max() > 0.05, norm
        torch.testing.assert_close(new_b, torch.cat([b, b]) * share)  # ... and the shift split alike
    proj, new_proj = olds["h0.mlp.body.c_proj.weight"].detach(), net.h0.mlp.body.c_proj.weight.detach()
    # The last projection writes the tiled stream (its rows, tiled), and reads the tiled hidden units,
    # each row sharing an old column among its two copies unevenly.
    torch.testing.assert_close(new_proj[:, :64] + new_proj[:, 64:], torch.cat([proj, proj]))
    assert ((new_proj[:, :64] / torch.cat([proj, proj]) - 0.5).abs() > 1e-3).float().mean() > 0.9


@pytest.mark.parametrize("norm,fill", [("layernorm", "mean"), ("rmsnorm", "zero")])
def test_a_width_that_is_not_a_multiple_adds_mean_or_zero_channels(norm: str, fill: str) -> None:
    _, net, _, _, old_stream, _, olds, _ = widen(48, norm=norm)
    new_stream = stream(net)
    for node, old in old_stream.items():
        extra = old.mean(-1, keepdim=True) if fill == "mean" else torch.zeros_like(old[..., :1])
        torch.testing.assert_close(new_stream[node], torch.cat([old, extra.expand(-1, -1, 16)], -1),
                                   rtol=1e-5, atol=1e-6, msg=node)
    w = olds["wte.weight"].detach()
    assert torch.equal(net.wte.weight[:, :32].detach(), w)
    g = olds["h1.attn.body.ln.weight"].detach()  # the norm's scale on the old channels: times sqrt(32/48)
    torch.testing.assert_close(net.h1.attn.body.ln.weight[:32].detach(), g * math.sqrt(32 / 48))
    assert net.h1.attn.body.ln.eps == pytest.approx(EPS[norm] * 32 / 48)
    # The attention's last projection writes the stream: its new rows are the mean of the old rows (or
    # zero), each copied head's columns sharing the old head's. Folded back onto the old heads:
    proj, new_proj = olds["h1.attn.body.attn.c_proj.weight"].detach(), net.h1.attn.body.attn.c_proj.weight.detach()
    heads = head_copies_of(net, olds, "h1", 32, 48)
    folded = torch.zeros(48, 32).index_add_(1, (heads[:, None] * 8 + torch.arange(8)).reshape(-1), new_proj)
    torch.testing.assert_close(folded[:32], proj)
    want = proj.mean(0, keepdim=True).expand(16, -1) if fill == "mean" else torch.zeros(16, 32)
    torch.testing.assert_close(folded[32:], want, rtol=1e-5, atol=1e-7)


def test_adam_moments_follow_the_tiled_weights_and_the_first_step_matches_a_model_built_wide() -> None:
    new_spec, net, opt, _, _, _, olds, old_state = widen(64)
    params = dict(net.named_parameters())
    expected: dict[str, dict[str, torch.Tensor]] = {}

    def moments(name: str, first: torch.Tensor, second: torch.Tensor) -> None:
        expected[name] = {"exp_avg": first, "exp_avg_sq": second}

    def tiled(tensor: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.cat([tensor, tensor], dim)

    for name in ("wte.weight", "wpe.weight"):
        moments(name, *(tiled(old_state[name][m], 1) for m in ("exp_avg", "exp_avg_sq")))
    for name in [n for n in params if n.startswith("ln_f.") or ".ln." in n]:
        # a norm's scale and shift times each copy's share: first moments times it, second its square
        scale = name.rpartition(".")[0] + ".weight"
        share = params[scale].detach() / tiled(olds[scale].detach(), 0)
        moments(name, tiled(old_state[name]["exp_avg"], 0) * share,
                tiled(old_state[name]["exp_avg_sq"], 0) * share ** 2)
    def follow(name: str, gather: Any) -> None:
        """A parameter made as ``gather(old) * t``, elementwise: its moments are ``gather(m) * t``, ``* t ** 2``."""
        t = params[name].detach() / gather(olds[name].detach())
        moments(name, gather(old_state[name]["exp_avg"]) * t, gather(old_state[name]["exp_avg_sq"]) * t ** 2)

    for block in ("h0", "h1"):
        qkv, out = f"{block}.attn.body.attn.c_attn.weight", f"{block}.attn.body.attn.c_proj.weight"
        heads = head_copies_of(net, olds, block, 32, 64)
        rows = torch.cat([part * 32 + (heads[:, None] * 8 + torch.arange(8)).reshape(-1) for part in range(3)])
        columns = (heads[:, None] * 8 + torch.arange(8)).reshape(-1)
        follow(qkv, lambda tensor, rows=rows: tiled(tensor[rows], 1))  # rows: the heads; columns: the stream
        follow(out, lambda tensor, columns=columns: tiled(tensor[:, columns], 0))
        fc, proj = f"{block}.mlp.body.c_fc.weight", f"{block}.mlp.body.c_proj.weight"
        units = copies_of(fold(net, olds, f"{block}.mlp.body.ln", params[fc].detach()), olds[fc].detach(), exact=False)
        follow(fc, lambda tensor, units=units: tiled(tensor[units], 1))
        follow(proj, lambda tensor, units=units: tiled(tensor[:, units], 0))
    assert sorted(expected) == sorted(params)  # every parameter widened; the tied head has none of its own
    for name, state in expected.items():
        assert torch.equal(opt.state[params[name]]["step"], old_state[name]["step"]), name
        for key, value in state.items():
            torch.testing.assert_close(opt.state[params[name]][key], value, rtol=1e-6, atol=0, msg=f"{name} {key}")
    net.train()
    assert_same_first_step(net, opt, new_spec.build(), {
        name: {"step": old_state[name]["step"], **state} for name, state in expected.items()}, X)


def fold(net: chainspec.Chain, olds: dict[str, torch.Tensor], norm: str, weight: torch.Tensor) -> torch.Tensor:
    """A layer's weight over a norm's output tiled twice (32 -> 64), folded back onto the 32 old channels:
    each copy's column times the norm's share of that copy (what the layer computes on the old output)."""
    share = net.get_parameter(f"{norm}.weight").detach() / olds[f"{norm}.weight"].detach().repeat(2)
    weighted = weight * share
    return weighted[:, :32] + weighted[:, 32:]


def head_copies_of(net: chainspec.Chain, olds: dict[str, torch.Tensor], block: str, old: int, new: int) -> torch.Tensor:
    """The old head each head of ``block``'s widened attention copies, by its query, key and value rows."""
    name = f"{block}.attn.body.attn.c_attn.weight"
    weight = net.get_parameter(name).detach()
    # tiles: fold the copies back; mean or zero channels: the old columns are the old weights
    weight = fold(net, olds, f"{block}.attn.body.ln", weight) if new % old == 0 else weight[:, :old]
    new_heads = weight.reshape(3, new // 8, 8, old).permute(1, 0, 2, 3).reshape(new // 8, -1)
    old_heads = olds[name].detach().reshape(3, old // 8, 8, old).permute(1, 0, 2, 3).reshape(old // 8, -1)
    return copies_of(new_heads, old_heads, exact=False)


def refused(old_spec: chainspec.Spec, new_spec: chainspec.Spec, message: str) -> None:
    """``diff`` refuses with ``message`` at a located ``init``; ``apply`` of the unchecked plan leaves
    the chain and the optimizer exactly as they were."""
    with pytest.raises(SpecError) as caught:
        chainspec.diff(old_spec, new_spec)
    text = str(caught.value)
    assert message in text and f"{new_spec.source}:" in text and ".init: " in text, text
    net, opt = trained(old_spec)
    weights = copy.deepcopy(net.state_dict())
    state = copy.deepcopy(opt.state_dict())
    with pytest.raises(SpecError) as applied:
        _plan(old_spec, new_spec, chain=None, stage="final").apply(net, opt)
    assert message in str(applied.value)
    assert net.wte.weight.shape == (17, 32)
    for key, value in net.state_dict().items():
        assert torch.equal(value, weights[key]), key
    after = opt.state_dict()
    for index, moments in state["state"].items():
        for key, value in moments.items():
            assert torch.equal(after["state"][index][key], value), (index, key)


def test_a_norm_whose_eps_is_not_scaled_is_refused_with_the_value_to_set() -> None:
    refused(gpt(32), gpt(48, init="preserve", eps=1e-5),
            "init: preserve widens LayerNorm in node 'h0' (attn.body.ln) 32 → 48 exactly only with eps "
            "6.6666666666666675e-06")


def test_a_tied_head_after_a_norm_without_a_scale_is_refused() -> None:
    refused(gpt(32, affine=False), gpt(64, init="preserve", affine=False),
            "init: preserve cannot widen Linear in node 'lm_head': its weight is tied to a parameter widened "
            "before it, by a rule this layer cannot share")


def test_a_stream_widened_only_in_part_is_refused() -> None:
    old = gpt(32)
    text = GPT.format(dim=64, norm="layernorm", norm_defaults='layernorm: {normalized_shape: "${dim}"}',
                      init=", init: preserve", tie=", tie: {weight: wte.weight}")
    new = chainspec.loads(text.replace("{id: h1, type: block, init: preserve}", "{id: h1, type: block, init: keep}"),
                          source="partial.yaml")
    refused(old, new, "init: preserve cannot keep the function of LayerNorm in node 'ln_f' (32 → 64): new "
                      "channels of its input hold values of their own (a node before it widened the stream with "
                      "init: keep or fresh); give every node that widens the stream init: preserve")


def test_a_width_that_is_not_a_multiple_cannot_serve_both_kinds_of_norm() -> None:
    from chainspec.revise.channels import stream_channels

    assert stream_channels(32, 64, {"layer", "rms"}).source.tolist() == list(range(32)) * 2  # tiles serve both
    with pytest.raises(ValueError, match="keeps LayerNorm's function with mean channels and RMSNorm's with zero"):
        stream_channels(32, 48, {"layer", "rms"})


def test_the_copies_of_a_tiled_channel_learn_apart() -> None:
    """The uneven shares of each norm's split make the two copies of a channel get different gradients:
    after a few steps (no dropout here) the stream's halves are no longer equal."""
    _, net, opt, _, _, _, _, _ = widen(64)
    torch.testing.assert_close(*stream(net)["h1"].split(32, -1))  # tiled at the widening
    net.train()
    for _ in range(3):
        opt.zero_grad()
        net(X).square().mean().backward()
        opt.step()
    first, second = stream(net)["h1"].split(32, -1)
    assert (first - second).abs().max() > 1e-3 * first.abs().max()


def test_norms_without_a_learned_scale_keep_the_function_over_tiles() -> None:
    _, net, _, before, _, certificate, _, _ = widen(64, affine=False, tied=False)
    # ln_f has no parameters: its change is an update (rebuilt), about which a plan claims nothing;
    # the certificate measures the function kept all the same.
    assert certificate is not None and not certificate.claimed and certificate.holds
    with torch.no_grad():
        assert (net(X) - before).abs().max() <= 1e-5


def test_a_norm_without_a_learned_scale_cannot_take_mean_channels() -> None:
    refused(gpt(32, affine=False, tied=False), gpt(48, init="preserve", affine=False, tied=False),
            "LayerNorm in node 'ln_f' has no learned scale to make up for channels that are not tiles of the old "
            "ones (widen by a multiple)")


def test_a_norm_whose_eps_changes_over_tiles_is_refused() -> None:
    refused(gpt(32), gpt(64, init="preserve", eps=5e-6),
            "init: preserve keeps the function of LayerNorm in node 'h0' (attn.body.ln) over tiles of its old "
            "channels only with its old eps 1e-05, not 5e-06")


def test_a_norm_without_a_learned_scale_inside_a_block_is_read_scaled_over_mean_channels() -> None:
    """The blocks' norms have no scale: over mean channels their output on the old channels grows by
    sqrt(48 / 32), which the attention and MLP reading them take up."""
    _, net, _, before, _, certificate, _, _ = widen(48, affine=False, final_affine=True, tied=False)
    assert net.h0.attn.body.ln.weight is None and net.ln_f.weight is not None
    assert certificate is not None and certificate.claimed and certificate.holds
    with torch.no_grad():
        assert (net(X) - before).abs().max() <= 1e-5


def test_the_plan_says_the_tied_head_widens_with_the_embedding() -> None:
    text = str(chainspec.diff(gpt(32), gpt(64, init="preserve")))
    assert "lm_head (linear): in_features 32 → 64 (init: preserve, new units made from old ones; weight tied to " \
           "wte.weight)" in text
    assert "Function: preserved" in text
