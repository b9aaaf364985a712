"""Plan.apply on trained chains: each op kind, placement, and the all-or-nothing rollback."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import chainspec
import chainspec.revise.optim
from chainspec import Chain
from chainspec.revise import apply as _apply
from chainspec.revise import optim as _optim
from chainspec.revise.apply import apply_plans
from specs import MLP

BLOG = Path(__file__).resolve().parent.parent / "specs" / "blog.yaml"


def edit_remove(text: str) -> str:
    return text.replace("      - {id: drop, type: dropout, args: {p: 0.1}}\n", "")


def edit_insert(text: str) -> str:
    return text.replace("      - {id: act2, type: relu}\n", "      - {id: act2, type: relu}\n"
                        "      - {id: fc_new, type: linear, args: {in_features: 16, out_features: 16}}\n")


def edit_move(text: str) -> str:
    lines = text.splitlines(keepends=True)
    drop = next(line for line in lines if "id: drop" in line)
    lines.remove(drop)
    lines.insert(next(i for i, line in enumerate(lines) if "id: act2" in line) + 1, drop)
    return "".join(lines)


def edit_update(text: str) -> str:
    return text.replace("negative_slope: 0.2", "negative_slope: 0.1").replace(
        "{num_features: 16}", "{num_features: 16, momentum: 0.5}")


def edit_replace(text: str) -> str:
    return text.replace("in_features: 16, out_features: 16}}\n      - {id: bn",
                        "in_features: 16, out_features: 24}}\n      - {id: bn").replace(
        "num_features: 16", "num_features: 24").replace("in_features: 16, out_features: 4",
                                                        "in_features: 24, out_features: 4")


EDITS: dict[str, Callable[[str], str]] = {"remove": edit_remove, "insert": edit_insert, "move": edit_move,
                                          "update": edit_update, "replace": edit_replace}


def trained(text: str = MLP, *, optimizer: str = "adam", steps: int = 3,
            dtype: torch.dtype = torch.float64) -> tuple[chainspec.Spec, Chain, torch.optim.Optimizer]:
    torch.manual_seed(0)
    spec = chainspec.loads(text, source="net.yaml")
    net = spec.build(dtype=dtype)
    opt: torch.optim.Optimizer
    if optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9)
    for _ in range(steps):
        train_step(net, opt, dtype)
    return spec, net, opt


def train_step(net: Chain, opt: torch.optim.Optimizer, dtype: torch.dtype = torch.float64) -> None:
    x = torch.linspace(-1, 1, 32 * 8, dtype=dtype).reshape(32, 8)
    opt.zero_grad()
    net(x).square().mean().backward()
    opt.step()


def state_of(net: Chain) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def optimizer_state(opt: torch.optim.Optimizer) -> dict[int, dict[str, torch.Tensor]]:
    return {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}


# -- each op kind on a trained model --------------------------------------------------------------

MOMENT = {"sgd": "momentum_buffer", "adam": "exp_avg", "adamw": "exp_avg_sq"}


@pytest.mark.parametrize("optimizer", list(MOMENT))
@pytest.mark.parametrize("kind", list(EDITS))
def test_op_keeps_survivors_and_trains_new_parameters(kind: str, optimizer: str) -> None:
    spec, net, opt = trained(optimizer=optimizer)
    moment = MOMENT[optimizer]
    new = chainspec.loads(EDITS[kind](MLP), source="new.yaml")
    plan = chainspec.diff(spec, new)
    assert kind in {op.kind for op in plan.ops}
    changed = {op.node_id for op in plan.ops if op.kind in ("insert", "replace", "remove")}
    survivors = {node.id: dict(node.module.named_parameters()) for node in net if node.id not in changed}
    before = state_of(net)
    moments = optimizer_state(opt)

    plan.apply(net, opt)

    assert net.ids() == [n.id for n in new.resolved().at(0)]
    assert net.spec is new and net.stage == 0
    for node_id, params in survivors.items():
        now = dict(net[node_id].module.named_parameters())
        assert now.keys() == params.keys()
        for name, param in params.items():
            assert now[name] is param, f"{node_id}.{name} is a new Parameter object"
            assert torch.equal(param, before[f"{node_id}.{name}"]), f"{node_id}.{name} changed"
            assert torch.equal(opt.state[param][moment], moments[id(param)][moment])
    # Buffers of survivors are carried too (an update rebuilds the module around them).
    if kind == "update":
        assert torch.equal(net["bn"].module.running_mean, before["bn.running_mean"])
        assert net["bn"].module.momentum == 0.5 and net["act1"].module.negative_slope == 0.1
    in_optimizer = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in net.parameters()}
    assert set(map(id, opt.state)) <= in_optimizer
    fresh = [p for node in net if node.id in changed for p in node.module.parameters()]
    values = [p.detach().clone() for p in fresh]
    train_step(net, opt)
    for p, v in zip(fresh, values, strict=True):
        assert p.grad is not None and p in opt.state, "a new parameter is not trained"
        # SGD moves a parameter by its gradient, which is zero for fc2's bias right before batch norm.
        if optimizer != "sgd" or p.grad.abs().max() > 1e-12:
            assert not torch.equal(p, v), "a new parameter did not train"
    packed = opt.state_dict()
    assert len(packed["state"]) == len(list(net.parameters()))
    twin = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer]
    twin(net.parameters(), lr=0.1).load_state_dict(packed)


def test_update_keeps_the_very_same_parameters_and_buffers() -> None:
    spec, net, opt = trained()
    bn = net["bn"].module
    weight, running_mean = bn.weight, bn.running_mean
    chainspec.diff(spec, chainspec.loads(edit_update(MLP))).apply(net, opt)
    assert net["bn"].module is not bn  # rebuilt around the old state ...
    assert net["bn"].module.weight is weight and net["bn"].module.running_mean is running_mean


def test_growth_steps_on_a_conv_chain() -> None:
    spec = chainspec.load(BLOG)
    torch.manual_seed(0)
    net = spec.build(stage=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(4, 3, 32, 32)
    for stage in (1, 2):
        opt.zero_grad()
        net(x).mean().backward()
        opt.step()
        chainspec.diff(spec, spec, stage=(stage - 1, stage)).apply(net, opt)
        assert net.stage == stage
    assert net.ids() == ["b1", "b2", "b3"]
    assert net(x).shape == (4, 128, 32, 32)
    assert len(opt.param_groups[0]["params"]) == len(list(net.parameters()))


# -- placement ---------------------------------------------------------------------------------------

def test_new_modules_follow_device_dtype_and_mode() -> None:
    spec, net, opt = trained(dtype=torch.float64)
    net.eval()
    net["act1"].module.train()  # a node the user put in another mode keeps it through an update
    chainspec.diff(spec, chainspec.loads(edit_update(edit_insert(MLP)))).apply(net, opt)
    fc_new = net["fc_new"].module
    assert fc_new.weight.dtype == torch.float64 and fc_new.weight.device.type == "cpu"
    assert not fc_new.training
    assert net["act1"].module.training and not net["bn"].module.training


def test_chain_without_parameters_uses_defaults() -> None:
    old = chainspec.loads("chainspec: 1\nchains: {c: {input_shape: [4], nodes: [{id: a, type: relu}]}}")
    new = chainspec.loads("chainspec: 1\nchains: {c: {input_shape: [4], nodes: [{id: a, type: relu}, "
                          "{id: fc, type: linear, args: {in_features: 4, out_features: 2}}]}}")
    net = old.build()
    chainspec.diff(old, new).apply(net)
    assert net["fc"].module.weight.dtype == torch.get_default_dtype()


# -- guards ------------------------------------------------------------------------------------------

def test_plan_must_start_from_the_chains_revision() -> None:
    spec, net, opt = trained()
    plan = chainspec.diff(spec, chainspec.loads(edit_remove(MLP)))
    plan.apply(net, opt)
    with pytest.raises(chainspec.PlanError, match=r"node 2 is 'fc2', the plan expects 'drop'"):
        plan.apply(net, opt)


def test_a_plan_applied_twice_is_refused_even_when_the_ids_match() -> None:
    # A replace keeps the ids: only the revision the chain records tells that it already ran.
    spec, net, opt = trained()
    plan = chainspec.diff(spec, chainspec.loads(edit_replace(MLP), source="wide.yaml"))
    plan.apply(net, opt)
    with Unchanged(net, opt), pytest.raises(chainspec.PlanError,
                                            match=r"node 'fc2' is as in wide\.yaml .*not as in net\.yaml"):
        plan.apply(net, opt)


def test_a_fresh_chain_records_its_spec_so_a_plan_from_another_revision_is_refused() -> None:
    spec, net, opt = trained()
    assert net.spec is spec and net.stage == 0
    wide = chainspec.loads(edit_replace(MLP), source="wide.yaml")
    # A plan whose old revision is not the one the chain was built from: the ids match, the nodes do not.
    plan = chainspec.diff(wide, chainspec.loads(edit_remove(edit_replace(MLP)), source="wider.yaml"))
    with Unchanged(net, opt), pytest.raises(chainspec.PlanError, match=r"node 'fc2' is as in net\.yaml"):
        plan.apply(net, opt)


def test_a_plan_from_an_equal_revision_loaded_again_applies() -> None:
    spec, net, opt = trained()
    chainspec.diff(spec, chainspec.loads(edit_update(MLP), source="rev1.yaml")).apply(net, opt)
    again = chainspec.loads("# the same revision, read again\n" + edit_update(MLP), source="rev1.yaml")
    chainspec.diff(again, chainspec.loads(edit_remove(edit_update(MLP)))).apply(net, opt)
    assert "drop" not in net.ids()


def test_an_update_draws_no_random_numbers() -> None:
    # The rebuilt conv's own initialisation is thrown away: it must not shift the RNG stream
    # that dropout and later inits draw from.
    conv = ("chainspec: 1\nchains: {c: {input_shape: [3, 8, 8], nodes: [{id: conv, type: conv2d, "
            "args: {in_channels: 3, out_channels: 4, kernel_size: 3, padding: 1}}]}}")
    spec = chainspec.loads(conv)
    net = spec.build()
    weight = net["conv"].module.weight
    plan = chainspec.diff(spec, chainspec.loads(conv.replace("padding: 1", "padding: 1, padding_mode: reflect")))
    assert [op.kind for op in plan.ops] == ["update"]
    before = torch.get_rng_state()
    plan.apply(net)
    assert torch.equal(torch.get_rng_state(), before)
    assert net["conv"].module.padding_mode == "reflect" and net["conv"].module.weight is weight


def test_bad_policy() -> None:
    spec, net, _ = trained()
    with pytest.raises(chainspec.PlanError, match="policy must be 'keep' or 'reset'"):
        chainspec.diff(spec, spec).apply(net, policy="forget")


def test_shape_mismatch_is_refused_before_splicing() -> None:
    spec, net, opt = trained()
    broken = chainspec.loads(MLP.replace("in_features: 16, out_features: 4", "in_features: 12, out_features: 4"),
                             source="broken.yaml")
    with pytest.raises(chainspec.SpecError, match=r"broken\.yaml:\d+:\d+: .*expects 12"):
        chainspec.diff(spec, broken)  # the plan is a promise: diff refuses what apply would
    # apply checks again on its own (a plan is data; this one skipped diff's rehearsal)
    from chainspec.revise.diff import _plan

    plan = _plan(spec, broken, chain=None, stage="final")
    with Unchanged(net, opt), pytest.raises(chainspec.SpecError, match=r"broken\.yaml:\d+:\d+: .*expects 12"):
        plan.apply(net, opt)


def test_removed_parameters_are_freed() -> None:
    spec, net, opt = trained()
    ref = weakref.ref(net["fc3"].module.weight)
    new = MLP.replace("in_features: 16, out_features: 4", "in_features: 16, out_features: 5")
    chainspec.diff(spec, chainspec.loads(new)).apply(net, opt)
    train_step(net, opt)
    gc.collect()
    assert ref() is None, "the optimizer (or the chain) still holds a removed parameter"


# -- all or nothing ----------------------------------------------------------------------------------

class Unchanged:
    """Asserts that a chain and its optimizer come out of the block exactly as they went in."""

    def __init__(self, net: Chain, opt: torch.optim.Optimizer | None = None) -> None:
        self.net, self.opt = net, opt

    def __enter__(self) -> Unchanged:
        net, opt = self.net, self.opt
        self.nodes = [(n, n.module, n.type, n.prev, n.next) for n in net]
        self.modules = list(net._modules.items())
        self.state = state_of(net)
        self.params = [(name, p) for name, p in net.named_parameters()]
        self.attrs = {k: net.__dict__.get(k) for k in ("stage", "spec")}
        self.rng = torch.get_rng_state()
        if opt is not None:
            self.groups = [(g, dict(g), list(g["params"])) for g in opt.param_groups]
            self.opt_state = optimizer_state(opt)
            self.opt_keys = list(opt.state)
            self.packed = opt.state_dict()
        return self

    def __exit__(self, *exc: Any) -> None:
        net, opt = self.net, self.opt
        assert [(n, n.module, n.type, n.prev, n.next) for n in net] == self.nodes
        assert list(net._modules.items()) == self.modules
        assert [(name, p) for name, p in net.named_parameters()] == self.params
        after = net.state_dict()
        assert after.keys() == self.state.keys()
        for key, value in self.state.items():
            assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
        assert {k: net.__dict__.get(k) for k in ("stage", "spec")} == self.attrs
        assert torch.equal(torch.get_rng_state(), self.rng)
        if opt is not None:
            assert len(opt.param_groups) == len(self.groups)
            for group, (saved, contents, params) in zip(opt.param_groups, self.groups, strict=True):
                assert group is saved and group["params"] == params
                assert group.keys() == contents.keys()
            assert list(opt.state) == self.opt_keys
            for p, s in opt.state.items():
                for k, v in s.items():
                    assert torch.equal(v, self.opt_state[id(p)][k])
            packed = opt.state_dict()
            assert packed["param_groups"] == self.packed["param_groups"]
            assert packed["state"].keys() == self.packed["state"].keys()


EVERYTHING = """\
chainspec: 1
chains:
  net:
    input_shape: [8]
    nodes:
      - {id: fc1, type: linear, args: {in_features: 8, out_features: 16}}
      - {id: fc2, type: linear, args: {in_features: 16, out_features: 16}}
      - {id: bn, type: batchnorm1d, args: {num_features: 16, momentum: 0.5}}
      - {id: act2, type: relu}
      - {id: drop, type: dropout, args: {p: 0.2}}
      - {id: fc_new, type: linear, args: {in_features: 16, out_features: 16}, optim: {lr: 0.001}}
      - {id: fc3, type: linear, args: {in_features: 16, out_features: 6}}
"""


def test_everything_at_once_applies() -> None:
    spec, net, opt = trained()
    plan = chainspec.diff(spec, chainspec.loads(EVERYTHING))
    assert sorted(op.kind for op in plan.ops) == ["insert", "move", "remove", "replace", "update", "update"]
    plan.apply(net, opt)
    train_step(net, opt)


def test_failure_while_building_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    spec, net, opt = trained()
    plan = chainspec.diff(spec, chainspec.loads(EVERYTHING))
    real = _apply.instantiate
    calls = []

    def flaky(*args: Any, **kwargs: Any) -> nn.Module:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(_apply, "instantiate", flaky)
    with Unchanged(net, opt), pytest.raises(chainspec.SpecError, match="out of memory"):
        plan.apply(net, opt)


@pytest.mark.parametrize("error", [RuntimeError("injected"), KeyboardInterrupt()])
def test_failure_while_splicing_rolls_back(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    spec, net, opt = trained()
    plan = chainspec.diff(spec, chainspec.loads(EVERYTHING))

    def broken_insert(self: Chain, *args: Any, **kwargs: Any) -> None:
        raise error  # after the removes and the moves before it

    monkeypatch.setattr(Chain, "insert_after", broken_insert)
    with Unchanged(net, opt), pytest.raises(type(error)):
        plan.apply(net, opt)
    monkeypatch.undo()
    plan.apply(net, opt)  # and the same plan still applies afterwards
    train_step(net, opt)


def test_failure_in_optimizer_surgery_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    spec, net, opt = trained()
    plan = chainspec.diff(spec, chainspec.loads(EVERYTHING))
    real = chainspec.revise.optim.add_params

    def half_then_fail(optimizer: Any, named: Any, group: Any) -> None:
        real(optimizer, named, group)
        raise RuntimeError("injected after adding")

    monkeypatch.setattr(_optim, "add_params", half_then_fail)
    with Unchanged(net, opt), pytest.raises(RuntimeError, match="injected after adding"):
        plan.apply(net, opt, policy="reset")


def test_interrupt_at_the_last_moment_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    spec, net, opt = trained()
    plan = chainspec.diff(spec, chainspec.loads(EVERYTHING))

    def interrupted(self: Any) -> None:
        self.chain.stage = 99
        raise KeyboardInterrupt

    monkeypatch.setattr(_apply._Job, "record", interrupted)
    with Unchanged(net, opt), pytest.raises(KeyboardInterrupt):
        plan.apply(net, opt)


def test_two_chains_roll_back_together() -> None:
    spec_g, g, opt_g = trained()
    spec_d, d, opt_d = trained()
    good = chainspec.diff(spec_g, chainspec.loads(EVERYTHING))
    from chainspec.revise.diff import _plan  # a plan diff would refuse: apply must refuse it on its own

    broken = _plan(spec_d, chainspec.loads(MLP.replace("in_features: 16, out_features: 4",
                                                       "in_features: 3, out_features: 4")), chain=None, stage="final")
    with Unchanged(g, opt_g), Unchanged(d, opt_d), pytest.raises(chainspec.SpecError):
        apply_plans([(good, g, opt_g), (broken, d, opt_d)])
    with pytest.raises(chainspec.PlanError, match="twice"):
        apply_plans([(good, g, opt_g), (good, g, opt_g)])
