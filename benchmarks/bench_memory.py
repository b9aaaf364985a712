"""Memory: 1,000 insert/remove cycles on a training chain with an Adam optimizer leak nothing.

Each cycle applies a one-node revision through the diff engine (a Linear
joins the chain and, through ``plan.apply(chain, optimizer)``, the optimizer),
takes a training step so that Adam creates state for the new parameters, then
applies the reverse revision (the node leaves the chain and the optimizer,
state included) and takes another step. Live tensors (gc), their bytes,
``optimizer.state``, the optimizer's parameter count, Python memory
(tracemalloc) and gc-tracked objects are counted after a warm-up and again
after the cycles; each row is after / before.

Example:
    >>> rows = run()  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import tracemalloc
import warnings

import torch
from benchutil import Row, pick, row

import chainspec

AREA = "memory"

SPEC = """
chainspec: 1
chains:
  net:
    input_shape: [16]
    nodes:
      - {id: fc0, type: linear, args: {in_features: 16, out_features: 16}}
      - {id: act0, type: relu}
      - {id: fc1, type: linear, args: {in_features: 16, out_features: 16}}
      - {id: act1, type: relu}
      - {id: fc2, type: linear, args: {in_features: 16, out_features: 16}}
"""
#: The revision: one more Linear between act0 and fc1.
EXTRA = "      - {id: extra, type: linear, args: {in_features: 16, out_features: 16}}\n"


def _counts(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    gc.collect()
    objects = gc.get_objects()
    with warnings.catch_warnings():  # isinstance() on some lazily deprecated torch objects warns
        warnings.simplefilter("ignore")
        tensors = [o for o in objects if isinstance(o, torch.Tensor)]
    storages = {}
    for t in tensors:
        if t.device.type == "cpu" and type(t) in (torch.Tensor, torch.nn.Parameter):  # not fake/meta tensors
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return {
        "live tensors": len(tensors),
        "live tensor bytes": sum(storages.values()),
        "optimizer.state entries": len(optimizer.state),
        "optimizer params": sum(len(g["params"]) for g in optimizer.param_groups),
        "python memory (tracemalloc)": tracemalloc.get_traced_memory()[0],
        "gc-tracked objects": len(objects),
    }


UNITS = {"live tensor bytes": "B", "python memory (tracemalloc)": "B"}
#: Allowed after/before: none for what a leak would show up in directly. Python memory
#: settles slowly (torch's and Python's internal caches churn for a few hundred
#: cycles, then level off: +90 KB after 1,000 or 3,000 cycles alike when measured
#: from cycle 20), hence the long warm-up and a hair of slack.
TARGETS = {"python memory (tracemalloc)": 1.01, "gc-tracked objects": 1.01}


def run() -> list[Row]:
    """One row per quantity: its value after the cycles against after the warm-up (target: no growth)."""
    torch.manual_seed(0)
    lines = SPEC.splitlines(keepends=True)
    old = chainspec.loads(SPEC, source="memory.yaml")
    new = chainspec.loads("".join([*lines[:-3], EXTRA, *lines[-3:]]), source="memory-extra.yaml")
    grow, shrink = chainspec.diff(old, new), chainspec.diff(new, old)
    assert [op.kind for op in grow.ops] == ["insert"] and [op.kind for op in shrink.ops] == ["remove"]
    chain = old.build()
    optimizer = torch.optim.Adam(chain.parameters(), lr=1e-3)
    x = torch.randn(8, 16)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        chain(x).square().mean().backward()
        optimizer.step()

    def cycle() -> None:
        grow.apply(chain, optimizer)
        train_step()
        shrink.apply(chain, optimizer)
        train_step()

    warmup, cycles = pick((200, 1_000), (3, 20))
    tracemalloc.start()
    try:
        for _ in range(warmup):
            cycle()
        before = _counts(optimizer)
        for _ in range(cycles):
            cycle()
        after = _counts(optimizer)
    finally:
        tracemalloc.stop()
    assert chain.ids() == ["fc0", "act0", "fc1", "act1", "fc2"]
    note = f"{cycles:,} cycles after {warmup} warm-up cycles, via plan.apply(chain, optimizer)"
    rows = []
    for key, value in after.items():
        base = before[key]
        rows.append(row(AREA, key, "after the warm-up", base=base, value=value,
                        ratio=value / base if base else None, target=TARGETS.get(key, 1.0),
                        unit=UNITS.get(key, "count"), note=note if not rows else _per_cycle(value - base, cycles, key)))
    return rows


def _per_cycle(delta: float, cycles: int, key: str) -> str:
    if not delta:
        return ""
    unit = " B" if key in UNITS else ""
    return f"{delta:+,.0f}{unit} in all ({delta / cycles:+.2f}{unit} per cycle)"

