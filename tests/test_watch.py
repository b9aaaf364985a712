"""SpecWatcher: one stat() per idle poll, only complete saves read, invalid revisions rejected with file:line:col,
valid ones applied, and a node removed by one revision restored, trained, by the next.

A save is taken once it is the same on two reads ``settle`` seconds apart: the tests move the watcher's clock
(``Clock``) instead of sleeping, except the end-to-end ones that write a file in two real ``write()`` calls.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import pytest
import torch

import chainspec
from chainspec import PlanSet
from chainspec.build.chain import Chain
from chainspec.revise import watch as _watch

SPEC = """\
chainspec: 1
chains:
  net:
    input_shape: [8]
    nodes:
      - {id: fc1, type: linear, args: {in_features: 8, out_features: 16}}
      - {id: act, type: leaky_relu, args: {negative_slope: 0.2}}
      - {id: fc2, type: linear, args: {in_features: 16, out_features: 4}}
"""


class Clock:
    """The watcher's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(_watch, "monotonic", fake)
    return fake


def settled(watcher: chainspec.SpecWatcher, clock: Clock) -> chainspec.Plan | PlanSet | None:
    """Poll across a save as training does: the first poll only notes it, the first one ``settle`` later takes it."""
    assert watcher.settle > 0
    assert watcher.poll() is None  # never at once: the save may be half-written
    clock.advance(watcher.settle * 0.9)
    assert watcher.poll() is None  # not yet settled
    clock.advance(watcher.settle * 0.2)
    return watcher.poll()


def save(path: Path, text: str) -> None:
    """Write like an editor, and move the mtime on so that fast successive saves are told apart."""
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    stamp = max(previous + 1_000_000_000, time.time_ns())
    os.utime(path, ns=(stamp, stamp))


def setup(tmp_path: Path) -> tuple[Path, Chain, torch.optim.Optimizer, chainspec.SpecWatcher]:
    path = tmp_path / "net.yaml"
    save(path, SPEC)
    torch.manual_seed(0)
    net = chainspec.load(path).build()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    opt.zero_grad()
    net(torch.ones(2, 8)).sum().backward()
    opt.step()
    errors: list[Exception] = []
    watcher = chainspec.SpecWatcher(path, net, optimizer=opt, on_error=errors.append)
    watcher.errors = errors  # type: ignore[attr-defined]
    return path, net, opt, watcher


def snapshot(net: Chain) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def untouched(net: Chain, ids: list[str], state: dict[str, torch.Tensor]) -> bool:
    now = net.state_dict()
    return net.ids() == ids and now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())


def test_idle_poll_costs_one_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, _, watcher = setup(tmp_path)
    calls: list[str] = []
    real_stat = os.stat

    def counting_stat(target: object, *args: object, **kwargs: object) -> os.stat_result:
        calls.append(str(target))
        return real_stat(target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_watch.os, "stat", counting_stat)
    opened: list[object] = []
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a) or pytest.fail("poll read the file"))
    for _ in range(5):
        assert watcher.poll() is None
    assert calls == [str(path)] * 5 and opened == []


def test_invalid_edit_then_valid_edit(tmp_path: Path, clock: Clock) -> None:
    path, net, opt, watcher = setup(tmp_path)
    ids, state = net.ids(), snapshot(net)

    save(path, SPEC.replace("negative_slope: 0.2", "negative_slop: 0.1"))  # a typo
    assert settled(watcher, clock) is None
    assert untouched(net, ids, state)
    (error,) = watcher.errors  # type: ignore[attr-defined]
    assert isinstance(error, chainspec.SpecError) and watcher.error is error
    assert re.search(rf"{re.escape(str(path))}:7:\d+: .*unknown argument 'negative_slop'; did you mean "
                     "'negative_slope'", str(error))
    assert watcher.poll() is None and len(watcher.errors) == 1  # reported once, not at every poll

    save(path, SPEC.replace("negative_slope: 0.2", "negative_slope: 0.1"))
    plan = settled(watcher, clock)
    assert isinstance(plan, chainspec.Plan)
    assert [(op.kind, op.node_id) for op in plan.ops] == [("update", "act")]
    assert net["act"].module.negative_slope == 0.1
    assert watcher.error is None and watcher.spec is net.spec and net.spec.source == str(path)
    assert set(opt.state) == set(net.parameters())  # the moments survived the revision


def test_channel_mismatch_is_rejected_with_its_location(tmp_path: Path, clock: Clock) -> None:
    path, net, opt, watcher = setup(tmp_path)
    ids, state = net.ids(), snapshot(net)
    groups = [list(g["params"]) for g in opt.param_groups]
    save(path, SPEC.replace("out_features: 16}}", "out_features: 24}}"))
    assert settled(watcher, clock) is None
    assert untouched(net, ids, state)
    assert [list(g["params"]) for g in opt.param_groups] == groups
    assert re.search(rf"{re.escape(str(path))}:8:\d+: .*expects 16 input features, but act produces 24",
                     str(watcher.error))


def test_half_saved_file_then_the_rest(tmp_path: Path, clock: Clock) -> None:
    path, net, _, watcher = setup(tmp_path)
    ids, state = net.ids(), snapshot(net)
    revised = SPEC.replace("      - {id: fc2", "      - {id: drop, type: dropout, args: {p: 0.2}}\n      - {id: fc2")
    save(path, revised[: revised.index("dropout") + 3])
    assert settled(watcher, clock) is None
    assert untouched(net, ids, state)
    assert str(path) in str(watcher.error)
    save(path, revised)
    plan = settled(watcher, clock)
    assert plan is not None and [(op.kind, op.node_id) for op in plan.ops] == [("insert", "drop")]
    assert net.ids() == ["fc1", "act", "drop", "fc2"]


def test_default_report_is_a_logged_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture, clock: Clock) -> None:
    path = tmp_path / "net.yaml"
    save(path, SPEC)
    net = chainspec.load(path).build()
    watcher = chainspec.SpecWatcher(path, net)
    save(path, "chainspec: 1\nchains: [")
    with caplog.at_level(logging.WARNING, logger="chainspec.watch"):
        assert settled(watcher, clock) is None
    assert "revision not applied, the model is unchanged" in caplog.text
    assert re.search(rf"{re.escape(str(path))}:\d+:\d+: invalid YAML", caplog.text)


def test_comment_only_change_returns_an_empty_plan(tmp_path: Path, clock: Clock) -> None:
    path, net, _, watcher = setup(tmp_path)
    save(path, "# tuned\n" + SPEC)
    plan = settled(watcher, clock)
    assert plan is not None and plan.is_empty
    assert net.spec.text.startswith("# tuned")


def test_comment_only_change_keeps_moments_even_with_reset(tmp_path: Path, clock: Clock) -> None:
    path, net, opt, _ = setup(tmp_path)
    watcher = chainspec.SpecWatcher(path, net, optimizer=opt, policy="reset")
    moments = {id(p): s["exp_avg"].clone() for p, s in opt.state.items()}
    assert len(moments) == len(list(net.parameters()))
    save(path, "# tuned\n" + SPEC)
    plan = settled(watcher, clock)
    assert plan is not None and plan.is_empty and net.spec.text.startswith("# tuned")
    assert {id(p): s["exp_avg"] for p, s in opt.state.items()}.keys() == moments.keys()
    assert all(torch.equal(opt.state[p]["exp_avg"], moments[id(p)]) for p in net.parameters())
    save(path, "# tuned\n" + SPEC.replace("negative_slope: 0.2", "negative_slope: 0.1"))
    assert settled(watcher, clock) is not None and len(opt.state) == 0  # a real revision resets


def test_an_edit_saved_before_the_watcher_started_is_applied(tmp_path: Path, clock: Clock) -> None:
    """The chain records the spec it was built from, so the watcher diffs the file against that, not itself."""
    path = tmp_path / "net.yaml"
    save(path, SPEC)
    net = chainspec.load(path).build()
    save(path, SPEC.replace("negative_slope: 0.2", "negative_slope: 0.3"))
    watcher = chainspec.SpecWatcher(path, net)
    assert net["act"].module.negative_slope == 0.2
    plan = settled(watcher, clock)
    assert plan is not None and net["act"].module.negative_slope == 0.3


def test_touch_without_change_is_ignored(tmp_path: Path, clock: Clock) -> None:
    path, _, _, watcher = setup(tmp_path)
    save(path, SPEC)
    assert watcher.poll() is None and watcher.error is None
    clock.advance(watcher.settle)
    assert watcher.poll() is None and watcher.error is None


def test_missing_file_is_waited_for(tmp_path: Path, clock: Clock) -> None:
    path, net, _, watcher = setup(tmp_path)
    path.unlink()
    assert watcher.poll() is None and watcher.error is None
    save(path, SPEC.replace("negative_slope: 0.2", "negative_slope: 0.3"))
    assert settled(watcher, clock) is not None and net["act"].module.negative_slope == 0.3


def test_settle_waits_for_a_quiet_file(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "net.yaml"
    path.write_text(SPEC)
    net = chainspec.load(path).build()
    watcher = chainspec.SpecWatcher(path, net, settle=3600)
    path.write_text(SPEC.replace("0.2", "0.3"))
    assert watcher.poll() is None  # written just now: not settled
    os.utime(path, (1, 1))
    assert watcher.poll() is None  # an old mtime is no proof: the file changed again since the first read
    clock.advance(3599)
    assert watcher.poll() is None
    clock.advance(1)
    assert watcher.poll() is not None


def test_stage_is_kept(tmp_path: Path, clock: Clock) -> None:
    blog = (Path(__file__).resolve().parent.parent / "specs" / "blog.yaml").read_text()
    path = tmp_path / "blog.yaml"
    save(path, blog)
    net = chainspec.load(path).build(stage=1)
    watcher = chainspec.SpecWatcher(path, net)
    save(path, blog.replace("out_ch: 128", "out_ch: 96"))  # b3 only joins at stage 2
    plan = settled(watcher, clock)
    assert plan is not None and plan.is_empty and net.stage == 1


TWO = SPEC + """\
  critic:
    input_shape: [4]
    nodes:
      - {id: fc, type: linear, args: {in_features: 4, out_features: 1}}
"""


def test_several_chains_are_revised_together_or_not_at_all(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "gan.yaml"
    save(path, TWO)
    spec = chainspec.load(path)
    chains = spec.build_all()
    opts = {name: torch.optim.SGD(c.parameters(), lr=0.1, momentum=0.9) for name, c in chains.items()}
    watcher = chainspec.SpecWatcher(path, chains, optimizer=opts, spec=spec, on_error=lambda exc: None)
    before = {name: (c.ids(), snapshot(c)) for name, c in chains.items()}
    # net changes fine, critic does not shape-check: neither changes.
    save(path, TWO.replace("negative_slope: 0.2", "negative_slope: 0.1").replace("in_features: 4, out_features: 1",
                                                                                   "in_features: 5, out_features: 1"))
    assert settled(watcher, clock) is None
    assert all(untouched(chains[n], *before[n]) for n in chains)
    assert chains["net"]["act"].module.negative_slope == 0.2
    save(path, TWO.replace("negative_slope: 0.2", "negative_slope: 0.1").replace(
        "in_features: 4, out_features: 1", "in_features: 4, out_features: 2"))
    plans = settled(watcher, clock)
    assert isinstance(plans, PlanSet) and set(plans) == {"net", "critic"}
    assert [op.kind for op in plans["critic"].ops] == ["replace"]
    assert chains["critic"]["fc"].module.out_features == 2
    assert {id(p) for g in opts["critic"].param_groups for p in g["params"]} == {
        id(p) for p in chains["critic"].parameters()}


def test_unknown_chain_is_refused_up_front(tmp_path: Path) -> None:
    path = tmp_path / "gan.yaml"
    save(path, TWO)
    net = chainspec.load(path).build("net")
    with pytest.raises(ValueError, match="no chain 'generator'"):
        chainspec.SpecWatcher(path, {"generator": net})


# -- complete saves only ---------------------------------------------------------------------------------

#: A revision (slope 0.1, a dropout before fc2) whose first half, cut before fc2, is a valid spec too.
REVISED = SPEC.replace("negative_slope: 0.2", "negative_slope: 0.1").replace(
    "      - {id: fc2", "      - {id: drop, type: dropout, args: {p: 0.2}}\n      - {id: fc2")
HALF = REVISED[:REVISED.index("      - {id: fc2")]


def test_the_default_settle_is_not_zero(tmp_path: Path) -> None:
    path, net, _, watcher = setup(tmp_path)
    assert watcher.settle == _watch.SETTLE and 0.2 <= _watch.SETTLE <= 0.5
    with pytest.raises(ValueError, match="settle must be a number of seconds >= 0"):
        chainspec.SpecWatcher(path, net, settle=-1)
    with pytest.raises(ValueError, match="settle"):
        watcher.settle = float("nan")


def test_a_settling_change_costs_one_stat_per_poll_and_no_wait(tmp_path: Path, clock: Clock,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path, net, _, watcher = setup(tmp_path)
    watcher.settle = 3600.0
    save(path, REVISED)
    stats: list[str] = []
    reads: list[str] = []
    real_stat, real_read = os.stat, _watch.read_head
    monkeypatch.setattr(_watch.os, "stat", lambda p, *a, **k: stats.append(str(p)) or real_stat(p, *a, **k))
    monkeypatch.setattr(_watch, "read_head", lambda p, *a: reads.append(str(p)) or real_read(p, *a))
    assert watcher.poll() is None and reads == [str(path)]  # the change is noted: one read
    stats.clear()
    reads.clear()
    start = time.perf_counter()
    for _ in range(5):
        clock.advance(600)
        assert watcher.poll() is None
    assert time.perf_counter() - start < 1.0  # a poll never waits for the file to settle
    assert stats == [str(path)] * 5 and reads == [] and net.ids() == ["fc1", "act", "fc2"]
    clock.advance(600)
    plan = watcher.poll()  # settled: read a second time, the same bytes and signature, applied
    assert plan is not None and reads == [str(path)] and net.ids() == ["fc1", "act", "drop", "fc2"]


def test_a_save_written_in_two_writes_is_applied_only_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real writes, real clock: the first half is a valid spec (without fc2), and is never applied."""
    monkeypatch.setattr(_watch, "monotonic", time.monotonic)
    path, net, _, watcher = setup(tmp_path)
    watcher.settle = 0.2
    fc2 = net["fc2"].module
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(HALF)
        handle.flush()
        assert chainspec.loads(path.read_text(), source="half").build().ids() == ["fc1", "act", "drop"]  # valid
        assert watcher.poll() is None  # noted
        assert net.ids() == ["fc1", "act", "fc2"]
        handle.write(REVISED[len(HALF):])
    assert watcher.poll() is None  # changed again since: noted afresh
    time.sleep(0.25)
    plan = watcher.poll()
    assert plan is not None and [(op.kind, op.node_id) for op in plan.ops] == [("update", "act"), ("insert", "drop")]
    assert net.ids() == ["fc1", "act", "drop", "fc2"] and net["fc2"].module is fc2
    assert watcher.errors == []  # type: ignore[attr-defined]


def test_a_half_save_that_was_applied_loses_no_weights(tmp_path: Path, clock: Clock) -> None:
    """The writer paused longer than settle, so its first half was applied, removing fc2; the rest of the save
    inserts fc2 again with its trained weights, Parameter objects and Adam state, and the plan says so."""
    path, net, opt, watcher = setup(tmp_path)
    fc2 = net["fc2"].module
    weights = {k: v.clone() for k, v in fc2.state_dict().items()}
    state = {name: (opt.state[p], {k: v.clone() for k, v in opt.state[p].items()})
             for name, p in fc2.named_parameters()}
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(HALF)
        handle.flush()
        half = settled(watcher, clock)
        assert half is not None and ("remove", "fc2") in [(op.kind, op.node_id) for op in half.ops]
        assert net.ids() == ["fc1", "act", "drop"]
        opt.zero_grad()
        net(torch.ones(2, 8)).sum().backward()  # training goes on meanwhile
        opt.step()
        handle.write(REVISED[len(HALF):])
    plan = settled(watcher, clock)
    assert isinstance(plan, chainspec.Plan)
    assert [(op.kind, op.node_id, op.restored) for op in plan.ops] == [("insert", "fc2", True)]
    assert "+ fc2 (linear) after drop (restored)" in str(plan)
    assert plan.to_dict()["ops"][0]["restored"] is True
    assert net.ids() == ["fc1", "act", "drop", "fc2"] and net["fc2"].module is fc2
    assert all(torch.equal(v, weights[k]) for k, v in fc2.state_dict().items())
    for name, p in fc2.named_parameters():
        entry, saved = state[name]
        assert p is dict(fc2.named_parameters())[name] and opt.state[p] is entry
        assert set(entry) == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(entry[k], v) for k, v in saved.items())
    assert set(opt.state) == set(net.parameters())


def test_limits_default_to_the_specs_and_bound_every_read(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "net.yaml"
    save(path, SPEC)
    small = chainspec.Limits(max_bytes=1000)
    net = chainspec.load(path, limits=small).build()
    errors: list[Exception] = []
    watcher = chainspec.SpecWatcher(path, net, on_error=errors.append)
    assert watcher.limits is small  # the revision in force was loaded with them
    big = REVISED + "# " + "x" * 1000 + "\n"
    save(path, big)
    assert settled(watcher, clock) is None
    assert re.search(rf"{re.escape(str(path))}:1:1: file is {len(big):,} bytes; specs are limited to 1,000 bytes",
                     str(errors[-1]))
    roomy = chainspec.SpecWatcher(path, net, limits=small.replace(max_bytes=4000))
    assert roomy.limits.max_bytes == 4000
    assert settled(roomy, clock) is not None and net.spec.limits.max_bytes == 4000
