"""Function-preserving widening of a transformer: attention heads and MLP hidden size.

A trained GPT's blocks are revised with ``init: preserve`` to more heads (at a fixed ``head_dim``)
and a wider MLP, by amounts that are not integer multiples. The tests check, independently of the
code under test:

- the revised chain computes the same function (max |Δ output| ≤ 1e-5 in float32, measured by
  the growth certificate and again here);
- each new unit copies an old one (found by matching rows), the consumer's weights of a copied unit
  are shared among its copies (they add up to the old weight, unevenly, so that the copies learn
  apart), and every new tensor is a new Parameter;
- the Adam moments follow the weights by the documented rule (first moment times the weight's
  factor, second moment times its square), so that the first optimizer step after growth equals
  the step of a model built at the new size and given the transformed state by hand.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import chainspec
from chainspec import SpecError
from weights import adamw_steps, assert_same_first_step, copies_of

GPT = """\
chainspec: 1
vars: {{dim: 32, context: 16, vocab: 17}}
defaults:
  linear: {{bias: false}}
  layernorm: {{normalized_shape: "${{dim}}", bias: false}}
types:
  attention:
    residual: true
    params: {{heads: 2}}
    nodes:
      - {{id: ln, type: layernorm}}
      - {{id: attn, type: causal_self_attention, args: {{dim: "${{dim}}", heads: "${{heads}}", head_dim: 8,
         dropout: 0.0, bias: {bias}}}}}
  mlp:
    residual: true
    params: {{hidden: 64}}
    nodes:
      - {{id: ln, type: layernorm}}
      - {{id: c_fc, type: linear, args: {{in_features: "${{dim}}", out_features: "${{hidden}}", bias: {bias}}}}}
      - {{id: gelu, type: gelu}}
      - {{id: c_proj, type: linear, args: {{in_features: "${{hidden}}", out_features: "${{dim}}", bias: {bias}}}}}
  block:
    params: {{heads: 2, hidden: 64}}
    nodes:
      - {{id: attn, type: attention, args: {{heads: "${{heads}}"}}}}
      - {{id: mlp, type: mlp, args: {{hidden: "${{hidden}}"}}}}
chains:
  gpt:
    input_shape: ["${{context}}"]
    input_dtype: int64
    nodes:
      - {{id: wte, type: token_embedding, args: {{num_embeddings: "${{vocab}}", embedding_dim: "${{dim}}"}}}}
      - {{id: wpe, type: position_embedding, args: {{max_len: "${{context}}", dim: "${{dim}}"}}}}
      - {{id: h0, type: block, args: {{heads: {heads}, hidden: {hidden}}}{init}}}
      - {{id: h1, type: block, args: {{heads: {heads}, hidden: {hidden}}}{init}}}
      - {{id: ln_f, type: layernorm}}
      - {{id: lm_head, type: linear, args: {{in_features: "${{dim}}", out_features: "${{vocab}}"}}}}
"""


def gpt(heads: int = 2, hidden: int = 64, init: str = "", bias: bool = False) -> chainspec.Spec:
    text = GPT.format(heads=heads, hidden=hidden, init=f", init: {init}" if init else "",
                      bias=str(bias).lower())
    return chainspec.loads(text, source=f"gpt_{heads}x{hidden}.yaml")


def trained(spec: chainspec.Spec, x: torch.Tensor) -> tuple[chainspec.Chain, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = spec.build()
    return net, adamw_steps(net, x)


X = torch.randint(0, 17, (3, 16))


def grow(heads: int, hidden: int, bias: bool = False) -> tuple[Any, ...]:
    """Train the two-head, 64-wide GPT a little, then apply the revision to ``heads`` and ``hidden``
    with ``init: preserve``, a probe batch certifying it."""
    old_spec, new_spec = gpt(bias=bias), gpt(heads, hidden, init="preserve", bias=bias)
    net, opt = trained(old_spec, X)
    before_net, before_opt = copy.deepcopy((net, opt))  # one deepcopy: the state keyed by the copied parameters
    olds = {name: p for name, p in before_net.named_parameters()}
    old_state = {name: before_opt.state[p] for name, p in olds.items()}
    with torch.no_grad():
        before = net(X)
    certificate = chainspec.diff(old_spec, new_spec).apply(net, opt, probe=X, loss=lambda y: y.square().mean())
    return old_spec, new_spec, net, opt, before, certificate, olds, old_state


@pytest.mark.parametrize("bias", [False, True])
def test_more_heads_and_a_wider_mlp_keep_the_function(bias: bool) -> None:
    *_, net, _, before, certificate, olds, _ = grow(heads=3, hidden=88, bias=bias)  # 1.5x heads, 1.375x hidden
    assert certificate is not None and certificate.claimed and certificate.holds
    with torch.no_grad():
        assert (net(X) - before).abs().max() <= 1e-5
    attn = net.h0.attn.body.attn
    assert attn.heads == 3 and attn.c_attn.weight.shape == (72, 32) and attn.c_proj.weight.shape == (32, 24)
    assert net.h0.mlp.body.c_fc.weight.shape == (88, 32)
    for name, param in net.named_parameters():  # nothing aliases the old model's tensors
        assert isinstance(param, torch.nn.Parameter)
        assert all(param.data_ptr() != old.data_ptr() for old in olds.values()), name


def test_new_heads_copy_old_heads_and_the_projection_shares_their_columns() -> None:
    *_, net, _, _, _, olds, _ = grow(heads=3, hidden=64)
    attn, d = net.h1.attn.body.attn, 8
    old_qkv = olds["h1.attn.body.attn.c_attn.weight"].detach()
    # A head is 8 rows in each of q, k and v: compare whole heads (q, k, v rows side by side).
    def heads_of(weight: torch.Tensor, count: int) -> torch.Tensor:
        return weight.reshape(3, count, d, -1).permute(1, 0, 2, 3).reshape(count, -1)
    source = copies_of(heads_of(attn.c_attn.weight.detach(), 3), heads_of(old_qkv, 2))
    assert source[:2].tolist() == [0, 1]  # the old heads keep their places
    old_proj, proj = olds["h1.attn.body.attn.c_proj.weight"].detach(), attn.c_proj.weight.detach()
    for old_head in range(2):  # the copies' columns add up to the old head's, split unevenly per row
        mine = [head for head, source_head in enumerate(source.tolist()) if source_head == old_head]
        columns = torch.stack([proj[:, head * d:(head + 1) * d] for head in mine])
        torch.testing.assert_close(columns.sum(0), old_proj[:, old_head * d:(old_head + 1) * d])
        if len(mine) > 1:
            shares = columns / old_proj[:, old_head * d:(old_head + 1) * d]
            assert (shares - 1 / len(mine)).abs().max() > 0.01


def test_adam_moments_follow_the_weights_and_the_first_step_matches_a_model_built_at_the_new_size() -> None:
    _, new_spec, net, opt, _, _, olds, old_state = grow(heads=3, hidden=88)
    # The transformed state, by hand: rows that copy an old unit take its moments; the consumer's
    # column of a copied unit, its old weight times a share t (the copies' shares add up to one),
    # takes its first moment times t and second moment times t**2 (Staged training's / 2 and / 4
    # when two copies share evenly).
    expected: dict[str, dict[str, torch.Tensor]] = {}
    d = 8

    def shared(name: str, columns: torch.Tensor) -> dict[str, torch.Tensor]:
        t = net.get_parameter(name).detach() / olds[name].detach()[:, columns]
        return {"exp_avg": old_state[name]["exp_avg"][:, columns] * t,
                "exp_avg_sq": old_state[name]["exp_avg_sq"][:, columns] * t ** 2}

    for block in ("h0", "h1"):
        fc, proj = f"{block}.mlp.body.c_fc.weight", f"{block}.mlp.body.c_proj.weight"
        units = copies_of(net.get_parameter(fc).detach(), olds[fc].detach())
        expected[fc] = {m: old_state[fc][m][units] for m in ("exp_avg", "exp_avg_sq")}
        expected[proj] = shared(proj, units)
        qkv, out = f"{block}.attn.body.attn.c_attn.weight", f"{block}.attn.body.attn.c_proj.weight"
        new_heads = net.get_parameter(qkv).detach().reshape(3, 3, d, -1).permute(1, 0, 2, 3).reshape(3, -1)
        old_heads = olds[qkv].detach().reshape(3, 2, d, -1).permute(1, 0, 2, 3).reshape(2, -1)
        heads = copies_of(new_heads, old_heads)
        rows = torch.cat([part * 2 * d + (heads[:, None] * d + torch.arange(d)).reshape(-1) for part in range(3)])
        columns = (heads[:, None] * d + torch.arange(d)).reshape(-1)
        expected[qkv] = {m: old_state[qkv][m][rows] for m in ("exp_avg", "exp_avg_sq")}
        expected[out] = shared(out, columns)
    params = dict(net.named_parameters())
    for name, moments in expected.items():
        state = opt.state[params[name]]
        assert torch.equal(state["step"], old_state[name]["step"]), name
        for key, value in moments.items():
            torch.testing.assert_close(state[key], value, rtol=1e-6, atol=0, msg=f"{name} {key}")
    for name, param in params.items():  # the layer norms and the untouched nodes keep theirs exactly
        if name not in expected:
            for key, value in old_state[name].items():
                assert torch.equal(opt.state[param][key], value), (name, key)
    # The first step after growth: a model built at the new size, given the grown weights and the
    # transformed state by hand, takes the same step.
    assert_same_first_step(net, opt, new_spec.build(), {
        name: old_state[name] if name not in expected else {"step": old_state[name]["step"], **expected[name]}
        for name in params}, X)


@pytest.mark.parametrize("change,message", [
    ("head_dim: 8", "init: preserve keeps each head's width, but CausalSelfAttention"),
    ("heads: 1", "init: preserve cannot drop heads"),
])
def test_head_changes_that_cannot_keep_the_function_are_located_errors(change: str, message: str) -> None:
    old_spec = gpt()
    text = GPT.format(heads=2, hidden=64, init=", init: preserve", bias="false")
    if change == "head_dim: 8":
        text = text.replace("head_dim: 8", "head_dim: 16")
    else:
        text = text.replace("args: {heads: 2, hidden: 64}, init", "args: {heads: 1, hidden: 64}, init")
    new_spec = chainspec.loads(text, source="bad.yaml")
    net, opt = trained(old_spec, X)
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(SpecError) as caught:
        chainspec.diff(old_spec, new_spec).apply(net, opt)
    assert message in str(caught.value) and "bad.yaml:" in str(caught.value)
    for key, value in net.state_dict().items():  # nothing changed
        assert torch.equal(value, before[key]), key
