"""Optimizer surgery during apply: SGD with momentum, Adam and AdamW; groups, overrides, policies."""

from __future__ import annotations

import copy

import pytest
import torch

import chainspec
import chainspec.revise.optim
from chainspec import Chain

MLP = """\
chainspec: 1
chains:
  net:
    input_shape: [8]
    nodes:
      - {id: fc1, type: linear, args: {in_features: 8, out_features: 16}}
      - {id: act1, type: relu}
      - {id: fc2, type: linear, args: {in_features: 16, out_features: 16}}
      - {id: act2, type: relu}
      - {id: fc3, type: linear, args: {in_features: 16, out_features: 4}}
"""

REVISED = """\
chainspec: 1
chains:
  net:
    input_shape: [8]
    nodes:
      - {id: fc1, type: linear, args: {in_features: 8, out_features: 16}}
      - {id: act1, type: relu}
      - {id: fc_in, type: linear, args: {in_features: 16, out_features: 16}}
      - {id: act2, type: relu}
      - {id: fc3, type: linear, args: {in_features: 16, out_features: 6}}
"""

OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=0.01),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
}
MOMENT = {"sgd": "momentum_buffer", "adam": "exp_avg", "adamw": "exp_avg_sq"}


def data() -> torch.Tensor:
    return torch.linspace(-1, 1, 16 * 8).reshape(16, 8)


def step(net: Chain, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    net(data()).square().mean().backward()
    opt.step()


def trained(kind: str, text: str = MLP, groups: bool = False) -> tuple[chainspec.Spec, Chain, torch.optim.Optimizer]:
    torch.manual_seed(0)
    spec = chainspec.loads(text, source="net.yaml")
    net = spec.build()
    params: object = net.parameters()
    if groups:  # fc1 alone in group 0 (lr 0.1), everything else in group 1
        params = [{"params": list(net["fc1"].module.parameters()), "lr": 0.1},
                  {"params": [p for n in net if n.id != "fc1" for p in n.module.parameters()]}]
    opt = OPTIMIZERS[kind](params)
    for _ in range(2):
        step(net, opt)
    return spec, net, opt


def group_index(opt: torch.optim.Optimizer, param: torch.Tensor) -> int:
    return chainspec.revise.optim.group_of_params(opt)[id(param)]


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_surgery_leaves_a_consistent_optimizer(kind: str) -> None:
    spec, net, opt = trained(kind)
    survivor = net["fc1"].module.weight
    moment = opt.state[survivor][MOMENT[kind]].clone()
    removed = [*net["fc2"].module.parameters(), *net["fc3"].module.parameters()]
    chainspec.diff(spec, chainspec.loads(REVISED)).apply(net, opt)

    params = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in params} == {id(p) for p in net.parameters()}
    assert len(params) == len({id(p) for p in params})
    assert all(id(p) not in {id(q) for q in removed} for p in opt.state)  # no leaked state
    assert torch.equal(opt.state[survivor][MOMENT[kind]], moment)

    step(net, opt)
    packed = opt.state_dict()
    assert len(packed["state"]) == len(params)
    # The state dict loads back into an optimizer of the same structure, and training continues alike.
    twin_net = copy.deepcopy(net)
    twin = OPTIMIZERS[kind](twin_net.parameters())
    twin.load_state_dict(copy.deepcopy(packed))  # state_dict() shares tensors with opt
    step(net, opt)
    step(twin_net, twin)
    for a, b in zip(net.parameters(), twin_net.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_reset_policy_clears_survivors_state(kind: str) -> None:
    spec, net, opt = trained(kind)
    chainspec.diff(spec, chainspec.loads(REVISED)).apply(net, opt, policy="reset")
    assert len(opt.state) == 0
    step(net, opt)
    assert len(opt.state) == len(list(net.parameters()))
    if kind == "adam":
        assert all(float(s["step"]) == 1 for s in opt.state.values())


def test_keep_policy_keeps_adam_step_counts() -> None:
    spec, net, opt = trained("adam")
    chainspec.diff(spec, chainspec.loads(REVISED)).apply(net, opt, policy="keep")
    step(net, opt)
    assert float(opt.state[net["fc1"].module.weight]["step"]) == 3
    assert float(opt.state[net["fc_in"].module.weight]["step"]) == 1


# -- the group rule ----------------------------------------------------------------------------------

def test_inserted_params_join_the_nearest_preceding_group() -> None:
    spec, net, opt = trained("adam", groups=True)
    new = MLP.replace("      - {id: act2, type: relu}\n", "      - {id: act2, type: relu}\n"
                      "      - {id: extra, type: linear, args: {in_features: 16, out_features: 16}}\n")
    chainspec.diff(spec, chainspec.loads(new)).apply(net, opt)
    assert group_index(opt, net["extra"].module.weight) == 1


def test_inserted_at_head_joins_the_nearest_following_group() -> None:
    spec, net, opt = trained("adam", groups=True)
    new = MLP.replace("    nodes:\n", "    nodes:\n      - {id: pre, type: linear, args: "
                                     "{in_features: 8, out_features: 8}}\n")
    chainspec.diff(spec, chainspec.loads(new)).apply(net, opt)
    assert group_index(opt, net["pre"].module.weight) == 0


def test_replaced_node_stays_in_its_group() -> None:
    spec, net, opt = trained("adam", groups=True)
    new = MLP.replace("out_features: 16}}\n      - {id: act1", "out_features: 32}}\n      - {id: act1").replace(
        "in_features: 16, out_features: 16}}\n      - {id: act2", "in_features: 32, out_features: 16}}\n"
                                                               "      - {id: act2")
    chainspec.diff(spec, chainspec.loads(new)).apply(net, opt)
    assert group_index(opt, net["fc1"].module.weight) == 0  # its old group, though its neighbours are in 1
    assert group_index(opt, net["fc2"].module.weight) == 1
    assert [len(g["params"]) for g in opt.param_groups] == [2, 4]


def test_override_creates_then_reuses_a_group() -> None:
    spec, net, opt = trained("adam")
    new = MLP.replace("      - {id: act2, type: relu}\n", "      - {id: act2, type: relu}\n"
                      "      - {id: x1, type: linear, args: {in_features: 16, out_features: 16}, "
                      "optim: {lr: 0.001, betas: [0.0, 0.99]}}\n"
                      "      - {id: x2, type: linear, args: {in_features: 16, out_features: 16}, "
                      "optim: {lr: 0.001, betas: [0.0, 0.99]}}\n")
    chainspec.diff(spec, chainspec.loads(new)).apply(net, opt)
    assert len(opt.param_groups) == 2
    group = opt.param_groups[1]
    assert group["lr"] == 0.001 and group["betas"] == (0.0, 0.99)
    assert group["eps"] == opt.param_groups[0]["eps"]  # the rest comes from the base group
    assert [id(p) for p in group["params"]] == [id(p) for n in ("x1", "x2") for p in net[n].module.parameters()]
    step(net, opt)
    opt.state_dict()


def test_override_change_moves_parameters_with_their_state() -> None:
    spec, net, opt = trained("adam")
    weight = net["fc2"].module.weight
    state = opt.state[weight]
    slower = chainspec.loads(MLP.replace("in_features: 16, out_features: 16}}",
                                         "in_features: 16, out_features: 16}, optim: {lr: 0.0001}}"))
    plan = chainspec.diff(spec, slower)
    assert [(op.kind, op.rebuild) for op in plan.ops] == [("update", False)]
    plan.apply(net, opt)
    assert net["fc2"].module.weight is weight
    assert group_index(opt, weight) == 1 and opt.param_groups[1]["lr"] == 0.0001
    assert opt.state[weight] is state
    # Dropping the override moves them back to the base group.
    chainspec.diff(slower, spec).apply(net, opt)
    assert group_index(opt, weight) == 0 and opt.state[weight] is state
    assert opt.param_groups[1]["params"] == []
    step(net, opt)


def test_unknown_override_is_reported_with_a_hint() -> None:
    spec, net, opt = trained("sgd")
    new = REVISED.replace("out_features: 6}}", "out_features: 6}, optim: {lrr: 0.1}}")
    with pytest.raises(chainspec.SpecError, match=r"new\.yaml:\d+:\d+: .*optim\.lrr.*SGD has no hyperparameter "
                                                  r"'lrr'; did you mean 'lr'\?"):
        chainspec.diff(spec, chainspec.loads(new, source="new.yaml")).apply(net, opt)
    assert net.ids() == ["fc1", "act1", "fc2", "act2", "fc3"]


def test_named_parameter_optimizers_keep_names_in_step() -> None:
    torch.manual_seed(0)
    spec = chainspec.loads(MLP)
    net = spec.build()
    opt = torch.optim.Adam(net.named_parameters(), lr=0.01)
    step(net, opt)
    chainspec.diff(spec, chainspec.loads(REVISED)).apply(net, opt)
    group = opt.param_groups[0]
    assert group["param_names"] == [name for name, _ in net.named_parameters() if name.split(".")[0] in
                                    {"fc1"}] + ["fc_in.weight", "fc_in.bias", "fc3.weight", "fc3.bias"]
    names = dict(net.named_parameters())
    assert all(names[n] is p for n, p in zip(group["param_names"], group["params"], strict=True))
    step(net, opt)
    opt.state_dict()


# -- the building blocks -----------------------------------------------------------------------------

def test_snapshot_restores_groups_and_state_exactly() -> None:
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([a, b], lr=0.1, momentum=0.9)
    (a.sum() + b.sum()).backward()
    opt.step()
    group, state = opt.param_groups[0], opt.state[a]
    snap = chainspec.revise.optim.snapshot(opt)
    chainspec.revise.optim.remove_params(opt, [a])
    chainspec.revise.optim.group_with(opt, {**chainspec.revise.optim.hyper(group), "lr": 0.5})
    assert len(opt.param_groups) == 2 and a not in opt.state
    snap.restore()
    assert opt.param_groups == [group] and opt.param_groups[0] is group
    assert group["params"][0] is a and opt.state[a] is state


def test_same_hyper_compares_values_not_types() -> None:
    assert chainspec.revise.optim.same_hyper({"lr": 1, "b": (0.9, 0.99)}, {"lr": 1.0, "b": [0.9, 0.99]})
    assert not chainspec.revise.optim.same_hyper({"amsgrad": False}, {"amsgrad": 0})
    assert chainspec.revise.optim.same_hyper({"lr": torch.tensor(0.1)}, {"lr": torch.tensor(0.1)})
    assert not chainspec.revise.optim.same_hyper({"lr": torch.tensor(0.1)}, {"lr": 0.1})


def test_check_override_types() -> None:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    assert chainspec.revise.optim.check_override(opt, {"lr": 0.1, "betas": [0.5, 0.9], "amsgrad": True}) == []
    problems = chainspec.revise.optim.check_override(opt, {"betas": 0.5, "amsgrad": 1})
    assert [p[0] for p in problems] == ["betas", "amsgrad"]


def test_groups_follow_chain_order_after_a_move() -> None:
    text = MLP.replace("{id: act2, type: relu}", "{id: act2, type: relu}\n      - {id: fc_x, type: linear, args: "
                                                 "{in_features: 16, out_features: 16}}")
    spec, net, opt = trained("sgd", text)
    lines = text.splitlines(keepends=True)
    moved = next(line for line in lines if "id: fc_x" in line)
    lines.remove(moved)
    lines.insert(next(i for i, line in enumerate(lines) if "id: act1" in line) + 1, moved)
    plan = chainspec.diff(spec, chainspec.loads("".join(lines)))
    assert [op.kind for op in plan.ops] == ["move"]
    plan.apply(net, opt)
    assert opt.param_groups[0]["params"] == list(net.parameters())
    assert [n for n, _ in net.named_parameters()][:4] == ["fc1.weight", "fc1.bias", "fc_x.weight", "fc_x.bias"]
