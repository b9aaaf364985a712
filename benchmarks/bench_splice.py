"""Splice cost against chain length: insert one node in the middle and remove it, at 10 to 100,000 nodes.

Each figure is the time of one insert + remove at that length, as a ratio to
the same at 10 nodes (flat means O(1)). ``nn.Sequential.insert`` + ``del``
at the same lengths is shown for reference (it renumbers every later module).
The modules are ``nn.Identity``: a splice never looks inside a module, and
building 100,000 of them takes a second where Linear layers would take much longer.

Example:
    >>> rows = run()  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from benchutil import Row, interleaved, median_time, pick, row
from torch import nn

from chainspec import Chain

AREA = "splice"


def _chain_cycle(n: int) -> Any:
    chain = Chain([(f"n{i}", nn.Identity()) for i in range(n)])
    anchor = chain[f"n{n // 2}"]
    module = nn.Identity()

    def cycle() -> None:
        chain.insert_after(anchor, "spliced", module)
        chain.remove("spliced")

    return cycle


def _sequential_cycle(n: int) -> Any:
    seq = nn.Sequential(*(nn.Identity() for _ in range(n)))
    module = nn.Identity()
    mid = n // 2

    def cycle() -> None:
        seq.insert(mid, module)
        del seq[mid]

    return cycle


def run() -> list[Row]:
    """One row per chain length for Chain (target: 100k/10 <= 2), and the Sequential reference."""
    sizes = pick((10, 100, 1_000, 10_000, 100_000), (10, 1_000))
    rows: list[Row] = []
    cycles = {n: _chain_cycle(n) for n in sizes}
    times, ratios = interleaved(cycles, number=pick(200, 50), rounds=pick(301, 3))
    base = times[sizes[0]]
    for n in sizes:
        target = 2.0 if n == sizes[-1] else None
        rows.append(row(AREA, f"Chain insert_after + remove, {n:,} nodes", f"the same at {sizes[0]} nodes",
                        base=base, value=times[n], ratio=ratios[n], target=target))
    seq_sizes = [n for n in sizes if n <= pick(100_000, 1_000)]
    seq_base = None
    for n in seq_sizes:
        cycle = _sequential_cycle(n)
        t = median_time(cycle, number=max(1, pick(20_000, 500) // n), rounds=pick(5, 2))
        seq_base = seq_base or t
        rows.append(row(AREA, f"nn.Sequential insert + del (reference), {n:,} modules",
                        f"the same at {seq_sizes[0]} modules", base=seq_base, value=t, ratio=t / seq_base))
    return rows
