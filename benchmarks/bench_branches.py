"""Branched models: a chain against a hand-written ``nn.Module`` of the same architecture and weights.

ResNet-20 (``specs/resnet20.yaml``, batch 32 of 3x32x32) and nanoGPT's Shakespeare-char GPT
(``specs/gpt.yaml``, batch 8 of 256 tokens), each at its last stage, against the models of
``tests/reference_models.py`` holding the same weights: forward (under ``torch.no_grad()``) and
forward+backward, timed in interleaved rounds; and the activation memory of one forward: the
bytes of the tensors autograd keeps for the backward (each storage once), counted exactly with
``saved_tensors_hooks``. (The growth of a fresh process's peak RSS was tried first: the
allocator's history made it swing between 28 and 72 MB for the same saved tensors.) Both run in
training mode.

Usage:
    python benchmarks/bench_branches.py [--quick]

Example:
    >>> rows = run()  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import statistics
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

#: Targets of the chain against the hand-written model: time and activation memory.
TIME_TARGET, MEMORY_TARGET = 1.05, 1.05


def models(name: str, sides: tuple[str, ...] = ("chain", "reference")) -> tuple[Any, Any, torch.Tensor]:
    """``(chain, hand-written model, input)`` for ``"resnet20"`` or ``"gpt"``, with the same weights; a side
    not in ``sides`` is None."""
    torch.manual_seed(0)
    if name == "resnet20":
        spec, make, key_of = "resnet20.yaml", ResNet20, resnet_key
        x = torch.randn(pick(32, 2), 3, 32, 32)
    else:
        spec, make, key_of = "gpt.yaml", GPT, gpt_key
        x = torch.randint(0, 65, (pick(8, 1), pick(256, 16)))
    chain = chainspec.load(ROOT / "specs" / spec).build(stage="final") if "chain" in sides else None
    reference = make() if "reference" in sides else None
    if chain is not None and reference is not None:
        load_into(reference, chain.state_dict(), key_of)
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


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for the backward of one forward (each storage counted once, the
    parameters left out).

    This is the activation memory of training: what the forward leaves alive until the backward,
    measured exactly (``torch.autograd.graph.saved_tensors_hooks``), not through the allocator.
    """
    seen: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # saved too, but not activations

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(x)
    out.float().square().mean().backward()
    return sum(seen.values())


def _forward_ratio(name: str) -> dict[str, float]:
    """In this process: page faults per forward of each side just after building (what a fresh process
    pays until glibc's thresholds settle), then the median of 30 interleaved no-grad forwards, chain over
    hand-written."""
    torch.set_num_threads(1)
    chain, reference, x = models(name)
    faults = {"reference": page_faults(reference, x), "chain": page_faults(chain, x)}
    _, _, ratio = compare(_forward(reference, x), _forward(chain, x), rounds=pick(30, 1), number=1)
    return {"ratio": ratio, **faults}


#: glibc's malloc thresholds held still: no memory handed back to the system between forwards, so none
#: faulted back in (``mallopt(3)``: setting either turns off their dynamic adjustment).
STILL_ALLOCATOR = {"MALLOC_TRIM_THRESHOLD_": str(1 << 28), "MALLOC_MMAP_THRESHOLD_": str(1 << 28)}


def page_faults(model: nn.Module, x: torch.Tensor, calls: int = 10) -> float:
    """Minor page faults per no-grad forward (``getrusage``), after one warm-up call.

    A fault is a page the allocator handed back to the system (glibc trims the top of its heap
    and unmaps large blocks) and the next forward touched again.
    """
    import resource

    call = _forward(model, x)
    call()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        call()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def _fresh_ratios(name: str, processes: int, env: dict[str, str] | None = None) -> list[dict[str, float]]:
    """:func:`_forward_ratio` in ``processes`` fresh processes (with ``env`` added to the environment): how
    much the allocator's state moves it."""
    import json
    import os
    import subprocess

    results = []
    for _ in range(processes):
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--forward-ratio", name]
                             + ["--quick"] * bool(pick(False, True)),
                             capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, **(env or {})})
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def run() -> list[Row]:
    """Forward, forward+backward and activation memory of each model: chain against the hand-written model."""
    rows: list[Row] = []
    for name, case in (("resnet20", f"ResNet-20, batch {pick(32, 2)}"),
                       ("gpt", f"GPT (specs/gpt.yaml), batch {pick(8, 1)} x {pick(256, 16)} tokens")):
        chain, reference, x = models(name)
        for model in (chain, reference):
            model.train()
        heavy = name == "gpt"  # seconds a call: fewer rounds
        for what, make, rounds in (("forward", _forward, pick(9 if heavy else 41, 1)),
                                   ("forward+backward", _forward_backward, pick(7 if heavy else 31, 1))):
            base, value, ratio = compare(make(reference, x), make(chain, x), rounds=rounds, number=1)
            rows.append(row(AREA, f"{what}, {case}", "hand-written nn.Module", base=base, value=value, ratio=ratio,
                            target=TIME_TARGET))
        if name == "resnet20":  # milliseconds a call: the ratio is also taken in fresh processes
            for env, how in ((None, ""), (STILL_ALLOCATOR, ", malloc trimming off")):
                runs = _fresh_ratios(name, pick(5, 1), env)
                ratios = sorted(run["ratio"] for run in runs)
                rows.append(row(AREA, f"forward, {case}, in {len(ratios)} fresh processes{how}",
                                "hand-written nn.Module", base=None, value=None, ratio=statistics.median(ratios),
                                target=TIME_TARGET, note="ratios " + ", ".join(f"{r:.2f}" for r in ratios)))
                faults = {side: round(statistics.median(run[side] for run in runs)) for side in ("reference", "chain")}
                rows.append(row(AREA, f"page faults per no-grad forward, just built, {case}{how}",
                                "hand-written nn.Module", base=faults["reference"], value=faults["chain"],
                                ratio=faults["chain"] / faults["reference"] if faults["reference"] else None,
                                unit="", note="median of the fresh processes; pages glibc handed back and "
                                              "the next forward touched again"))
        held = {"reference": activation_bytes(reference, x), "chain": activation_bytes(chain, x)}
        rows.append(row(AREA, f"activation memory (saved for backward), {case}", "hand-written nn.Module",
                        base=held["reference"], value=held["chain"], ratio=held["chain"] / held["reference"],
                        target=MEMORY_TARGET, unit="B", note="bytes autograd keeps from the forward"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny batches, one round")
    parser.add_argument("--forward-ratio", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import benchutil

    benchutil.set_quick(args.quick)
    if args.forward_ratio:
        import json

        print(json.dumps(_forward_ratio(args.forward_ratio)))
        return 0
    for r in run():
        print(f"{r['case']:<75} {fmt_amount(r['base'], r['unit']):>10} {fmt_amount(r['value'], r['unit']):>10} "
              f"{r['ratio'] or 0:.3f}x  (target {r['target']})  {r['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
