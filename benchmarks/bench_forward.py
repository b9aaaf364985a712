"""Forward overhead: ``Chain`` against ``nn.Sequential`` and a naive recursive linked list.

All three hold the very same module objects, so any difference is the cost of
walking the structure. Tiny layers (``Linear(16, 16)`` at batch 1) make that
cost show most; the blog spec at batch 16 is a realistic small CNN.

Example:
    >>> rows = run()  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import torch
from benchutil import Row, compare, pick, row
from torch import nn

import chainspec
from chainspec import Chain

AREA = "forward"
SPECS = Path(__file__).resolve().parent.parent / "specs"


class NaiveNode(nn.Module):
    """A linked-list node as one might first write it: the next node is a submodule and forward recurses.

    ``prev`` is kept as a plain attribute (registering it as a submodule too
    would make the module tree cyclic, and ``state_dict`` would recurse forever),
    so the list is as favourable to the naive design as it can be.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.next: NaiveNode | None = None
        object.__setattr__(self, "prev", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer(x)
        return x if self.next is None else self.next(x)


def naive_list(modules: list[nn.Module]) -> NaiveNode:
    """Link ``modules`` into a :class:`NaiveNode` list and return its head."""
    nodes = [NaiveNode(m) for m in modules]
    for a, b in itertools.pairwise(nodes):
        a.next = b
        object.__setattr__(b, "prev", a)
    return nodes[0]


def naive_limit(modules: list[nn.Module], x: torch.Tensor) -> int:
    """The deepest naive list (at most ``len(modules)``) whose forward runs without a RecursionError."""
    lo, hi = 1, len(modules)
    if _naive_runs(modules, x):
        return hi
    while hi - lo > 1:  # invariant: depth lo runs, depth hi dies
        mid = (lo + hi) // 2
        if _naive_runs(modules[:mid], x):
            lo = mid
        else:
            hi = mid
    return lo


def _naive_runs(modules: list[nn.Module], x: torch.Tensor) -> bool:
    try:
        with torch.no_grad():
            naive_list(modules)(x)
    except RecursionError:
        return False
    return True


def _forward(model: nn.Module, x: torch.Tensor) -> Any:
    def call() -> None:
        with torch.no_grad():
            model(x)

    return call


def _forward_backward(model: nn.Module, x: torch.Tensor) -> Any:
    def call() -> None:
        model(x).sum().backward()

    return call


def _against_sequential(case: str, modules: list[tuple[str, nn.Module]], x: torch.Tensor, target: float) -> list[Row]:
    chain = Chain(modules)
    seq = nn.Sequential(*(m for _, m in modules))
    rows = []
    for what, make in (("forward", _forward), ("forward+backward", _forward_backward)):
        base, value, ratio = compare(make(seq, x), make(chain, x))
        rows.append(row(AREA, f"{what}, {case}", "nn.Sequential", base=base, value=value, ratio=ratio,
                        target=target))
    return rows


def _against_naive(depth: int, layers: list[nn.Module], x: torch.Tensor, limit: int) -> list[Row]:
    chain = Chain([(f"l{i}", m) for i, m in enumerate(layers)])
    case = f"forward, Linear(16,16) x{depth}, batch 1"
    if depth > limit:
        _, value, _ = compare(_forward(chain, x), _forward(chain, x), rounds=pick(5, 1))
        return [row(AREA, case, "naive recursive list", base=None, value=value, ratio=None,
                    note="RecursionError")]
    naive = naive_list(layers)
    base, value, ratio = compare(_forward(naive, x), _forward(chain, x))
    return [row(AREA, case, "naive recursive list", base=base, value=value, ratio=ratio)]


def run() -> list[Row]:
    """Chain vs Sequential (tiny layers, blog spec) and vs the naive recursive list; one row per case."""
    torch.manual_seed(0)
    depths = pick((10, 100, 1000), (10,))
    rows: list[Row] = []
    x = torch.randn(1, 16)
    for depth in depths:
        layers = [(f"l{i}", nn.Linear(16, 16)) for i in range(depth)]
        # Per-call overhead weighs most against the smallest amount of work, hence the looser target there.
        target = 1.10 if depth == min(depths) else 1.05
        rows += _against_sequential(f"Linear(16,16) x{depth}, batch 1", layers, x, target)

    batch = pick(16, 2)
    blog = chainspec.load(SPECS / "blog.yaml").build(stage="final")
    xb = torch.randn(batch, 3, 32, 32)
    rows += _against_sequential(f"blog spec (final stage), batch {batch}", [(n.id, n.module) for n in blog], xb, 1.05)

    naive_depths = pick((10, 100, 1000), (10, 1000))
    all_layers = [nn.Linear(16, 16) for _ in range(max(naive_depths))]
    limit = naive_limit(all_layers, x)
    for depth in naive_depths:
        rows += _against_naive(depth, all_layers[:depth], x, limit)
    rows.append(row(AREA, "deepest naive recursive list that runs", f"recursion limit {sys.getrecursionlimit()}",
                    base=None, value=limit, ratio=None, unit="nodes",
                    note="" if limit == len(all_layers) else f"RecursionError from depth {limit + 1}"))
    return rows
