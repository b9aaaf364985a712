"""Hostile checkpoints: every field is checked, the only error is CheckpointError, the file imports nothing.

A checkpoint is untrusted input (docs/security.md). Each class of attack gets
its own tests here:

1. fields of the wrong type, out of range or naming things (a dtype, a device,
   an optimizer class, a parameter) are refused with a CheckpointError naming
   the field, never a raw AttributeError, KeyError, ... and never by looking a
   name up on a module: ``dtype: "_inductor"`` must not import
   ``torch._inductor``. A refused load, or a refused grower state, changes
   nothing the caller holds;
2. messages quoting keys and names from the file escape control characters;
3. a write that fails half-way (a full disk, a file size limit) is a
   CheckpointError naming the file, and the previous checkpoint survives;
4. the spec text inside a checkpoint is loaded with the caller's limits;
5. a property-based fuzz mutates a valid payload field by field.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chainspec
import chainspec.revise.checkpoint
from chainspec import CheckpointError, Grower, Limits, PlanError

SPEC = """\
chainspec: 1
stages: 2
growth: {unit: steps, stabilize: 2, fade: 4}
chains:
  net:
    input_shape: [4]
    nodes:
      - {id: fc0, type: linear, args: {in_features: 4, out_features: 6}}
      - {id: bn, type: batchnorm1d, args: {num_features: 6}}
      - {id: out0, type: linear, args: {in_features: 6, out_features: 2}, until: 1}
      - {id: fc1, type: linear, args: {in_features: 6, out_features: 6}, stage: 1, optim: {lr: 0.002}}
      - {id: out1, type: linear, args: {in_features: 6, out_features: 2}, stage: 1}
"""

Change = Callable[[dict[str, Any]], None]


def train(grower: Grower, steps: int) -> None:
    gen = torch.Generator().manual_seed(steps)
    for _ in range(steps):
        for name, chain in grower.chains.items():
            opt = grower.optimizers[name]
            assert opt is not None
            opt.zero_grad()
            chain(torch.randn(3, 4, generator=gen)).square().mean().backward()
            opt.step()
        grower.step()


def fresh_grower(seed: int = 0) -> Grower:
    torch.manual_seed(seed)
    spec = chainspec.loads(SPEC, source="grow.yaml")
    chains = spec.build_all(stage=0)
    opts = {n: torch.optim.Adam(c.parameters(), lr=1e-3) for n, c in chains.items()}
    return Grower(spec, chains=chains, optimizers=opts)


@cache
def saved_bytes() -> bytes:
    """A checkpoint of a run half-way through its fade-in: chains, Adam state, grower state, RNG."""
    import tempfile

    grower = fresh_grower()
    train(grower, 4)
    assert grower.fading and grower.alpha == 0.5
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "base.pt"
        grower.save(path)
        return path.read_bytes()


def payload() -> dict[str, Any]:
    import io

    return torch.load(io.BytesIO(saved_bytes()), weights_only=True)


def write(tmp_path: Path, change: Change | None = None, name: str = "ckpt.pt") -> Path:
    data = payload()
    if change is not None:
        change(data)
    path = tmp_path / name
    torch.save(data, path)
    return path


def resume(path: Path, **kwargs: Any) -> Grower:
    return Grower.from_checkpoint(chainspec.load_checkpoint(path, **kwargs))


def at(*keys: Any) -> Callable[[Any], Change]:
    """``at("chains", "net", "dtype")(value)``: a change setting that field."""
    def setter(value: Any) -> Change:
        def change(data: dict[str, Any]) -> None:
            target = data
            for key in keys[:-1]:
                target = target[key]
            target[keys[-1]] = value(target[keys[-1]]) if callable(value) else value
        return change
    return setter


def drop(*keys: Any) -> Change:
    def change(data: dict[str, Any]) -> None:
        target = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return change


OPT_STATE = ("optimizers", "net", "state", "net.fc0.weight")
FADE = ("extra", "grower", "fade", "net")


def test_the_base_checkpoint_resumes(tmp_path: Path) -> None:
    grower = resume(write(tmp_path))
    assert (grower.stage, grower.fading, grower.alpha, grower.steps) == (1, True, 0.5, 4)
    train(grower, 3)
    assert grower.stage == 1 and not grower.fading


# -- 1. names are looked up in allow-lists, and never import anything --------------------------------------------------

HOSTILE_NAMES = [
    ("dtype", "_inductor"), ("dtype", "os"), ("dtype", "__class__"), ("dtype", "nn"), ("dtype", "int64"),
    ("dtype", "complex64"), ("dtype", "float8_e4m3fn"), ("dtype", "_dynamo"), ("dtype", "onnx"),
    ("device", "xla"), ("device", "privateuseone"), ("device", "_inductor"), ("device", "cpu:x"),
    ("device", "cuda:99999"), ("device", "lazy"), ("device", "os"),
    ("class", "torch._inductor.Optimizer"), ("class", "torch.optim._multi_tensor.Adam"),
    ("class", "torch.optim.Optimizer"), ("class", "torch.optim.lr_scheduler.LambdaLR"), ("class", "os.system"),
    ("class", "builtins.eval"), ("class", "torch.optim.__class__"), ("class", "torch.optim.adam.__builtins__"),
    ("class", "torch.optim.swa_utils.AveragedModel"),
]


def name_change(field: str, value: str) -> Change:
    if field == "class":
        return at("optimizers", "net", "class")(value)
    return at("chains", "net", field)(value)


@pytest.mark.parametrize("field, value", HOSTILE_NAMES, ids=[f"{f}={v}" for f, v in HOSTILE_NAMES])
def test_names_are_looked_up_in_allow_lists(tmp_path: Path, field: str, value: str) -> None:
    path = write(tmp_path, name_change(field, value))
    before = set(sys.modules)
    with pytest.raises(CheckpointError) as info:
        chainspec.load_checkpoint(path)
    assert set(sys.modules) - before == set()
    message = str(info.value)
    assert f"chains.net.{field}" in message or "not a torch.optim class" in message, message


def test_allow_lists_are_explicit() -> None:
    assert set(chainspec.revise.checkpoint.DTYPES) == {"float16", "bfloat16", "float32", "float64"}
    assert all(dtype.is_floating_point for dtype in chainspec.revise.checkpoint.DTYPES.values())
    assert chainspec.revise.checkpoint.DEVICE_TYPES == ("cpu", "cuda", "mps", "meta", "xpu")
    classes = set(chainspec.revise.checkpoint.OPTIMIZER_CLASSES.values())
    assert {torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD} <= classes
    assert torch.optim.Optimizer not in classes
    assert all(issubclass(c, torch.optim.Optimizer) and c.__module__.split(".")[:2] == ["torch", "optim"]
               for c in classes)
    assert chainspec.revise.checkpoint.OPTIMIZER_CLASSES["torch.optim.adam.Adam"] is torch.optim.Adam


FRESH_PROCESS = textwrap.dedent("""
    import sys, torch, chainspec
    path = sys.argv[1]
    payload = torch.load(path, weights_only=True)
    cases = [("dtype", "_inductor"), ("dtype", "_dynamo"), ("dtype", "onnx"), ("dtype", "_export"),
             ("device", "_inductor"), ("class", "torch._inductor.X"), ("class", "torch.optim._inductor.X")]
    before = set(sys.modules)
    for field, value in cases:
        data = {**payload, "chains": {"net": {**payload["chains"]["net"]}},
                "optimizers": {"net": {**payload["optimizers"]["net"]}}}
        if field == "class":
            data["optimizers"]["net"]["class"] = value
        else:
            data["chains"]["net"][field] = value
        torch.save(data, path + ".bad")
        try:
            chainspec.load_checkpoint(path + ".bad")
        except chainspec.CheckpointError:
            pass
        else:
            print("LOADED", field, value)
    print("NEW", sorted(m for m in set(sys.modules) - before if m.startswith("torch")))
    getattr(torch, "_inductor")  # what a lookup by name would have done
    print("LIVE", "torch._inductor" in sys.modules)
""")


def test_a_dtype_named_after_a_lazy_submodule_imports_nothing(tmp_path: Path) -> None:
    # In a fresh process, where nothing has imported torch._inductor yet (building any chain does: torch's
    # meta kernels import torch._dynamo). Names are checked before the spec is even loaded.
    path = write(tmp_path)
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    out = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "NEW []" in lines, out.stdout
    assert "LIVE True" in lines  # the probe is live: getattr(torch, name) does import
    assert not any(line.startswith("LOADED") for line in lines)


# -- 1. every field is checked: a CheckpointError naming it, never a raw exception -------------------------------------

def grad_groups(data: dict[str, Any]) -> list[dict[str, Any]]:
    return data["optimizers"]["net"]["param_groups"]


FIELDS: dict[str, tuple[Change, str]] = {
    "format-a-tensor": (at("format")(torch.zeros(2).to_sparse()), "not a chainspec checkpoint"),
    "version-a-tensor": (at("version")(torch.ones(2)), "checkpoint version"),
    "version-true": (at("version")(True), "checkpoint version"),
    "alpha-a-list": (at("alpha")([0.5]), r"'alpha' should be float or int or NoneType"),
    "alpha-2": (at("alpha")(2.0), r"'alpha' is 2\.0"),
    "alpha-nan": (at("alpha")(math.nan), r"'alpha' is nan"),
    "alpha-huge-int": (at("alpha")(10**400), r"'alpha' is"),
    "stage-99": (at("stage")(99), r"'stage' is 99, but its spec has stages 0\.\.1"),
    "stage-negative": (at("stage")(-1), r"'stage' is -1"),
    "stage-huge": (at("stage")(2**70), r"'stage' is"),
    "source-huge": (at("spec", "source")("x" * 100_000), r"'spec.source' has 100,000 characters"),
    "chain-not-in-spec": (lambda d: d["chains"].update(gen=d["chains"]["net"]), r"'chains.gen' is not a chain"),
    "chain-name-an-int": (lambda d: d["chains"].update({3: d["chains"]["net"]}), r"has a key 3 of type int"),
    "dtype-a-list": (at("chains", "net", "dtype")([]), r"'chains.net.dtype' should be str or NoneType"),
    "device-a-number": (at("chains", "net", "device")(0), r"'chains.net.device' should be str"),
    "weights-int": (at("chains", "net", "state", "fc0.weight")(lambda t: t.long()),
                    r"'chains.net.state.fc0.weight' is a int64 tensor where the spec has float32"),
    "weights-a-string": (at("chains", "net", "state", "fc0.weight")("w"), r"fc0.weight' should be Tensor"),
    "weights-sparse": (at("chains", "net", "state", "fc0.weight")(lambda t: t.to_sparse()), r"sparse_coo tensor"),
    "weights-meta": (at("chains", "net", "state", "fc0.weight")(lambda t: t.to("meta")), r"holds no data"),
    "weights-transposed": (at("chains", "net", "state", "fc0.weight")(lambda t: t.t().contiguous()),
                           r"fc0 \(fc0.weight: \[4, 6\], the spec has \[6, 4\]\)"),
    "counter-float": (at("chains", "net", "state", "bn.num_batches_tracked")(lambda t: t.float()),
                      r"num_batches_tracked' is a float32 tensor where the spec has int64"),
    "modes-unknown": (at("chains", "net", "modes")(["nowhere"]), r"'chains.net.modes' names 'nowhere'"),
    "frozen-unknown": (at("chains", "net", "frozen")(["fc0"]), r"'chains.net.frozen' names 'fc0'"),
    "frozen-not-names": (at("chains", "net", "frozen")([1]), r"'chains.net.frozen\[0\]' should be str"),
    "class-a-number": (at("optimizers", "net", "class")(1), r"'optimizers.net.class' should be str"),
    "groups-empty": (at("optimizers", "net", "param_groups")([]), r"is the state of a parameter the optimizer"),
    "groups-and-state-empty": (lambda d: d["optimizers"]["net"].update(param_groups=[], state={}),
                               r"cannot restore optimizer 'net': .*empty parameter list"),
    "group-params-unknown": (lambda d: grad_groups(d)[0]["params"].append("net.nowhere"),
                             r"trains 'net.nowhere', which the rebuilt chains do not have"),
    "group-params-twice": (lambda d: grad_groups(d)[1]["params"].append("net.fc0.weight"),
                           r"'optimizers.net.param_groups\[1\].params' lists 'net.fc0.weight' again"),
    "group-lr-a-string": (lambda d: grad_groups(d)[0].update(lr="fast"),
                          r"'optimizers.net.param_groups\[0\].lr' should be a number"),
    "group-lr-huge": (lambda d: grad_groups(d)[0].update(lr=10**400), r"param_groups\[0\].lr' is not a finite"),
    "group-lr-nan": (lambda d: grad_groups(d)[0].update(lr=math.nan), r"param_groups\[0\].lr' is not a finite"),
    "group-lr-negative": (lambda d: grad_groups(d)[0].update(lr=-1.0),
                          r"'optimizers.net.param_groups\[0\]' is refused by Adam: Invalid learning rate"),
    "group-betas-above-1": (lambda d: grad_groups(d)[1].update(betas=(0.9, 1.5)), r"is refused by Adam: .*beta"),
    "group-betas-short": (lambda d: grad_groups(d)[0].update(betas=(0.9,)), r"betas' should be 2 values"),
    "group-amsgrad-a-string": (lambda d: grad_groups(d)[0].update(amsgrad="yes"), r"amsgrad' should be a bool"),
    "group-key-an-int": (lambda d: grad_groups(d)[0].update({7: 1}), r"has a key 7 of type int"),
    "group-value-a-dict": (lambda d: grad_groups(d)[0].update(extra={"a": 1}), r"extra' is a dict"),
    "group-amsgrad-without-its-state": (lambda d: grad_groups(d)[0].update(amsgrad=True),
                                        r"max_exp_avg_sq' is missing; Adam keeps it"),
    "state-of-an-untrained-param": (lambda d: d["optimizers"]["net"]["state"].update(
        {"net.nowhere": {}}), r"'optimizers.net.state.net.nowhere' is the state of a parameter"),
    "state-exp_avg-transposed": (at(*OPT_STATE, "exp_avg")(lambda t: t.t().contiguous()),
                                 r"exp_avg' has shape \[4, 6\], but its parameter has shape \[6, 4\]"),
    "state-exp_avg-an-int": (at(*OPT_STATE, "exp_avg")(0), r"exp_avg' should be a tensor of its parameter's shape"),
    "state-exp_avg-a-scalar": (at(*OPT_STATE, "exp_avg")(torch.zeros(())), r"exp_avg' has shape \[\]"),
    "state-exp_avg-int64": (at(*OPT_STATE, "exp_avg")(lambda t: t.long()), r"exp_avg' is a int64 tensor"),
    "state-exp_avg-complex": (at(*OPT_STATE, "exp_avg")(lambda t: t.to(torch.complex64)), r"is complex"),
    "state-exp_avg_sq-missing": (drop(*OPT_STATE, "exp_avg_sq"), r"exp_avg_sq' is missing"),
    "state-step-negative": (at(*OPT_STATE, "step")(-1.0), r"step' should be a finite count >= 0"),
    "state-step-nan": (at(*OPT_STATE, "step")(torch.tensor(math.nan)), r"step' should be one finite count"),
    "state-step-huge": (at(*OPT_STATE, "step")(10**400), r"step' should be a finite count"),
    "state-step-a-list": (at(*OPT_STATE, "step")([1]), r"step' should be a finite count"),
    "state-nested-lists": (at(*OPT_STATE, "history")([[[]]]), r"history' \[0\] is a nested list"),
    "state-an-object-key": (at(*OPT_STATE, "history")(b"bytes"), r"history' is a bytes"),
    "rng-float": (at("rng")(lambda t: t.float()), r"'rng' is a float32 tensor"),
    "rng-short": (at("rng")(lambda t: t[:10]), r"'rng' is not a valid RNG state"),
    "rng-zeros": (at("rng")(lambda t: torch.zeros_like(t)), r"'rng' is not a valid RNG state"),
}


@pytest.mark.parametrize("case", sorted(FIELDS))
def test_every_field_is_checked(tmp_path: Path, case: str) -> None:
    change, message = FIELDS[case]
    path = write(tmp_path, change)
    rng = torch.get_rng_state()
    with pytest.raises(CheckpointError, match=message):
        chainspec.load_checkpoint(path)
    assert torch.equal(torch.get_rng_state(), rng)  # a refused load leaves nothing behind


def test_a_device_this_machine_lacks(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    # A chain without tensors: nothing to deserialise, so only the device field says "cuda".
    spec = chainspec.loads("chainspec: 1\nchains: {net: {input_shape: [4], nodes: [{id: a, type: relu}]}}")
    path = tmp_path / "ckpt.pt"
    chainspec.save_checkpoint(path, spec=spec, chains={"net": spec.build()}, stage=0)
    data = torch.load(path, weights_only=True)
    data["chains"]["net"]["device"] = "cuda:0"
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"was saved on cuda:0, which this machine does not have"):
        chainspec.load_checkpoint(path)
    assert chainspec.load_checkpoint(path, device="cpu").chains["net"].ids() == ["a"]


def test_save_refuses_what_load_would_refuse(tmp_path: Path) -> None:
    spec = chainspec.loads(SPEC, source="grow.yaml")
    net = spec.build("net")
    for alpha in (1.5, -0.1, math.nan, math.inf):
        with pytest.raises(CheckpointError, match="a fade-in weight is a number in"):
            chainspec.save_checkpoint(tmp_path / "x.pt", spec=spec, chains={"net": net}, stage=0, alpha=alpha)
    assert list(tmp_path.iterdir()) == []


def test_overlapping_weights_are_copied_apart(tmp_path: Path) -> None:
    # A weight whose elements share memory (stride 0) would be trained through one number.
    path = write(tmp_path, at("chains", "net", "state", "fc0.weight")(lambda t: t[:1, :1].expand(6, 4)))
    weight = chainspec.load_checkpoint(path).chains["net"]["fc0"].module.weight
    assert weight.stride() == (4, 1)
    with torch.no_grad():
        weight[0, 0] = 5.0
    assert weight[1, 1].item() != 5.0


def test_optimizer_factories_get_the_same_checks(tmp_path: Path) -> None:
    path = write(tmp_path, at(*OPT_STATE, "exp_avg")(0))
    with pytest.raises(CheckpointError, match=r"exp_avg' should be a tensor"):
        chainspec.load_checkpoint(path, optimizer_factory=lambda params: torch.optim.Adam(params))
    # The factory sees the parameters the file lists; when that fails, the file is to blame.
    path = write(tmp_path, lambda d: d["optimizers"]["net"].update(param_groups=[{"params": []}], state={}))
    with pytest.raises(CheckpointError, match=r"optimizer_factory could not build optimizer 'net' for its 0 "):
        chainspec.load_checkpoint(path, optimizer_factory=lambda params: torch.optim.SGD(params, lr=0.1))


# -- 1. the grower state: every field checked, nothing changed on failure ----------------------------------------------

GROWER: dict[str, tuple[Change, str]] = {
    "not-a-dict": (at("extra", "grower")([1]), r"grower state 'grower' should be a dict|grower state should be"),
    "version-a-string": (at("extra", "grower", "version")("1"), r"grower state has version '1'"),
    "unit-a-list": (at("extra", "grower", "unit")([]), r"'unit' should be 'images' or 'steps'"),
    "unit-other": (at("extra", "grower", "unit")("images"), r"the saved run counts images"),
    "position-negative": (at("extra", "grower", "position")(-4), r"'position' should be a count"),
    "position-huge": (at("extra", "grower", "position")(2**64), r"'position' should be a count"),
    "position-a-float": (at("extra", "grower", "position")(4.0), r"'position' should be a count"),
    "steps-missing": (drop("extra", "grower", "steps"), r"'steps' should be a count"),
    "position-not-the-count": (at("extra", "grower", "position")(5), r"'position' is 5, but the run counted 4"),
    "stage-outside-the-spec": (at("extra", "grower", "stage")(7), r"'stage' should be a stage of grow.yaml"),
    "phase-unknown": (at("extra", "grower", "phase")("__class__"), r"'phase' should be"),
    "phase-moved": (at("extra", "grower", "phase")("stabilize"), r"the saved run was in the stabilize phase"),
    "alpha-nan": (at("extra", "grower", "alpha")(math.nan), r"'alpha' should be a number in \[0, 1\]"),
    "alpha-negative": (at("extra", "grower", "alpha")(-0.5), r"'alpha' should be a number in \[0, 1\]"),
    "schedule-not-a-dict": (at("extra", "grower", "schedule")("x"), r"'schedule' is not a schedule"),
    "schedule-phase-kind": (at("extra", "grower", "schedule", "phases", 1, "kind")("grow"),
                            r"schedule.phases\[1\].kind"),
    "schedule-gap": (at("extra", "grower", "schedule", "phases", 1, "start")(3), r"schedule.phases\[1\].start"),
    "schedule-stage-negative": (at("extra", "grower", "schedule", "phases", 0, "stage")(-1),
                                r"schedule.phases\[0\].stage"),
    "schedule-stages-differ": (lambda d: d["extra"]["grower"]["schedule"]["phases"].pop(-2),
                               r"'schedule' is not a schedule"),
    "fade-missing": (at("extra", "grower", "fade")({}), r"has no fade-in of chain 'net'"),
    "fade-of-another-chain": (lambda d: d["extra"]["grower"]["fade"].update(gen={}), r"'fade.gen' is a fade-in"),
    "fade-weights-missing": (drop(*FADE, "weights"), r"'fade.net.weights' should be a dict"),
    "fade-weights-shape": (at(*FADE, "weights", "out0.weight")(lambda t: t.t()), r"do not fit the old path"),
    "fade-weights-int": (at(*FADE, "weights", "out0.weight")(lambda t: t.long()), r"is a torch.int64 tensor"),
    "fade-weights-a-list": (at(*FADE, "weights", "out0.weight")([1.0]), r"should be Tensor"),
    "fade-group-a-string": (at(*FADE, "optimizer", "out0.weight", "group")("0"), r"group' should be a group"),
    "fade-group-below-minus-1": (at(*FADE, "optimizer", "out0.weight", "group")(-2), r"group' should be a group"),
    "fade-param-unknown": (lambda d: d["extra"]["grower"]["fade"]["net"]["optimizer"].update(x={}),
                           r"'fade.net.optimizer.x' is not a parameter of the old path"),
    "fade-state-shape": (at(*FADE, "optimizer", "out0.weight", "state", "exp_avg")(torch.zeros(3)),
                         r"exp_avg' has shape \[3\], but its parameter has shape \[2, 6\]"),
    "fade-state-a-string": (at(*FADE, "optimizer", "out0.weight", "state", "exp_avg")("\x1b[2J"),
                            r"exp_avg' should be a tensor"),
    "fade-state-missing-key": (drop(*FADE, "optimizer", "out0.weight", "state", "exp_avg_sq"),
                               r"exp_avg_sq' is missing"),
    "optimizer-map-unknown-chain": (at("extra", "grower_optimizers")({"gen": "net"}), r"names 'gen'"),
    "optimizer-map-unknown-key": (at("extra", "grower_optimizers", "net")("adam"), r"the optimizer 'adam'"),
    "optimizer-map-missing": (at("extra", "grower_optimizers")({}), r"optimizer 'net' is no chain's"),
}


def fingerprint(ckpt: chainspec.Checkpoint) -> Any:
    chains = {n: (c.ids(), {k: v.clone() for k, v in c.state_dict().items()}) for n, c in ckpt.chains.items()}
    opts = {k: (copy.deepcopy(o.state_dict()), [len(g["params"]) for g in o.param_groups])
            for k, o in ckpt.optimizers.items()}
    return chains, opts


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("case", sorted(GROWER))
def test_every_grower_field_is_checked(tmp_path: Path, case: str) -> None:
    change, message = GROWER[case]
    ckpt = chainspec.load_checkpoint(write(tmp_path, change))
    before = fingerprint(ckpt)
    with pytest.raises(CheckpointError, match=message):
        Grower.from_checkpoint(ckpt)
    assert same(fingerprint(ckpt), before)  # the checkpoint's chains and optimizers are as loaded


def test_a_live_grower_refuses_a_mangled_state_and_changes_nothing() -> None:
    saved = fresh_grower()
    train(saved, 4)
    state = saved.state_dict()
    for mangle in (lambda s: s.update(stage=1.5), lambda s: s["fade"]["net"]["weights"].update({"out0.bias": 1}),
                   lambda s: s["fade"]["net"]["optimizer"]["out0.bias"]["state"].update(exp_avg=torch.zeros(9)),
                   lambda s: s.update(images=-1), lambda s: s.update(fade=[])):
        broken = copy.deepcopy(state)
        mangle(broken)
        grower = fresh_grower(seed=1)
        opt = grower.optimizers["net"]
        assert opt is not None
        ids, weights = grower.chains["net"].ids(), copy.deepcopy(grower.chains["net"].state_dict())
        groups = [list(g["params"]) for g in opt.param_groups]
        with pytest.raises(CheckpointError):
            grower.load_state_dict(broken)
        assert grower.chains["net"].ids() == ids and same(grower.chains["net"].state_dict(), weights)
        assert [list(g["params"]) for g in opt.param_groups] == groups and grower.stage == 0


def test_a_failure_while_blending_in_rolls_everything_back(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = fresh_grower()
    train(saved, 4)
    state = saved.state_dict()
    grower = fresh_grower(seed=1)
    chain, opt = grower.chains["net"], grower.optimizers["net"]
    assert opt is not None
    ids, weights, rng = chain.ids(), copy.deepcopy(chain.state_dict()), torch.get_rng_state()
    groups = [list(g["params"]) for g in opt.param_groups]

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("blend failed (injected)")

    monkeypatch.setattr(Grower, "_wrap", broken)
    with pytest.raises(RuntimeError, match="injected"):
        grower.load_state_dict(state)  # the growth into stage 1 was applied before the failure
    monkeypatch.undo()
    assert chain.ids() == ids and same(chain.state_dict(), weights)
    assert [list(g["params"]) for g in opt.param_groups] == groups and not opt.state
    assert torch.equal(torch.get_rng_state(), rng) and grower.stage == 0 and not grower.blends
    grower.load_state_dict(state)  # and the same state still loads
    assert (grower.stage, grower.fading, grower.alpha) == (1, True, 0.5)


def test_a_schedule_passed_by_the_caller_keeps_its_errors(tmp_path: Path) -> None:
    ckpt = chainspec.load_checkpoint(write(tmp_path))
    with pytest.raises(PlanError, match="this schedule puts that position"):
        Grower.from_checkpoint(ckpt, schedule=chainspec.Schedule.lengths(2, stabilize=100, fade=4, unit="steps"))
    with pytest.raises(ValueError, match="the schedule has 3 stages"):
        Grower.from_checkpoint(ckpt, schedule=chainspec.Schedule.lengths(3, stabilize=1, fade=1, unit="steps"))
    with pytest.raises(ValueError, match="policy must be"):
        Grower.from_checkpoint(ckpt, policy="sometimes")


# -- 2. messages cannot drive the terminal -----------------------------------------------------------------------------

ESCAPES = "\x1b[2J\x1b]0;pwned\x07\r\x00"


@pytest.mark.parametrize("where", ["state-key", "chain-name", "optimizer-key", "source", "class", "param-name",
                                   "fade-key", "dtype"])
def test_control_characters_in_messages_are_escaped(tmp_path: Path, where: str) -> None:
    def change(data: dict[str, Any]) -> None:
        net = data["chains"]["net"]
        if where == "state-key":
            net["state"][f"fc0.{ESCAPES}"] = torch.zeros(1)
        elif where == "chain-name":
            data["chains"][ESCAPES] = net
        elif where == "optimizer-key":
            data["optimizers"][ESCAPES] = {**data["optimizers"]["net"], "class": ESCAPES}
        elif where == "source":
            data["spec"]["source"] = ESCAPES
            data["spec"]["text"] = "nonsense: ["
        elif where == "class":
            data["optimizers"]["net"]["class"] = ESCAPES
        elif where == "param-name":
            data["optimizers"]["net"]["param_groups"][0]["params"].append(ESCAPES)
        elif where == "fade-key":
            data["extra"]["grower"]["fade"][ESCAPES] = {}
        else:
            net["dtype"] = ESCAPES

    path = write(tmp_path, change, name=f"ckpt{ESCAPES[:4]}.pt")
    with pytest.raises(CheckpointError) as info:
        resume(path)
    message = str(info.value)
    assert not any(not c.isprintable() and c != "\n" for c in message), repr(message)
    assert "\\x1b[2J" in message


# -- 3. a write that fails half-way ------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import os, resource, signal, sys, torch, chainspec
    path, spec_path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    spec = chainspec.loads(open(spec_path).read(), source="grow.yaml")
    net = spec.build("net")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0,
                                  extra={"big": torch.zeros(1_000_000)})
    except chainspec.CheckpointError as exc:
        print("CheckpointError:", exc)
    else:
        print("SAVED")
""")


def test_a_file_size_limit_mid_write_is_a_checkpoint_error(tmp_path: Path) -> None:
    # A real failing write: RLIMIT_FSIZE makes write() fail with EFBIG part-way through, as a full disk
    # fails with ENOSPC; torch's zip writer turns that into a RuntimeError of its own.
    spec = chainspec.loads(SPEC, source="grow.yaml")
    path = tmp_path / "last.pt"
    chainspec.save_checkpoint(path, spec=spec, chains={"net": spec.build("net")}, stage=0, extra={"n": 1})
    good = path.read_bytes()
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "writer.py").write_text(WRITER)
    out = subprocess.run([sys.executable, str(tmp_path / "writer.py"), str(path), str(tmp_path / "spec.yaml"),
                          str(64 * 1024)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"CheckpointError: cannot write checkpoint {path}: File too large; the previous "
                                 "checkpoint there, if any, is unchanged"), out.stdout + out.stderr
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "spec.yaml", "writer.py"]
    assert chainspec.load_checkpoint(path).extra == {"n": 1}


class FailingFile:
    """A file object whose writes fail with ENOSPC after ``budget`` bytes, as on a full disk."""

    def __init__(self, handle: Any, budget: int) -> None:
        self.handle, self.budget = handle, budget

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if size > self.budget:
            raise OSError(28, "No space left on device")
        self.budget -= size
        return self.handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_every_step_of_a_write_fails_as_a_checkpoint_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           step: str) -> None:
    spec = chainspec.loads(SPEC, source="grow.yaml")
    net = spec.build("net")
    path = tmp_path / "last.pt"
    chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, extra={"n": 1})
    good = path.read_bytes()

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    if step == "write":
        real = chainspec.revise.checkpoint._Recording.__init__
        monkeypatch.setattr(chainspec.revise.checkpoint._Recording, "__init__",
                            lambda self, handle: real(self, FailingFile(handle, 2000)))
    else:
        monkeypatch.setattr(chainspec.revise.checkpoint.os, step, fail)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*last\.pt: No space left on device; the "
                                              "previous checkpoint there, if any, is unchanged") as info:
        chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, extra={"n": 2})
    monkeypatch.undo()
    assert isinstance(info.value.__cause__, (OSError, RuntimeError))
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


# -- 4. the spec inside a checkpoint is loaded with the caller's limits ------------------------------------------------

def hostile_specs() -> dict[str, str]:
    budget = 256 * 1024 - 200
    laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
    wide = "chainspec: 1\nchains:\n  net:\n    input_shape: [4]\n    nodes:\n"
    line = "      - {id: n%d, type: relu}\n"
    count = (budget - len(wide)) // len(line % 99999)
    def nodes(kind: str) -> str:
        return "{nodes: [" + ", ".join(f"{{id: n{i}, type: {kind}}}" for i in range(40)) + "]}"

    composite = ("chainspec: 1\ntypes:\n  t0: " + nodes("relu") + "\n"
                 + "".join(f"  t{k}: {nodes(f't{k - 1}')}\n" for k in range(1, 5))
                 + "chains: {net: {input_shape: [4], nodes: [{id: x, type: t4}]}}\n")
    return {
        "alias-bomb": "chainspec: 1\n" + laughs + "chains: {}\n",
        "nesting": "chainspec: 1\nx: " + "[" * (budget // 2) + "]" * (budget // 2) + "\n",
        "many-nodes": wide + "".join(line % i for i in range(count)),  # valid: refused for its stage
        "composite-expansion": composite,
        "too-big": "chainspec: 1\n" + "#" * (300 * 1024) + "\nchains: {}\n",
    }


@pytest.mark.parametrize("kind", sorted(hostile_specs()))
def test_a_hostile_spec_in_a_checkpoint_is_refused_quickly(tmp_path: Path, kind: str) -> None:
    text = hostile_specs()[kind]
    path = write(tmp_path, at("spec", "text")(text))
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        chainspec.load_checkpoint(path)
    elapsed = time.perf_counter() - start
    start = time.perf_counter()
    with contextlib.suppress(chainspec.SpecError):
        chainspec.loads(text, source="grow.yaml")
    alone = time.perf_counter() - start
    if kind == "many-nodes":  # a valid spec of thousands of nodes, but of one stage where the file says 1
        assert "'stage' is 1, but its spec has stages 0..0" in str(info.value)
    else:
        assert "its spec no longer loads" in str(info.value)
        assert isinstance(info.value.__cause__, chainspec.SpecError)
    # The spec costs what loading it alone costs (milliseconds for the hostile ones; a valid spec of 8,000
    # nodes takes longer), and the checkpoint adds little to it.
    assert elapsed < 2 * alone + 0.5, f"{kind}: {elapsed:.2f} s in load_checkpoint, {alone:.2f} s in loads"


def test_limits_are_passed_to_the_spec_in_the_checkpoint(tmp_path: Path) -> None:
    path = write(tmp_path)
    with pytest.raises(CheckpointError, match=r"its spec no longer loads:\ngrow\.yaml"):
        chainspec.load_checkpoint(path, limits=Limits(max_nodes=3))
    with pytest.raises(CheckpointError, match=r"its spec no longer loads"):
        chainspec.load_checkpoint(path, limits=Limits(max_bytes=100))
    assert chainspec.load_checkpoint(path, limits=Limits(max_nodes=5)).spec.limits.max_nodes == 5
    with pytest.raises(TypeError, match=r"limits must be a chainspec\.Limits"):
        chainspec.load_checkpoint(path, limits={"max_nodes": 5})  # type: ignore[arg-type]


# -- 5. fuzzing: every field of a valid payload, mutated ---------------------------------------------------------------

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
SCALE = 1 if PROFILE == "default" else 20
#: The slowest single load (and resume) the fuzz has seen, in seconds, with what it was fed.
FUZZ_STATS: dict[str, Any] = {"examples": 0, "worst_s": 0.0, "worst_case": None}


def key_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path in the nested payload (dict keys and list indices)."""
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from key_paths(item, (*prefix, key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from key_paths(item, (*prefix, i))


def _tensor_variants(old: Any) -> list[Any]:
    if not isinstance(old, torch.Tensor) or old.is_sparse:
        return [torch.zeros(3, 7)]
    return [old.long(), old.double(), old.flatten(), old.unsqueeze(0), old.flatten()[:0], torch.zeros(()),
            old.to(torch.complex64) if old.is_floating_point() else old.bool(), old.to("meta"),
            torch.full_like(old, math.nan) if old.is_floating_point() else old]


HOSTILE_VALUES = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1, 2**63, -(2**63) - 1, 10**30, 10**400, 0.5, -0.0, math.nan,
                     math.inf, "", "_inductor", "os", "__class__", "torch._inductor", "cuda:99", "meta", "float64",
                     "torch.optim.adam.Adam", [], [[[[]]]], {}, {"params": []}, (1, 2), b"\x00bytes"]),
    st.text(alphabet=st.characters(max_codepoint=0x2FF), max_size=8),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
)
MUTATION = st.one_of(
    st.tuples(st.just("delete"), st.just(None)),
    st.tuples(st.just("replace"), HOSTILE_VALUES),
    st.tuples(st.just("tensor"), st.integers(min_value=0, max_value=8)),
    st.tuples(st.just("nest"), st.integers(min_value=1, max_value=3)),
)


def mutate(data: dict[str, Any], choice: int, mutation: tuple[str, Any]) -> str:
    """Apply one mutation at the ``choice``-th key path (modulo their number); describe it."""
    paths = list(key_paths(data))
    path = paths[choice % len(paths)]
    parent: Any = data
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, tuple):  # tuples are immutable: mutate the tuple's owner instead
        return mutate(data, choice + 1, mutation)
    key, (kind, arg) = path[-1], mutation
    if kind == "delete":
        del parent[key]
    elif kind == "replace":
        parent[key] = arg
    elif kind == "tensor":
        variants = _tensor_variants(parent[key])
        parent[key] = variants[arg % len(variants)]
    else:  # wrap the value in lists, or a dict under a hostile key
        value = parent[key]
        for _ in range(arg):
            value = [value] if arg != 2 else {"__class__": value}
        parent[key] = value
    return f"{kind} {'.'.join(map(str, path))} {arg!r:.60}"


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=90 * SCALE, deadline=None, derandomize=PROFILE == "default",
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.tuples(st.integers(min_value=0, max_value=10**6), MUTATION), min_size=1, max_size=3))
def test_mutated_checkpoints_load_or_fail_cleanly(fuzz_dir: Path, mutations: list[tuple[int, Any]]) -> None:
    data = payload()
    described = [mutate(data, choice, mutation) for choice, mutation in mutations]
    path = fuzz_dir / "mutated.pt"
    try:
        torch.save(data, path)
    except Exception:  # a payload torch itself cannot write is not a checkpoint to test
        return
    before, rng = set(sys.modules), torch.get_rng_state()
    start = time.perf_counter()
    try:
        grower = resume(path)
    except CheckpointError as err:
        message = str(err)
        assert not any(not c.isprintable() and c != "\n" for c in message), f"{described}: {message!r}"
        assert torch.equal(torch.get_rng_state(), rng), described
    else:
        assert grower.stage in (0, 1), described
    elapsed = time.perf_counter() - start
    assert set(sys.modules) - before == set(), f"{described} imported {sorted(set(sys.modules) - before)}"
    FUZZ_STATS["examples"] += 1
    if elapsed > FUZZ_STATS["worst_s"]:
        FUZZ_STATS.update(worst_s=elapsed, worst_case=described)
    assert elapsed < 5.0, f"{described} took {elapsed:.2f} s"


def test_fuzz_report() -> None:
    """Print (and, with CHAINSPEC_FUZZ_REPORT=file, write) the worst load time the fuzz reached."""
    if not FUZZ_STATS["examples"]:
        pytest.skip("the fuzz did not run in this session")
    print(f"\ncheckpoint fuzz: {FUZZ_STATS['examples']} examples, worst load {FUZZ_STATS['worst_s'] * 1000:.1f} ms "
          f"({FUZZ_STATS['worst_case']})")
    report = os.environ.get("CHAINSPEC_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(FUZZ_STATS, default=str, indent=2))
