"""Growth operators as ``init`` options, checked by growth certificates.

- ``init: preserve`` on an inserted residual block starts it as an exact identity (its body's last
  weighted layer zeroed), norm layers inside it included: a ResNet and a GPT grow in depth with
  their output unchanged, as the certificate measures.
- ``init: {copy: ID}`` starts a joining node as a copy of another of the same definition, weights
  and (by default) optimizer state: the first step after growth is the step a model built at the
  new size from the transformed state takes.
- ``plan.apply(..., probe=x)`` returns a certificate and rolls back a claimed identity that is not one.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch

import chainspec
from chainspec import CertificateError, SpecError

SPECS = Path(__file__).resolve().parents[1] / "specs"


def preserving(name: str, ids: list[str]) -> chainspec.Spec:
    """The spec ``name`` with ``init: preserve`` on the nodes ``ids``."""
    text = (SPECS / name).read_text(encoding="utf-8")
    for node_id in ids:
        text = text.replace(f"{{id: {node_id}, ", f"{{id: {node_id}, init: preserve, ")
    return chainspec.loads(text, source=name)


def trained(spec: chainspec.Spec, x: torch.Tensor) -> tuple[chainspec.Chain, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = spec.build(stage=0)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        net(x).float().square().mean().backward()
        opt.step()
    return net, opt


@pytest.mark.parametrize("name,ids", [("gpt_tiny.yaml", ["h1", "h2"]),
                                      ("resnet20.yaml", ["g1b2", "g2b2", "g3b2"])])
def test_an_inserted_residual_block_with_preserve_is_an_identity(name: str, ids: list[str]) -> None:
    spec = preserving(name, ids)
    x = torch.randint(0, 65, (2, 16)) if name.startswith("gpt") else torch.randn(4, 3, 32, 32)
    net, opt = trained(spec, x)
    plan = chainspec.diff(spec, spec, stage=(0, 1))
    assert all("(identity init)" in op.describe() for op in plan.ops if op.kind == "insert")
    found = plan.apply(net, opt, probe=x, loss=lambda y: y.float().square().mean())
    assert found is not None and found.claimed and found.holds
    assert found.output_change <= 1e-5 * max(1.0, found.output_scale) and abs(found.loss_change) < 1e-5
    assert net.training  # the probe ran in eval mode, and the modes came back
    net(x).float().square().mean().backward()  # the new blocks train: their zeroed layers get gradients
    assert all(p.grad is not None for p in net[ids[0]].module.parameters() if p.requires_grad)


LINEAR = """\
chainspec: 1
types:
  res:
    residual: true
    nodes: [{id: fc, type: linear, args: {in_features: 4, out_features: 4}}]
    after: [{id: act, type: relu}]
chains:
  net:
    input_shape: [4]
    nodes:
      - {id: fc0, type: linear, args: {in_features: 4, out_features: 4}}
      - {id: blk, type: res, stage: 1, init: preserve}
"""


def test_a_claimed_identity_that_is_not_one_is_rolled_back() -> None:
    spec = chainspec.loads(LINEAR, source="res.yaml")  # a ReLU after the sum: not an identity on negatives
    torch.manual_seed(0)
    net = spec.build(stage=0)
    opt = torch.optim.Adam(net.parameters())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CertificateError, match="claims to keep the function, but the output on the probe batch "
                                               "moved by") as err:
        chainspec.diff(spec, spec, stage=(0, 1)).apply(net, opt, probe=torch.randn(16, 4))
    assert err.value.certificate.claimed and not err.value.certificate.holds
    assert net.ids() == ["fc0"] and net.stage == 0
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert [p for g in opt.param_groups for p in g["params"]] == list(net.parameters())


def test_a_plan_without_a_claim_reports_what_changed() -> None:
    spec = chainspec.loads(LINEAR.replace(", init: preserve", ""), source="res.yaml")
    net = spec.build(stage=0)
    found = chainspec.diff(spec, spec, stage=(0, 1)).apply(net, probe=torch.randn(8, 4))
    assert found is not None and not found.claimed and found.output_change > 0
    assert "makes no claim" in str(found)


GPT_COPY = (SPECS / "gpt_tiny.yaml").read_text(encoding="utf-8")


def test_copy_init_stacks_a_block_with_its_weights_and_adam_moments() -> None:
    old = chainspec.loads(GPT_COPY, source="gpt_tiny.yaml")
    new = chainspec.loads(GPT_COPY.replace("{id: h1, type: block, stage: 1}", "{id: h1, type: block, stage: 1, "
                                           "init: {copy: h0}}"), source="grown.yaml")
    x = torch.randint(0, 65, (2, 16))
    net, opt = trained(old, x)
    plan = chainspec.diff(old, new, stage=(0, 1))
    assert any(op.describe() == "h1 (block) after h0 (copy of h0, optimizer state too)" for op in plan.ops)
    plan.apply(net, opt)
    for (name, a), (_, b) in zip(net.h1.named_parameters(), net.h0.named_parameters(), strict=True):
        assert torch.equal(a, b) and a is not b, name
        for key, value in opt.state[b].items():
            assert torch.equal(opt.state[a][key], value)
    # The first step after growth is the step of a model built at the new size from the transformed state.
    reference = new.build(stage=1)
    reference.load_state_dict(net.state_dict())
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch shares the state's tensors otherwise
    for model, optimizer in ((net, opt), (reference, ref_opt)):
        optimizer.zero_grad()
        model.eval()
        model(x).float().square().mean().backward()
        optimizer.step()
    for (k, a), (_, b) in zip(net.state_dict().items(), reference.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_copy_init_without_optimizer_state() -> None:
    old = chainspec.loads(GPT_COPY, source="gpt_tiny.yaml")
    new = chainspec.loads(GPT_COPY.replace("{id: h1, type: block, stage: 1}", "{id: h1, type: block, stage: 1, "
                                           "init: {copy: h0, optimizer: fresh}}"), source="grown.yaml")
    net, opt = trained(old, torch.randint(0, 65, (2, 16)))
    chainspec.diff(old, new, stage=(0, 1)).apply(net, opt)
    assert all(not opt.state.get(p) for p in net.h1.parameters())
    assert torch.equal(net.h1.attn.body.attn.c_attn.weight, net.h0.attn.body.attn.c_attn.weight)


@pytest.mark.parametrize("source,message", [
    ("h9", "cannot copy 'h9': it is not in the chain before this revision"),
    ("wte", "cannot copy 'wte' (token_embedding): it is not defined as 'h1' (block) is"),
])
def test_copy_init_of_a_missing_or_different_node_is_a_located_error(source: str, message: str) -> None:
    old = chainspec.loads(GPT_COPY, source="gpt_tiny.yaml")
    new = chainspec.loads(GPT_COPY.replace("{id: h1, type: block, stage: 1}", "{id: h1, type: block, stage: 1, "
                                           f"init: {{copy: {source}}}}}"), source="grown.yaml")
    with pytest.raises(SpecError) as err:
        chainspec.diff(old, new, stage=(0, 1))
    assert re.match(r"grown.yaml:\d+:\d+: chains.gpt.nodes\[4\].init.copy \(h1\): ", str(err.value))
    assert message in str(err.value)
