"""Diff and apply on 10,000-node chains.

``chainspec.diff`` matches ids with an O(n log n) longest increasing
subsequence and builds only the nodes that changed; its baseline is the
standard library's ``difflib.SequenceMatcher`` on the same id lists (which
finds no moves and builds nothing), to show what the matching costs next to a
plain sequence diff. ``Plan.apply`` is timed against building the revised
chain from scratch with ``Spec.build``. The specs are generated in memory
(the YAML loader refuses files of this size on purpose).

Run alone with ``python benchmarks/bench_diff.py [--quick]``.

Example:
    >>> rows = run()  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import sys
import time
from typing import Any

import torch
import yaml
from benchutil import Row, median_time, pick, row

import chainspec
from chainspec.read.document import Document
from chainspec.read.model import SpecModel
from chainspec.read.resolve import resolve
from chainspec.read.spec import Spec

AREA = "diff"
#: 10,000 nodes of one module each (and the edits) are past the default ``Limits.max_nodes``
#: (10,000 modules over all chains); the limit is raised for these generated, trusted specs.
LIMITS = chainspec.Limits(max_nodes=50_000)


def big_spec(ids: list[str], edits: dict[str, str] | None = None) -> Spec:
    """A spec with one small linear block per id (``u`` blocks have no bias), under :data:`LIMITS`."""
    edits = edits or {}
    nodes = ",".join(f"{{id: {i},type: {edits.get(i, 't')}}}" for i in ids)
    text = ("chainspec: 1\ntypes:\n  t: {nodes: [{id: l, type: linear, args: {in_features: 8, out_features: 8}}]}\n"
            "  u: {nodes: [{id: l, type: linear, args: {in_features: 8, out_features: 8, bias: false}}]}\n"
            f"chains:\n  net:\n    input_shape: [8]\n    nodes: [{nodes}]\n")
    data = yaml.safe_load(text)
    model = SpecModel.model_validate(data)
    doc = Document("big.yaml", data)
    chains, stages, problems = resolve(model, doc, limits=LIMITS)
    if problems:
        raise RuntimeError(problems)
    return Spec(model, doc, text, chains, stages, (), limits=LIMITS)


def edited(ids: list[str]) -> list[str]:
    """Four edits spread over the chain: an insert, a remove, a move (and a replace, via ``edits``)."""
    out = list(ids)
    n = len(out)
    out.remove(ids[n // 2])
    out.insert(n // 100, "fresh")
    moved = ids[n // 200]
    out.remove(moved)
    out.insert(9 * n // 10, moved)
    return out


def run() -> list[Row]:
    n = pick(10_000, 300)
    old_ids = [f"n{i}" for i in range(n)]
    new_ids = edited(old_ids)
    old = big_spec(old_ids)
    new = big_spec(new_ids, edits={old_ids[7]: "u"})
    reverse = big_spec(old_ids[::-1])
    chainspec.diff(old, new)  # warm-up: the first meta build pays torch's lazy initialisation
    rows: list[Row] = []

    base = median_time(lambda: difflib.SequenceMatcher(None, old_ids, new_ids, autojunk=False).get_opcodes())
    value = median_time(lambda: chainspec.diff(old, new))
    rows.append(row(AREA, f"diff, {n:,} nodes, 4 edits", "difflib.SequenceMatcher on the ids", base=base,
                    value=value, ratio=value / base, note="must stay well under 1 s", ok=value < 1.0))
    value = median_time(lambda: chainspec.diff(old, reverse))
    plan = chainspec.diff(old, reverse)
    rows.append(row(AREA, f"diff, {n:,} nodes reversed ({len(plan.ops):,} moves)", "-", base=None, value=value,
                    ratio=None, note="worst case for moves", ok=value < 1.0))

    torch.manual_seed(0)
    net = old.build()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    forward, backward = chainspec.diff(old, new), chainspec.diff(new, old)
    state: dict[str, Any] = {"at": "old"}

    def back() -> None:
        if state["at"] == "new":
            backward.apply(net, opt)
            state["at"] = "old"

    def apply() -> None:
        forward.apply(net, opt)
        state["at"] = "new"

    value = median_time(apply, setup=back, rounds=pick(5, 2))
    start = time.perf_counter()
    new.build()
    base = time.perf_counter() - start
    rows.append(row(AREA, f"apply with Adam, {n:,} nodes, 4 edits", "Spec.build of the revision", base=base,
                    value=value, ratio=value / base))
    return rows


if __name__ == "__main__":
    from benchutil import fmt_amount, set_quick

    set_quick("--quick" in sys.argv)
    for r in run():
        ratio = f"{r['ratio']:.3g}x" if r["ratio"] is not None else "-"
        print(f"{r['case']:<45} {fmt_amount(r['value'], r['unit']):>10}  vs {r['baseline']}: "
              f"{fmt_amount(r['base'], r['unit'])} ({ratio})  {r['note']}")
