"""Revisions: diff + apply of a one-node revision of a 10,000-node spec, against building it from scratch.

The spec is a chain of 10,000 ``Linear(16, 16)`` nodes; the revision inserts
one more in the middle (and the reverse revision removes it). Both specs are
loaded (parsed and validated) before timing, on both sides: the baseline is
``spec.build()`` of the revised spec, the candidate ``diff(old, new)`` then
``plan.apply(chain)`` on the live chain. The same with an Adam optimizer:
build + a new optimizer against diff + ``plan.apply(chain, optimizer)``.

Example:
    >>> rows = run()  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import statistics
import time
from itertools import islice
from typing import Any

import torch
from benchutil import Row, pick, row

import chainspec
from chainspec.read.reserved import id_problem

AREA = "revision"


def node_ids(n: int) -> list[str]:
    """``n`` short ids: a letter then two base-36 digits, skipping keywords and reserved names ('def', 'cpu')."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    ids = (letter + a + b for letter in "abcdefghijklmnopqrstuvwxyz" for a in digits for b in digits)
    return list(islice((i for i in ids if not id_problem(i)), n))


def spec_text(n: int, *, extra_after: int | None = None) -> str:
    """A chain of ``n`` Linear(16, 16) nodes, with one more node after node ``extra_after`` if given.

    Written as compactly as YAML allows (flow style, three-character ids), so
    that 10,000 nodes fit in the 256 KiB a spec file may have.

    Example:
        >>> print(spec_text(2), end="")
        chainspec: 1
        defaults: {linear: {in_features: 16, out_features: 16}}
        chains:
         net:
          input_shape: [16]
          nodes: [{id: a00, type: linear},{id: a01, type: linear}]
    """
    items = []
    for i, node_id in enumerate(node_ids(n)):
        items.append(f"{{id: {node_id}, type: linear}}")
        if i == extra_after:
            items.append("{id: extra, type: linear}")
    return ("chainspec: 1\ndefaults: {linear: {in_features: 16, out_features: 16}}\n"
            f"chains:\n net:\n  input_shape: [16]\n  nodes: [{','.join(items)}]\n")


#: The bounds these generated specs are loaded under, through the public API. Ten thousand nodes
#: are 50,000 YAML values at the least (a mapping, two keys, two values each), just over the
#: default guard against generated or alias-bomb documents (``Limits.max_values``), and 10,001
#: modules, just over the default ``Limits.max_nodes``: both are raised for these trusted specs.
LIMITS = chainspec.Limits(max_values=200_000, max_nodes=50_000)


def _timed(fn: Any) -> tuple[float, Any]:
    # Collect first, on both sides: building 10,000 nodes leaves Python's collector a full pass
    # over half a million objects due (about a second), which would land in whatever runs next.
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run() -> list[Row]:
    """Rows: load, build, diff, diff+apply (insert and remove), with and without an optimizer."""
    n = pick(10_000, 200)
    rounds = pick(5, 1)
    text_old, text_new = spec_text(n), spec_text(n, extra_after=n // 2)
    load_t, old = _timed(lambda: chainspec.loads(text_old, source="chain-old.yaml", limits=LIMITS))
    new = chainspec.loads(text_new, source="chain-new.yaml", limits=LIMITS)
    case = f"{n:,} nodes"
    chain = old.build()
    assert len(chain) == n

    build_times, opt_build_times = [], []
    for _ in range(pick(2, 1)):  # building 10,000 nodes takes seconds: two samples
        t, built = _timed(lambda: new.build())
        build_times.append(t)
        t, _ = _timed(lambda built=built: torch.optim.Adam(built.parameters(), lr=1e-3))
        opt_build_times.append(build_times[-1] + t)
        del built
    diff_times, insert_times, remove_times = [], [], []
    opt_insert_times, opt_remove_times = [], []
    for _ in range(rounds):
        t, plan = _timed(lambda: chainspec.diff(old, new))
        diff_times.append(t)
        assert [op.kind for op in plan.ops] == ["insert"], plan.summary()
        insert_times.append(t + _timed(lambda plan=plan: plan.apply(chain))[0])
        t, back = _timed(lambda: chainspec.diff(new, old))
        remove_times.append(t + _timed(lambda back=back: back.apply(chain))[0])
    # The same with an optimizer on the live chain (its new parameters join it, the removed leave it).
    optimizer = torch.optim.Adam(chain.parameters(), lr=1e-3)
    for _ in range(rounds):
        opt_insert_times.append(_timed(lambda: chainspec.diff(old, new).apply(chain, optimizer))[0])
        opt_remove_times.append(_timed(lambda: chainspec.diff(new, old).apply(chain, optimizer))[0])
    assert len(chain) == n and sum(len(g["params"]) for g in optimizer.param_groups) == 2 * n

    build = statistics.median(build_times)
    opt_build = statistics.median(opt_build_times)
    diff_t = statistics.median(diff_times)
    rows = [
        row(AREA, f"load (parse + validate) the spec, {case}", "spec.build()", base=build, value=load_t,
            ratio=load_t / build, note="done on both sides before timing; a running job reloads only on change"),
        row(AREA, f"diff alone, {case}", "spec.build()", base=build, value=diff_t, ratio=diff_t / build,
            target="< 0.5 s", ok=diff_t < 0.5),
    ]
    for what, times, base, baseline in (
            ("diff + apply, insert one node", insert_times, build, "spec.build()"),
            ("diff + apply, remove one node", remove_times, build, "spec.build()"),
            ("diff + apply(optimizer), insert one node", opt_insert_times, opt_build, "spec.build() + new Adam"),
            ("diff + apply(optimizer), remove one node", opt_remove_times, opt_build, "spec.build() + new Adam")):
        value = statistics.median(times)
        rows.append(row(AREA, f"{what}, {case}", baseline, base=base, value=value, ratio=value / base, target=0.1))
    return rows
