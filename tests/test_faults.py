"""Faults: whatever breaks, and wherever, nothing is lost.

- ``plan.apply``: an exception while building a new node, while updating the
  optimizer, or a KeyboardInterrupt at any line of the apply leaves the chain,
  the optimizer and torch's RNG bit-identical, and the same plan still applies.
- checkpoints: a write killed with SIGKILL half-way, or a writer failing after
  partial bytes, leaves the previous checkpoint intact; truncated, foreign or
  forged files and checkpoints that do not match their spec are refused with a
  CheckpointError that says why (naming the nodes, for a mismatch).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import chainspec
import chainspec.revise.apply
import chainspec.revise.checkpoint
import chainspec.revise.optim
from chainspec import Chain, CheckpointError, SpecError
from chainspec.revise import apply as _apply
from chainspec.revise import optim as _optim
from chainspec.types.registry import register_type, unregister_type
from specs import MLP
from tracing import traced

OLD = MLP.replace("{id: fc2, type: linear", "{id: fc2, type: fragile_linear").replace(
    "{id: fc3, type: linear", "{id: fc3, type: fragile_linear")

# Every kind of op at once: remove (act1), replace with a function-preserving widening (fc2) and
# with fresh weights (bn, fc3), move and update (drop), and an insert with its own optimizer group.
NEW = """\
chainspec: 1
chains:
  net:
    input_shape: [8]
    nodes:
      - {id: fc1, type: linear, args: {in_features: 8, out_features: 16}}
      - {id: fc2, type: fragile_linear, args: {in_features: 16, out_features: 24}, init: preserve}
      - {id: bn, type: batchnorm1d, args: {num_features: 24, momentum: 0.5}}
      - {id: act2, type: relu}
      - {id: drop, type: dropout, args: {p: 0.2}}
      - {id: fc_new, type: fragile_linear, args: {in_features: 24, out_features: 24}, optim: {lr: 0.001}}
      - {id: fc3, type: fragile_linear, args: {in_features: 24, out_features: 4}}
"""


class Breaker:
    """Makes the ``n``-th construction of a ``fragile_linear`` raise ``error``; ``n=0`` never."""

    def __init__(self) -> None:
        self.n, self.calls, self.error = 0, 0, BaseException()

    def tick(self) -> None:
        self.calls += 1
        if self.n and self.calls == self.n:
            raise self.error


BREAKER = Breaker()


@pytest.fixture(autouse=True)
def fragile_linear() -> Iterator[None]:
    """A linear layer type whose construction can be made to fail on demand."""

    @register_type("fragile_linear", replace=True)
    def fragile(in_features: int, out_features: int) -> nn.Module:
        """nn.Linear that may fail while being built (fault injection)."""
        BREAKER.tick()
        return nn.Linear(in_features, out_features)

    BREAKER.n, BREAKER.calls = 0, 0
    yield
    unregister_type("fragile_linear")


def trained(optimizer: str = "adam", spec: chainspec.Spec | None = None) -> tuple[
        chainspec.Spec, Chain, torch.optim.Optimizer]:
    """A chain of ``spec`` (by default OLD, loaded afresh) after two training steps, and its optimizer."""
    torch.manual_seed(0)
    spec = spec if spec is not None else chainspec.loads(OLD, source="old.yaml")
    net = spec.build(dtype=torch.float64)
    opt: torch.optim.Optimizer = (torch.optim.Adam(net.parameters(), lr=1e-2) if optimizer == "adam"
                                  else torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9))
    for _ in range(2):
        step(net, opt)
    return spec, net, opt


def step(net: Chain, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    net(torch.linspace(-1, 1, 64, dtype=torch.float64).reshape(8, 8)).square().mean().backward()
    opt.step()


def bits(t: torch.Tensor) -> bytes:
    return t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


class Fingerprint:
    """Everything about a chain and its optimizer that a failed apply must leave as it was, bit for bit."""

    def __init__(self, net: Chain, opt: torch.optim.Optimizer | None) -> None:
        self.nodes = [(n, n.id, n.module, n.type, n.prev, n.next) for n in net]
        self.head, self.tail = net.head, net.tail
        self.modules = list(net._modules.items())
        self.params = [(name, p, p.dtype, tuple(p.shape), bits(p), p.requires_grad)
                       for name, p in net.named_parameters()]
        self.buffers = [(name, b, bits(b)) for name, b in net.named_buffers()]
        self.modes = [(name, m.training) for name, m in net.named_modules()]
        self.attrs = net.revision
        self.rng = bits(torch.get_rng_state())
        # An interrupt as a `with torch.device("meta")` block ends must not leave the meta device in force.
        self.device = (torch.get_default_device(), torch._C._len_torch_function_stack(), torch.is_grad_enabled())
        self.groups: list[Any] = []
        self.state: list[Any] = []
        if opt is not None:
            self.groups = [(g, [p for p in g["params"]], {k: v for k, v in g.items() if k != "params"})
                           for g in opt.param_groups]
            self.state = [(p, s, {k: (bits(v) if isinstance(v, torch.Tensor) else v) for k, v in s.items()})
                          for p, s in opt.state.items()]

    def assert_same(self, other: Fingerprint) -> None:
        assert other.nodes == self.nodes and (other.head, other.tail) == (self.head, self.tail)
        assert other.modules == self.modules
        assert other.params == self.params
        assert other.buffers == self.buffers
        assert other.modes == self.modes
        assert other.attrs == self.attrs
        assert other.rng == self.rng
        assert other.device == self.device
        assert len(other.groups) == len(self.groups)
        for (g, params, hyper), (g2, params2, hyper2) in zip(self.groups, other.groups, strict=True):
            assert g is g2 and params == params2 and hyper.keys() == hyper2.keys()
            assert all(chainspec.revise.optim._same(hyper[k], hyper2[k]) for k in hyper)
        assert other.state == self.state


def unchanged(net: Chain, opt: torch.optim.Optimizer | None, before: Fingerprint) -> None:
    before.assert_same(Fingerprint(net, opt))


def assert_equals_scratch(net: Chain, spec: chainspec.Spec) -> None:
    scratch = spec.build(dtype=torch.float64)
    assert [n.id for n in net] == [n.id for n in scratch]
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in scratch.state_dict().items()}
    assert [name for name, _ in net.named_parameters()] == [name for name, _ in scratch.named_parameters()]


def finish(plan: Any, spec: chainspec.Spec, net: Chain, opt: torch.optim.Optimizer, policy: str = "keep") -> None:
    """After a rolled-back attempt: the same plan applies, the result is the new revision, and it trains."""
    BREAKER.n = 0
    survivor = bits(net["fc1"].module.weight)
    plan.apply(net, opt, policy=policy)
    assert_equals_scratch(net, spec)
    assert bits(net["fc1"].module.weight) == survivor
    step(net, opt)


# -- plan.apply ----------------------------------------------------------------------------------------------------

def traced_apply(plan: Any, net: Chain, opt: torch.optim.Optimizer, policy: str,
                 on_line: Callable[[Any], None]) -> None:
    """Apply with ``on_line(frame)`` called as each chainspec line is about to run."""
    traced(lambda: plan.apply(net, opt, policy=policy), on_line)


def line_events(plan: Any, net: Chain, opt: torch.optim.Optimizer, policy: str) -> list[str]:
    """Run the apply once under a tracer; return the function of each chainspec line it executes, in order."""
    names: list[str] = []
    traced_apply(plan, net, opt, policy, lambda frame: names.append(frame.f_code.co_name))
    return names


def interrupt_at(plan: Any, net: Chain, opt: torch.optim.Optimizer, policy: str, k: int) -> None:
    """Apply, raising KeyboardInterrupt as the ``k``-th chainspec line is about to run."""
    count = 0

    def count_and_maybe_interrupt(frame: Any) -> None:
        nonlocal count
        count += 1
        if count == k:
            raise KeyboardInterrupt(f"injected at line event {k}")

    traced_apply(plan, net, opt, policy, count_and_maybe_interrupt)


@pytest.mark.parametrize("policy", ["keep", "reset"])
def test_interrupt_at_any_line_of_apply(policy: str) -> None:
    old, net, opt = trained()
    new = chainspec.loads(NEW, source="new.yaml")
    plan = chainspec.diff(old, new)
    assert {op.kind for op in plan.ops} == {"insert", "remove", "move", "update", "replace"}
    # A dry run on an identical chain (built from the very same Spec, so apply's check that the chain runs
    # the plan's old revision takes the same path) counts the lines and finds where the commit phase begins.
    _, probe_net, probe_opt = trained(spec=old)
    names = line_events(plan, probe_net, probe_opt, policy)
    commit = names.index("splice")
    # Every fourth line of the commit phase (splicing, optimizer surgery, bookkeeping), and a
    # spread over the prepare phase; offset by policy so the two runs cover different lines.
    offset = 1 if policy == "keep" else 3
    points = sorted({*range(commit + offset, len(names) + 1, 4), *range(offset, commit, 50), len(names)})
    assert len(points) > 100
    before = Fingerprint(net, opt)
    completed = []
    for k in points:
        survivor = bits(net["fc1"].module.weight)
        try:
            interrupt_at(plan, net, opt, policy, k)
        except KeyboardInterrupt as exc:
            assert str(exc) == f"injected at line event {k}"
        # (Past the apply's last line no interrupt comes: the revision is then simply applied.)
        if net.spec is new:
            # All or nothing: an interrupt after the commit finished finds the revision fully applied.
            completed.append(k)
            assert_equals_scratch(net, new)
            assert bits(net["fc1"].module.weight) == survivor
            step(net, opt)
            _, net, opt = trained(spec=old)
            before = Fingerprint(net, opt)
        else:
            unchanged(net, opt, before)
    # Only the last lines of apply (after its all-or-nothing block) may find it complete.
    assert completed and min(completed) > max(i for i, name in enumerate(names) if name == "record")
    finish(plan, new, net, opt, policy)


def test_interrupt_that_skips_a_context_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C as a `with torch.device("meta")` or `no_grad` block ends skips its __exit__: the rollback
    must still leave the default device and autograd as they were (the line tracer above cannot reach
    inside torch's own context managers, so the skipped exits are simulated here)."""
    old, net, opt = trained()
    plan = chainspec.diff(old, chainspec.loads(NEW, source="new.yaml"))
    real = chainspec.revise.apply.shape_check

    def cut_short(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        torch.device("meta").__enter__()  # entered, never exited
        torch.set_grad_enabled(False)  # a no_grad() whose exit never ran
        raise KeyboardInterrupt

    monkeypatch.setattr(_apply, "shape_check", cut_short)
    before = Fingerprint(net, opt)
    with pytest.raises(KeyboardInterrupt):
        plan.apply(net, opt)
    unchanged(net, opt, before)
    assert torch.empty(1).device.type == "cpu" and torch.is_grad_enabled()


@pytest.mark.parametrize("error", [RuntimeError("factory failed (injected)"), MemoryError(),
                                   torch.OutOfMemoryError("CUDA out of memory (injected)"),
                                   KeyboardInterrupt()], ids=lambda e: type(e).__name__)
def test_failure_while_building_a_new_node(error: BaseException) -> None:
    old, net, opt = trained()
    new = chainspec.loads(NEW, source="new.yaml")
    plan = chainspec.diff(old, new)
    _, probe_net, probe_opt = trained()
    BREAKER.calls = 0
    plan.apply(probe_net, probe_opt)  # count the fragile constructions one apply makes
    builds = BREAKER.calls
    # fc2 (replaced), fc_new (inserted), fc3 (replaced): each probed on the meta device, then built.
    assert builds >= 3
    before = Fingerprint(net, opt)
    for n in range(1, builds + 1):
        BREAKER.n, BREAKER.calls, BREAKER.error = n, 0, error
        # A real build failing is a SpecError at the node's line (a failing meta probe that does
        # not fail again when re-checked is re-raised as it was); an interrupt stays an interrupt.
        with pytest.raises((type(error), SpecError)) as info:
            plan.apply(net, opt)
        if isinstance(info.value, SpecError):
            assert "new.yaml:" in str(info.value) and not isinstance(error, KeyboardInterrupt)
        unchanged(net, opt, before)
    finish(plan, new, net, opt)


#: Optimizer surgery steps an apply of OLD -> NEW goes through (with policy="reset").
SURGERY = ["place", "carry_out", "remove_params", "add_params", "group_with", "sort_params", "clear_state"]


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("function", SURGERY)
def test_failure_while_updating_the_optimizer(monkeypatch: pytest.MonkeyPatch, function: str, when: str) -> None:
    old, net, opt = trained()
    new = chainspec.loads(NEW, source="new.yaml")
    plan = chainspec.diff(old, new)
    real = getattr(_optim, function)
    calls: list[int] = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if when == "after":
            real(*args, **kwargs)  # the step has done its (partial) work when the failure strikes
        raise RuntimeError(f"{function} failed (injected)")

    monkeypatch.setattr(_optim, function, broken)
    before = Fingerprint(net, opt)
    with pytest.raises(RuntimeError, match="injected"):
        plan.apply(net, opt, policy="reset")
    assert calls, f"{function} was not called: this fault was never injected"
    unchanged(net, opt, before)
    monkeypatch.undo()
    finish(plan, new, net, opt, "reset")


class PickyAdam(torch.optim.Adam):
    """An optimizer that refuses new parameter groups once armed (some custom optimizers do)."""

    armed = False

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.armed:
            raise ValueError("this optimizer cannot take new groups (injected)")
        super().add_param_group(param_group)


def test_optimizer_refusing_a_new_group() -> None:
    old = chainspec.loads(OLD, source="old.yaml")
    net = old.build(dtype=torch.float64)
    opt = PickyAdam(net.parameters(), lr=1e-2)
    step(net, opt)
    plan = chainspec.diff(old, chainspec.loads(NEW, source="new.yaml"))
    opt.armed = True
    before = Fingerprint(net, opt)
    with pytest.raises(ValueError, match="cannot take new groups"):
        plan.apply(net, opt)
    unchanged(net, opt, before)


def test_failure_in_one_chain_rolls_back_both() -> None:
    old, g, opt_g = trained()
    _, d, opt_d = trained("sgd")
    new = chainspec.loads(NEW, source="new.yaml")
    plan = chainspec.diff(old, new)
    before_g, before_d = Fingerprint(g, opt_g), Fingerprint(d, opt_d)
    BREAKER.n, BREAKER.calls, BREAKER.error = 5, 0, RuntimeError("second chain's build fails (injected)")
    with pytest.raises(SpecError, match="injected"):
        chainspec.revise.apply.apply_plans([(plan, g, opt_g), (plan, d, opt_d)])
    unchanged(g, opt_g, before_g)
    unchanged(d, opt_d, before_d)


# -- checkpoints: killed and failing writes ------------------------------------------------------------------------

def saved_checkpoint(tmp_path: Path, n: int = 1) -> tuple[Path, bytes, dict[str, torch.Tensor]]:
    spec, net, opt = trained()
    path = tmp_path / "last.pt"
    chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, optimizers={"net": opt},
                              extra={"n": n})
    return path, path.read_bytes(), {k: v.clone() for k, v in net.state_dict().items()}


def assert_loads_as(path: Path, state: dict[str, torch.Tensor], n: int) -> None:
    ckpt = chainspec.load_checkpoint(path)
    assert ckpt.extra == {"n": n}
    loaded = ckpt.chains["net"].state_dict()
    assert loaded.keys() == state.keys() and all(bits(loaded[k]) == bits(v) for k, v in state.items())


WRITER = textwrap.dedent("""
    import os, sys, time, torch, chainspec
    from chainspec.revise import checkpoint as _checkpoint
    from chainspec.types.registry import register_type

    @register_type("fragile_linear")
    def fragile(in_features: int, out_features: int) -> torch.nn.Module:
        return torch.nn.Linear(in_features, out_features)

    path, mode, spec_text = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
    spec = chainspec.loads(spec_text, source="old.yaml")
    net = spec.build(dtype=torch.float64)
    if mode == "half":
        real_save = torch.save

        def half_then_hang(obj, handle, *args, **kwargs):
            import io
            buffer = io.BytesIO()
            real_save(obj, buffer)
            data = buffer.getvalue()
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())
            print("HALF", flush=True)
            time.sleep(120)

        _checkpoint.torch.save = half_then_hang
        chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, extra={"n": 2})
    else:
        big = torch.zeros(1_000_000, dtype=torch.float64)  # 8 MB per write: kills land mid-write
        for n in range(2, 10_000):
            chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, extra={"n": n, "big": big})
            print("SAVED", n, flush=True)
""")


def run_writer(tmp_path: Path, path: Path, mode: str) -> subprocess.Popen[str]:
    script, spec = tmp_path / "writer.py", tmp_path / "old.yaml"
    script.write_text(WRITER)
    spec.write_text(OLD)
    return subprocess.Popen([sys.executable, str(script), str(path), mode, str(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen[str], word: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(word):
        proc.kill()
        raise AssertionError(f"writer said {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}")
    return line


def test_sigkill_mid_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path, good, state = saved_checkpoint(tmp_path)
    proc = run_writer(tmp_path, path, "half")
    wait_for(proc, "HALF")  # half of the new checkpoint is on disk, fsynced, in the temporary file
    temporaries = [p for p in tmp_path.iterdir() if p.name.startswith(".last.pt.")]
    assert len(temporaries) == 1 and 0 < temporaries[0].stat().st_size < len(good) * 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert path.read_bytes() == good
    assert_loads_as(path, state, 1)
    # The next save works and replaces it; the stray temporary file is never read.
    spec, net, _ = trained()
    chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, extra={"n": 3})
    assert chainspec.load_checkpoint(path).extra == {"n": 3}


def test_a_killed_writers_temporary_file_is_cleaned_up_by_a_later_save(tmp_path: Path) -> None:
    path, _, _ = saved_checkpoint(tmp_path)
    proc = run_writer(tmp_path, path, "half")
    wait_for(proc, "HALF")
    (stray,) = [p for p in tmp_path.iterdir() if p.name.startswith(".last.pt.")]
    assert stray.name.startswith(f".last.pt.{proc.pid}-") and stray.name.endswith(".tmp")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # A live writer's file (here: a sleeping process's pid), however old, is never touched.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".last.pt.{sleeper.pid}-busy.tmp"
        busy.write_bytes(b"in progress")
        other = tmp_path / f".other.pt.{proc.pid}-x.tmp"  # another checkpoint's: not ours to judge
        other.write_bytes(b"x")
        old = time.time() - 2 * chainspec.revise.checkpoint.STALE_AFTER_S
        for p in (busy, other):
            os.utime(p, (old, old))
        spec, net, _ = trained()
        chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, extra={"n": 3})
        assert stray.exists()  # written to moments ago: perhaps a writer on another machine
        os.utime(stray, (old, old))
        chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, extra={"n": 4})
        assert not stray.exists()
        assert busy.exists() and other.exists()
        assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == sorted([busy.name, other.name])
        assert chainspec.load_checkpoint(path).extra == {"n": 4}
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    path, _, _ = saved_checkpoint(tmp_path)
    proc = run_writer(tmp_path, path, "loop")
    wait_for(proc, "SAVED")
    time.sleep(0.05 + (os.getpid() % 7) / 20)  # somewhere in a later write
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    ckpt = chainspec.load_checkpoint(path)  # whichever write completed last, complete
    assert ckpt.extra["n"] >= 2 and ckpt.extra["big"].shape == (1_000_000,)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt(),
                                   RuntimeError("writer crashed (injected)")], ids=lambda e: type(e).__name__)
def test_writer_failing_after_partial_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            error: BaseException) -> None:
    path, good, state = saved_checkpoint(tmp_path)

    def dies_halfway(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        handle.write(good[: len(good) // 3])
        raise error

    spec, net, _ = trained()
    monkeypatch.setattr(chainspec.revise.checkpoint.torch, "save", dies_halfway)
    expected: type[BaseException] = CheckpointError if isinstance(error, OSError) else type(error)
    with pytest.raises(expected) as info:
        chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, extra={"n": 2})
    monkeypatch.undo()
    if expected is CheckpointError:
        assert f"cannot write checkpoint {path}: No space left on device" in str(info.value)
        assert "unchanged" in str(info.value)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert_loads_as(path, state, 1)


def test_write_into_a_missing_directory(tmp_path: Path) -> None:
    spec, net, _ = trained()
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*nowhere.*No such file"):
        chainspec.save_checkpoint(tmp_path / "nowhere" / "x.pt", spec=spec, chains={"net": net}, stage=0)


# -- checkpoints: truncated, foreign and forged files --------------------------------------------------------------

def test_truncated_checkpoints(tmp_path: Path) -> None:
    _, good, _ = saved_checkpoint(tmp_path)
    cut = tmp_path / "cut.pt"
    for length in sorted({0, 1, 10, 100, 1000, len(good) // 4, len(good) // 2, len(good) - 100, len(good) - 1}):
        cut.write_bytes(good[:length])
        with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*cut\.pt: .*truncated, corrupt"):
            chainspec.load_checkpoint(cut)


def foreign_files(tmp_path: Path) -> dict[str, Callable[[Path], None]]:
    def torch_save(obj: Any, **kwargs: Any) -> Callable[[Path], None]:
        return lambda p: torch.save(obj, p, **kwargs)

    def zipped(p: Path) -> None:
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("data.txt", "hello")

    return {
        "text": lambda p: p.write_text("hello, world\n"),
        "spec": lambda p: p.write_text(OLD),
        "json": lambda p: p.write_text('{"format": "chainspec-checkpoint"}'),
        "random-bytes": lambda p: p.write_bytes(bytes(range(256)) * 40),
        "zip": zipped,
        "state-dict": torch_save(nn.Linear(2, 2).state_dict()),
        "tensor": torch_save(torch.zeros(3)),
        "list": torch_save([1, 2, 3]),
        "legacy-format": torch_save({"format": "chainspec-checkpoint", "version": 1},
                                    _use_new_zipfile_serialization=False),
        "npy": lambda p: p.write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, "
                                       b"'shape': (1,), }" + b" " * 60 + b"\n" + bytes(8)),
    }


@pytest.mark.parametrize("kind", sorted(foreign_files(Path())))
def test_foreign_files(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.pt"
    foreign_files(tmp_path)[kind](path)
    with pytest.raises(CheckpointError) as info:
        chainspec.load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "not a chainspec checkpoint" in message or "truncated, corrupt" in message or "not a valid" in message


def test_directories_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory"):
        chainspec.load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        chainspec.load_checkpoint(tmp_path / "missing.pt")


FORGERIES: dict[str, Callable[[dict[str, Any]], None]] = {
    "no-spec": lambda p: p.pop("spec"),
    "spec-not-a-dict": lambda p: p.update(spec="chainspec: 1"),
    "spec-text-missing": lambda p: p["spec"].pop("text"),
    "stage-a-string": lambda p: p.update(stage="0"),
    "stage-a-bool": lambda p: p.update(stage=True),
    "chains-a-list": lambda p: p.update(chains=[1]),
    "chain-without-state": lambda p: p["chains"]["net"].pop("state"),
    "training-a-string": lambda p: p["chains"]["net"].update(training="yes"),
    "dtype-a-number": lambda p: p["chains"]["net"].update(dtype=3),
    "optimizers-missing": lambda p: p.pop("optimizers"),
    "optimizer-class-missing": lambda p: p["optimizers"]["net"].pop("class"),
    "groups-not-a-list": lambda p: p["optimizers"]["net"].update(param_groups={}),
    "group-params-missing": lambda p: p["optimizers"]["net"]["param_groups"][0].pop("params"),
    "extra-a-list": lambda p: p.update(extra=[]),
    "alpha-a-string": lambda p: p.update(alpha="0.5"),
    "rng-a-list": lambda p: p.update(rng=[1, 2]),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_layouts(tmp_path: Path, forgery: str) -> None:
    path, _, _ = saved_checkpoint(tmp_path)
    payload = torch.load(path, weights_only=True)
    FORGERIES[forgery](payload)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"is not a valid chainspec checkpoint: '[a-z_.\[\]0-9]+' should be"):
        chainspec.load_checkpoint(path)


# -- checkpoints whose spec does not match the chain ---------------------------------------------------------------

LONG = "chainspec: 1\nchains:\n  net:\n    input_shape: [4]\n    nodes:\n" + "".join(
    f"      - {{id: a{i}, type: linear, args: {{in_features: 4, out_features: 4}}}}\n" for i in range(12))


def test_save_names_the_mismatched_nodes(tmp_path: Path) -> None:
    spec = chainspec.loads(LONG, source="long.yaml")
    net = spec.build()
    # A revision applied live (a node added at the end, one removed), saved with the old spec:
    revised = chainspec.loads(LONG.replace("      - {id: a3,", "      - {id: gone,").replace(
        "a11, type: linear, args: {in_features: 4, out_features: 4}}\n",
        "a11, type: linear, args: {in_features: 4, out_features: 4}}\n"
        "      - {id: tail_extra, type: relu}\n"), source="new.yaml")
    chainspec.diff(spec, revised).apply(net)
    with pytest.raises(CheckpointError) as info:
        chainspec.save_checkpoint(tmp_path / "x.pt", spec=spec, chains={"net": net}, stage=0)
    message = str(info.value)
    assert "not in the spec: gone, tail_extra" in message and "missing from the chain: a3" in message
    # Same nodes, another order.
    net = spec.build()
    net.move_after("a0", "a5")
    with pytest.raises(CheckpointError, match=r"another order, from position 0: a1 where the spec has a0"):
        chainspec.save_checkpoint(tmp_path / "x.pt", spec=spec, chains={"net": net}, stage=0)
    # Same ids, other shapes: the checkpoint could never be loaded back, so it is not written.
    wide = chainspec.loads(LONG.replace("{id: a7, type: linear, args: {in_features: 4, out_features: 4}}",
                                        "{id: a7, type: linear, args: {in_features: 4, out_features: 8}}").replace(
        "{id: a8, type: linear, args: {in_features: 4,", "{id: a8, type: linear, args: {in_features: 8,"))
    with pytest.raises(CheckpointError) as info:
        chainspec.save_checkpoint(tmp_path / "x.pt", spec=spec, chains={"net": wide.build()}, stage=0)
    message = str(info.value)
    assert "do not fit long.yaml at stage 0" in message
    assert "a7 (a7.weight: [8, 4], the spec has [4, 4], a7.bias: [8], the spec has [4])" in message
    assert "a8 (a8.weight: [4, 8], the spec has [4, 4])" in message
    assert not (tmp_path / "x.pt").exists()


def test_load_names_the_mismatched_nodes(tmp_path: Path) -> None:
    path, _, _ = saved_checkpoint(tmp_path)
    payload = torch.load(path, weights_only=True)
    # The file's spec text swapped for another revision: its weights no longer fit.
    payload["spec"]["text"] = NEW
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        chainspec.load_checkpoint(path)
    message = str(info.value)
    assert "the weights of chain 'net' do not fit its spec" in message
    assert "fc2 (fc2.weight: [16, 16], the spec has [24, 16]" in message
    assert "fc_new (missing)" in message
    assert "bn (" in message and "fc3 (" in message
    assert "fc1" not in message  # only the nodes that differ
