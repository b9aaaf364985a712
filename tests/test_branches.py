"""Branches in the format: residual blocks, skip connections by id, token input, attention and tied weights.

Each construct builds, runs forward and backward, and matches a hand-written ``nn.Module`` with the
same weights (``tests/reference_models.py``): ResNet-20 and nanoGPT's GPT. Skip connections keep an
output only until its last consumer. Every way to get a branch wrong is a located ``SpecError``.
Revisions insert and remove residual blocks in trained models with weights, Parameter objects and
optimizer state kept, atomically, and a checkpoint resumes bit-exactly.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import chainspec
from chainspec import SpecError
from reference_models import GPT, ResNet20, gpt_key, load_into, resnet_key

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"


def grads(module: nn.Module, key_of: Any = None) -> dict[str, torch.Tensor]:
    return {(key_of(k) if key_of else k): p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


# -- reference models, exact to the parameter and the output ------------------------------------------------------

def test_resnet20_matches_a_hand_written_resnet20() -> None:
    torch.manual_seed(0)
    spec = chainspec.load(SPECS / "resnet20.yaml")
    net, ref = spec.build(stage="final"), ResNet20()
    count = sum(p.numel() for p in net.parameters())
    assert count == sum(p.numel() for p in ref.parameters()) == spec.summary(stage="final").params == 269_722
    load_into(ref, net.state_dict(), resnet_key)
    x = torch.randn(4, 3, 32, 32)
    for train in (True, False):
        net.train(train)
        ref.train(train)
        out, expected = net(x), ref(x)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    expected.sum().backward()
    ours = grads(net, resnet_key)
    assert ours.keys() == grads(ref).keys()
    for key, grad in grads(ref).items():
        torch.testing.assert_close(ours[key], grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,sizes", [("gpt.yaml", dict(n_layer=6, n_head=6, n_embd=384, block_size=256)),
                                        ("gpt_tiny.yaml", dict(n_layer=4, n_head=4, n_embd=128, block_size=64,
                                                               dropout=0.1))])
def test_gpt_matches_nanogpt(name: str, sizes: dict[str, int]) -> None:
    torch.manual_seed(0)
    spec = chainspec.load(SPECS / name)
    net, ref = spec.build(stage="final"), GPT(vocab_size=65, bias=False, **sizes)
    count = sum(p.numel() for p in net.parameters())
    assert count == sum(p.numel() for p in ref.parameters()) == spec.summary(stage="final").params
    if name == "gpt.yaml":
        assert count == 10_745_088  # nanoGPT prints 10.65M: this less the 98,304 position-embedding weights
    load_into(ref, net.state_dict(), gpt_key)
    idx = torch.randint(0, 65, (2, 32))
    net.eval()
    ref.eval()
    out, expected = net(idx), ref(idx)
    assert out.shape == (2, 32, 65)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.square().mean().backward()
    expected.square().mean().backward()
    ours = grads(net, gpt_key)
    theirs = grads(ref)
    assert set(ours) | {"transformer.wte.weight"} == set(theirs) | {"transformer.wte.weight"}
    for key, grad in theirs.items():
        mine = ours.get(key, ours.get("transformer.wte.weight" if key == "lm_head.weight" else key))
        torch.testing.assert_close(mine, grad, rtol=1e-4, atol=1e-6)


def test_a_tied_parameter_is_one_parameter_everywhere(tmp_path: Path) -> None:
    spec = chainspec.load(SPECS / "gpt_tiny.yaml")
    net = spec.build(stage="final")
    assert net.lm_head.weight is net.wte.weight
    params = list(net.parameters())
    assert sum(1 for p in params if p is net.wte.weight) == 1
    assert {"wte.weight", "lm_head.weight"} <= set(net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    assert len(opt.param_groups[0]["params"]) == len(params)
    net(torch.randint(0, 65, (2, 8))).sum().backward()
    opt.step()
    path = tmp_path / "gpt.pt"
    chainspec.save_checkpoint(path, spec=spec, chains={"gpt": net}, stage=1, optimizers={"opt": opt})
    loaded = chainspec.load_checkpoint(path)
    again = loaded.chains["gpt"]
    assert again.lm_head.weight is again.wte.weight
    assert torch.equal(again.wte.weight, net.wte.weight)
    assert len(loaded.optimizers["opt"].state) == len(opt.state)


# -- skip connections by id ------------------------------------------------------------------------------------------

UNET = """\
chainspec: 1
chains:
  net:
    input_shape: [3, 8, 8]
    nodes:
      - {id: enc1, type: conv2d, args: {in_channels: 3, out_channels: 4, kernel_size: 3, padding: 1}}
      - {id: down, type: maxpool2d, args: {kernel_size: 2}}
      - {id: enc2, type: conv2d, args: {in_channels: 4, out_channels: 4, kernel_size: 3, padding: 1}}
      - {id: up, type: upsample, args: {scale_factor: 2}}
      - {id: dec, type: conv2d, args: {in_channels: 8, out_channels: 4, kernel_size: 3, padding: 1},
         from: [enc1, prev], merge: concat}
      - {id: res, type: identity, from: [dec, enc1], merge: add}
      - {id: out, type: conv2d, args: {in_channels: 7, out_channels: 2, kernel_size: 1},
         from: [prev, input], merge: concat}
"""


def test_skip_connections_match_a_hand_written_forward() -> None:
    torch.manual_seed(0)
    spec = chainspec.loads(UNET, source="unet.yaml")
    net = spec.build()
    x = torch.randn(2, 3, 8, 8)
    e1 = net.enc1(x)
    e2 = net.enc2(net.down(e1))
    d = net.dec(torch.cat([e1, net.up(e2)], dim=1))
    expected = net.out(torch.cat([d + e1, x], dim=1))
    out = net(x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert spec.summary().nodes[-1].output_shape == (2, 8, 8)
    _, features = net.capture(x, ["dec", "res"])
    torch.testing.assert_close(features["dec"], d)


def test_an_output_is_dropped_after_its_last_consumer() -> None:
    spec = chainspec.loads(UNET, source="unet.yaml")
    net = spec.build()
    refs: dict[str, Any] = {}
    alive_at: dict[str, bool] = {}
    net.enc1.register_forward_hook(lambda m, i, o: refs.__setitem__("enc1", weakref.ref(o)))
    net.dec.register_forward_hook(lambda m, i, o: refs.__setitem__("dec", weakref.ref(o)))

    def check(name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            gc.collect()
            alive_at[name] = {k: r() is not None for k, r in refs.items()}  # type: ignore[assignment]
        return hook

    net.out.register_forward_pre_hook(check("out"))
    with torch.no_grad():
        net(torch.randn(1, 3, 8, 8))
    # enc1's last consumer is res: before out runs, nothing holds it; dec's output is res's input only.
    assert alive_at["out"] == {"enc1": False, "dec": False}


def test_a_removed_source_is_refused_at_the_referencing_node() -> None:
    text = UNET.replace("      - {id: enc1, type: conv2d", "      - {id: enc1, until: 1, type: conv2d")
    with pytest.raises(SpecError) as err:
        chainspec.loads(text.replace("chainspec: 1", "chainspec: 1\nstages: 2"), source="unet.yaml")
    message = str(err.value)
    assert "unet.yaml:12:" in message and "nodes[4].from[0] (dec)" in message
    assert "takes the output of 'enc1', which is not in the chain at stage 1" in message


@pytest.mark.parametrize("old,new,message", [
    ("from: [enc1, prev], merge: concat", "from: [ecn1, prev], merge: concat",
     "nodes[4].from[0] (dec): no node 'ecn1' in chain 'net', or 'prev' or 'input'; did you mean 'enc1'?"),
    ("from: [enc1, prev], merge: concat", "from: [out, prev], merge: concat",
     "nodes[4].from[0] (dec): 'out' comes after this node in the chain (a forward reference)"),
    ("from: [enc1, prev], merge: concat", "from: [dec, prev], merge: concat",
     "nodes[4].from[0] (dec): a node cannot take its own output"),
    ("from: [enc1, prev], merge: concat", "from: [enc1, prev]",
     "nodes[4].from (dec): takes 2 inputs but does not say how to merge them; add 'merge: add' or 'merge: concat'"),
    ("from: [dec, enc1], merge: add", "from: [enc1, enc1], merge: add",
     "nodes[5].from[1] (res): 'enc1' is named twice"),
    ("from: [prev, input], merge: concat", "from: [prev], merge: concat",
     "nodes[6].merge (out): merge combines several inputs, but 'from' names 1 source"),
    ("{id: res, type: identity,", "{id: prev, type: identity,", "nodes[5].id: 'prev' is the word 'from' uses"),
], ids=["unknown", "forward", "itself", "no-merge", "twice", "merge-one", "reserved"])
def test_bad_references_are_located_errors(old: str, new: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        chainspec.loads(UNET.replace(old, new), source="unet.yaml")
    assert str(err.value).startswith("unet.yaml:1") and message in str(err.value)


@pytest.mark.parametrize("change,expected", [
    ("{id: dec, type: conv2d, args: {in_channels: 8,", "{id: dec, type: conv2d, args: {in_channels: 8,"),
])
def test_merges_of_mismatched_shapes_are_located_errors(change: str, expected: str) -> None:
    concat = UNET.replace("{id: up, type: upsample, args: {scale_factor: 2}}", "{id: up, type: identity}")
    with pytest.raises(SpecError, match=r"unet.yaml:11:\d+: chains.net.nodes\[4\].from \(dec\): cannot concatenate "
                                        r"enc1 \(shape \[4, 8, 8\]\) and up \(prev\) \(shape \[4, 4, 4\]\)"):
        chainspec.loads(concat, source="unet.yaml").check()
    add = UNET.replace("from: [dec, enc1], merge: add", "from: [dec, enc2], merge: add")
    with pytest.raises(SpecError, match=r"nodes\[5\].from \(res\): cannot add dec \(shape \[4, 8, 8\]\) and "
                                        r"enc2 \(shape \[4, 4, 4\]\): add needs equal shapes"):
        chainspec.loads(add, source="unet.yaml").check()


# -- token input, residual and tie errors ---------------------------------------------------------------------------

TOKENS = """\
chainspec: 1
chains:
  lm:
    input_shape: [16]
    input_dtype: int64
    nodes:
      - {id: tok, type: token_embedding, args: {num_embeddings: 50, embedding_dim: 8}}
      - {id: blk, type: res}
      - {id: logits, type: linear, args: {in_features: 8, out_features: 50, bias: false}, tie: {weight: tok.weight}}
types:
  res:
    residual: true
    nodes:
      - {id: norm, type: rmsnorm, args: {dim: 8}}
      - {id: attn, type: causal_self_attention, args: {dim: 8, heads: 2}}
"""


def test_token_input_attention_rmsnorm_and_a_tie_build_and_train() -> None:
    spec = chainspec.loads(TOKENS, source="lm.yaml")
    net = spec.build()
    assert spec.summary().nodes[-1].output_shape == (16, 50)
    assert spec.summary().params == 50 * 8 + 8 + 3 * 8 * 8 + 3 * 8 + 8 * 8 + 8  # logits.weight is tok.weight
    loss = net(torch.randint(0, 50, (3, 16))).logsumexp(-1).mean()
    loss.backward()
    assert net.logits.weight is net.tok.weight and net.tok.weight.grad is not None


@pytest.mark.parametrize("change,message", [
    ("{id: tok, type: token_embedding, args: {num_embeddings: 50, embedding_dim: 8}}",
     "{id: tok, type: linear, args: {in_features: 16, out_features: 8}}"),
    ("tie: {weight: tok.weight}", "tie: {weight: blk.body.attn.c_proj.weight}"),
    ("tie: {weight: tok.weight}", "tie: {weight: tok.wieght}"),
    ("tie: {weight: tok.weight}", "tie: {weight: tk.weight}"),
], ids=["integer-input-to-linear", "tie-shapes", "tie-no-parameter", "tie-unknown-node"])
def test_token_and_tie_mistakes_are_located_errors(change: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        chainspec.loads(TOKENS.replace(change, message), source="lm.yaml").check()
    text = str(err.value)
    assert text.startswith("lm.yaml:")
    expected = {"type: linear": "expects floating-point input, but the chain input has int64 values (shape [16])",
                "blk.body": "cannot tie 'weight' (shape [50, 8], float32) to 'blk.body.attn.c_proj.weight' (shape "
                            "[8, 8], float32)",
                "tok.wieght": "node 'tok' has no parameter 'wieght' (it has: weight)",
                "tk.weight": "no node 'tk' in chain 'lm'"}
    assert next(v for k, v in expected.items() if k in message) in text


def test_a_residual_body_and_shortcut_of_different_shapes_are_refused() -> None:
    text = TOKENS.replace("{id: attn, type: causal_self_attention, args: {dim: 8, heads: 2}}",
                          "{id: attn, type: linear, args: {in_features: 8, out_features: 4}}")
    with pytest.raises(SpecError, match=r"lm.yaml:8:\d+: chains.lm.nodes\[1\] \(blk\): .*the residual body makes "
                                        r"shape \[16, 4\] but the shortcut \[16, 8\]"):
        chainspec.loads(text, source="lm.yaml").check()


def test_shortcut_without_residual_is_refused() -> None:
    text = TOKENS.replace("    residual: true\n", "").replace(
        "      - {id: norm", "      - {id: norm")
    text += "    shortcut: [{id: s, type: identity}]\n"
    with pytest.raises(SpecError, match="'shortcut' is only for residual types"):
        chainspec.loads(text, source="lm.yaml")


# -- live revisions on branched models ------------------------------------------------------------------------------

def trained(spec: chainspec.Spec, stage: int, x: torch.Tensor, loss: Any) -> tuple[Any, torch.optim.Optimizer]:
    torch.manual_seed(1)
    net = spec.build(stage=stage)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        loss(net(x)).backward()
        opt.step()
    return net, opt


@pytest.mark.parametrize("name", ["resnet20.yaml", "gpt_tiny.yaml"])
def test_inserting_and_removing_residual_blocks_keeps_weights_and_optimizer_state(name: str) -> None:
    spec = chainspec.load(SPECS / name)
    x = torch.randn(4, 3, 32, 32) if name == "resnet20.yaml" else torch.randint(0, 65, (2, 16))
    net, opt = trained(spec, 0, x, lambda y: y.square().mean())
    params = dict(net.named_parameters())
    state = {k: {s: v.clone() for s, v in opt.state[p].items()} for k, p in params.items()}
    grow = chainspec.diff(spec, spec, stage=(0, 1))
    assert any(op.kind == "insert" for op in grow.ops)
    grow.apply(net, opt)
    for key, p in params.items():  # the same Parameter objects, values and moments
        assert dict(net.named_parameters())[key] is p
        for s, v in state[key].items():
            assert torch.equal(opt.state[p][s], v)
    if name == "gpt_tiny.yaml":
        assert net.lm_head.weight is net.wte.weight
    net(x).square().mean().backward()
    opt.step()
    shrink = chainspec.diff(spec, spec, stage=(1, 0))
    shrink.apply(net, opt)
    assert set(dict(net.named_parameters())) == set(params)
    assert {id(p) for group in opt.param_groups for p in group["params"]} == {id(p) for p in net.parameters()}


def test_a_fault_while_inserting_a_block_leaves_the_resnet_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = chainspec.load(SPECS / "resnet20.yaml")
    x = torch.randn(4, 3, 32, 32)
    net, opt = trained(spec, 0, x, lambda y: y.square().mean())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    moments = {id(p): {s: v.clone() for s, v in st.items()} for p, st in opt.state.items()}
    ids = net.ids()
    from chainspec.revise import apply as _apply

    def broken(self: Any) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(_apply._Job, "update_optimizer", broken)
    with pytest.raises(RuntimeError, match="injected"):
        chainspec.diff(spec, spec, stage=(0, 1)).apply(net, opt)
    assert net.ids() == ids
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert {id(p): {s: v for s, v in st.items()} for p, st in opt.state.items()}.keys() == moments.keys()
    for p, st in opt.state.items():
        assert all(torch.equal(v, moments[id(p)][s]) for s, v in st.items())


def test_a_grown_gpt_resumes_bit_exactly_from_a_checkpoint(tmp_path: Path) -> None:
    spec = chainspec.load(SPECS / "gpt_tiny.yaml")
    idx = torch.randint(0, 65, (2, 16))
    net, opt = trained(spec, 0, idx, lambda y: y.square().mean())
    chainspec.diff(spec, spec, stage=(0, 1)).apply(net, opt)
    path = tmp_path / "gpt.pt"
    chainspec.save_checkpoint(path, spec=spec, chains={"gpt": net}, stage=1, optimizers={"opt": opt})
    loaded = chainspec.load_checkpoint(path)
    again, opt2 = loaded.chains["gpt"], loaded.optimizers["opt"]
    assert again.lm_head.weight is again.wte.weight
    net.eval()
    again.eval()
    for model, optimizer in ((net, opt), (again, opt2)):
        optimizer.zero_grad()
        model(idx).square().mean().backward()
        optimizer.step()
    for (k, a), (k2, b) in zip(net.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k


def test_revisions_rewire_skip_connections_and_tie_new_nodes() -> None:
    torch.manual_seed(0)
    old = chainspec.loads(UNET, source="unet.yaml")
    net = old.build()
    opt = torch.optim.Adam(net.parameters())
    x = torch.randn(2, 3, 8, 8)
    net(x).sum().backward()
    opt.step()
    # A new node takes enc2's output by id, and res adds it as a third source.
    text = UNET.replace("from: [dec, enc1], merge: add", "from: [dec, enc1, skip], merge: add").replace(
        "      - {id: res,", "      - {id: skip, type: upsample, args: {scale_factor: 2}, from: [enc2]}\n"
                            "      - {id: res,")
    new = chainspec.loads(text, source="unet2.yaml")
    plan = chainspec.diff(old, new)
    assert {op.node_id: op.kind for op in plan.ops} == {"skip": "insert", "res": "update"}
    assert "from" in str(plan)
    plan.apply(net, opt)
    e1 = net.enc1(x)
    e2 = net.enc2(net.down(e1))
    d = net.dec(torch.cat([e1, net.up(e2)], dim=1))
    expected = net.out(torch.cat([d + e1 + net.skip(e2), x], dim=1))
    torch.testing.assert_close(net(x), expected)
    fresh = new.build()
    fresh.load_state_dict(net.state_dict())
    torch.testing.assert_close(fresh(x), net(x))


def test_an_inserted_node_ties_to_a_trained_parameter_without_a_second_optimizer_entry() -> None:
    spec = chainspec.loads(TOKENS, source="lm.yaml")
    net = spec.build()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randint(0, 50, (2, 16))).sum().backward()
    opt.step()
    moments = {s: v.clone() for s, v in opt.state[net.tok.weight].items()}
    text = TOKENS.replace(
        "      - {id: blk, type: res}\n",
        "      - {id: blk, type: res}\n      - {id: back, type: linear, args: {in_features: 8, out_features: 50, "
        "bias: false}, tie: {weight: tok.weight}}\n      - {id: again, type: linear, args: {in_features: 50, "
        "out_features: 8}}\n")
    new = chainspec.loads(text, source="lm2.yaml")
    plan = chainspec.diff(spec, new)
    assert plan.param_delta == 8 * 50 + 8  # 'back' borrows its weight: only 'again' adds parameters
    assert [op.param_delta for op in plan.ops] == [0, 8 * 50 + 8]
    plan.apply(net, opt)
    assert net.back.weight is net.tok.weight is net.logits.weight
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in spec.build().parameters()) + 408
    listed = [p for group in opt.param_groups for p in group["params"]]
    assert len(listed) == len({id(p) for p in listed}) == len(list(net.parameters()))
    assert all(torch.equal(opt.state[net.tok.weight][s], v) for s, v in moments.items())
    # and back: removing the borrower keeps the owner's parameter and its state
    chainspec.diff(new, spec).apply(net, opt)
    assert net.logits.weight is net.tok.weight and "back" not in net
    assert all(torch.equal(opt.state[net.tok.weight][s], v) for s, v in moments.items())


def test_removing_the_owner_of_a_tied_parameter_is_refused_at_the_tie() -> None:
    text = TOKENS.replace("chainspec: 1", "chainspec: 1\nstages: 2").replace(
        "{id: tok, type: token_embedding,", "{id: tok, until: 1, type: token_embedding,")
    with pytest.raises(SpecError, match=r"nodes\[2\]\.tie\.weight \(logits\): ties a parameter to 'tok', which is "
                                        r"not in the chain at stage 1"):
        chainspec.loads(text, source="lm.yaml")


def test_re_tying_a_kept_node_is_explicit_and_rolled_back_on_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    # A second embedding of the same shape: the head moves its tie from tok to tok2 in a revision.
    text = TOKENS.replace("      - {id: blk, type: res}\n",
                          "      - {id: blk, type: res}\n      - {id: tok2, type: token_embedding, "
                          "args: {num_embeddings: 50, embedding_dim: 8}, from: [input]}\n"
                          "      - {id: mix, type: identity, from: [blk, tok2], merge: add}\n")
    old = chainspec.loads(text, source="lm.yaml")
    new = chainspec.loads(text.replace("tie: {weight: tok.weight}", "tie: {weight: tok2.weight}"), source="lm2.yaml")
    net = old.build()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randint(0, 50, (2, 16))).sum().backward()
    opt.step()
    plan = chainspec.diff(old, new)
    assert [(op.node_id, op.kind) for op in plan.ops] == [("logits", "update")] and "tie.weight" in str(plan)
    from chainspec.revise import apply as _apply

    def broken(self: Any) -> None:
        raise RuntimeError("injected")

    with monkeypatch.context() as patch:
        patch.setattr(_apply._Job, "record", broken)
        with pytest.raises(RuntimeError, match="injected"):
            plan.apply(net, opt)
    assert net.logits.weight is net.tok.weight  # rolled back: still tied to tok
    plan.apply(net, opt)
    assert net.logits.weight is net.tok2.weight and net.logits.weight is not net.tok.weight
    listed = [p for group in opt.param_groups for p in group["params"]]
    assert len(listed) == len({id(p) for p in listed}) == len(list(net.parameters()))
    fresh = new.build()
    fresh.load_state_dict(net.state_dict())
    x = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(fresh(x), net(x))


def test_a_routed_chain_survives_pickling_and_deepcopy() -> None:
    import copy
    import pickle

    net = chainspec.loads(UNET, source="unet.yaml").build()
    x = torch.randn(2, 3, 8, 8)
    for other in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert other.routes == net.routes and "_schedule" not in other.__getstate__()
        torch.testing.assert_close(other(x), net(x))
