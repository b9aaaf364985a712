"""Cold start: ``chainspec build`` on each shipped spec and ``chainspec validate --deep``, against importing torch.

Every command runs as a fresh process, as from a shell, in interleaved rounds (each round runs
every command once, the order rotating from round to round, so that a busy machine slows them
alike); each figure is a command's median wall time, and its ratio is the median over rounds of its
time over that of ``python -c "import torch"`` in the same round. A command that shape-checks a spec
made only of built-in types gets its shapes in closed form (``chainspec.build.rules``) and never
pays torch's first meta-device run (importing ``torch._dynamo`` and sympy, 1-2 s), so it should
cost little more than importing torch: the target for ``build specs/pggan.yaml`` is 1.3x.

The last row is what ``import chainspec`` costs on top of ``import torch``, timed inside fresh
processes that have imported torch first (target: under 0.2 s); ``python -X importtime -c
"import torch; import chainspec"`` shows where it goes.

Usage:
    python benchmarks/bench_startup.py [--repeats N]

Example:
    >>> rows = run(quick=True)  # doctest: +SKIP
    >>> [r["case"] for r in rows][-1]  # doctest: +SKIP
    'import chainspec, after import torch'
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import benchutil
from benchutil import Row, row

AREA = "startup"
ROOT = Path(__file__).resolve().parents[1]
#: The baseline every command is set against.
TORCH = 'python -c "import torch"'
#: The command the issue is about, and its target ratio.
TARGET_CASE, TARGET = "chainspec build specs/pggan.yaml", 1.3
#: Seconds ``import chainspec`` may add to ``import torch``.
IMPORT_TARGET = 0.2
#: Prints the seconds ``import chainspec`` takes in a process that has imported torch.
IMPORT_CODE = "import time, torch; t = time.perf_counter(); import chainspec; print(time.perf_counter() - t)"
IMPORT_CASE = "import chainspec, after import torch"


def _chainspec() -> list[str]:
    found = benchutil.installed_script("chainspec")
    return [found] if found else [sys.executable, "-m", "chainspec"]


def commands(specs: list[str] | None = None) -> dict[str, list[str]]:
    """The commands timed, by name: the torch import first, then a build per spec, then a deep validate.

    Example:
        >>> list(commands(["specs/blog.yaml"]))
        ['python -c "import torch"', 'chainspec build specs/blog.yaml', 'chainspec validate --deep specs/blog.yaml']
    """
    if specs is None:
        specs = [f"specs/{p.name}" for p in sorted((ROOT / "specs").glob("*.yaml"))]
    cli = _chainspec()
    cmds = {TORCH: [sys.executable, "-c", "import torch"]}
    for spec in specs:
        cmds[f"chainspec build {spec}"] = [*cli, "build", spec]
    cmds["chainspec validate --deep specs/blog.yaml"] = [*cli, "validate", "--deep", "specs/blog.yaml"]
    return cmds


def _run(cmd: list[str]) -> tuple[float, str]:
    """Run ``cmd`` from the repository root; its wall time and its output (raising if it fails)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return elapsed, proc.stdout


def measure(cmds: dict[str, list[str]], repeats: int, *, warm: bool = True) -> tuple[dict[str, list[float]],
                                                                                        list[float]]:
    """Wall times of each command over ``repeats`` interleaved rounds, and the in-process ``import chainspec`` times.

    ``warm`` runs every command once first, untimed (the file cache, and a broken setup fails early).
    """
    importer = [sys.executable, "-c", IMPORT_CODE]
    if warm:
        for cmd in [*cmds.values(), importer]:
            _run(cmd)
    names = list(cmds)
    times: dict[str, list[float]] = {name: [] for name in names}
    imports: list[float] = []
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(_run(cmds[name])[0])
        imports.append(float(_run(importer)[1].strip()))
    return times, imports


def rows_from(times: dict[str, list[float]], imports: list[float]) -> list[Row]:
    """The table rows: each command against the torch import, then the import of chainspec on top of it.

    Example:
        >>> rows = rows_from({TORCH: [2.0, 2.2], TARGET_CASE: [2.4, 2.64]}, [0.1, 0.2])
        >>> [(r["case"], round(r["ratio"], 2), r["ok"]) for r in rows]
        [('chainspec build specs/pggan.yaml', 1.2, True), ('import chainspec, after import torch', 0.07, True)]
    """
    base = statistics.median(times[TORCH])
    rounds = len(times[TORCH])
    note = f"cold start, median of {rounds} rounds"
    out = []
    for name, values in times.items():
        if name == TORCH:
            continue
        ratio = statistics.median(v / b for v, b in zip(values, times[TORCH], strict=True))
        target = TARGET if name == TARGET_CASE else None
        out.append(row(AREA, name, TORCH, base=base, value=statistics.median(values), ratio=ratio, target=target,
                       note=note))
    value = statistics.median(imports)
    out.append(row(AREA, IMPORT_CASE, TORCH, base=base, value=value, ratio=value / base,
                   target=f"< {IMPORT_TARGET:g} s", ok=value < IMPORT_TARGET,
                   note=f"timed inside the process, median of {len(imports)}; ratio: a share of the torch import"))
    return out


def run(quick: bool = False) -> list[Row]:
    """Every shipped spec's ``build`` and the deep validate (quick: the tiny PG-GAN only, one round, no warm-up)."""
    quick = quick or benchutil.QUICK
    specs = ["specs/pggan_tiny.yaml"] if quick else None
    times, imports = measure(commands(specs), 1 if quick else 9, warm=not quick)
    return rows_from(times, imports)


def main(argv: list[str] | None = None) -> int:
    """Print each command's median and its ratio to the torch import."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (default: 9)")
    args = parser.parse_args(argv)
    times, imports = measure(commands(), args.repeats)
    for r in rows_from(times, imports):
        print(f"{r['case']:<45} {r['value']:6.2f} s  {r['ratio']:5.2f}x {TORCH} ({r['base']:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
