"""Run chainspec's benchmarks, print the table and write ``benchmarks/results.md``.

Usage:
    python benchmarks/run.py                 # everything: about half an hour on 2 CPU cores
    python benchmarks/run.py --only forward,splice   # re-measure these areas; results.md keeps the others
    python benchmarks/run.py --quick         # tiny sizes and counts, to check the harness (writes nothing)

Every figure is a ratio against a baseline measured in the same run, right
next to it (see ``benchutil.compare``). An area whose dependency is missing is
skipped with a note, so the harness always runs. torch runs on one thread
unless ``--threads`` says otherwise: the figures compare Python-side overhead,
and one thread keeps them steady on a shared machine.

Example:
    >>> render_table([])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import inspect
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import benchutil  # noqa: E402
from benchutil import Row, fmt_amount, fmt_ratio, machine  # noqa: E402

#: Area name -> (module, what it needs, or None). Run in this order.
AREAS: dict[str, tuple[str, Callable[[], str | None] | None]] = {}


def _needs_attr(*names: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        import chainspec

        absent = [n for n in names if not hasattr(chainspec, n)]
        return f"chainspec has no {', '.join(absent)} yet" if absent else None

    return missing


def _needs_files(*paths: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        absent = [p for p in paths if not (ROOT / p).exists()]
        return f"{', '.join(absent)} does not exist yet" if absent else None

    return missing


def _all(*checks: Callable[[], str | None]) -> Callable[[], str | None]:
    def missing() -> str | None:
        return next((why for check in checks if (why := check()) is not None), None)

    return missing


AREAS.update({
    "forward": ("bench_forward", None),
    "compile": ("bench_compile", None),
    "splice": ("bench_splice", None),
    "memory": ("bench_memory", _needs_attr("diff")),
    "revision": ("bench_revision", _needs_attr("diff")),
    "diff": ("bench_diff", _needs_attr("diff")),
    "growth": ("bench_growth", _all(_needs_attr("Grower", "diff"),
                                    _needs_files("specs/pggan_tiny.yaml", "specs/pggan.yaml"))),
    "validate": ("bench_validate", _needs_files("benchmarks/bench_validate.py", "schemas/chainspec.schema.json")),
    "hostile": ("bench_hostile", None),
    "check": ("bench_check", _needs_files("specs/pggan.yaml")),
    "startup": ("bench_startup", _needs_files("specs/pggan.yaml")),
    "build": ("bench_build", None),
    "branches": ("bench_branches", _needs_files("specs/resnet20.yaml", "specs/gpt.yaml")),
})

#: What each area's figures mean, written under the table.
NOTES = {
    "branches": "Chain against the hand-written models of tests/reference_models.py holding the same weights, "
                "both in training mode; forward under torch.no_grad(), forward+backward with autograd; activation "
                "memory is the bytes autograd saves for the backward of one forward (saved_tensors_hooks).",
    "forward": "Chain, nn.Sequential and the naive list hold the very same module objects; "
               "forward runs under torch.no_grad(), forward+backward with autograd.",
    "compile": "torch.compile with the default inductor backend and cache settings, each side with an empty "
               "inductor cache of its own; first-call times come from new processes. A chain whose cached order is "
               "stale (just built or just spliced) compiles twice over its next two calls: once around a graph "
               "break while it walks its links, once into the steady-state graph (mostly an inductor cache hit).",
    "splice": "nn.Identity modules; each figure is one insert_after + remove near the middle.",
    "memory": "Each cycle applies a one-node revision and its reverse through plan.apply(chain, optimizer), "
              "with an Adam step after each.",
    "revision": "Both revisions are loaded before timing. A 10,000-node spec has more YAML values than the "
                "loader's guard against generated documents allows (50,000); the benchmark raises it for its "
                "own generated specs.",
    "diff": "Specs generated in memory; diff against difflib.SequenceMatcher on the same id lists (which finds "
            "no moves and builds nothing), apply with Adam against Spec.build of the revision.",
    "growth": "Grower.step into the fade-in of stage k+1 (plans applied to G and D with their Adam optimizers, "
              "old paths blended back in) against building both at k+1 with new optimizers.",
    "validate": "Cold start: each command is a fresh process, as in a pre-commit hook.",
    "hostile": "Each hostile document is refused with a SpecError (see docs/security.md); in-process figures are "
               "one loads() call, cold-start figures a fresh 'chainspec validate' process exiting 1. The corpus rows "
               "run every case of tests/hostile_corpus.py (each class of hostile spec pushed to its worst within "
               "256 KiB) through each entry point, each call in a process forked after chainspec and torch were "
               "imported and warmed up: the worst wall time, the worst tracemalloc peak and the worst growth of peak "
               "RSS over the corpus, against the same call on a valid input; a case still running after 30 s is "
               "killed and counts as missed.",
    "check": "A fresh Spec each round, so no shape is cached; both sides after a warm-up (torch's first meta "
             "operation in a process imports torch._dynamo, about 2 s once).",
    "startup": "Cold start: each command a fresh process, all of them in interleaved rounds; each ratio is the "
               "median over rounds of the command's time over that of python -c \"import torch\" in the same "
               "round. Specs made only of "
               "built-in types are shape-checked in closed form (chainspec.build.rules), so no meta-device run "
               "(and no import of torch._dynamo) happens. The import row is timed inside a process that has "
               "imported torch already.",
    "build": "Spec.build (shape check, memory guard, modules, links) against the same modules constructed directly "
             "into an nn.Sequential; both allocate and initialise the same weights on the CPU.",
}


def _validate_rows(module: Any, quick: bool) -> list[Row]:
    """bench_validate reports its own dicts; turn them into table rows against check-jsonschema.

    Plain ``chainspec validate`` should start in at most 0.3 of check-jsonschema's time (the
    target), and it is also set against ``python -c "import torch"``; the interpreter's bare start
    shows the floor under it, ``import pydantic`` what a valid spec's validation leaves out, and the
    same command on a spec with a problem what its errors cost (pydantic-core reports them).
    """
    raw = module.run(repeats=1 if quick else 7)
    baseline, torch_cmd = module.BASELINE, module.TORCH
    medians = {r["name"]: r["median_s"] for r in raw}
    rows = []
    for r in raw:
        if r["name"] == baseline:
            continue
        note = f"{', '.join(module.DEFAULT_FILES)}, median of {r['repeats']}"
        if r["name"] == module.PYTHON:
            note = f"the floor of any Python command, median of {r['repeats']}"
        elif r["name"] == module.PYDANTIC:
            note = f"not imported to validate a valid spec, median of {r['repeats']}"
        elif r["name"] == module.INVALID:
            note = f"{module.INVALID_FILE}: exit 1, errors by pydantic-core, median of {r['repeats']}"
        plain = r["name"] == "chainspec validate"
        rows.append(benchutil.row("validate", r["name"], baseline, base=medians[baseline], value=r["median_s"],
                                  ratio=r["ratio"], note=note, target="≤ 0.3" if plain else None,
                                  ok=r["ratio"] <= 0.3 if plain else None))
        if plain:
            rows.append(benchutil.row("validate", r["name"], torch_cmd, base=medians[torch_cmd], value=r["median_s"],
                                      ratio=module.against_torch(raw), note=note))
    return rows


def run_area(name: str, quick: bool) -> tuple[list[Row], str | None]:
    """Run one area; return its rows and, if it was skipped or failed, why."""
    module_name, check = AREAS[name]
    why = check() if check is not None else None
    if why is not None:
        return [], f"skipped: {why}"
    module = importlib.import_module(module_name)
    if name == "validate":
        return _validate_rows(module, quick), None
    params = inspect.signature(module.run).parameters
    return (module.run(quick=quick) if "quick" in params else module.run()), None


def _ratio(r: Row) -> str:
    if r["ratio"] is None:
        return r["note"] if r["note"] in ("RecursionError",) else "-"
    return fmt_ratio(r["ratio"])


def _target(r: Row) -> str:
    t = r["target"]
    if t is None:
        return ""
    return t if isinstance(t, str) else f"≤ {t:g}"


def _status(r: Row) -> str:
    return {True: "ok", False: "**MISSED**", None: ""}[r["ok"]]


HEADER = ["area", "case", "baseline", "baseline figure", "figure", "ratio", "target", "", "note"]


def _cells(r: Row) -> list[str]:
    base = "RecursionError" if r["note"] == "RecursionError" else fmt_amount(r["base"], r["unit"])
    note = "" if r["note"] == "RecursionError" else r["note"]
    return [r["area"], r["case"], r["baseline"], base, fmt_amount(r["value"], r["unit"]), _ratio(r),
            _target(r), _status(r), note]


def render_table(rows: list[Row]) -> str:
    """The rows as a Markdown table (which also reads well as plain text)."""
    return _format_table([_cells(r) for r in rows])


def _format_table(body: list[list[str]]) -> str:
    widths = [max(len(str(line[i])) for line in [HEADER, *body]) for i in range(len(HEADER))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
             for line in [HEADER, *body]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def parse_table(text: str) -> list[list[str]]:
    """The cells of each body line of the results table in ``text`` (a results file).

    Example:
        >>> parse_table("| area | case |\\n|---|---|\\n| splice | Chain |\\n")
        [['splice', 'Chain']]
    """
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip()[1:-1].split(" | ")] for line in lines[2:]]


def _machine_line(info: dict[str, str]) -> str:
    return "Machine: " + ", ".join(f"{k} {v}" if k != "cpu" else v for k, v in info.items()) + "."


def _area_order(cells: list[str]) -> int:
    return list(AREAS).index(cells[0]) if cells[0] in AREAS else len(AREAS)


def render_markdown(rows: list[Row], skipped: dict[str, str], info: dict[str, str], seconds: float,
                    argv: list[str], previous: str | None = None) -> str:
    """The whole results file: machine, command, table, notes, skipped areas.

    With ``previous`` (the text of an earlier results file, from the same
    machine), the areas this run did not measure keep their lines from it, and
    the file lists the run that measured them above this one.
    """
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["python benchmarks/run.py", *argv])
    ran = {r["area"] for r in rows}
    kept = [] if previous is None else [c for c in parse_table(previous) if c[0] not in ran]
    runs = [] if previous is None else [line.rstrip() for line in previous.splitlines()
                                        if line.startswith("`python benchmarks/run.py")
                                        and not line.startswith(f"`{command}`")]
    runs.append(f"`{command}`, {when}, {seconds:.0f} s in all.")
    body = sorted([*kept, *(_cells(r) for r in rows)], key=_area_order)  # stable: each area's lines keep order
    lines = ["# chainspec benchmark results", "",
             *(line + ("  " if i < len(runs) - 1 else "") for i, line in enumerate(runs)), "",
             _machine_line(info), "",
             "Each ratio is figure / baseline figure, both measured in the same run (interleaved, median of "
             "repeated runs); below 1 means faster or smaller than the baseline.", "",
             _format_table(body), ""]
    areas = [a for a in AREAS if any(c[0] == a for c in body)]
    if areas:
        lines += ["Notes:", ""]
        lines += [f"- **{a}**: {NOTES[a]}" for a in areas if a in NOTES]
        lines.append("")
    for area, why in skipped.items():
        lines.append(f"- **{area}** {why}")
    return "\n".join(lines).rstrip() + "\n"


def _mergeable(path: Path, info: dict[str, str]) -> str | None:
    """The results file at ``path`` if an ``--only`` run may update it: it exists and is from this machine."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    if _machine_line(info) not in text.splitlines():
        print(f"{path} is from another machine (or torch, Python, thread count); it now holds this run only")
        return None
    return text


def _in_child(area: str, args: argparse.Namespace) -> tuple[list[Row], str | None]:
    """Run one area in a fresh Python process, so that no area sees another's leftovers.

    (torch.compile's caches, objects the memory area would count, allocator state.)
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", area, "--rows", str(out),
               "--threads", str(args.threads), *(["--quick"] if args.quick else [])]
        proc = subprocess.run(cmd, cwd=ROOT)
        if proc.returncode != 0 or not out.exists():
            return [], f"failed (exit {proc.returncode}): see the traceback above"
        result = json.loads(out.read_text(encoding="utf-8"))
    return result["rows"], result["why"]


def _child(area: str, quick: bool, threads: int, rows_path: Path) -> int:
    import torch

    torch.set_num_threads(threads)
    benchutil.set_quick(quick)
    rows, why = run_area(area, quick)
    rows_path.write_text(json.dumps({"rows": rows, "why": why}), encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the chosen areas; print each area's rows as they come and the whole table at the end."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description="Run chainspec's benchmarks.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and counts; writes no results file")
    parser.add_argument("--only", default="", help=f"comma-separated areas among: {', '.join(AREAS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default: benchmarks/results.md; none with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one area in this process
    parser.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child, args.quick, args.threads, args.rows)
    chosen = [a.strip() for a in args.only.split(",") if a.strip()] or list(AREAS)
    unknown = [a for a in chosen if a not in AREAS]
    if unknown:
        parser.error(f"unknown area(s) {unknown}; choose among {list(AREAS)}")

    info = machine(args.threads)
    print("chainspec benchmarks on " + ", ".join(f"{k} {v}" if k != "cpu" else v for k, v in info.items())
          + (" (quick)" if args.quick else ""), flush=True)
    start = time.perf_counter()
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    failed = False
    for area in chosen:
        t0 = time.perf_counter()
        print(f"\n== {area}", flush=True)
        got, why = _in_child(area, args)
        if why:
            skipped[area] = why
            failed = failed or why.startswith("failed")
            print(f"   {why}", flush=True)
            continue
        rows += got
        print(render_table(got), flush=True)
        print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    print("\n" + render_table(rows))
    missed = [r for r in rows if r["ok"] is False]
    print(f"\n{len(rows)} figures, {len(missed)} target(s) missed, {len(skipped)} area(s) skipped, "
          f"{seconds:.0f} s.")
    out = args.out if args.out is not None else (None if args.quick else HERE / "results.md")
    if out is not None:
        previous = _mergeable(out, info) if args.only else None
        out.write_text(render_markdown(rows, skipped, info, seconds, argv, previous), encoding="utf-8")
        print(f"wrote {out}" + (" (the other areas' figures kept)" if previous is not None else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
