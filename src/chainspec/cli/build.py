"""``chainspec build``: validate, shape-check and summarise what a spec builds, stage by stage."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._errors import printable
from .._spec import Spec
from ._io import json_text, load_spec


def add_parser(sub: Any) -> None:
    """Register the ``build`` subcommand."""
    p = sub.add_parser("build", help="validate, shape-check and summarise a spec",
                       description="Validate SPEC, infer every shape on the meta device and print what it builds.")
    p.add_argument("spec", metavar="SPEC", help="the YAML spec file ('-' reads it from stdin)")
    p.add_argument("--chain", metavar="NAME", help="only this chain (default: all)")
    p.add_argument("--stage", default=None, metavar="N|final|all", type=stage_arg,
                   help="the growth stage to show: a number, 'final', or 'all' (default: all; with --save, 0)")
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: table)")
    p.add_argument("--save", metavar="PATH",
                   help="also build the real chains at one stage (--stage, default 0) and save them as a checkpoint")
    p.add_argument("--allow-import", action="append", default=[], metavar="MODULE",
                   help="allow node types named by import path under MODULE (repeatable)")
    p.set_defaults(func=run, parser=p)


def stage_arg(text: str) -> str:
    """Check the form of ``--stage`` (a usage error, exit 2); its range depends on the spec (exit 1).

    Example:
        >>> stage_arg("final"), stage_arg("3")
        ('final', '3')
    """
    if text in ("final", "all") or (text.isdigit() and text.isascii()):
        return text
    raise argparse.ArgumentTypeError(f"expected a stage number, 'final' or 'all', got {text!r}")


def run(args: argparse.Namespace) -> int:
    """Print the summary of each chain at the chosen stage(s): every stage unless told otherwise."""
    if args.stage is None:
        args.stage = "0" if args.save else "all"  # a checkpoint to start training from holds stage 0
    if args.save and args.stage == "all":  # a usage error: exit 2 before any work
        args.parser.print_usage(sys.stderr)
        print("chainspec build: error: --save needs one stage, not 'all'", file=sys.stderr)
        return 2
    spec = load_spec(args.spec, allow_imports=args.allow_import)
    names = [args.chain] if args.chain else spec.chain_names
    for name in names:
        spec.resolved(name)  # unknown chain -> ValueError with a hint
    stages = list(range(spec.stages)) if args.stage == "all" else [spec.stage_index(args.stage)]
    spec.check(stages)
    summaries = {stage: {name: spec.summary(name, stage=stage) for name in names} for stage in stages}
    if args.format == "json":
        def chains(stage: int) -> dict[str, Any]:
            return {"chains": {n: s.to_dict() for n, s in summaries[stage].items()}}

        out = {"stages": [chains(s) for s in stages]} if args.stage == "all" else chains(stages[0])
        print(json_text(out))
    else:
        print(render_table(spec, summaries))
    if args.save:
        _save(spec, names, stages[0], args.save)
    return 0


def render_table(spec: Spec, summaries: dict[int, dict[str, Any]]) -> str:
    """Render summaries as aligned text tables, one per chain and stage.

    Every name in a cell is escaped (:func:`~chainspec._errors.printable`): a control character
    in a file name or a spec cannot break a row or reach the terminal.
    """
    blocks = []
    for stage, by_chain in summaries.items():
        for name, summary in by_chain.items():
            rows = [(printable(n.id), printable(n.type), _shape(n.output_shape), f"{n.params:,}")
                    for n in summary.nodes]
            header = ("node", "type", "output shape", "params")
            total = f"{summary.params:,}"
            footer = ("total", "", _shape(summary.output_shape), total)
            widths = [max(len(r[i]) for r in [header, *rows, footer]) for i in range(4)]
            lines = [f"{printable(spec.source)}: chain {name!r}, stage {stage} of {spec.stages - 1}, "
                     f"input {_shape(summary.input_shape)}"]
            fmt = "  {:<{w0}}  {:<{w1}}  {:<{w2}}  {:>{w3}}"
            kw = {f"w{i}": w for i, w in enumerate(widths)}
            lines.append(fmt.format(*header, **kw))
            lines += [fmt.format(*r, **kw) for r in rows]
            lines.append(fmt.format(*footer, **kw))
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _save(spec: Spec, names: list[str], stage: int, path: str) -> None:
    from .. import save_checkpoint

    chains = {name: spec.build(name, stage=stage) for name in names}
    save_checkpoint(path, spec=spec, chains=chains, stage=stage)
    print(f"saved {', '.join(names)} at stage {stage} to {path}", file=sys.stderr)
