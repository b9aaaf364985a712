"""``chainspec types``: list the node types and their arguments."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..types.registry import describe_annotation, list_types
from ._io import add_import_options, import_flagged, json_text, use_project_here


def add_parser(sub: Any) -> None:
    """Register the ``types`` subcommand."""
    p = sub.add_parser("types", help="list node types and their args",
                       description="List the registered node types (built-in, plugins, and those the modules "
                                   "named by --import and by [tool.chainspec] in the current directory's "
                                   "pyproject.toml register) and their args.")
    p.add_argument("--filter", metavar="TEXT", help="only types whose name contains TEXT")
    p.add_argument("--format", choices=["text", "json"], default="text", help="output format (default: text)")
    add_import_options(p, allow_import=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print each type with its args, their types and defaults: built-in, plugins', and those the current
    directory's project (``[tool.chainspec]`` imports) and ``--import`` register."""
    use_project_here(args)
    import_flagged(args)
    found = list_types(args.filter)
    if args.format == "json":
        out = {t.name: {"description": t.description, "origin": t.origin,
                        "args": {a.name: {"type": describe_annotation(a.annotation),
                                          **({} if a.required else {"default": a.default})} for a in t.args}}
               for t in found}
        print(json_text(out, default=repr))
        return 0
    for t in found:
        args_text = ", ".join(
            f"{a.name}: {describe_annotation(a.annotation)}" + ("" if a.required else f" = {a.default!r}")
            for a in t.args)
        print(f"{t.name}({args_text})")
        if t.description:
            print(f"    {t.description}" + ("" if t.origin == "builtin" else f"  [{t.origin}]"))
    if not found:
        print(f"no node type matches {args.filter!r}", file=sys.stderr)
        return 1
    return 0
