"""``chainspec validate FILE...``: check many specs at once, fast enough for every commit.

Every problem of every file is reported, one per line as
``file:line:col: path: message; hint``, and the exit code is 1 if any file has
one. ``-`` stands for a spec on stdin, reported as ``<stdin>``. Without
``--deep`` nothing here imports torch: parsing, the models and the
whole-document checks (types, args, composites, ids, stages) are torch-free.
``--deep`` adds shape inference on the meta device at every stage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._errors import Problem, SpecError, require_torch
from ._io import STDIN, add_import_options, import_flagged, json_text, load_spec, source_name

#: File endings picked up when a directory is named.
SPEC_SUFFIXES = (".yaml", ".yml")


@dataclass
class FileResult:
    """The verdict on one file: its problems, none if it is valid.

    Example:
        >>> FileResult("a.yaml").ok
        True
    """

    source: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the file has no problem."""
        return not self.problems


def add_parser(sub: Any) -> None:
    """Register the ``validate`` subcommand."""
    p = sub.add_parser("validate", help="validate spec files (fast, no torch unless --deep)",
                       description="Validate every FILE and report every problem of each as "
                                   "file:line:col: path: message. Exit 0 when all are valid, 1 otherwise. "
                                   "A directory stands for the .yaml/.yml files under it, '-' for stdin.")
    p.add_argument("files", nargs="+", metavar="FILE", help="spec files or directories ('-' reads stdin)")
    p.add_argument("--deep", action="store_true",
                   help="also infer every shape at every stage on the meta device (imports torch)")
    add_import_options(p)
    p.add_argument("--format", choices=["text", "json"], default="text", help="output format (default: text)")
    p.add_argument("-q", "--quiet", action="store_true", help="print problems only, no summary line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate the files; print the problems and a summary; return 0 if all are valid."""
    if args.deep:
        require_torch("chainspec validate --deep")
    import_flagged(args)
    paths = expand(args.files)
    results = [validate_file(p, allow_imports=args.allow_import, deep=args.deep, project=not args.no_project)
               for p in paths]
    if args.format == "json":
        out = [{"file": r.source, "ok": r.ok, "problems": [asdict(p) for p in r.problems]} for r in results]
        print(json_text(out))
    else:
        printed: set[str] = set()  # a project's problem (a module that does not import) once, not once per spec
        for result in results:
            for problem in result.problems:
                line = problem.format()
                if line not in printed:
                    printed.add(line)
                    print(line)
        if not args.quiet:
            sys.stdout.flush()  # the problems before the summary, also when both streams share one pipe
            print(summary(results), file=sys.stderr)
    return 0 if all(r.ok for r in results) else 1


def expand(names: Iterable[str]) -> list[str]:
    """Replace each directory by the spec files below it (sorted); keep files (and ``-``) as given, once each.

    Example:
        >>> expand(["specs/blog.yaml", "specs/blog.yaml"])
        ['specs/blog.yaml']
    """
    out: dict[str, None] = {}
    for name in names:
        if name != STDIN and os.path.isdir(name):
            found = sorted(str(p) for p in Path(name).rglob("*") if p.suffix in SPEC_SUFFIXES and p.is_file())
            out.update(dict.fromkeys(found))
        else:
            out[name] = None
    return list(out)


def validate_file(path: str, *, allow_imports: Sequence[str] = (), deep: bool = False,
                  project: bool = True) -> FileResult:
    """Validate one file (``-``: stdin); never raises for a bad spec, the problems are in the result.

    ``project=False`` ignores ``[tool.chainspec]`` in the pyproject.toml of the file's project; a
    project whose modules do not import makes a problem of every file in it, located in the pyproject.toml.

    Example:
        >>> validate_file("no/such.yaml").problems[0].message  # doctest: +ELLIPSIS
        'cannot read spec: No such file or directory'
    """
    try:
        spec = load_spec(path, allow_imports=allow_imports, project=project)
        if deep:
            spec.check()
    except SpecError as exc:
        return FileResult(source_name(path), exc.problems)
    return FileResult(source_name(path))


def summary(results: Sequence[FileResult]) -> str:
    """One line: how many files were checked and how many problems they have.

    Example:
        >>> summary([FileResult("a.yaml"), FileResult("b.yaml")])
        'ok: 2 files valid'
    """
    bad = [r for r in results if not r.ok]
    files = f"{len(results)} file{'s' if len(results) != 1 else ''}"
    if not bad:
        return f"ok: {files} valid"
    count = sum(len(r.problems) for r in bad)
    return f"{count} problem{'s' if count != 1 else ''} in {len(bad)} of {files}"
