"""Growth step: PG-GAN's stage k -> k+1 on live networks against rebuilding both networks and optimizers.

The candidate is ``Grower.step`` crossing into the fade-in of stage k+1: the
growth plans of the generator and the discriminator are applied through the
diff engine as one all-or-nothing step (new layers built, the optimizers
updated, surviving Adam state kept) and the old paths are blended back in.
The baseline is what a hand-written PG-GAN typically does at each resolution:
build both networks at stage k+1 and make new Adam optimizers (without even
copying the old weights over, which would only make it slower).

Example:
    >>> rows = run()  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path

import torch
from benchutil import Row, pick, row

import chainspec
from chainspec.read.schedule import Schedule

AREA = "growth"
SPECS = Path(__file__).resolve().parent.parent / "specs"


def _optimizers(chains: dict[str, chainspec.Chain]) -> dict[str, torch.optim.Optimizer]:
    return {name: torch.optim.Adam(chain.parameters(), lr=1e-3, betas=(0.0, 0.99)) for name, chain in chains.items()}


def _trained(spec: chainspec.Spec, stage: int) -> tuple[chainspec.Grower, float]:
    """Networks at ``stage`` with Adam state (one step on zero gradients) and a grower about to grow."""
    chains = spec.build_all(stage=stage)
    optimizers = _optimizers(chains)
    for chain, optimizer in zip(chains.values(), optimizers.values(), strict=True):
        for p in chain.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    grower = chainspec.Grower(spec, chains=chains, optimizers=optimizers,
                              schedule=Schedule.lengths(spec.stages, stabilize=1, fade=1))
    return grower, time.perf_counter() - start


def _case(path: Path, stage: int, rounds: int) -> list[Row]:
    spec = chainspec.load(path)
    rebuild, step, setup = [], [], []
    for _ in range(rounds):
        gc.collect()  # on both sides: a pending full collection would land in whatever runs next
        start = time.perf_counter()
        chains = spec.build_all(stage=stage + 1)
        _optimizers(chains)
        rebuild.append(time.perf_counter() - start)
        del chains
        grower, made = _trained(spec, stage)
        setup.append(made)
        gc.collect()
        start = time.perf_counter()
        events = grower.step(1)
        step.append(time.perf_counter() - start)
        assert [e.kind for e in events] == ["fade"] and grower.stage == stage + 1, events
    base, value = statistics.median(rebuild), statistics.median(step)
    params = sum(p.numel() for c in spec.build_all(stage=stage + 1, device="meta").values() for p in c.parameters())
    return [row(AREA, f"grow {path.name} stage {stage} -> {stage + 1} (G and D, {params / 1e6:.3g}M params), "
                      "with Adam", "rebuild G, D and their optimizers", base=base, value=value, ratio=value / base,
                note=f"Grower() itself, which plans every stage up front, took {statistics.median(setup):.2g} s")]


def run() -> list[Row]:
    """The tiny PG-GAN and the full 1024x1024 one, growing at a middle stage; then gpt_tiny grown against
    trained from scratch (``bench_grow_gpt``)."""
    torch.manual_seed(0)
    rows = _case(SPECS / "pggan_tiny.yaml", 2, pick(5, 1))
    if pick(True, False):
        rows += _case(SPECS / "pggan.yaml", 5, 3)
    import bench_grow_gpt  # what growing a transformer saves (examples/grow_gpt.py's two runs)

    return rows + bench_grow_gpt.run()
