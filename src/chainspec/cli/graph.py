"""``chainspec graph``: draw what a spec builds, as Mermaid, Graphviz dot or SVG."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._errors import ChainspecError, require_torch
from ._io import add_import_options, import_flagged, load_spec


def add_parser(sub: Any) -> None:
    """Register the ``graph`` subcommand."""
    p = sub.add_parser("graph", help="draw the chains a spec builds (mermaid, dot or svg)",
                       description="Draw each chain of SPEC as it is built: the spine of nodes, skip connections "
                                   "by id, each node's output shape and parameters; with --stage all, the stage "
                                   "each node joins. Mermaid needs nothing (GitHub renders it); svg needs "
                                   "Graphviz's dot.")
    p.add_argument("spec", metavar="SPEC", help="the YAML spec file ('-' reads it from stdin)")
    p.add_argument("--chain", metavar="NAME", help="only this chain (default: every chain)")
    p.add_argument("--stage", default="final", metavar="N|final|all",
                   help="the stage to draw, or 'all': the last stage, each node marked with the stage it joins "
                        "(default: final)")
    p.add_argument("--format", choices=["mermaid", "dot", "svg"], default="mermaid",
                   help="output format (default: mermaid)")
    p.add_argument("--output", "-o", metavar="FILE", help="write the picture to FILE instead of stdout")
    add_import_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print (or write) one picture per chain."""
    require_torch("chainspec graph")  # output shapes come from shape inference
    from ..draw import chain_graph, render

    import_flagged(args)
    spec = load_spec(args.spec, allow_imports=args.allow_import, project=not args.no_project)
    names = [args.chain] if args.chain else spec.chain_names
    stage = None if args.stage == "all" else args.stage
    spec.check([spec.stages - 1 if stage is None else spec.stage_index(stage)])
    try:
        pictures = [render(chain_graph(spec, name, stage), args.format) for name in names]
    except ChainspecError as exc:
        if type(exc).__name__ != "GraphvizMissing":
            raise
        print(str(exc), file=sys.stderr)
        return 2
    text = "\n\n".join(pictures)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text + "\n")
    else:
        print(text)
    return 0
