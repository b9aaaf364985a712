"""``chainspec schema``: print the JSON Schema of the spec format, or check a committed copy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..read.document import read_head
from ..read.format import SCHEMA_PATH
from . import _io


def add_parser(sub: Any) -> None:
    """Register the ``schema`` subcommand."""
    p = sub.add_parser("schema", help="print the JSON Schema of the spec format",
                       description="Print the JSON Schema (draft 2020-12) of the spec format, generated from "
                                   "chainspec's models and built-in node types, for editors and check-jsonschema.")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--check", nargs="?", const=SCHEMA_PATH, metavar="PATH",
                       help=f"exit 1 if the schema at PATH (default: {SCHEMA_PATH}) is not what this "
                            "chainspec generates")
    group.add_argument("-o", "--output", metavar="PATH", help="write the schema to PATH instead of stdout")
    p.add_argument("--for", dest="for_spec", metavar="SPEC",
                   help="the schema of one spec's project: the published one plus the spec's own composite "
                        "types (after 'type:', with their params as args) and the types registered by its "
                        "project ([tool.chainspec] imports), even while SPEC is half written; point the spec's "
                        "modeline at the file it writes with -o")
    p.add_argument("--installed", action="store_true",
                   help="also list the node types of installed plugins, with their args (the published schema "
                        "lists chainspec's own types only), and those registered by the modules [tool.chainspec] in "
                        "the current directory's pyproject.toml and --import name")
    _io.add_import_options(p, allow_import=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print, write or check the schema."""
    # Generating the schema builds the format's pydantic models: imported here, so that the other
    # subcommands (validate above all) start without them.
    from ..read.schema import build_schema, render_schema

    _io.import_flagged(args)
    if args.installed:
        _io.use_project_here(args)
    if args.for_spec:
        text = render_schema(build_schema(installed=True, composites=composites_of(args.for_spec)))
    else:
        text = render_schema(build_schema(installed=True)) if args.installed else render_schema()
    if args.check:
        return check(Path(args.check), text)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        return 0
    sys.stdout.buffer.write(text.encode("utf-8"))  # bytes: the same file on every platform and locale
    sys.stdout.flush()
    return 0


def composites_of(name: str) -> dict[str, Any]:
    """The composite types of the spec ``name`` (its project's registered types imported on the way).

    A spec being edited is often half written: when it does not load, the composites whose own
    definitions are valid are still taken, and stderr says how many were left out and why.
    """
    from pydantic import ValidationError

    from .._errors import SpecError
    from ..read.document import parse_yaml
    from ..read.model import TypeDef

    try:
        return dict(_io.load_spec(name, project=True).model.types)
    except SpecError as exc:
        problems = len(exc.problems)
    doc = parse_yaml(_io._read(name), _io.source_name(name), _io.LIMITS)
    raw = doc.data.get("types") if isinstance(doc.data, dict) else None
    found: dict[str, Any] = {}
    for type_name, definition in (raw or {}).items():
        try:
            found[str(type_name)] = TypeDef.model_validate(definition)
        except ValidationError:
            continue
    left = len(raw or {}) - len(found)
    print(f"chainspec schema: {_io.source_name(name)} has {problems} problem(s) ('chainspec validate' lists them); "
          f"the schema lists the {len(found)} composite type(s) whose definitions are valid"
          + (f" ({left} left out)" if left else ""), file=sys.stderr)
    return found


def check(path: Path, expected: str) -> int:
    """Compare the file at ``path`` with ``expected``; explain how to fix a stale one.

    Example:
        >>> check(Path("no/such.json"), "{}\\n")  # doctest: +SKIP
        1
    """
    fix = f"regenerate it with: chainspec schema --output {path}"
    try:
        # Read like a spec (a regular file or a pipe, never blocking), and no more than a copy with
        # CRLF line ends can hold: a longer file is stale, whatever else it holds (/dev/zero never ends).
        raw, _ = read_head(path, 2 * len(expected.encode("utf-8")), _io.LIMITS.read_timeout)
    except OSError as exc:
        print(f"chainspec schema: cannot read {path}: {exc.strerror or exc}; {fix}", file=sys.stderr)
        return 1
    current = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    if current != expected:
        first = _first_difference(current, expected)
        print(f"chainspec schema: {path} is stale: line {first} differs from what this chainspec generates "
              f"(the models or the built-in node types changed); {fix}", file=sys.stderr)
        return 1
    print(f"ok: {path} is up to date", file=sys.stderr)
    return 0


def _first_difference(a: str, b: str) -> int:
    for i, (x, y) in enumerate(zip(a.splitlines(), b.splitlines(), strict=False), start=1):
        if x != y:
            return i
    return min(len(a.splitlines()), len(b.splitlines())) + 1
