"""``chainspec build``: validate, shape-check and summarise what a spec builds, stage by stage."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._errors import printable, require_torch
from ..read.spec import Spec
from ._io import add_import_options, import_flagged, json_text, load_spec


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
    add_import_options(p)
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
    require_torch("chainspec build")
    import_flagged(args)
    spec = load_spec(args.spec, allow_imports=args.allow_import, project=not args.no_project)
    names = [args.chain] if args.chain else spec.chain_names
    # A chain the spec lacks, or a stage past its last, is known only from the spec: exit 1, as an invalid spec.
    for name in names:
        spec.resolved(name)  # unknown chain -> ValueError with a hint
    stages = list(range(spec.stages)) if args.stage == "all" else [spec.stage_index(args.stage)]
    spec.check(stages)
    shown = stages_to_show(spec, names, stages)
    omitted = [stage for stage in stages if stage not in shown]
    summaries = {stage: {name: spec.summary(name, stage=stage) for name in names} for stage in shown}
    if args.format == "json":
        def chains(stage: int) -> dict[str, Any] | None:
            return {"chains": {n: s.to_dict() for n, s in summaries[stage].items()}} if stage in summaries else None

        out: dict[str, Any] | None = (
            {"stages": [chains(s) for s in stages]} if args.stage == "all" else chains(stages[0]))
        if out is not None and omitted:
            out["omitted_stages"] = omitted  # those stages are null in "stages"
        print(json_text(out))
    else:
        print(render_table(spec, summaries))
        if omitted:
            print(f"\n({_ranges(omitted)} not shown: {len(omitted):,} more tables would pass {MAX_ROWS:,} rows; "
                  "show one with --stage N)")
    if args.save:
        _save(spec, names, stages[0], args.save)
    return 0


#: The most table rows (nodes, over every chain and stage) one ``build`` prints: a spec within the
#: node limit can still have 1,000 stages of 9,000 nodes, nine million rows and hundreds of MB.
MAX_ROWS = 20_000


def stages_to_show(spec: Spec, names: list[str], stages: list[int], max_rows: int = MAX_ROWS) -> list[int]:
    """The stages whose tables fit in ``max_rows`` rows: the first ones, and the last one always.

    The count stops as soon as the bound is reached, so choosing costs at most ``max_rows`` node
    visits per chain, not stages x nodes.

    Example:
        >>> import chainspec
        >>> spec = chainspec.loads("chainspec: 1\\nstages: 5\\nchains: {n: {input_shape: [2], nodes: "
        ...                        "[{id: a, type: relu}, {id: b, type: relu}]}}")
        >>> stages_to_show(spec, ["n"], [0, 1, 2, 3, 4], max_rows=5)
        [0, 4]
    """
    chains = [spec.resolved(name) for name in names]

    def rows(stage: int) -> int:
        return sum(len(chain.at(stage)) for chain in chains)

    last = stages[-1]
    used = rows(last)
    shown: list[int] = []
    for stage in stages[:-1]:
        used += rows(stage)
        if used > max_rows:
            break
        shown.append(stage)
    return [*shown, last]


def _ranges(stages: list[int]) -> str:
    """``stages 3-998`` or ``stage 3``, for the note on what was left out (the omitted stages are consecutive)."""
    return f"stage {stages[0]}" if len(stages) == 1 else f"stages {stages[0]}-{stages[-1]}"


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
