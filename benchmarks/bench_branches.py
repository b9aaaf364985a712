"""Branched models: a chain against a hand-written ``nn.Module`` of the same architecture and weights.

ResNet-20 (``specs/resnet20.yaml``, batch 32 of 3x32x32) and nanoGPT's Shakespeare-char GPT
(``specs/gpt.yaml``, batch 8 of 256 tokens), each at its last stage, against the models of
``tests/reference_models.py`` holding the same weights: forward (under ``torch.no_grad()``) and
forward+backward, timed in interleaved rounds; and the peak memory of one forward+backward,
as the growth of the peak resident set of a fresh process over the one it had once the model
and its input were made (so it counts activations, gradients and the allocator's own slack, the
same way for both sides). Both run in training mode.

Usage:
    python benchmarks/bench_branches.py [--quick]

Example:
    >>> rows = run()  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from benchutil import Row, compare, fmt_amount, pick, row
from torch import nn

import chainspec

AREA = "branches"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from reference_models import GPT, ResNet20, gpt_key, load_into, resnet_key  # noqa: E402

#: Targets of the chain against the hand-written model: time and peak memory.
TIME_TARGET, MEMORY_TARGET = 1.05, 1.05


def models(name: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """``(chain, hand-written model, input)`` for ``"resnet20"`` or ``"gpt"``, with the same weights."""
    torch.manual_seed(0)
    if name == "resnet20":
        chain = chainspec.load(ROOT / "specs" / "resnet20.yaml").build(stage="final")
        reference: nn.Module = ResNet20()
        load_into(reference, chain.state_dict(), resnet_key)
        x = torch.randn(pick(32, 2), 3, 32, 32)
    else:
        chain = chainspec.load(ROOT / "specs" / "gpt.yaml").build(stage="final")
        reference = GPT()
        load_into(reference, chain.state_dict(), gpt_key)
        x = torch.randint(0, 65, (pick(8, 1), pick(256, 16)))
    return chain, reference, x


def _forward(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def call() -> None:
        with torch.no_grad():
            model(x)

    return call


def _forward_backward(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def call() -> None:
        model.zero_grad(set_to_none=True)
        model(x).float().square().mean().backward()

    return call


def _peak(name: str, side: str) -> int:
    """Peak RSS growth (bytes) of one forward+backward of ``side`` in a fresh process."""
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--peak", name, side]
                         + ["--quick"] * bool(pick(False, True)),
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return int(json.loads(out.stdout)["peak"])


def _measure_peak(name: str, side: str) -> int:
    import resource

    torch.set_num_threads(1)
    chain, reference, x = models(name)
    model = chain if side == "chain" else reference
    del chain, reference
    _forward_backward(model, x[:1])()  # allocator pools and lazy initialisation, at batch 1
    model.zero_grad(set_to_none=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _forward_backward(model, x)()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def run() -> list[Row]:
    """Forward, forward+backward and peak memory of each model: chain against the hand-written model."""
    rows: list[Row] = []
    for name, case in (("resnet20", f"ResNet-20, batch {pick(32, 2)}"),
                       ("gpt", f"GPT (specs/gpt.yaml), batch {pick(8, 1)} x {pick(256, 16)} tokens")):
        chain, reference, x = models(name)
        for model in (chain, reference):
            model.train()
        for what, make, rounds in (("forward", _forward, pick(9, 1)),
                                   ("forward+backward", _forward_backward, pick(7, 1))):
            base, value, ratio = compare(make(reference, x), make(chain, x), rounds=rounds, number=1)
            rows.append(row(AREA, f"{what}, {case}", "hand-written nn.Module", base=base, value=value, ratio=ratio,
                            target=TIME_TARGET))
        del chain, reference
        repeats = pick(3, 1)
        peaks = {side: statistics.median(_peak(name, side) for _ in range(repeats)) for side in ("reference", "chain")}
        rows.append(row(AREA, f"peak memory of forward+backward, {case}", "hand-written nn.Module",
                        base=peaks["reference"], value=peaks["chain"],
                        ratio=peaks["chain"] / peaks["reference"] if peaks["reference"] else None,
                        target=MEMORY_TARGET, unit="B",
                        note=f"peak RSS growth in a fresh process, median of {repeats}"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny batches, one round")
    parser.add_argument("--peak", nargs=2, metavar=("MODEL", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import benchutil

    benchutil.set_quick(args.quick)
    if args.peak:
        print(json.dumps({"peak": _measure_peak(*args.peak)}))
        return 0
    for r in run():
        print(f"{r['case']:<75} {fmt_amount(r['base'], r['unit']):>10} {fmt_amount(r['value'], r['unit']):>10} "
              f"{r['ratio'] or 0:.3f}x  (target {r['target']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
