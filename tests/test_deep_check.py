"""``Spec.check`` (``validate --deep``) on the worst specs a 256 KiB file can hold: bounded work, same answers.

The worst cases come from ``benchmarks/bench_check.py``, which times them. Here the work is
counted instead: modules built and run on the meta device, and steps of the stage walk. Each
count is bounded by a sum over nodes and stages, never by their product; and the answers of the
shared walk are those of shape-inferring every stage on its own.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import chainspec
import chainspec.build.modules
import chainspec.build.shapes
from chainspec import SpecError
from chainspec.build import shapes as _compile
from chainspec.build.shapes import Budget, CheckTooCostly, Probes, StageChecker, check_stages, infer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_check


def counted(spec: chainspec.Spec, stages: Any = None, budget: Budget | None = None
            ) -> tuple[list[str], Probes, StageChecker]:
    """Check every chain of ``spec`` with the shared walk; the problems (formatted) and the counters."""
    probes = Probes(budget=budget)
    checker = StageChecker(spec._doc, probes)
    problems = [p.format() for name in spec.chain_names
                for _, p in checker.check(spec.resolved(name), range(spec.stages) if stages is None else stages)]
    return problems, probes, checker


def tree_size(spec: chainspec.Spec) -> int:
    """Leaves of the walk's binary tree: the node count rounded up to a power of two."""
    return 1 << (len(spec.resolved().nodes) - 1).bit_length()


def bound(spec: chainspec.Spec, *, per_stage: int = 2) -> int:
    """Steps allowed: indexing the tree once, re-indexing a path per node joining or leaving, a few per stage."""
    size = tree_size(spec)
    joins = sum(1 + (n.until is not None) for n in spec.resolved().nodes)
    return 2 * size + joins * (size.bit_length() + 1) + per_stage * spec.stages


# -- the reported case and the worst cases ---------------------------------------------------------------------------

def test_the_reported_case_builds_one_module_and_walks_each_stage_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 stages x 3,000 nodes with a stage-dependent input (was: killed after 4 minutes)."""
    spec = chainspec.loads(bench_check.issue())
    assert (spec.stages, len(spec.resolved().nodes)) == (1000, 3000)
    built: list[object] = []
    real = chainspec.build.modules.build_module
    monkeypatch.setattr(_compile, "build_module", lambda tree: built.append(tree) or real(tree))
    spec.check()
    assert len(built) == 1  # one relu, built to try its factory; never run: relu gives back any shape
    problems, probes, checker = counted(spec)
    assert problems == [] and (probes.built, probes.ran) == (1, 0)
    assert checker.steps <= 2 * tree_size(spec) + 2 * spec.stages  # 5,095: index 4,096 nodes once, 1 step a stage


@pytest.mark.parametrize(("stages", "nodes"), [(100, 3000), (1000, 300), (1000, 3000)])
def test_the_steps_grow_with_stages_plus_nodes_not_their_product(stages: int, nodes: int) -> None:
    spec = chainspec.loads(bench_check.issue(stages, nodes))
    _, _, checker = counted(spec)
    assert checker.steps <= 2 * tree_size(spec) + 2 * stages


@pytest.mark.parametrize("case", ["growing_input", "alternating"])
def test_elementwise_chains_filling_the_file(case: str) -> None:
    spec = chainspec.loads(getattr(bench_check, case)())
    assert len(spec.resolved().nodes) > 9000 and spec.stages == 1000
    problems, probes, checker = counted(spec)
    assert problems == [] and probes.ran == 0 and probes.built == (1 if case == "growing_input" else 2)
    assert checker.steps <= 2 * tree_size(spec) + 2 * spec.stages


def test_a_window_per_node_costs_a_path_per_join(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = chainspec.loads(bench_check.own_windows())
    assert len({(n.stage, n.until) for n in spec.resolved().nodes}) > 5000
    problems, probes, checker = counted(spec)
    assert problems == [] and (probes.built, probes.ran) == (1, 0)
    assert checker.steps <= bound(spec)


def test_a_layer_on_a_new_shape_each_stage_runs_once_per_shape() -> None:
    spec = chainspec.loads(bench_check.through_linear(stages=60))
    problems, probes, checker = counted(spec)
    assert problems == [] and probes.ran == 60 and probes.built == 60  # one (linear, shape) pair per stage
    assert checker.steps <= 2 * tree_size(spec) + 2 * tree_size(spec).bit_length() * spec.stages


def test_windows_and_a_layer_run_once_per_shape() -> None:
    spec = chainspec.loads(bench_check.own_windows_linear(stages=40))
    problems, probes, checker = counted(spec)
    assert problems == [] and probes.ran <= 40
    assert checker.steps <= bound(spec, per_stage=4 * tree_size(spec).bit_length())


def test_thousands_of_distinct_elementwise_definitions_are_built_once_each_never_run() -> None:
    spec = chainspec.loads(bench_check.distinct_elementwise())
    nodes = len(spec.resolved().nodes)
    problems, probes, checker = counted(spec)
    assert problems == [] and (probes.built, probes.ran) == (nodes, 0)
    assert checker.steps <= 2 * tree_size(spec) + 2 * spec.stages


def test_a_shape_shrinking_at_each_node_fails_once_per_stage_at_its_node() -> None:
    spec = chainspec.loads(bench_check.shrinking(stages=40))
    problems, probes, checker = counted(spec)
    # Stage k's input is (k + 3) x (k + 3): node k // 2 + 1 gets a map smaller than the kernel.
    assert len(problems) == 40
    for k, problem in enumerate(problems):
        assert f"chains.net.nodes[{k // 2 + 1}] (n{k // 2 + 1}): " in problem, (k, problem)
    assert probes.ran == len({k + 3 - 2 * i for k in range(40) for i in range(k // 2 + 2)})  # distinct sizes seen
    assert checker.steps <= 2 * tree_size(spec) + 4 * tree_size(spec).bit_length() * (spec.stages + probes.ran)


def test_a_node_failing_at_every_stage_is_located_at_each() -> None:
    spec = chainspec.loads(bench_check.failing_everywhere(stages=50))
    problems, _, _ = counted(spec)
    assert len(problems) == 49  # all but stage 4, whose input has the 5 features the layer takes
    assert all("chains.net.nodes[2999] (last): expects 5 input features, but n2998 produces" in p for p in problems)
    with pytest.raises(SpecError) as info:
        spec.check()
    assert len(info.value.problems) == 49


# -- refusing what would cost too much ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["distinct_layers", "slow_layer", "composite_leaves"])
def test_what_costs_too_much_is_refused_at_the_chain(case: str) -> None:
    spec = chainspec.loads(getattr(bench_check, case)())
    with pytest.raises(SpecError) as info:
        spec.check()
    [problem] = info.value.problems
    assert problem.line == spec.text.splitlines().index("  net:") + 1 and problem.path == "chains.net", problem
    assert "stage(s) of" in problem.message and "it was stopped there" in problem.message
    assert "budget" in (problem.hint or "")


def test_the_run_bound_refuses_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compile, "MAX_CHECK_RUNS", 50)
    spec = chainspec.loads(bench_check.composite_leaves(stages=3))
    built: list[object] = []
    real = chainspec.build.modules.build_module

    def counting(tree: object) -> object:
        return built.append(tree) or real(tree)

    monkeypatch.setattr(_compile, "build_module", counting)
    monkeypatch.setattr(chainspec.build.modules, "build_module", counting)  # a composite's parts, built recursively
    with pytest.raises(SpecError, match=r"more than 50 module runs on the meta device; it was stopped there"):
        spec.check()
    assert built == []  # a composite of 100 layers is over the bound before anything is built
    spec.check(budget=10)  # 3 shapes x 100 layers: within 500
    assert len(built) == 3 * 111  # one build of the composite (1 + 10 + 100 modules) per input shape


def test_the_step_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compile, "MAX_CHECK_STEPS", 1000)
    spec = chainspec.loads(bench_check.own_windows(stages=50))
    with pytest.raises(SpecError, match=r"takes more than 1,000 steps"):
        spec.check()
    spec.check(budget=math.inf)


def test_the_time_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compile, "MAX_CHECK_SECONDS", 0.0)
    spec = chainspec.loads(bench_check.issue(stages=5, nodes=10))
    with pytest.raises(SpecError, match=r"takes more than 0 s of CPU time"):
        spec.check()
    spec.check(budget=math.inf)
    with pytest.raises(ValueError, match="budget must be a positive number"):
        spec.check(budget=0)


def test_the_time_bound_stops_a_run_half_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe of a composite stops at the next part once the time is spent, not at the end of the composite."""
    budget = Budget(seconds=3600.0)
    probes = Probes(budget=budget)
    spec = chainspec.loads(bench_check.composite_leaves(stages=1))
    index = probes.define(spec.resolved().nodes[0].tree)
    ran: list[str] = []

    def slow_clock() -> float:
        ran.append("tick")
        return 0.0 if len(ran) < 5 else 7200.0

    monkeypatch.setattr(chainspec.build.shapes.time, "thread_time", slow_clock)
    budget.started = 0.0
    with pytest.raises(CheckTooCostly):
        probes.run(index, ((4, 1, 8), torch.float32))
    assert len(ran) == 5  # before the build, then before each module runs: stopped at the 2nd of 100 layers


def test_check_stages_lists_problems_by_stage_then_chain_once_each() -> None:
    spec = chainspec.loads(
        "chainspec: 1\nstages: 3\nchains:\n"
        "  a:\n    input_shape: [4]\n    nodes:\n"
        "      - {id: fc, type: linear, args: {in_features: 4, out_features: 2}}\n"
        "      - {id: bad, type: linear, args: {in_features: 3, out_features: 1}, stage: 1}\n"
        "  b:\n    input_shape: [\"${stage + 3}\"]\n    nodes:\n"
        "      - {id: fc, type: linear, args: {in_features: 4, out_features: 2}}\n", source="x.yaml")
    found = [(p.line, p.path) for p in check_stages(spec._chains.values(), [2, 0, 1, 2], spec._doc)]
    assert found == [(8, "chains.a.nodes[1] (bad)"), (12, "chains.b.nodes[0] (fc)"), (12, "chains.b.nodes[0] (fc)")]


# -- the shared walk answers what checking each stage on its own answers ---------------------------------------------

KINDS = ["relu", "tanh", "identity", "dropout4", "flatten", "lin44", "lin48", "lin84", "ln4", "ln8", "block"]


def _node(kind: str) -> str:
    return {"relu": "type: relu", "tanh": "type: tanh", "identity": "type: identity",
            "dropout4": "type: dropout, args: {p: 0.4}", "flatten": "type: flatten",
            "lin44": "type: linear, args: {in_features: 4, out_features: 4}",
            "lin48": "type: linear, args: {in_features: 4, out_features: 8}",
            "lin84": "type: linear, args: {in_features: 8, out_features: 4}",
            "ln4": "type: layernorm, args: {normalized_shape: 4}",
            "ln8": "type: layernorm, args: {normalized_shape: 8}",
            "block": "type: block"}[kind]


def random_spec(rng: random.Random) -> str:
    stages = rng.randint(1, 9)
    shape = rng.choice(['[4]', '[8]', '["${stage % 3 + 2}", 4]', '["${4 + 4 * (stage % 2)}"]', '[2, "${stage + 3}"]'])
    nodes = []
    for i in range(rng.randint(1, 40)):
        window = ""
        if rng.random() < 0.5:
            start = rng.randrange(stages)
            window = f", stage: {start}"
            if rng.random() < 0.5:
                window += f", until: {rng.randint(start + 1, stages)}"
        nodes.append(f"      - {{id: n{i}, {_node(rng.choice(KINDS))}{window}}}\n")
    return (f"chainspec: 1\nstages: {stages}\ntypes:\n  block:\n    nodes:\n"
            "      - {id: a, type: linear, args: {in_features: 4, out_features: 8}}\n"
            "      - {id: b, type: relu}\n      - {id: c, type: linear, args: {in_features: 8, out_features: 4}}\n"
            f"chains:\n  net:\n    input_shape: {shape}\n    nodes:\n" + "".join(nodes))


@pytest.mark.parametrize("seed", range(40))
def test_the_shared_walk_finds_what_each_stage_alone_finds(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(10):
        try:
            spec = chainspec.loads(random_spec(rng), source="r.yaml")
        except SpecError:
            continue  # a stage without nodes: refused on load
        chain = spec.resolved()
        expected = []
        for stage in range(spec.stages):
            for problem in infer(chain, stage, spec._doc)[1]:
                if problem.format() not in expected:
                    expected.append(problem.format())
        assert [p.format() for p in check_stages([chain], range(spec.stages), spec._doc)] == expected, spec.text


# -- the shape check of a revision being applied -------------------------------------------------------------------

def _identical(n: int, last: int | None = None) -> str:
    """``n`` identical layers, and one more taking ``last`` features if given (on line ``n + 6``)."""
    nodes = [f"{{id: n{i}, type: linear, args: {{in_features: 8, out_features: 8}}}}" for i in range(n)]
    if last is not None:
        nodes.append(f"{{id: out, type: linear, args: {{in_features: {last}, out_features: 1}}}}")
    head = "chainspec: 1\nchains:\n  net:\n    input_shape: [8]\n    nodes:\n"
    return head + "".join(f"      - {n}\n" for n in nodes)


def test_applying_a_revision_builds_each_distinct_definition_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from chainspec.revise.apply import shape_check

    old = chainspec.loads(_identical(3000))
    new = chainspec.loads(_identical(3000, last=8))
    plan = chainspec.diff(old, new)
    built: list[object] = []
    real = chainspec.build.modules.build_module
    monkeypatch.setattr(_compile, "build_module", lambda tree: built.append(tree) or real(tree))
    plan._shapes = None  # diff's rehearsal left its check on the plan: measure a fresh one
    shape_check(plan, None, remember=True)
    assert len(built) == 2  # the 3,000 identical layers once, the new one once
    built.clear()
    shape_check(plan, torch.get_default_dtype())  # what apply asks for a float32 chain: the check above
    assert built == []
    shape_check(plan, torch.float64)  # a chain of another dtype is checked afresh
    assert len(built) == 2
    bad = chainspec.loads(_identical(3000, last=5), source="new.yaml")
    with pytest.raises(SpecError, match=r"^new.yaml:3006:\d+: chains.net.nodes\[3000\] \(out\): expects 5 input "
                                        r"features, but n2999 produces 8"):
        shape_check(chainspec.diff(old, bad), None)
