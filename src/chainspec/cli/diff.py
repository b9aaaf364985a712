"""``chainspec diff``: print the plan that turns a chain built from OLD into one built from NEW.

Exit codes follow diff(1): 0 when the specs build identical chains, 1 when
they differ, 2 on any error (an invalid spec included), so a script can tell
"different" from "broken". Either spec may be ``-``, read from stdin.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
from typing import Any

from .._errors import ChainspecError, printable, require_torch
from ._io import STDIN, add_import_options, import_flagged, json_text, load_spec, source_name


def add_parser(sub: Any) -> None:
    """Register the ``diff`` subcommand."""
    p = sub.add_parser("diff", help="show the plan from one revision of a spec to another",
                       description="Compare the chains OLD and NEW build and print the plan that turns one into "
                                   "the other: + insert, - remove, > move, ~ update (weights kept), "
                                   "! replace (new weights). Exits 0 if identical, 1 if different, 2 on error.")
    p.add_argument("old", metavar="OLD", help="the spec the model was built from ('-' reads it from stdin)")
    p.add_argument("new", metavar="NEW", help="the revised spec ('-' reads it from stdin)")
    p.add_argument("--chain", metavar="NAME", help="only this chain (default: every chain)")
    p.add_argument("--stage", default="final", metavar="N|final|A:B",
                   help="the stage to compare both at, or OLD_STAGE:NEW_STAGE for a growth step (default: final)")
    p.add_argument("--format", choices=["text", "json", "mermaid", "dot", "svg"], default="text",
                   help="output format (default: text); mermaid, dot and svg draw the plan: inserted nodes green, "
                        "removed red, replaced amber, moved ones with a dashed arrow (svg needs Graphviz's dot)")
    add_import_options(p)
    p.set_defaults(func=run, error_code=2)  # 1 means 'different' here, so any failure is 2


def run(args: argparse.Namespace) -> int:
    """Print the plan; return 0 (identical), 1 (different) or 2 (error)."""
    try:
        plans = _plans(args)
    except ChainspecError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"chainspec diff: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if os.environ.get("CHAINSPEC_DEBUG"):
            raise
        print(f"chainspec diff: internal error: {type(exc).__name__}: {exc}\n"
              "TIP: rerun with CHAINSPEC_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json_text(plans.to_dict(), ensure_ascii=False))
    elif args.format in ("mermaid", "dot", "svg"):
        from ..draw import plan_graph, render

        try:
            drawn = [render(plan_graph(plan), args.format) for plan in plans.values()]
        except ChainspecError as exc:  # no Graphviz for svg
            print(str(exc), file=sys.stderr)
            return 2
        print("\n\n".join(drawn))
    else:
        print(escaped_plans(plans))
    return 0 if plans.is_empty else 1


def _plans(args: argparse.Namespace) -> Any:
    require_torch("chainspec diff")  # a plan measures changed nodes on the meta device
    from ..revise.diff import diff_all

    if args.old == args.new == STDIN:
        raise ValueError("stdin ('-') can hold only one of OLD and NEW")
    import_flagged(args)
    old = load_spec(args.old, allow_imports=args.allow_import, project=not args.no_project)
    new = load_spec(args.new, allow_imports=args.allow_import, project=not args.no_project)
    if args.chain:
        names = [args.chain]
    else:
        only_old = [n for n in old.chain_names if n not in new.chain_names]
        only_new = [n for n in new.chain_names if n not in old.chain_names]
        if only_old or only_new:
            side, name = (source_name(args.old), only_old[0]) if only_old else (source_name(args.new), only_new[0])
            raise ValueError(f"chain {name!r} is only in {side}; chains are matched by name "
                             "(use --chain NAME to compare one chain)")
        names = old.chain_names
    old_stage, _, new_stage = args.stage.partition(":")
    stage: Any = (old_stage, new_stage) if new_stage else old_stage
    plans = diff_all(old, new, chains=names, stage=stage)
    # A plan between specs that do not shape-check is meaningless: report them as errors.
    old.check([plans[names[0]].old_stage])
    new.check([plans[names[0]].new_stage])
    return plans


def escaped_plans(plans: Any) -> Any:
    """Copies of ``plans`` whose ids, types and changed values have their non-printable characters escaped.

    A value is printed as it is written, so a parameter default holding ``"\\e[2J"`` or a newline
    would clear the screen or forge a line of the plan; escaped, it reads ``\\x1b[2J`` or ``\\n``.

    Example:
        >>> from chainspec.revise.ops import Change, Op
        >>> from chainspec.revise.plan import Plan, PlanSet
        >>> plan = Plan(chain="net", old_spec=None, new_spec=None, old_stage=0, new_stage=0,
        ...             ops=[Op("update", "act", "gelu", 1, None, (Change("approximate", "none", "\\x1b[2J"),))])
        >>> escaped_plans(PlanSet(net=plan))["net"].ops[0].describe()
        'act (gelu): approximate none → \\\\x1b[2J'
    """
    out = type(plans)()
    for name, plan in plans.items():
        safe = copy.copy(plan)
        safe.ops = [dataclasses.replace(
            op, node_id=printable(op.node_id), type=printable(op.type),
            after=None if op.after is None else printable(op.after),
            changes=tuple(dataclasses.replace(c, field=printable(c.field), old=_escaped(c.old), new=_escaped(c.new))
                          for c in op.changes)) for op in plan.ops]
        out[name] = safe
    return out


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_escaped(v) for v in value)
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    return value
