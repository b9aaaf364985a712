"""``torch.compile``: a compiled ``Chain`` against a compiled ``nn.Sequential`` of the same modules.

After warm-up both run one inductor graph, so they should be equally fast. A
splice changes the chain's layout, which dynamo guards on, so the next calls
recompile (twice for a chain: see ``_Side.calls``); undoing the splice finds
the old graph in dynamo's cache. Graph counts come from
``torch._dynamo.utils.counters["stats"]["unique_graphs"]``.

Example:
    >>> rows = run()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchutil
import torch
import torch._dynamo
from benchutil import Row, compare, pick, row
from torch import nn
from torch._dynamo.utils import counters

import chainspec
from chainspec import Chain

AREA = "compile"
SPECS = Path(__file__).resolve().parent.parent / "specs"


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


class _Side:
    """One compiled model with an inductor cache directory of its own.

    Chain and Sequential of the same modules lower to the same graph, so with
    a shared cache whichever compiled second would find the other's kernels;
    each side gets an empty cache of its own instead, with inductor's default
    cache settings otherwise (as a user has them).
    """

    def __init__(self, model: nn.Module) -> None:
        self.compiled = torch.compile(model)
        self.cache = tempfile.mkdtemp(prefix="chainspec-bench-inductor-")

    def calls(self, x: torch.Tensor, n: int = 2) -> tuple[float, int]:
        """Seconds taken by ``n`` calls and the graphs compiled during them.

        Two by default, because a compiled chain whose cached order was stale
        (just built or just spliced) compiles twice: the first call walks the
        links outside the trace (a graph break), the second compiles the
        steady-state graph (mostly a hit in inductor's cache of the first).
        """
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.cache
        before = _graphs()
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(n):
                self.compiled(x)
        return time.perf_counter() - start, _graphs() - before

    def forward(self, x: torch.Tensor) -> Any:
        def call() -> None:
            with torch.no_grad():
                self.compiled(x)

        return call

    def close(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)


def _recompiles(case: str, baseline: str, seq: _Side, chain: _Side, x: torch.Tensor) -> Row:
    """Graphs compiled by the first two calls of each after a splice, and the time those calls took."""
    t_chain, g_chain = chain.calls(x)
    t_seq, g_seq = seq.calls(x)
    return row(AREA, case, baseline, base=g_seq, value=g_chain, ratio=None, unit="count",
               note=f"the 2 calls took {t_chain:.2g} s (Sequential {t_seq:.2g} s)")


def model(case: str) -> tuple[str, list[tuple[str, nn.Module]], torch.Tensor, float]:
    """The modules, input and target of a case: ``"linear"`` (tiny layers) or ``"blog"`` (the blog spec)."""
    torch.manual_seed(0)
    if case == "linear":
        depth = pick(10, 3)
        return (f"Linear(16,16) x{depth}, batch 1", [(f"l{i}", nn.Linear(16, 16)) for i in range(depth)],
                torch.randn(1, 16), 1.10)
    blog = chainspec.load(SPECS / "blog.yaml").build(stage="final")
    return "blog spec (final stage), batch 16", [(n.id, n.module) for n in blog], torch.randn(16, 3, 32, 32), 1.05


def first_calls_fresh(case: str, kind: str) -> float:
    """Seconds of the first two calls of a compiled ``kind`` ("chain" or "sequential") in a new process.

    A process of its own with an empty inductor cache, after inductor's
    one-time start-up: what compiling costs a training script, with nothing
    left in memory by compiling the other side.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--first-calls", case, kind]
    if benchutil.QUICK:
        cmd.append("--quick")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])


def _fresh_pair(case: str) -> Row:
    name = model(case)[0]
    # One sample each: a new process and a full compile take seconds apiece.
    value = first_calls_fresh(case, "chain")
    base = first_calls_fresh(case, "sequential")
    return row(AREA, f"first 2 calls (compiling), {name}", "compiled nn.Sequential", base=base, value=value,
               ratio=value / base, note="each in a new process with an empty inductor cache; one sample")


def _compiled_pair(case: str, modules: list[tuple[str, nn.Module]], x: torch.Tensor, target: float,
                   splice: nn.Module | None) -> list[Row]:
    chain = Chain(modules)
    seq = nn.Sequential(*(m for _, m in modules))
    c_chain, c_seq = _Side(chain), _Side(seq)
    try:
        c_chain.calls(x)
        c_seq.calls(x)
        rows = []
        base, value, ratio = compare(c_seq.forward(x), c_chain.forward(x))
        rows.append(row(AREA, f"forward after warm-up, {case}", "compiled nn.Sequential", base=base, value=value,
                        ratio=ratio, target=target))
        if splice is not None:
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
    finally:
        c_chain.close()
        c_seq.close()
    return rows


def _warm_up() -> None:
    """Pay inductor's one-time start-up (imports, the C++ toolchain check) before anything is timed."""
    torch._dynamo.reset()
    scratch = tempfile.mkdtemp(prefix="chainspec-bench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = scratch
    try:
        with torch.no_grad():
            torch.compile(nn.Sequential(nn.Linear(3, 3), nn.Tanh()))(torch.zeros(1, 3))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    torch._dynamo.reset()


def run() -> list[Row]:
    """Compiled Chain vs compiled Sequential: first call, steady state, recompiles after a splice."""
    torch.manual_seed(0)
    _warm_up()
    rows: list[Row] = []
    for case in pick(("linear", "blog"), ("linear",)):
        rows.append(_fresh_pair(case))
        name, modules, x, target = model(case)
        rows += _compiled_pair(name, modules, x, target, splice=nn.Linear(16, 16) if case == "linear" else None)
    limit = getattr(torch._dynamo.config, "recompile_limit", None) or torch._dynamo.config.cache_size_limit
    rows.append(row(AREA, "distinct chain layouts cached per compiled chain", "torch._dynamo.config",
                    base=None, value=limit, ratio=None, unit="layouts",
                    note="beyond this many splices dynamo falls back to eager for that code"))
    return rows


def _main(argv: list[str]) -> int:
    """``--first-calls CASE KIND [--quick]``: print the seconds of the first two compiled calls as JSON."""
    if len(argv) < 3 or argv[0] != "--first-calls" or argv[2] not in ("chain", "sequential"):
        print("usage: bench_compile.py --first-calls linear|blog chain|sequential [--quick]", file=sys.stderr)
        return 2
    benchutil.set_quick("--quick" in argv)
    torch.set_num_threads(1)
    _warm_up()
    _, modules, x, _ = model(argv[1])
    side = _Side(Chain(modules) if argv[2] == "chain" else nn.Sequential(*(m for _, m in modules)))
    try:
        seconds, graphs = side.calls(x)
    finally:
        side.close()
    print(json.dumps({"seconds": seconds, "graphs": graphs}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
