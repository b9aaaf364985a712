"""Hostile specs are refused about as fast as a valid spec is validated, and never cost much memory.

In process: ``chainspec.loads`` on each hostile document (it raises
``SpecError``) against ``chainspec.loads`` on ``specs/blog.yaml``, timed in
interleaved rounds. Cold start: ``chainspec validate`` on a hostile file
against the same command on ``specs/blog.yaml``, each a fresh process, as a
pre-commit hook runs it (the promise is an answer "within a second").

The corpus (``tests/hostile_corpus.py``: every class of hostile spec, each
pushed to its worst within the 256 KiB size limit) goes through each entry
point: ``chainspec validate``, ``validate --deep`` and ``build`` (in process,
output discarded), ``chainspec.load``, a ``SpecWatcher.poll()`` whose file the
case replaced, and ``load_checkpoint`` of a checkpoint whose spec text it is.
Each (case, entry point) runs in a fresh process forked from one that has
imported chainspec and torch and run every entry point on a valid spec once:
the wall time of the call; the growth of the process's peak resident memory
(``ru_maxrss`` after the call minus before it, which is where the fork
started: the import baseline is not counted); and, in a second fork, the
peak of Python's allocations (``tracemalloc``). A call still running after
30 s is killed (its alarm fires even inside C code) and counts as missed.
Each entry point's worst case over the corpus is set against the same entry
point on a valid input (``specs/blog.yaml``; for the watcher, a valid revision
of its spec; for ``load_checkpoint``, a checkpoint of ``specs/blog.yaml``), with
the targets of ``chainspec.Limits``: within 1 s and 200 MB. POSIX only (fork).

Usage:
    python benchmarks/bench_hostile.py [--quick] [--only CLASS,...] [--cases NAME,...]

Example:
    >>> rows = run(quick=True)  # doctest: +SKIP
    >>> rows[0]["baseline"]  # doctest: +SKIP
    'loads(specs/blog.yaml), valid'
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchutil
from benchutil import Row, fmt_amount, interleaved, pick, row

import chainspec
from chainspec import SpecError

AREA = "hostile"
ROOT = Path(__file__).resolve().parents[1]
BLOG = ROOT / "specs" / "blog.yaml"
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import hostile_corpus  # noqa: E402

HEAD = "chainspec: 1\nchains:\n  net:\n    input_shape: [4]\n    nodes:\n"


def billion_laughs() -> str:
    lines = ["chainspec: 1", 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def chained_composites(count: int) -> str:
    types = "".join(f"  t{i}:\n    nodes:\n      - {{id: p, type: t{i + 1}}}\n" for i in range(count - 1))
    types += f"  t{count - 1}:\n    nodes:\n      - {{id: p, type: relu}}\n"
    return "chainspec: 1\ntypes:\n" + types + HEAD.removeprefix("chainspec: 1\n") + "      - {id: a, type: t0}\n"


def cases() -> dict[str, str | bytes]:
    """The hostile documents, by name (each one is refused with a SpecError)."""
    return {
        "billion laughs (10**9 values on expansion)": billion_laughs(),
        "nesting 10,000 deep": "chainspec: 1\na: " + "[" * 10_000 + "]" * 10_000 + "\n",
        "!!python/object/apply:os.system": "chainspec: !!python/object/apply:os.system ['true']\nchains: {}\n",
        "50 MB document": "chainspec: 1\n" + "#" * 50_000_000,
        "out_features: 10**30": HEAD + "      - {id: a, type: linear, args: {in_features: 4, out_features: "
                                       + str(10**30) + "}}\n",
        "a 5,000-digit integer": HEAD + "      - {id: a, type: relu, stage: " + "9" * 5000 + "}\n",
        "non-UTF-8 bytes": b"chainspec: 1\ndescription: caf\xe9\n",
        "1,000 chained composite types": chained_composites(1000),
    }


def _refuses(text: str | bytes) -> Callable[[], None]:
    def load() -> None:
        try:
            chainspec.loads(text, source="hostile.yaml")
        except SpecError:
            return
        raise AssertionError("a hostile document was accepted")

    return load


def _cold(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(args, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _refusal_rows() -> list[Row]:
    """Rows: each hostile document against loading the valid blog spec, in process and from a cold start."""
    blog = BLOG.read_text(encoding="utf-8")
    docs = cases()
    timed: dict[str, Callable[[], Any]] = {"blog": lambda: chainspec.loads(blog, source="blog.yaml")}
    timed.update({name: _refuses(text) for name, text in docs.items()})
    times, ratios = interleaved(timed, number=1, rounds=pick(21, 2))
    rows = [row(AREA, f"loads: {name}", "loads(specs/blog.yaml), valid", base=times["blog"], value=times[name],
                ratio=ratios[name]) for name in docs]
    exe = shutil.which("chainspec")
    if exe is None:
        return rows
    repeats = pick(5, 1)
    with tempfile.TemporaryDirectory() as tmp:
        base = _cold([exe, "validate", str(BLOG)], repeats)
        for name in ("billion laughs (10**9 values on expansion)", "nesting 10,000 deep", "50 MB document"):
            path = Path(tmp) / "hostile.yaml"
            text = docs[name]
            path.write_bytes(text.encode() if isinstance(text, str) else text)
            value = _cold([exe, "validate", str(path)], repeats)
            rows.append(row(AREA, f"chainspec validate (cold start): {name}", "chainspec validate specs/blog.yaml",
                            base=base, value=value, ratio=value / base, target="< 1 s", ok=value < 1.0,
                            note=f"exit 1, median of {repeats}"))
    return rows



# -- the corpus, entry point by entry point ---------------------------------------------------------------------------

#: Entry points measured, in table order.
ENTRIES = ["validate", "validate --deep", "build", "load", "watcher poll", "load_checkpoint"]
#: What each entry point's worst case is set against: the same call on a valid input.
BASELINE = "blog"
BASELINES = {"watcher poll": "poll, a valid revision", "load_checkpoint": "a checkpoint of specs/blog.yaml"}
#: The classes ``--quick`` takes one (small) case of.
QUICK_CLASSES = ("expansion", "exponent", "memory")
#: The valid revision the watcher baseline applies.
REVISION = hostile_corpus.BASE.replace("out_features: 4", "out_features: 5")
#: The targets: what any spec of at most 256 KiB may cost an entry point.
TIME_TARGET = 1.0
MEMORY_TARGET = 200 * 10**6
#: Seconds before a case counts as a hang and is killed; bytes (beyond the fork's start) before it fails.
KILL_AFTER = 30
MEMORY_CAP = 3 << 30


def _quiet_cli(argv: list[str]) -> Callable[[], Any]:
    def run_cli() -> Any:
        from chainspec.cli import main as cli_main

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return cli_main(argv)

    return run_cli


def _prepare(entry: str, case: hostile_corpus.Case, path: Path, work: Path) -> Callable[[], Any]:
    """Everything an entry point needs before the call (a chain to watch, a checkpoint file); return the call."""
    imports = [arg for module in case.allow_imports for arg in ("--allow-import", module)]
    if entry == "validate":
        return _quiet_cli(["validate", "-q", str(path), *imports])
    if entry == "validate --deep":
        return _quiet_cli(["validate", "-q", "--deep", str(path), *imports])
    if entry == "build":
        return _quiet_cli(["build", str(path), *imports])
    if entry == "load":
        return lambda: chainspec.load(path, allow_imports=case.allow_imports)
    if entry == "watcher poll":
        watched = work / "watched.yaml"
        watched.write_text(hostile_corpus.BASE, encoding="utf-8")
        net = chainspec.load(watched).build()
        watcher = chainspec.SpecWatcher(watched, net, on_error=lambda exc: None, allow_imports=case.allow_imports,
                                        settle=0)
        # The baseline: a valid revision that applies (a wider layer); a case: the hostile text.
        watched.write_bytes(REVISION.encode() if case.name == BASELINE else case.text)
        stamp = time.time_ns() + 2_000_000_000
        os.utime(watched, ns=(stamp, stamp))
        return watcher.poll
    if entry == "load_checkpoint":
        import torch

        target = work / "case.pt"
        if case.name == BASELINE:  # the baseline: a real checkpoint of the valid spec
            spec = chainspec.loads(case.text, source=path.name)
            chainspec.save_checkpoint(target, spec=spec, chains=spec.build_all(), stage=0)
        else:
            payload = dict(_checkpoint(work))
            payload["spec"] = {"text": case.text.decode("utf-8", "surrogateescape"),
                               "source": case.source if case.source is not None else path.name}
            torch.save(payload, target)
        return lambda: chainspec.load_checkpoint(target, allow_imports=case.allow_imports)
    raise ValueError(f"unknown entry point {entry!r}")


_PAYLOAD: dict[str, Any] = {}


def _checkpoint(work: Path) -> dict[str, Any]:
    if not _PAYLOAD:
        import torch

        spec = chainspec.loads(hostile_corpus.BASE, source="net.yaml")
        net = spec.build()
        chainspec.save_checkpoint(work / "good.pt", spec=spec, chains={"net": net}, stage=0)
        _PAYLOAD.update(torch.load(work / "good.pt", weights_only=True))
    return _PAYLOAD


def _outcome(result: Any) -> str:
    return "ok" if not isinstance(result, int) or result == 0 else f"exit {result}"


def _in_fork(entry: str, case: hostile_corpus.Case, path: Path, work: Path, *, traced: bool,
             kill_after: float) -> dict[str, Any]:
    """Run one entry point on one case in a forked child; its time, peak-RSS growth or tracemalloc peak."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report through the pipe, leave without cleaning up
        code = 0
        try:
            os.close(read_end)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # a hang in C code is killed all the same
            signal.alarm(int(kill_after))
            with open("/proc/self/statm", encoding="ascii") as fh:
                size = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY_CAP, resource.RLIM_INFINITY))
            call = _prepare(entry, case, path, work)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            if traced:
                tracemalloc.start()
            started = time.perf_counter()
            try:
                outcome = _outcome(call())
            except Exception as exc:
                outcome = type(exc).__name__
            seconds = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1] if traced else None
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
            report = {"seconds": seconds, "rss": None if traced else grown, "peak": peak, "outcome": outcome}
            os.write(write_end, json.dumps(report).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if chunks:
        return json.loads(b"".join(chunks))
    why = (f"killed after {kill_after:g} s" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM
           else f"died ({status})")
    return {"seconds": kill_after if "killed" in why else None, "rss": None, "peak": None, "outcome": why}


def measure(cases: list[hostile_corpus.Case], *, kill_after: float = KILL_AFTER,
            entries: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """In this process (which should be fresh): the figures of every case through every entry point.

    Returns ``{"baseline": {entry: figures}, "cases": {name: {entry: figures}}}``, figures being
    ``seconds``, ``rss`` (peak resident growth, bytes), ``peak`` (tracemalloc peak, bytes) and ``outcome``.
    """
    import torch

    torch.set_num_threads(1)
    entries = entries or ENTRIES
    blog = hostile_corpus.Case(BASELINE, "valid", BLOG.read_bytes(), "specs/blog.yaml")
    out: dict[str, Any] = {"baseline": {}, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        directory = work / "corpus"
        paths = hostile_corpus.write(directory, [blog, *cases])
        for entry in entries:  # warm up: every import and lazy initialisation happens here, not in the forks
            _prepare(entry, blog, paths[BASELINE], work)()
        # torch's first operation on the meta device imports sympy and parts of torch._dynamo, once a
        # process (blog.yaml's shapes are all closed-form, so nothing above paid it). Paid here, and
        # reported as its own figure, like the import of torch.
        from chainspec.build import shapes

        started = time.perf_counter()
        shapes._warm_up()
        out["meta_first_use"] = time.perf_counter() - started
        for name, case in [(BASELINE, blog), *((c.name, c) for c in cases)]:
            figures = {}
            for entry in entries:
                timed = _in_fork(entry, case, paths[name], work, traced=False, kill_after=kill_after)
                if timed["outcome"].startswith(("killed", "died")):
                    figures[entry] = timed  # no second run: its Python peak is not known
                    continue
                traced = _in_fork(entry, case, paths[name], work, traced=True, kill_after=kill_after)
                figures[entry] = {**timed, "peak": traced["peak"]}
            if name == BASELINE:
                out["baseline"] = figures
            else:
                out["cases"][name] = figures
            if progress:
                worst = max(figures.values(), key=lambda f: f["seconds"] or 0)
                print(f"  {name:<38} worst {worst['seconds'] or 0:7.3f} s", file=sys.stderr, flush=True)
    return out


def _zygote(args: argparse.Namespace) -> int:
    """``--zygote``: measure in this fresh process and print the figures as JSON."""
    cases = select(args.only, args.cases, quick=args.quick)
    print(json.dumps(measure(cases, kill_after=args.kill_after)))
    return 0


def select(only: str = "", names: str = "", *, quick: bool = False) -> list[hostile_corpus.Case]:
    """The corpus cases to measure: some classes, some names, or (quick) one case of each class."""
    cases = hostile_corpus.corpus()
    if only:
        cases = [c for c in cases if c.cls in only.split(",")]
    if names:
        cases = [c for c in cases if c.name in names.split(",")]
    if quick:  # the smallest case of three classes that have small ones
        classes = [cls for cls in QUICK_CLASSES if any(c.cls == cls for c in cases)]
        cases = [min((c for c in cases if c.cls == cls), key=lambda c: len(c.text)) for cls in classes]
    return cases


def corpus_figures(quick: bool = False, only: str = "", names: str = "") -> dict[str, Any]:
    """Run :func:`measure` in a fresh process (nothing of this one is counted) and return its figures."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--zygote", "--kill-after", str(20 if quick else KILL_AFTER)]
    cmd += ["--quick"] * quick + (["--only", only] if only else []) + (["--cases", names] if names else [])
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout)


def corpus_rows(figures: dict[str, Any]) -> list[Row]:
    """Per entry point: the worst time, tracemalloc peak and RSS growth over the corpus, with the worst case;
    first, the one-off cost of torch's first meta-device operation, which the forks do not pay."""
    rows = []
    if figures.get("meta_first_use") is not None:
        rows.append(row(AREA, "torch: first meta-device operation, once a process (paid before the forks)",
                        "-", base=None, value=figures["meta_first_use"], ratio=None, target="once a process",
                        note="imports sympy and parts of torch._dynamo; a spec's time budget never counts it"))
    cases = figures["cases"]
    classes = {c.name: c.cls for c in hostile_corpus.corpus()}
    for entry in ENTRIES:
        base = figures["baseline"].get(entry)
        if base is None:
            continue
        for key, what, unit, target, label in (
                ("seconds", "worst time", "s", TIME_TARGET, "< 1 s"),
                ("peak", "worst Python peak (tracemalloc)", "B", MEMORY_TARGET, "< 200 MB"),
                ("rss", "worst peak RSS growth", "B", MEMORY_TARGET, "< 200 MB")):
            scored = [(f[entry][key], name) for name, f in cases.items() if f[entry][key] is not None]
            failed = [name for name, f in cases.items() if f[entry]["outcome"].startswith(("killed", "died"))]
            if not scored and not failed:
                continue
            value, name = max(scored) if scored else (None, failed[0])
            worst = f"worst: {name} ({classes.get(name, '?')})"
            if failed:
                worst += f"; {len(failed)} killed or died: {', '.join(failed[:3])}"
            ok = not failed and value is not None and value < target
            rows.append(row(AREA, f"{entry}: {what}, {len(cases)} hostile specs",
                            BASELINES.get(entry, f"{entry}, specs/blog.yaml"),
                            base=base[key], value=value, ratio=value / base[key] if value and base[key] else None,
                            target=label, unit=unit, ok=ok, note=worst))
    return rows


def run(quick: bool = False) -> list[Row]:
    """The refusal rows (in process and cold start), then the corpus rows per entry point."""
    benchutil.set_quick(quick or benchutil.QUICK)
    return _refusal_rows() + corpus_rows(corpus_figures(quick=benchutil.QUICK))


def print_report(figures: dict[str, Any], rows: list[Row]) -> None:
    """The corpus table with its targets, and the slowest and largest cases of each entry point."""
    print(f"{'entry point':<18} {'figure':<32} {'blog.yaml':>10} {'worst':>10} {'target':>9}  worst case")
    for r in rows:
        entry, what = r["case"].split(": ", 1)
        print(f"{entry:<18} {what.split(',')[0]:<32} {fmt_amount(r['base'], r['unit']):>10} "
              f"{fmt_amount(r['value'], r['unit']):>10} {r['target']:>9}  {_verdict(r['ok'])}  "
              f"{r['note']}")
    for entry in ENTRIES:
        slow = sorted(((f[entry]["seconds"] or 0, n, f[entry]["outcome"]) for n, f in figures["cases"].items()
                       if entry in f), reverse=True)[:5]
        print(f"\n{entry}: slowest " + "; ".join(f"{n} {t:.3f} s ({o})" for t, n, o in slow))


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else "ok" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="minimal repetitions, three corpus cases")
    parser.add_argument("--only", default="", help="corpus classes to measure (default: all)")
    parser.add_argument("--cases", default="", help="corpus case names to measure (default: all)")
    parser.add_argument("--kill-after", type=float, default=KILL_AFTER, help=argparse.SUPPRESS)
    parser.add_argument("--zygote", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.zygote:
        return _zygote(args)
    benchutil.set_quick(args.quick)
    if not (args.only or args.cases):
        for r in _refusal_rows():
            print(f"{r['case']:<75} {fmt_amount(r['value'], r['unit'])}")
        print()
    figures = corpus_figures(quick=args.quick, only=args.only, names=args.cases)
    print_report(figures, corpus_rows(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
