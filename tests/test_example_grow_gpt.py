"""``examples/grow_gpt.py`` in a short setting: both runs finish, a stopped run resumes, the plot is written.

The compute figure (the FLOPs fraction) is the benchmark's, not this test's.
"""

from __future__ import annotations

import importlib.util
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


@pytest.mark.parametrize("operator", ["copy", "preserve", "widen", "widen-model"])
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
    if operator in ("preserve", "widen", "widen-model"):
        assert grown["certificate"] <= 1e-4  # identities and function-preserving widening: the logits stayed
    pytest.importorskip("matplotlib")
    assert resumed["plot"] and (tmp_path / "run" / "loss_vs_flops.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert saved["summary"]["scratch_flops"] > saved["summary"]["grown_flops"]
