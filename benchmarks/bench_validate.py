"""Cold start of ``chainspec validate`` against ``check-jsonschema`` on the same spec file.

Each command runs as a fresh process, as a pre-commit hook does, several times
in interleaved rounds (so that a busy machine slows every command alike); the
table reports the median wall time of each and its ratio to check-jsonschema's
median measured in the same run. The spec is ``specs/pggan.yaml`` unless
``--files`` names others. ``python -c "import torch"`` shows what validating
would cost if it imported torch; :func:`against_torch` gives that ratio.

Every command runs from compiled bytecode: check-jsonschema's was written by pip when it was
installed, and chainspec's package is compiled (``compileall``) before the timing, as a regular
install or a first run would leave it (an editable install on a machine with
``PYTHONDONTWRITEBYTECODE`` set would otherwise compile every module from source on each start).
Both commands are the scripts pip installed next to this interpreter (a virtualenv's ``bin/``),
not a version manager's shim found on ``PATH``: pyenv's shims start a shell and pyenv itself
first, which adds the same 60 to 80 ms to every command and hides what the commands cost.

Usage:
    python benchmarks/bench_validate.py [--repeats N] [--files SPEC...]

Example:
    >>> rows = run(repeats=1)  # doctest: +SKIP
    >>> [r["name"] for r in rows][:3]  # doctest: +SKIP
    ['chainspec validate', 'check-jsonschema', 'chainspec validate --deep']
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchutil import installed_script

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "chainspec.schema.json"
#: The name of the command every ratio is taken against.
BASELINE = "check-jsonschema"
#: The command that imports torch and nothing else.
TORCH = 'python -c "import torch"'
#: The interpreter starting and doing nothing (the floor), and the same importing pydantic (which a valid spec's
#: validation does not: see ``chainspec._quickcheck``).
PYTHON, PYDANTIC = 'python -c "pass"', 'python -c "import pydantic"'
#: The spec timed unless others are named: the largest in ``specs/``.
DEFAULT_FILES = ["specs/pggan.yaml"]
#: The same command on a spec with a problem, whose errors come from pydantic-core (exit status 1).
INVALID = "chainspec validate, a spec with a problem"
INVALID_FILE = "tests/fixtures/invalid/node_unknown_key.yaml"


def commands(files: list[str]) -> dict[str, list[str]]:
    """The commands compared, by name, each validating ``files`` (torch's import excepted)."""
    chainspec = installed_script("chainspec")
    checker = installed_script("check-jsonschema")
    if chainspec is None or checker is None:
        raise SystemExit("bench_validate needs the chainspec and check-jsonschema commands: pip install -e '.[dev]'")
    return {
        "chainspec validate": [chainspec, "validate", "-q", *files],
        BASELINE: [checker, "--schemafile", str(SCHEMA), *files],
        "chainspec validate --deep": [chainspec, "validate", "-q", "--deep", *files],
        INVALID: [chainspec, "validate", "-q", INVALID_FILE],
        TORCH: [sys.executable, "-c", "import torch"],
        PYTHON: [sys.executable, "-c", "pass"],
        PYDANTIC: [sys.executable, "-c", "import pydantic"],
    }


def _compile_chainspec() -> None:
    """Write the bytecode of the installed chainspec package, as ``pip install`` does for a regular install."""
    found = importlib.util.find_spec("chainspec")
    if found is not None and found.submodule_search_locations:
        for folder in found.submodule_search_locations:
            compileall.compile_dir(folder, quiet=1)


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != (1 if INVALID_FILE in cmd else 0):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return elapsed


def run(repeats: int = 7, files: list[str] | None = None) -> list[dict[str, Any]]:
    """Time each command ``repeats`` times; one dict per command.

    Each dict has ``name``, ``command``, ``files`` (how many specs), ``repeats``,
    ``median_s``, ``min_s`` and ``ratio`` (median over check-jsonschema's median;
    below 1 is faster).
    """
    specs = list(files) if files is not None else list(DEFAULT_FILES)
    cmds = commands(specs)
    _compile_chainspec()
    for cmd in cmds.values():  # warm the file cache and fail early on a broken setup
        _time(cmd)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(repeats):
        for name, cmd in cmds.items():
            times[name].append(_time(cmd))
    base = statistics.median(times[BASELINE])
    return [{"name": name, "command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)),
             "files": len(specs), "repeats": repeats, "median_s": statistics.median(times[name]),
             "min_s": min(times[name]), "ratio": statistics.median(times[name]) / base}
            for name, cmd in cmds.items()]


def against_torch(rows: list[dict[str, Any]]) -> float:
    """Median cold start of plain ``chainspec validate`` over that of ``python -c "import torch"``.

    Example:
        >>> against_torch([{"name": "chainspec validate", "median_s": 0.2}, {"name": TORCH, "median_s": 1.0}])
        0.2
    """
    medians = {r["name"]: r["median_s"] for r in rows}
    return medians["chainspec validate"] / medians[TORCH]


def render(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table."""
    header = ("command", "median", "min", f"vs {BASELINE}")
    body = [(r["name"], f"{r['median_s'] * 1000:.0f} ms", f"{r['min_s'] * 1000:.0f} ms", f"{r['ratio']:.2f}x")
            for r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in [header, *body]]
    first = rows[0]
    runs = "1 run" if first["repeats"] == 1 else f"{first['repeats']} runs"
    files = "1 spec file" if first["files"] == 1 else f"{first['files']} spec files"
    note = f"cold start, {files}, median of {runs} each"
    torch_line = f"chainspec validate vs {TORCH}: {against_torch(rows):.2f}x"
    return "\n".join([note, *lines, torch_line])


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per command (default: 7)")
    parser.add_argument("--files", nargs="+", default=DEFAULT_FILES, metavar="SPEC",
                        help=f"spec files to validate (default: {' '.join(DEFAULT_FILES)})")
    args = parser.parse_args(argv)
    print(render(run(args.repeats, args.files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
