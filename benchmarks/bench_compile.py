"""``torch.compile``: a compiled ``Chain`` against a compiled ``nn.Sequential`` of the same modules.

After warm-up both run one inductor graph, so they should be equally fast. A
splice changes the chain's links, which dynamo guards on, so the next call
recompiles once; undoing the splice finds the old graph in the cache. The
figures come from ``torch._dynamo.utils.counters["stats"]["unique_graphs"]``.

Example:
    >>> rows = run()  # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
import torch._functorch.config
from benchutil import Row, compare, pick, row
from torch import nn
from torch._dynamo.utils import counters

import chainspec
from chainspec import Chain

AREA = "compile"
SPECS = Path(__file__).resolve().parent.parent / "specs"


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def _first_calls(fn: Any, x: torch.Tensor) -> tuple[float, int]:
    """Seconds taken by two calls and the graphs compiled during them.

    Two, because a compiled chain whose cached order was stale (just built or
    just spliced) compiles twice: the first call walks the links outside the
    trace (a graph break) and the second compiles the steady-state graph.
    """
    before = _graphs()
    start = time.perf_counter()
    with torch.no_grad():
        fn(x)
        fn(x)
    return time.perf_counter() - start, _graphs() - before


def _recompiles(case: str, baseline: str, c_seq: Any, c_chain: Any, x: torch.Tensor) -> Row:
    """Graphs compiled by the first two calls of each after a splice, and the time those calls took."""
    t_seq, g_seq = _first_calls(c_seq, x)
    t_chain, g_chain = _first_calls(c_chain, x)
    return row(AREA, case, baseline, base=g_seq, value=g_chain, ratio=None, unit="graphs",
               note=f"the 2 calls took {t_chain:.2g} s (Sequential {t_seq:.2g} s)")


def _compiled_pair(case: str, modules: list[tuple[str, nn.Module]], x: torch.Tensor, target: float,
                   splice: nn.Module | None) -> list[Row]:
    chain = Chain(modules)
    seq = nn.Sequential(*(m for _, m in modules))
    c_chain, c_seq = torch.compile(chain), torch.compile(seq)
    t_seq, _ = _first_calls(c_seq, x)
    t_chain, _ = _first_calls(c_chain, x)
    rows = [row(AREA, f"first 2 calls (compiling), {case}", "compiled nn.Sequential", base=t_seq, value=t_chain,
                ratio=t_chain / t_seq)]

    def fwd(model: Any) -> Any:
        def call() -> None:
            with torch.no_grad():
                model(x)

        return call

    base, value, ratio = compare(fwd(c_seq), fwd(c_chain))
    rows.append(row(AREA, f"forward after warm-up, {case}", "compiled nn.Sequential", base=base, value=value,
                    ratio=ratio, target=target))
    if splice is None:
        return rows

    # Splice one node into the middle of each, then call until steady: count the graphs compiled.
    mid = len(modules) // 2
    chain.insert_after(modules[mid - 1][0], "spliced", splice)
    seq.insert(mid, splice)
    rows.append(_recompiles(f"graphs compiled by the 2 calls after inserting a node, {case}",
                            "compiled nn.Sequential (insert)", c_seq, c_chain, x))
    chain.remove("spliced")
    del seq[mid]
    rows.append(_recompiles(f"graphs compiled by the 2 calls after removing it again, {case}",
                            "compiled nn.Sequential (del)", c_seq, c_chain, x))
    return rows


def _fresh_compiles() -> None:
    """Make every compile pay in full, and pay inductor's one-time start-up before anything is timed.

    Chain and Sequential of the same modules give the same FX graph, so with
    inductor's on-disk caches on, whichever compiles second would be a cache hit.
    """
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = False
    if hasattr(torch._functorch.config, "enable_autograd_cache"):
        torch._functorch.config.enable_autograd_cache = False
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(nn.Sequential(nn.Linear(3, 3), nn.Tanh()))(torch.zeros(1, 3))
    torch._dynamo.reset()


def run() -> list[Row]:
    """Compiled Chain vs compiled Sequential: first call, steady state, recompiles after a splice."""
    torch.manual_seed(0)
    _fresh_compiles()
    rows: list[Row] = []
    depth = pick(10, 3)
    layers = [(f"l{i}", nn.Linear(16, 16)) for i in range(depth)]
    rows += _compiled_pair(f"Linear(16,16) x{depth}, batch 1", layers, torch.randn(1, 16), 1.10,
                           splice=nn.Linear(16, 16))
    if pick(True, False):
        blog = chainspec.load(SPECS / "blog.yaml").build(stage="final")
        rows += _compiled_pair("blog spec (final stage), batch 16", [(n.id, n.module) for n in blog],
                               torch.randn(16, 3, 32, 32), 1.05, splice=None)
    limit = getattr(torch._dynamo.config, "recompile_limit", None) or torch._dynamo.config.cache_size_limit
    rows.append(row(AREA, "distinct chain layouts cached per compiled chain", "torch._dynamo.config",
                    base=None, value=limit, ratio=None, unit="layouts",
                    note="beyond this many splices dynamo falls back to eager for that code"))
    return rows
