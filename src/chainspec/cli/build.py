"""``chainspec build``: validate, shape-check and summarise what a spec builds, stage by stage."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from .._errors import printable, require_torch
from ..read.spec import Spec
from ._io import add_import_options, import_flagged, json_text, load_spec

if TYPE_CHECKING:
    from ..build.costs import NodeCost


def add_parser(sub: Any) -> None:
    """Register the ``build`` subcommand."""
    p = sub.add_parser("build", help="validate, shape-check and summarise a spec",
                       description="Validate SPEC, infer every shape on the meta device and print what it builds.")
    p.add_argument("spec", metavar="SPEC", help="the YAML spec file ('-' reads it from stdin)")
    p.add_argument("--chain", metavar="NAME", help="only this chain (default: all)")
    p.add_argument("--stage", default=None, metavar="N|final|all", type=stage_arg,
                   help="the growth stage to show: a number, 'final', or 'all' (default: all; with --save, 0)")
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: table)")
    p.add_argument("--wide", action="store_true", help="exact numbers in the table, not rounded to fit 80 columns")
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
    from ..build.costs import CostCounter, chain_costs  # torch: after require_torch

    counter = CostCounter()
    costs = {stage: {name: chain_costs(spec, name, summary, counter=counter) for name, summary in by_chain.items()}
             for stage, by_chain in summaries.items()}
    if args.format == "json":
        def chains(stage: int) -> dict[str, Any] | None:
            if stage not in summaries:
                return None
            return {"chains": {n: _json(s, costs[stage][n]) for n, s in summaries[stage].items()}}

        out: dict[str, Any] | None = (
            {"stages": [chains(s) for s in stages]} if args.stage == "all" else chains(stages[0]))
        if out is not None and omitted:
            out["omitted_stages"] = omitted  # those stages are null in "stages"
        print(json_text(out))
    else:
        print(render_table(spec, summaries, costs, wide=args.wide))
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


#: The width the table keeps to, unless ``--wide``: a column that does not fit is left to the summary line.
COLUMNS = 80


def render_table(spec: Spec, summaries: dict[int, dict[str, Any]],
                 costs: dict[int, dict[str, list[NodeCost]]] | None = None, *, wide: bool = False) -> str:
    """Render summaries as aligned text tables, one per chain and stage, in the manner of torchinfo.

    Each node's output shape, parameters, parameter memory, multiply-adds and activation memory
    (per sample), then the totals; numbers are rounded (``40.6M``, ``1.1 MiB``) to fit 80 columns,
    and the parameter-memory column, if it still does not fit, is left to the summary line, unless
    ``wide`` (exact numbers, every column). Every name in a cell is escaped
    (:func:`~chainspec._errors.printable`): a control character in a file name or a spec cannot break
    a row or reach the terminal.
    """
    count = (lambda n: f"{n:,}") if wide else _si
    size = (lambda n: f"{n:,} B") if wide else _bytes
    blocks = []
    for stage, by_chain in summaries.items():
        for name, summary in by_chain.items():
            node_costs = costs[stage][name] if costs is not None else [None] * len(summary.nodes)
            rows = [(printable(n.id), printable(n.type), _shape(n.output_shape), f"{n.params:,}",
                     size(n.param_bytes), _macs(c, count), size(c.activation_bytes) if c else "-")
                    for n, c in zip(summary.nodes, node_costs, strict=True)]
            header = ("node", "type", "output shape", "params", "weights", "mult-adds", "act mem")
            known = [c for c in node_costs if c is not None]
            macs = [c.multiply_adds for c in known]
            total_macs = count(sum(m for m in macs if m is not None)) + ("+" if None in macs else "") if known else "-"
            activations = sum(c.activation_bytes for c in known)
            footer = ("total", "", _shape(summary.output_shape), f"{summary.params:,}", size(summary.param_bytes),
                      total_macs, size(activations) if known else "-")
            widths = [max(len(r[i]) for r in [header, *rows, footer]) for i in range(len(header))]
            keep = list(range(len(header)))
            if not wide and 2 + sum(widths) + 2 * (len(widths) - 1) > COLUMNS:
                keep.remove(4)  # the weights' memory: in the line below, and per node with --wide
            lines = [f"{printable(spec.source)}: chain {name!r}, stage {stage} of {spec.stages - 1}, "
                     f"input {_shape(summary.input_shape)}"]
            for row in [header, *rows, footer]:
                cells = [row[i].ljust(widths[i]) if i < 3 else row[i].rjust(widths[i]) for i in keep]
                lines.append(("  " + "  ".join(cells)).rstrip() if row is header else "  " + "  ".join(cells))
            frozen = sum(c.frozen_params for c in known)
            lines.append(f"  trainable {summary.params - frozen:,}, frozen {frozen:,}; weights "
                         f"{size(summary.param_bytes)}, buffers {size(summary.buffer_bytes)}")
            lines.append("  (mult-adds and act mem: per sample)")
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _macs(cost: NodeCost | None, count: Any) -> str:
    return "-" if cost is None or cost.multiply_adds is None else count(cost.multiply_adds)


def _si(n: int) -> str:
    """A count in three significant figures: ``442.4K``, ``40.6M``, ``3.03G``."""
    for scale, suffix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if n >= scale:
            value = n / scale
            return f"{value:.3g}{suffix}" if value < 100 else f"{value:.0f}{suffix}"
    return str(n)


def _bytes(n: int) -> str:
    """Bytes in binary units: ``832 B``, ``1.7 KiB``, ``1.03 MiB``."""
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            value = n / scale
            return f"{value:.3g} {suffix}" if value < 100 else f"{value:.0f} {suffix}"
    return f"{n} B"


def _json(summary: Any, costs: list[NodeCost]) -> dict[str, Any]:
    """A chain's JSON: the summary's (with bytes), each node's costs, and the totals."""
    out = summary.to_dict(memory=True)
    for row, cost in zip(out["nodes"], costs, strict=True):
        row.update(multiply_adds=cost.multiply_adds, activation_bytes=cost.activation_bytes,
                   frozen_params=cost.frozen_params)
    macs = [c.multiply_adds for c in costs]
    frozen = sum(c.frozen_params for c in costs)
    out.update(trainable_params=summary.params - frozen, frozen_params=frozen,
               multiply_adds=None if None in macs else sum(m for m in macs if m is not None),
               activation_bytes=sum(c.activation_bytes for c in costs))
    return out


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _save(spec: Spec, names: list[str], stage: int, path: str) -> None:
    from .. import save_checkpoint

    chains = {name: spec.build(name, stage=stage) for name in names}
    save_checkpoint(path, spec=spec, chains=chains, stage=stage)
    print(f"saved {', '.join(names)} at stage {stage} to {path}", file=sys.stderr)
