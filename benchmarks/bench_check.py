"""Shape checking: the full-size PG-GAN checked on the meta device against building it for real.

``Spec.check()`` infers every shape of both 23M-parameter networks of
``specs/pggan.yaml`` at every one of its 9 stages without allocating a
weight or a 1024x1024 activation. The baseline builds the two networks once,
at the final stage only, on the CPU (allocating and initialising their
weights), which is what a check by construction would cost at the least.
torch's first meta-device operation in a process imports ``torch._dynamo``
(about 2 s, once); both sides are warmed up before timing.

Example:
    >>> rows = run()  # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from benchutil import Row, pick, row

import chainspec

AREA = "check"
SPECS = Path(__file__).resolve().parent.parent / "specs"


def _median_time(fn: object, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run() -> list[Row]:
    """Check every stage of the full PG-GAN (or of the tiny one under --quick)."""
    path = SPECS / pick("pggan.yaml", "pggan_tiny.yaml")
    chainspec.loads("chainspec: 1\nchains: {n: {input_shape: [2], nodes: [{id: a, type: relu}]}}").check()
    rounds = pick(5, 1)

    def check() -> None:
        chainspec.load(path).check()  # a fresh Spec each time: no cached shapes

    def build() -> None:
        chainspec.load(path).build_all(stage="final")

    check()
    build()
    base, value = _median_time(build, rounds), _median_time(check, rounds)
    stages = chainspec.load(path).stages
    return [row(AREA, f"Spec.check(), {path.name}, both networks, all {stages} stages (meta device)",
                "build_all(stage='final') on the CPU", base=base, value=value, ratio=value / base,
                target="< 1 s", ok=value < 1.0, note=f"median of {rounds}; the check allocates no weight")]
