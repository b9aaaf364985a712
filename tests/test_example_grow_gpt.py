"""``examples/grow_gpt.py`` in a short setting: both runs finish, a stopped run resumes, the plot is written.

The compute figure (the FLOPs fraction) is the benchmark's, not this test's.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "grow_gpt.py"


def load_example():
    spec = importlib.util.spec_from_file_location("grow_gpt", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


SHORT = ["--steps", "40", "--batch", "4", "--eval-every", "10", "--eval-batches", "2", "--text-bytes", "300000"]


@pytest.mark.parametrize("operator", ["copy", "preserve", "widen", "widen-model", "widen-deep"])
def test_the_example_finishes_resumes_and_plots(tmp_path: Path, operator: str) -> None:
    grow_gpt = load_example()
    out = str(tmp_path / "run")
    stopped = grow_gpt.main([*SHORT, "--operator", operator, "--out", out, "--stop-at", "25"])
    assert "summary" not in stopped and (tmp_path / "run" / "scratch.pt").exists()
    assert all(not h["done"] and h["step"][-1] == 20 for h in stopped["histories"].values())
    resumed = grow_gpt.main([*SHORT, "--operator", operator, "--out", out, "--resume"])
    grown = resumed["histories"]["grown"]
    assert all(h["done"] for h in resumed["histories"].values())
    assert resumed["histories"]["scratch"]["step"] == [10, 20, 30, 40] == grown["step"]
    assert grown["grew_at_flops"] is not None  # grown at step 16 of 40
    if operator in ("preserve", "widen", "widen-model", "widen-deep"):
        assert grown["certificate"] <= 1e-4  # identities and function-preserving widening: the logits stayed
    pytest.importorskip("matplotlib")
    assert resumed["plot"] and (tmp_path / "run" / "loss_vs_flops.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert saved["summary"]["scratch_flops"] > saved["summary"]["grown_flops"]


def test_the_learning_rate_warms_up_then_holds_or_decays_and_rewarms_after_growth() -> None:
    grow_gpt = load_example()
    args = argparse.Namespace(lr=6e-3, warmup=10, steps=110, schedule="constant", min_lr=1e-4, rewarm=0)
    rates = [grow_gpt.learning_rate(step, args) for step in range(args.steps)]
    assert rates[0] == pytest.approx(6e-4) and rates[9] == pytest.approx(6e-3)
    assert rates[4] < rates[5] and set(rates[9:]) == {6e-3}
    assert [grow_gpt.learning_rate(step, args, grow_step=50) for step in range(args.steps)] == rates  # no rewarm
    args.rewarm = 4
    grown = [grow_gpt.learning_rate(step, args, grow_step=50) for step in range(args.steps)]
    assert grown[:50] == rates[:50] and grown[54:] == rates[54:]
    assert grown[50:54] == pytest.approx([1.5e-3, 3e-3, 4.5e-3, 6e-3])  # warmed up again after the growth
    args.rewarm = 0
    args.schedule = "cosine"
    rates = [grow_gpt.learning_rate(step, args) for step in range(args.steps)]
    assert rates[10] == pytest.approx(6e-3) and rates[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))


def test_widen_deep_grows_width_and_depth_in_one_revision_that_keeps_the_function() -> None:
    import torch

    import chainspec

    grow_gpt = load_example()
    start, start_stage, end, end_stage = grow_gpt.growth("widen-deep")
    torch.manual_seed(0)
    chain = start.build(stage=start_stage).eval()
    small = grow_gpt.flops_per_token(chain, 64)
    optimizer = torch.optim.AdamW(chain.parameters(), lr=1e-3)
    tokens = torch.randint(0, 65, (2, 64))
    chain(tokens).square().mean().backward()
    optimizer.step()
    found = chainspec.diff(start, end, stage=(start_stage, end_stage)).apply(chain, optimizer, probe=tokens)
    assert found.output_change <= 1e-4
    scratch = end.build(stage=end_stage)
    assert chain.ids() == scratch.ids() and chain.stage == end_stage
    assert grow_gpt.flops_per_token(chain, 64) == grow_gpt.flops_per_token(scratch, 64) > 7 * small


def test_the_schedule_options_reach_both_runs(tmp_path: Path) -> None:
    import torch

    import chainspec

    grow_gpt = load_example()
    result = grow_gpt.main([*SHORT, "--operator", "widen-deep", "--lr", "3e-3", "--schedule", "cosine",
                            "--warmup", "5", "--rewarm", "5", "--min-lr", "1e-4", "--out", str(tmp_path)])
    assert all(h["done"] for h in result["histories"].values()) and "summary" in result
    for run in ("scratch", "grown"):
        saved = chainspec.load_checkpoint(tmp_path / f"{run}.pt",
                                          optimizer_factory=lambda params: torch.optim.AdamW(params, lr=1.0))
        rates = [group["lr"] for group in saved.optimizers["opt"].param_groups]
        assert rates and all(rate == pytest.approx(1e-4) for rate in rates)  # the cosine's end, in both runs
