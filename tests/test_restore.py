"""No revision destroys trained weights: a removed node is kept, and re-inserting it restores it.

A removed node's module and optimizer state go to its chain's store of removed nodes (bounded, oldest
first out); an insert of the same id with the same definition brings back the very same module and
Parameter objects, bit for bit, with their optimizer state, and the plan says ``(restored)``. A failed
apply, wherever it fails, leaves the store (and the chain, and the optimizer) exactly as it was.
"""

from __future__ import annotations

import contextlib
import gc
import json
import weakref
from typing import Any

import pytest
import torch

import chainspec
from chainspec import Chain, RemovedNodes, removed_nodes
from chainspec.revise import apply as _apply
from tracing import traced

FULL = """\
chainspec: 1
chains:
  net:
    input_shape: [8]
    nodes:
      - {id: fc1, type: linear, args: {in_features: 8, out_features: 16}}
      - {id: bn, type: batchnorm1d, args: {num_features: 16}}
      - {id: act, type: leaky_relu, args: {negative_slope: 0.2}}
      - {id: fc2, type: linear, args: {in_features: 16, out_features: 16}}
      - {id: fc3, type: linear, args: {in_features: 16, out_features: 4}}
"""
#: Without bn and fc2 (each has weights; bn has buffers too).
SHORT = FULL.replace("      - {id: bn, type: batchnorm1d, args: {num_features: 16}}\n", "").replace(
    "      - {id: fc2, type: linear, args: {in_features: 16, out_features: 16}}\n", "")


def load(text: str, source: str) -> chainspec.Spec:
    return chainspec.loads(text, source=source)


def train(net: Chain, opt: torch.optim.Optimizer, steps: int = 2) -> None:
    x = torch.linspace(-1, 1, 64).reshape(8, 8)
    for _ in range(steps):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()


def trained(optimizer: str = "adam") -> tuple[chainspec.Spec, Chain, torch.optim.Optimizer]:
    torch.manual_seed(0)
    spec = load(FULL, "full.yaml")
    net = spec.build()
    opt: torch.optim.Optimizer = (torch.optim.Adam(net.parameters(), lr=1e-2) if optimizer == "adam"
                                  else torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9))
    train(net, opt)
    return spec, net, opt


def bits(t: torch.Tensor) -> bytes:
    return t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def node_record(net: Chain, opt: torch.optim.Optimizer, node_id: str) -> dict[str, Any]:
    """A node's Parameter objects, its tensors bit for bit, and its optimizer state (objects and bits)."""
    module = net[node_id].module
    return {"module": module,
            "params": dict(module.named_parameters()),
            "tensors": {k: bits(v) for k, v in module.state_dict().items()},
            "state": {name: (opt.state[p], {k: bits(v) if isinstance(v, torch.Tensor) else v
                                            for k, v in opt.state[p].items()})
                      for name, p in module.named_parameters()}}


def assert_restored(net: Chain, opt: torch.optim.Optimizer, node_id: str, before: dict[str, Any]) -> None:
    module = net[node_id].module
    assert module is before["module"]
    for name, p in module.named_parameters():
        assert p is before["params"][name], name  # the very Parameter objects
    assert {k: bits(v) for k, v in module.state_dict().items()} == before["tensors"]  # buffers too
    for name, p in module.named_parameters():
        state, saved = before["state"][name]
        assert opt.state[p] is state
        assert {k: bits(v) if isinstance(v, torch.Tensor) else v for k, v in opt.state[p].items()} == saved
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in in_groups for p in module.parameters())


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_remove_then_reinsert_restores_weights_state_and_parameters(optimizer: str) -> None:
    full, net, opt = trained(optimizer)
    before = {i: node_record(net, opt, i) for i in ("bn", "fc2")}
    if optimizer == "adam":
        assert {"exp_avg", "exp_avg_sq", "step"} <= set(before["fc2"]["state"]["weight"][1])
    short = load(SHORT, "short.yaml")
    chainspec.diff(full, short).apply(net, opt)
    assert net.ids() == ["fc1", "act", "fc3"] and removed_nodes(net).ids() == ["bn", "fc2"]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in net.parameters()}
    train(net, opt, 3)  # the rest of the chain trains on without them

    back = chainspec.diff(short, load(FULL, "full.yaml"))
    assert not any(op.restored for op in back.ops)  # diff has no chain: it cannot know
    marked = back.restoring(net)
    assert [(op.kind, op.node_id, op.restored) for op in marked.ops] == [("insert", "bn", True),
                                                                         ("insert", "fc2", True)]
    assert not any(op.restored for op in back.ops)  # restoring() returns a copy
    rng = torch.get_rng_state()
    back.apply(net, opt)
    assert torch.equal(torch.get_rng_state(), rng)  # nothing new was initialised
    assert back.ops == marked.ops  # the plan applied now says what it did
    for node_id in ("bn", "fc2"):
        assert_restored(net, opt, node_id, before[node_id])
    assert len(removed_nodes(net)) == 0
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in full.build().named_parameters()]
    train(net, opt)


def test_the_plan_says_restored_in_text_and_json() -> None:
    full, net, opt = trained()
    short = load(SHORT, "short.yaml")
    chainspec.diff(full, short).apply(net, opt)
    plan = chainspec.diff(short, load(FULL, "full.yaml")).restoring(net)
    text = str(plan)
    assert "+ bn (batchnorm1d) after fc1 (restored)" in text
    assert "+ fc2 (linear) after act (restored)" in text
    assert text.splitlines()[-1] == "Plan: 2 to insert (2 restored); parameters +304."
    data = json.loads(json.dumps(plan.to_dict()))
    assert [(o["node_id"], o["restored"]) for o in data["ops"]] == [("bn", True), ("fc2", True)]
    plain = chainspec.diff(short, load(FULL, "full.yaml"))
    assert "(restored)" not in str(plain) and not any(o["restored"] for o in plain.to_dict()["ops"])


def test_reset_policy_restores_the_weights_but_not_the_state() -> None:
    full, net, opt = trained()
    before = node_record(net, opt, "fc2")
    short = load(SHORT, "short.yaml")
    chainspec.diff(full, short).apply(net, opt)
    chainspec.diff(short, load(FULL, "full.yaml")).apply(net, opt, policy="reset")
    module = net["fc2"].module
    assert module is before["module"] and module.weight is before["params"]["weight"]
    assert {k: bits(v) for k, v in module.state_dict().items()} == before["tensors"]
    assert len(opt.state) == 0  # as for every node of the chain
    train(net, opt)


def test_a_changed_definition_gets_fresh_weights() -> None:
    full, net, opt = trained()
    weight = net["fc2"].module.weight
    short = load(SHORT, "short.yaml")
    chainspec.diff(full, short).apply(net, opt)
    changed = FULL.replace("in_features: 16, out_features: 16}}", "in_features: 16, out_features: 16, bias: false}}")
    plan = chainspec.diff(short, load(changed, "changed.yaml")).restoring(net)
    assert [(op.node_id, op.restored) for op in plan.ops] == [("bn", True), ("fc2", False)]
    assert "+ fc2 (linear) after act   " in str(plan) and "fc2 (linear) after act (restored)" not in str(plan)
    plan.apply(net, opt)
    assert net["fc2"].module.weight is not weight and net["fc2"].module.bias is None
    assert net["fc2"].module.weight not in opt.state  # new weights start without state
    assert removed_nodes(net).ids() == ["fc2"]  # the old definition is still kept


def test_a_module_on_another_device_or_dtype_is_not_restored() -> None:
    full, net, opt = trained()
    short = load(SHORT, "short.yaml")
    chainspec.diff(full, short).apply(net, opt)
    net.double()  # the chain moved on; the kept modules did not
    plan = chainspec.diff(short, load(FULL, "full.yaml")).restoring(net)
    assert not any(op.restored for op in plan.ops)
    plan.apply(net)
    assert {p.dtype for p in net.parameters()} == {torch.float64}


def test_the_store_is_bounded_and_evicts_the_oldest() -> None:
    assert RemovedNodes.max_nodes == 16 and RemovedNodes.max_bytes == 256 * 2**20
    full, net, opt = trained()
    store = removed_nodes(net)
    store.max_nodes = 1  # this chain only
    assert RemovedNodes.max_nodes == 16 and removed_nodes(Chain()).max_nodes == 16
    short = load(SHORT, "short.yaml")
    fc2_weight = weakref.ref(net["fc2"].module.weight)
    bn_module = net["bn"].module
    chainspec.diff(full, short).apply(net, opt)  # bn, then fc2 removed: bn is the oldest, and goes
    assert store.ids() == ["fc2"] and fc2_weight() is not None
    plan = chainspec.diff(short, load(FULL, "full.yaml")).restoring(net)
    assert [(op.node_id, op.restored) for op in plan.ops] == [("bn", False), ("fc2", True)]
    plan.apply(net, opt)
    assert net["bn"].module is not bn_module
    # By bytes: fc2 holds 16 * 16 + 16 floats, and Adam two moments of each, plus its step counts.
    store.max_nodes = 16
    chainspec.diff(load(FULL, "full.yaml"), short).apply(net, opt)
    assert store.ids() == ["bn", "fc2"] and store.nbytes == sum(k.nbytes for k in store)
    fc2 = next(k for k in store if k.node_id == "fc2")
    assert fc2.nbytes == 3 * (16 * 16 + 16) * 4 + 2 * 4  # weights, exp_avg, exp_avg_sq, two float32 steps
    store.max_bytes = fc2.nbytes  # room for fc2 alone
    store._keep(fc2)  # what the next removal does: keep it, then trim to the bound, oldest first
    assert store.ids() == ["fc2"]
    store.max_bytes = fc2.nbytes - 1  # a node larger than the bound on its own is not kept
    store._keep(fc2)
    assert store.ids() == []
    store.max_bytes = RemovedNodes.max_bytes
    del fc2
    gc.collect()
    assert fc2_weight() is None  # evicted and cleared: the memory is freed
    store.max_nodes = 0  # keep nothing
    chainspec.diff(short, load(FULL, "full.yaml")).apply(net, opt)
    chainspec.diff(load(FULL, "full.yaml"), short).apply(net, opt)
    assert len(store) == 0


def test_the_store_goes_with_its_chain() -> None:
    full, net, opt = trained()
    chainspec.diff(full, load(SHORT, "short.yaml")).apply(net, opt)
    assert len(removed_nodes(net)) == 2
    store = weakref.ref(removed_nodes(net))
    del net, opt
    gc.collect()
    assert store() is None


def test_clear_forgets_the_kept_nodes() -> None:
    full, net, opt = trained()
    short = load(SHORT, "short.yaml")
    weight = net["fc2"].module.weight
    chainspec.diff(full, short).apply(net, opt)
    removed_nodes(net).clear()
    plan = chainspec.diff(short, load(FULL, "full.yaml"))
    plan.apply(net, opt)
    assert not any(op.restored for op in plan.ops) and net["fc2"].module.weight is not weight


def test_parameterless_nodes_are_not_kept() -> None:
    full, net, opt = trained()
    chainspec.diff(full, load(FULL.replace("      - {id: act, type: leaky_relu, args: {negative_slope: 0.2}}\n", ""),
                              "no_act.yaml")).apply(net, opt)
    assert len(removed_nodes(net)) == 0


# -- all or nothing --------------------------------------------------------------------------------

#: From SHORT plus a dropout: fc2 and bn come back (restored), act and fc1 leave (fc1 into the store, which
#: already holds bn and fc2), fc3 is replaced, and a new node is inserted.
MIXED = """\
chainspec: 1
chains:
  net:
    input_shape: [8]
    nodes:
      - {id: fc0, type: linear, args: {in_features: 8, out_features: 16}}
      - {id: bn, type: batchnorm1d, args: {num_features: 16}}
      - {id: fc2, type: linear, args: {in_features: 16, out_features: 16}}
      - {id: fc3, type: linear, args: {in_features: 16, out_features: 5}}
"""


class StoreFingerprint:
    """A chain's store, chain and optimizer as a failed apply must leave them."""

    def __init__(self, net: Chain, opt: torch.optim.Optimizer, plan: Any) -> None:
        store = removed_nodes(net)
        self.store = store
        self.entries = list(store._kept.items())
        self.modes = [(m, m.training) for k in store for m in k.module.modules()]
        self.ops = list(plan.ops)
        self.nodes = [(n, n.module) for n in net]
        self.params = [(name, p, bits(p)) for name, p in net.named_parameters()]
        self.groups = [list(g["params"]) for g in opt.param_groups]
        self.state = {id(p): s for p, s in opt.state.items()}

    def assert_same(self, net: Chain, opt: torch.optim.Optimizer, plan: Any) -> None:
        assert removed_nodes(net) is self.store and list(self.store._kept.items()) == self.entries
        assert [(m, m.training) for k in self.store for m in k.module.modules()] == self.modes
        assert list(plan.ops) == self.ops and not any(op.restored for op in plan.ops)
        assert [(n, n.module) for n in net] == self.nodes
        assert [(name, p, bits(p)) for name, p in net.named_parameters()] == self.params
        assert [list(g["params"]) for g in opt.param_groups] == self.groups
        assert {id(p): s for p, s in opt.state.items()} == self.state


def mixed() -> tuple[Chain, torch.optim.Optimizer, Any]:
    full, net, opt = trained()
    short = load(SHORT, "short.yaml")
    chainspec.diff(full, short).apply(net, opt)
    net.eval()  # the kept modules are in train mode: a restore switches them, a rollback switches them back
    plan = chainspec.diff(short, load(MIXED, "mixed.yaml"))
    kinds = {(op.kind, op.node_id) for op in plan.ops}
    assert {("insert", "bn"), ("insert", "fc2"), ("remove", "fc1"), ("insert", "fc0"), ("replace", "fc3")} <= kinds
    return net, opt, plan


def test_a_failure_while_building_leaves_the_store_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    net, opt, plan = mixed()
    before = StoreFingerprint(net, opt, plan)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("out of memory (injected)")

    monkeypatch.setattr(_apply, "instantiate", broken)
    with pytest.raises(chainspec.SpecError, match="out of memory"):
        plan.apply(net, opt)
    before.assert_same(net, opt, plan)


@pytest.mark.parametrize("step", ["update_optimizer", "record"])
def test_a_failure_late_in_the_commit_leaves_the_store_unchanged(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    net, opt, plan = mixed()
    before = StoreFingerprint(net, opt, plan)
    real = getattr(_apply._Job, step)

    def then_fail(job: Any) -> None:
        real(job)  # done its work (the store updated, for record), then the failure strikes
        raise KeyboardInterrupt

    monkeypatch.setattr(_apply._Job, step, then_fail)
    with pytest.raises(KeyboardInterrupt):
        plan.apply(net, opt)
    before.assert_same(net, opt, plan)
    monkeypatch.setattr(_apply._Job, step, real)
    plan.apply(net, opt)  # and the same plan still applies
    assert [op.node_id for op in plan.ops if op.restored] == ["bn", "fc2"]
    assert removed_nodes(net).ids() == ["fc1"] and not net["bn"].module.training


def test_an_interrupt_at_any_line_of_the_commit_leaves_the_store_unchanged() -> None:
    net, opt, plan = mixed()
    probe_net, probe_opt, probe_plan = mixed()
    names: list[str] = []

    traced(lambda: probe_plan.apply(probe_net, probe_opt), lambda frame: names.append(frame.f_code.co_name))
    commit = names.index("splice")
    before = StoreFingerprint(net, opt, plan)
    completed = []
    for k in [*range(1, commit, 25), *range(commit, len(names) + 1, 2)]:
        count = 0

        def interrupt(frame: Any, k: int = k) -> None:
            nonlocal count
            count += 1
            if count == k:
                raise KeyboardInterrupt

        with contextlib.suppress(KeyboardInterrupt):
            traced(lambda: plan.apply(net, opt), interrupt)
        if net.spec is plan.new_spec:
            completed.append(k)  # only past the apply's last line
            break
        before.assert_same(net, opt, plan)
    assert not completed or min(completed) > max(i for i, n in enumerate(names) if n == "record")
