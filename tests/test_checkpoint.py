"""save_checkpoint / load_checkpoint: exact rebuilds after live revisions, atomic writes, safe loads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

import chainspec
import chainspec.revise.checkpoint
from chainspec import Chain
from chainspec.cli import main

BLOG = Path(__file__).resolve().parent.parent / "specs" / "blog.yaml"

BASE = """\
chainspec: 1
chains:
  net:
    input_shape: [8]
    nodes:
      - {id: fc1, type: linear, args: {in_features: 8, out_features: 16}}
      - {id: bn, type: batchnorm1d, args: {num_features: 16}}
      - {id: act1, type: leaky_relu, args: {negative_slope: 0.2}}
      - {id: drop, type: dropout, args: {p: 0.2}}
      - {id: fc2, type: linear, args: {in_features: 16, out_features: 16}}
      - {id: act2, type: relu}
      - {id: fc3, type: linear, args: {in_features: 16, out_features: 4}}
"""

# Revision 1: a new block with its own learning rate, and a slope change.
REV1 = BASE.replace("negative_slope: 0.2", "negative_slope: 0.1").replace(
    "      - {id: fc3", "      - {id: extra, type: linear, args: {in_features: 16, out_features: 16}, "
                        "optim: {lr: 0.002}}\n      - {id: act3, type: relu}\n      - {id: fc3")
# Revision 2: widen fc2 (function-preserving), drop act3.
REV2 = REV1.replace("in_features: 16, out_features: 16}}\n      - {id: act2",
                    "in_features: 16, out_features: 24}, init: preserve}\n      - {id: act2").replace(
    "{id: extra, type: linear, args: {in_features: 16,", "{id: extra, type: linear, args: {in_features: 24,"
).replace("      - {id: act3, type: relu}\n", "").replace(
    "args: {in_features: 24, out_features: 16}, optim", "args: {in_features: 24, out_features: 16}, init: preserve, "
                                                       "optim")

OPTIMIZERS = {"adam": lambda params: torch.optim.Adam(params, lr=0.01),
              "sgd": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
              "adamw": lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1)}


def batch(step: int) -> torch.Tensor:
    return torch.linspace(-1, 1, 16 * 8).reshape(16, 8) * (1 + step % 3)


def train(net: Chain, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        opt.zero_grad()
        net(batch(step)).square().mean().backward()  # dropout draws from torch's RNG
        opt.step()


def start(kind: str) -> tuple[chainspec.Spec, Chain, torch.optim.Optimizer]:
    torch.manual_seed(0)
    spec = chainspec.loads(BASE, source="net.yaml")
    net = spec.build()
    return spec, net, OPTIMIZERS[kind](net.parameters())


def revise(spec: chainspec.Spec, net: Chain, opt: torch.optim.Optimizer, text: str, source: str) -> chainspec.Spec:
    new = chainspec.loads(text, source=source)
    chainspec.diff(spec, new).apply(net, opt)
    return new


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_resume_is_bit_exact_after_live_revisions(kind: str, tmp_path: Path) -> None:
    # A run that never stops.
    spec, net, opt = start(kind)
    train(net, opt, range(0, 3))
    spec = revise(spec, net, opt, REV1, "rev1.yaml")
    train(net, opt, range(3, 5))
    spec = revise(spec, net, opt, REV2, "rev2.yaml")
    train(net, opt, range(5, 9))
    expected = {k: v.clone() for k, v in net.state_dict().items()}

    # The same run, saved after step 6 and resumed from the file.
    spec, net, opt = start(kind)
    train(net, opt, range(0, 3))
    spec = revise(spec, net, opt, REV1, "rev1.yaml")
    train(net, opt, range(3, 5))
    spec = revise(spec, net, opt, REV2, "rev2.yaml")
    train(net, opt, range(5, 6))
    path = tmp_path / "run.pt"
    chainspec.save_checkpoint(path, spec=net.spec, chains={"net": net}, stage=net.stage, optimizers={"net": opt})
    del net, opt
    torch.manual_seed(12345)  # whatever happened to the RNG in between
    ckpt = chainspec.load_checkpoint(path)
    ckpt.restore_rng()
    assert ckpt.spec.text == REV2 and ckpt.spec.source == "rev2.yaml"
    net, opt = ckpt.chains["net"], ckpt.optimizers["net"]
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.002]
    train(net, opt, range(6, 9))

    resumed = net.state_dict()
    assert resumed.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), f"{key} differs after resuming"


def test_roundtrip_restores_everything(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = chainspec.loads(BASE, source="net.yaml")
    net = spec.build(dtype=torch.float64)
    opt = torch.optim.AdamW(net.parameters(), lr=0.01)
    train_double(net, opt)
    net.eval()
    net["drop"].module.train()
    net["fc1"].module.bias.requires_grad_(False)
    extra = {"grower": {"images_seen": 12_000, "phase": "fade", "history": [1.5, 2.5]},
             "ema": {"fc1.weight": torch.ones(2)}, "note": None, "pair": (1, "a")}
    path = tmp_path / "ckpt.pt"
    chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, optimizers={"g": opt}, alpha=0.25,
                              extra=extra)
    ckpt = chainspec.load_checkpoint(path)
    assert (ckpt.stage, ckpt.alpha, ckpt.spec.text) == (0, 0.25, BASE)
    assert ckpt.extra["grower"] == extra["grower"] and ckpt.extra["pair"] == (1, "a")
    assert torch.equal(ckpt.extra["ema"]["fc1.weight"], torch.ones(2))
    again = ckpt.chains["net"]
    assert isinstance(again, Chain) and again.ids() == net.ids()
    assert again.stage == 0 and again.spec is ckpt.spec
    assert not again.training and again["drop"].module.training and not again["bn"].module.training
    assert not again["fc1"].module.bias.requires_grad and again["fc1"].module.weight.requires_grad
    for (k, a), (k2, b) in zip(net.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b)
    restored = ckpt.optimizers["g"]
    assert isinstance(restored, torch.optim.AdamW)
    assert restored.param_groups[0]["weight_decay"] == opt.param_groups[0]["weight_decay"]
    original, packed = opt.state_dict(), restored.state_dict()
    assert packed["param_groups"] == original["param_groups"]
    for i, state in original["state"].items():
        for key, value in state.items():
            assert torch.equal(packed["state"][i][key], value)


def train_double(net: Chain, opt: torch.optim.Optimizer) -> None:
    for step in range(2):
        opt.zero_grad()
        net(batch(step).double()).square().mean().backward()
        opt.step()


def test_optimizer_factories(tmp_path: Path) -> None:
    spec, net, opt = start("sgd")
    train(net, opt, range(2))
    path = tmp_path / "ckpt.pt"
    chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, optimizers={"net": opt})
    seen: list[Any] = []

    def named(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        seen.append(name)
        return torch.optim.SGD(params, lr=1.0)

    restored = chainspec.load_checkpoint(path, optimizer_factory=named).optimizers["net"]
    assert seen == ["net"] and restored.param_groups[0]["lr"] == 0.01 and restored.param_groups[0]["momentum"] == 0.9
    one_arg = chainspec.load_checkpoint(path, optimizer_factory=lambda params: torch.optim.SGD(params, lr=1.0))
    assert len(one_arg.optimizers["net"].state) == len(opt.state)
    as_class = chainspec.load_checkpoint(path, optimizer_factory=torch.optim.SGD)
    assert as_class.optimizers["net"].param_groups[0]["momentum"] == 0.9
    with pytest.raises(chainspec.CheckpointError, match=r"not a torch\.optim\.Optimizer"):
        chainspec.load_checkpoint(path, optimizer_factory=lambda params: object())


class Custom(torch.optim.SGD):
    """An optimizer class outside torch.optim."""


def test_custom_optimizer_class_needs_a_factory(tmp_path: Path) -> None:
    spec = chainspec.loads(BASE)
    net = spec.build()
    path = tmp_path / "ckpt.pt"
    chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0,
                              optimizers={"net": Custom(net.parameters(), lr=0.1)})
    with pytest.raises(chainspec.CheckpointError, match=r"not a torch\.optim class; pass optimizer_factory"):
        chainspec.load_checkpoint(path)
    ckpt = chainspec.load_checkpoint(path, optimizer_factory=lambda params: Custom(params, lr=1))
    assert isinstance(ckpt.optimizers["net"], Custom) and ckpt.optimizers["net"].param_groups[0]["lr"] == 0.1


# -- refusals at save time -------------------------------------------------------------------------

def test_save_refuses_a_spec_that_is_not_in_force(tmp_path: Path) -> None:
    spec, net, opt = start("adam")
    revise(spec, net, opt, REV1, "rev1.yaml")
    with pytest.raises(chainspec.CheckpointError, match=r"it has nodes \[fc1, bn, act1, drop, fc2, act2, extra, "
                                                        r"act3, \.\.\. \(9 in all\)\] but net.yaml at stage 0"):
        chainspec.save_checkpoint(tmp_path / "x.pt", spec=spec, chains={"net": net}, stage=0)
    with pytest.raises(chainspec.CheckpointError, match="no chain 'gen'"):
        chainspec.save_checkpoint(tmp_path / "x.pt", spec=net.spec, chains={"gen": net}, stage=0)
    assert not (tmp_path / "x.pt").exists()


def test_save_refuses_what_a_safe_load_cannot_read(tmp_path: Path) -> None:
    spec, net, _ = start("adam")
    with pytest.raises(chainspec.CheckpointError, match=r"extra\['grower'\]\['rng'\] is a Random"):
        import random

        chainspec.save_checkpoint(tmp_path / "x.pt", spec=spec, chains={"net": net}, stage=0,
                                  extra={"grower": {"rng": random.Random()}})
    stray = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    with pytest.raises(chainspec.CheckpointError, match="in none of the chains saved"):
        chainspec.save_checkpoint(tmp_path / "x.pt", spec=spec, chains={"net": net}, stage=0,
                                  optimizers={"stray": stray})
    assert list(tmp_path.iterdir()) == []


# -- atomic writes ---------------------------------------------------------------------------------

def test_failed_write_leaves_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, net, _ = start("adam")
    path = tmp_path / "last.pt"
    chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, extra={"n": 1})
    good = path.read_bytes()

    def dies_halfway(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        handle.write(good[: len(good) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(chainspec.revise.checkpoint.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, extra={"n": 2})
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # no temporary file left behind
    assert chainspec.load_checkpoint(path).extra == {"n": 1}


def test_overwrite_replaces_in_one_step(tmp_path: Path) -> None:
    spec, net, _ = start("adam")
    path = tmp_path / "last.pt"
    for n in range(3):
        chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, extra={"n": n})
    assert os.listdir(tmp_path) == ["last.pt"]
    assert chainspec.load_checkpoint(path).extra == {"n": 2}


# -- refusals at load time -------------------------------------------------------------------------

def test_unreadable_files_are_checkpoint_errors(tmp_path: Path) -> None:
    spec, net, _ = start("adam")
    good = tmp_path / "good.pt"
    chainspec.save_checkpoint(good, spec=spec, chains={"net": net}, stage=0)
    cases = {"truncated.pt": good.read_bytes()[:200], "garbage.pt": b"\x00not a checkpoint" * 10, "empty.pt": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(chainspec.CheckpointError, match=rf"cannot read checkpoint .*{name}: .*truncated"):
            chainspec.load_checkpoint(tmp_path / name)
    with pytest.raises(chainspec.CheckpointError, match="no checkpoint at"):
        chainspec.load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(chainspec.CheckpointError, match="not a chainspec checkpoint"):
        chainspec.load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format": "chainspec-checkpoint", "version": 99}, tmp_path / "future.pt")
    with pytest.raises(chainspec.CheckpointError, match="version 99"):
        chainspec.load_checkpoint(tmp_path / "future.pt")


class Payload:
    """Pickles as a call to Path.touch: loading it unsafely would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_loading_never_runs_code_from_the_file(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "chainspec-checkpoint", "version": 1, "x": Payload(marker)}, evil)
    with pytest.raises(chainspec.CheckpointError, match="cannot read checkpoint"):
        chainspec.load_checkpoint(evil)
    assert not marker.exists()


def test_spec_that_no_longer_loads(tmp_path: Path) -> None:
    spec, net, _ = start("adam")
    path = tmp_path / "ckpt.pt"
    chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0)
    payload = torch.load(path, weights_only=True)
    payload["spec"]["text"] = BASE.replace("type: relu", "type: relux")
    torch.save(payload, path)
    with pytest.raises(chainspec.CheckpointError, match=r"its spec no longer loads:\nnet\.yaml:\d+:\d+: .*relux"):
        chainspec.load_checkpoint(path)


def test_device_argument(tmp_path: Path) -> None:
    spec, net, opt = start("adam")
    train(net, opt, range(1))
    path = tmp_path / "ckpt.pt"
    chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, optimizers={"net": opt})
    ckpt = chainspec.load_checkpoint(path, device="cpu")
    assert all(p.device.type == "cpu" for p in ckpt.chains["net"].parameters())


# -- chainspec build --save --------------------------------------------------------------------------

def test_build_save_writes_a_loadable_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "blog.pt"
    assert main(["build", str(BLOG), "--stage", "1", "--save", str(path)]) == 0
    assert f"saved net at stage 1 to {path}" in capsys.readouterr().err
    ckpt = chainspec.load_checkpoint(path)
    assert ckpt.stage == 1 and ckpt.chains["net"].ids() == ["b1", "b2"] and ckpt.optimizers == {}
    x = torch.randn(2, 3, 32, 32)
    assert ckpt.chains["net"](x).shape == (2, 64, 32, 32)


# -- every torch.optim class round-trips under the load-time checks ------------------------------------------------

EVERY_OPTIMIZER = {
    "Adam-amsgrad": lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
    "AdamW-amsgrad": lambda p: torch.optim.AdamW(p, lr=0.01, amsgrad=True),
    "NAdam": lambda p: torch.optim.NAdam(p, lr=0.01),
    "RAdam": lambda p: torch.optim.RAdam(p, lr=0.01),
    "Adamax": lambda p: torch.optim.Adamax(p, lr=0.01),
    "Adadelta": lambda p: torch.optim.Adadelta(p),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=0.01),
    "ASGD": lambda p: torch.optim.ASGD(p, lr=0.01),
    "Rprop": lambda p: torch.optim.Rprop(p, lr=0.01),
    "RMSprop-centered-momentum": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.9, centered=True),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=0.01),
    "SGD-plain": lambda p: torch.optim.SGD(p, lr=0.01),
    "SGD-nesterov": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True),
    "Adafactor": lambda p: torch.optim.Adafactor(p, lr=0.01),
    "LBFGS": lambda p: torch.optim.LBFGS(p, lr=0.1, history_size=3, max_iter=2),
}


def step_once(net: Chain, opt: torch.optim.Optimizer, step: int) -> None:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = net(batch(step)).square().mean()
        loss.backward()
        return loss

    opt.step(closure)


@pytest.mark.parametrize("kind", sorted(EVERY_OPTIMIZER))
def test_every_torch_optimizer_round_trips(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    spec = chainspec.loads(BASE.replace("{p: 0.2}", "{p: 0.0}"), source="net.yaml")
    net = spec.build()
    opt = EVERY_OPTIMIZER[kind](net.parameters())
    for step in range(2):
        step_once(net, opt, step)
    path = tmp_path / "ckpt.pt"
    chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, optimizers={"net": opt})
    ckpt = chainspec.load_checkpoint(path)
    net2, opt2 = ckpt.chains["net"], ckpt.optimizers["net"]
    assert type(opt2) is type(opt)
    step_once(net, opt, 2)
    step_once(net2, opt2, 2)
    for (key, mine), theirs in zip(net.state_dict().items(), net2.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), f"{kind}: {key} differs after one more step"
