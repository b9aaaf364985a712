"""Hostile specs are refused about as fast as a valid spec is validated.

In process: ``chainspec.loads`` on each hostile document (it raises
``SpecError``) against ``chainspec.loads`` on ``specs/blog.yaml``, timed in
interleaved rounds. Cold start: ``chainspec validate`` on a hostile file
against the same command on ``specs/blog.yaml``, each a fresh process, as a
pre-commit hook runs it (the promise is an answer "within a second").

Usage:
    python benchmarks/bench_hostile.py [--quick]

Example:
    >>> rows = run(quick=True)  # doctest: +SKIP
    >>> rows[0]["baseline"]  # doctest: +SKIP
    'loads(specs/blog.yaml), valid'
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchutil
from benchutil import Row, interleaved, pick, row

import chainspec
from chainspec import SpecError

AREA = "hostile"
ROOT = Path(__file__).resolve().parents[1]
BLOG = ROOT / "specs" / "blog.yaml"
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


def run(quick: bool = False) -> list[Row]:
    """Rows: each hostile document against loading the valid blog spec, in process and from a cold start."""
    benchutil.set_quick(quick or benchutil.QUICK)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="minimal repetitions")
    args = parser.parse_args()
    for r in run(quick=args.quick):
        print(f"{r['case']:<75} {r['value']:.4g} s   ratio {r['ratio']:.3g}")


if __name__ == "__main__":
    sys.exit(main())
