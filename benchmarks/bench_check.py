"""Shape checking: the full-size PG-GAN checked on the meta device, and the worst cases of ``validate --deep``.

``Spec.check()`` infers every shape of both 23M-parameter networks of
``specs/pggan.yaml`` at every one of its 9 stages without allocating a
weight or a 1024x1024 activation. The baseline builds the two networks once,
at the final stage only, on the CPU (allocating and initialising their
weights), which is what a check by construction would cost at the least.
torch's first meta-device operation in a process imports ``torch._dynamo``
(about 2 s, once); both sides are warmed up before timing.

The worst cases (:func:`worst_cases`) are specs of at most 256 KiB built to
make ``Spec.check`` slow: 1,000 stages, as many nodes as the file and
``chainspec.Limits`` allow, an input shape that changes with the stage,
a window (``stage``/``until``) per node, thousands of distinct definitions,
the slowest meta kernels. Each must be checked or refused within 1 s and
200 MB; ``python benchmarks/bench_check.py`` prints a table of each case's
size, time, peak Python memory and the work counted (modules built and run
on the meta device, walk steps). ``tests/test_deep_check.py`` asserts those
counts.

Example:
    >>> rows = run()  # doctest: +SKIP
    >>> sorted(worst_cases())[:2]  # doctest: +SKIP
    ['alternating', 'composite_leaves']
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchutil
from benchutil import Row, pick, row

import chainspec
from chainspec import SpecError

AREA = "check"
SPECS = Path(__file__).resolve().parent.parent / "specs"
#: The largest spec file (``Limits.max_bytes``) and stage count (``read.model.MAX_STAGES``).
MAX_BYTES = chainspec.Limits().max_bytes
STAGES = 1000


def _median_time(fn: object, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- worst cases -----------------------------------------------------------------------------------------------------

def _spec(stages: int, shape: str, item: Callable[[int], str], *, types: str = "",
          max_items: int | None = None, values_per_item: int = 5, budget: int = MAX_BYTES) -> str:
    """A one-chain spec whose flow-style node list holds as many ``item(i)`` as fit in ``budget`` bytes.

    The count also stays within ``Limits().max_values`` (about ``values_per_item`` YAML values a
    node) and ``max_nodes``, so that the spec loads and reaches the check.
    """
    limits = chainspec.Limits()
    cap = min(limits.max_nodes, (limits.max_values - 200) // values_per_item)
    cap = cap if max_items is None else min(cap, max_items)
    prefix = f"chainspec: 1\nstages: {stages}\n{types}chains:\n  net:\n    input_shape: {shape}\n    nodes: ["
    room = budget - len(prefix) - 2
    parts: list[str] = []
    used = 0
    while len(parts) < cap:
        piece = "{" + item(len(parts)) + "}"
        if used + len(piece) + 2 > room:
            break
        parts.append(piece)
        used += len(piece) + 2
    return prefix + ", ".join(parts) + "]\n"


def issue(stages: int = STAGES, nodes: int = 3000) -> str:
    """The reported case: ``input_shape: ["${stage + 1}"]``, 1,000 stages x 3,000 nodes (relu)."""
    return _spec(stages, '["${stage + 1}"]', lambda i: f"id: n{i}, type: relu", max_items=nodes)


def growing_input(stages: int = STAGES) -> str:
    """As many elementwise nodes as fit, each stage a new input shape."""
    return _spec(stages, '["${stage + 1}"]', lambda i: f"id: n{i}, type: relu")


def through_linear(stages: int = STAGES) -> str:
    """Each stage a new input shape through a linear layer repeated thousands of times: 1,000 distinct pairs."""
    return _spec(stages, '["${stage + 1}", 8]',
                 lambda i: f"id: n{i}, type: linear, args: {{in_features: 8, out_features: 8}}", values_per_item=9)


def own_windows(stages: int = STAGES) -> str:
    """Every node with a window of its own: each stage adds and drops nodes all along the chain."""
    def item(i: int) -> str:
        start = (i * 37) % stages
        return f"id: n{i}, type: relu, stage: {start}, until: {start + 1 + (i * 101) % (stages - start)}"

    return _spec(stages, '["${stage + 1}"]', item, values_per_item=9)


def own_windows_linear(stages: int = STAGES) -> str:
    """Windows of their own, a linear layer on a shape that changes with the stage."""
    def item(i: int) -> str:
        start = (i * 37) % stages
        return (f"id: n{i}, type: linear, args: {{in_features: 8, out_features: 8}}, stage: {start}, "
                f"until: {start + 1 + (i * 101) % (stages - start)}")

    return _spec(stages, '["${stage + 1}", 8]', item, values_per_item=13)


def alternating(stages: int = STAGES) -> str:
    """Two elementwise types in a sequence that never repeats a block (Thue-Morse): no run of one type."""
    return _spec(stages, '["${stage + 1}"]',
                 lambda i: f"id: n{i}, type: {('relu', 'tanh')[bin(i).count('1') % 2]}")


def distinct_elementwise(stages: int = STAGES) -> str:
    """Thousands of distinct definitions (dropout, each its own p), each stage a new input shape."""
    return _spec(stages, '["${stage + 1}"]', lambda i: f"id: n{i}, type: dropout, args: {{p: {i / 100_000}}}",
                 values_per_item=7)


def distinct_layers(stages: int = STAGES) -> str:
    """Thousands of distinct definitions that must each be run (layer norms, each its own eps)."""
    return _spec(stages, '["${stage + 1}", 8]',
                 lambda i: f"id: n{i}, type: layernorm, args: {{normalized_shape: 8, eps: {1e-5 + i * 1e-9:.9g}}}",
                 values_per_item=9)


def slow_layer(stages: int = STAGES) -> str:
    """torch's slowest meta kernel found (a bilinear upsample, about 8 ms a run) on 1,000 input shapes."""
    return _spec(stages, '[1, "${stage + 1}", "${stage + 1}"]',
                 lambda i: f"id: n{i}, type: upsample, args: {{scale_factor: 1.0, mode: bilinear}}", values_per_item=9)


def shrinking(stages: int = STAGES) -> str:
    """Unpadded convolutions: the shape shrinks at each node, so each stage fails at another depth."""
    return _spec(stages, '[1, "${stage + 3}", "${stage + 3}"]',
                 lambda i: f"id: n{i}, type: conv2d, args: {{in_channels: 1, out_channels: 1, kernel_size: 3}}",
                 values_per_item=11)


def composite_leaves(stages: int = STAGES) -> str:
    """Composites of 100 linear layers each, on a shape that changes with the stage."""
    types = "types:\n  t1:\n    nodes: [" + ", ".join(
        f"{{id: p{i}, type: linear, args: {{in_features: 8, out_features: 8}}}}" for i in range(10)) + "]\n" \
        "  t0:\n    nodes: [" + ", ".join(f"{{id: p{i}, type: t1}}" for i in range(10)) + "]\n"
    return _spec(stages, '["${stage + 1}", 8]', lambda i: f"id: n{i}, type: t0", types=types,
                 max_items=chainspec.Limits().max_nodes // 111)


def failing_everywhere(stages: int = STAGES) -> str:
    """Thousands of nodes, then one that fails at all but one stage: a located problem per stage."""
    def item(i: int) -> str:
        return "id: last, type: linear, args: {in_features: 5, out_features: 1}" if i == 2999 else \
            f"id: n{i}, type: relu"

    return _spec(stages, '["${stage + 1}"]', item, max_items=3000)


def worst_cases() -> dict[str, Callable[[], str]]:
    """Each worst case's generator, by name."""
    return {f.__name__: f for f in (issue, growing_input, through_linear, own_windows, own_windows_linear,
                                    alternating, distinct_elementwise, distinct_layers, slow_layer, shrinking,
                                    composite_leaves, failing_everywhere)}


def measure(text: str, *, budget: float = 1.0) -> dict[str, Any]:
    """Load ``text`` and check it; the times, the work counted, the peak Python memory and the outcome."""
    from chainspec.build import shapes

    counts: dict[str, Any] = {}
    real_checker, real_probes = shapes.StageChecker, shapes.Probes

    class Probes(real_probes):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            counts["probes"] = self

    class StageChecker(real_checker):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            counts["checker"] = self

    started = time.perf_counter()
    spec = chainspec.loads(text)
    load_s = time.perf_counter() - started
    shapes.Probes, shapes.StageChecker = Probes, StageChecker  # type: ignore[misc]
    try:
        cpu, started = time.process_time(), time.perf_counter()
        try:
            spec.check(budget=budget)
            outcome = "checked"
        except SpecError as exc:
            refused = [p for p in exc.problems if "stopped there" in p.message]
            outcome = f"refused: {refused[0].message.split(' takes ')[1].split(';')[0]}" if refused else \
                f"{len(exc.problems)} problem(s)"
        check_s, check_cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        shapes.Probes, shapes.StageChecker = real_probes, real_checker  # type: ignore[misc]
    tracemalloc.start()
    try:
        spec = chainspec.loads(text)
        tracemalloc.reset_peak()
        with contextlib.suppress(SpecError):
            spec.check(budget=budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    resolved = spec.resolved()
    probes, checker = counts["probes"], counts["checker"]
    return {"bytes": len(text.encode()), "stages": spec.stages, "nodes": len(resolved.nodes), "load_s": load_s,
            "check_s": check_s, "check_cpu_s": check_cpu, "built": probes.built, "ran": probes.ran,
            "steps": checker.steps, "peak_mb": peak / 1e6, "outcome": outcome}


def worst_case_table(names: list[str] | None = None) -> list[dict[str, Any]]:
    """Measure every worst case (or ``names``); one dict per case, as :func:`measure` returns."""
    _warm_up()
    out = []
    for name, make in worst_cases().items():
        if names is None or name in names:
            out.append({"case": name, **measure(make())})
    return out


def _warm_up() -> None:
    """Pay torch's one-off costs before timing: its first meta-device run (imports torch._dynamo and
    sympy), and the first bilinear upsampling there (another 0.9 s of imports, which the check's
    budget does not count either; the specs above are closed-form, so neither is paid by them)."""
    chainspec.loads("chainspec: 1\nchains: {n: {input_shape: [1, 2, 2], nodes: ["
                    "{id: a, type: upsample, args: {scale_factor: 2, mode: bilinear}}]}}").check()


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print :func:`worst_case_table`'s rows as an aligned text table."""
    header = ("case", "KiB", "stages", "nodes", "load s", "check s", "check cpu s", "built", "ran", "steps",
              "peak MB", "outcome")
    lines = [header]
    for r in rows:
        lines.append((r["case"], f"{r['bytes'] / 1024:.0f}", str(r["stages"]), f"{r['nodes']:,}",
                      f"{r['load_s']:.3f}", f"{r['check_s']:.3f}", f"{r['check_cpu_s']:.3f}", f"{r['built']:,}",
                      f"{r['ran']:,}", f"{r['steps']:,}", f"{r['peak_mb']:.1f}", r["outcome"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(w) if i in (0, len(header) - 1) else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(line, widths, strict=True))))


def run() -> list[Row]:
    """Check every stage of the full PG-GAN (or of the tiny one under --quick), then the worst cases."""
    path = SPECS / pick("pggan.yaml", "pggan_tiny.yaml")
    _warm_up()
    rounds = pick(5, 1)

    def check() -> None:
        chainspec.load(path).check()  # a fresh Spec each time: no cached shapes

    def build() -> None:
        chainspec.load(path).build_all(stage="final")

    check()
    build()
    base, value = _median_time(build, rounds), _median_time(check, rounds)
    stages = chainspec.load(path).stages
    rows = [row(AREA, f"Spec.check(), {path.name}, both networks, all {stages} stages (meta device)",
                "build_all(stage='final') on the CPU", base=base, value=value, ratio=value / base,
                target="< 1 s", ok=value < 1.0, note=f"median of {rounds}; the check allocates no weight")]
    if benchutil.QUICK:
        return rows
    for r in worst_case_table():
        rows.append(row(AREA, f"Spec.check() worst case {r['case']} ({r['bytes'] / 1024:.0f} KiB, "
                              f"{r['stages']} stages, {r['nodes']:,} nodes)", "1 s, 200 MB",
                        base=1.0, value=r["check_s"], ratio=r["check_s"], target="< 1 s, < 200 MB",
                        ok=r["check_s"] < 1.0 and r["peak_mb"] < 200,
                        note=f"{r['outcome']}; {r['built']:,} built, {r['ran']:,} run, {r['steps']:,} steps, "
                             f"{r['peak_mb']:.0f} MB peak"))
    return rows


if __name__ == "__main__":
    print_table(worst_case_table(sys.argv[1:] or None))
