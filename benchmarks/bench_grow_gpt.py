"""What growing a transformer saves: ``examples/grow_gpt.py``'s two runs, as rows of the ``growth`` area.

gpt_tiny is trained on the standard library's sources twice with the same seed, token budget and
learning rate (the example's defaults): from scratch at its final size, and grown to it after 40% of
the steps, for each operator: from two blocks to four, the new blocks copies of their neighbours
with their Adam moments (``copy``); from half the heads and MLP units (``widen``); from half the
model width, heads and MLP units (``widen-model``); and from half the width and half the depth
(``widen-deep``), widened with ``init: preserve``. The scratch run is the same for every operator:
it is trained once. Rows, per operator: the FLOPs the grown run needed to reach the scratch run's
final validation loss, as a fraction of the scratch run's FLOPs (target <= 0.70; published anchors:
0.45 for G_stack at 7B, about 0.45 for MSG, 0.78 for staged training); the scratch run's validation
loss at the grown run's total FLOPs against the grown run's; and the other way round, the grown
run's FLOPs as a fraction of those the scratch run needed to reach the grown run's final loss. A
loss that is not reached is reported as such.

Usage:
    python benchmarks/bench_grow_gpt.py [--quick] [--operator copy|widen|widen-model|widen-deep]

Example:
    >>> rows = run()  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchutil import Row, pick, row

AREA = "growth"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "grow_gpt.py"


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("grow_gpt", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: The operators measured: depth by copies (G_stack), width by heads and MLP units, the whole model width,
#: and width and depth together.
OPERATORS = ("copy", "widen", "widen-model", "widen-deep")


def run(operators: tuple[str, ...] = OPERATORS) -> list[Row]:
    """Both runs of the example per operator (its default budget; a few steps when quick); three rows each.
    The scratch run does not depend on the operator: it is trained once and its finished checkpoint is
    handed to the next operator's run, which resumes it (at its last step: nothing left to train)."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as work:
        finished: Path | None = None
        for operator in operators:
            out = Path(work) / operator
            if finished is not None:
                out.mkdir()
                shutil.copy(finished, out / "scratch.pt")
            rows += _operator_rows(operator, out, resume=finished is not None)
            finished = out / "scratch.pt"
    return rows


def _operator_rows(operator: str, out: Path, *, resume: bool) -> list[Row]:
    quick = ["--steps", "20", "--batch", "2", "--eval-every", "10", "--eval-batches", "1", "--text-bytes", "200000"]
    args = ["--operator", operator, *pick([], quick), "--out", str(out), *(["--resume"] if resume else [])]
    example = _example()
    s = example.main(args)["summary"]
    case = f"gpt_tiny {example.describe(operator)} vs from scratch, same tokens"
    fraction = s["fraction"]
    certificate = f"certificate: logits moved by {s['certificate']:.2g}"
    rows = [row(AREA, f"FLOPs to reach scratch's final validation loss, {case}", "from scratch (its FLOPs)",
                base=s["scratch_flops"], value=s["grown_flops_to_scratch_loss"], ratio=fraction, target=0.70,
                unit="count", ok=fraction is not None and fraction <= 0.70,
                note="not reached" if fraction is None else certificate)]
    scratch_loss = s["scratch_val_at_grown_flops"]
    rows.append(row(AREA, f"validation loss at the grown run's total FLOPs, {case}", "from scratch",
                    base=scratch_loss, value=s["grown_final_val"],
                    ratio=s["grown_final_val"] / scratch_loss if scratch_loss else None, unit="count",
                    note=f"nats per character; grown run's FLOPs {s['grown_flops']:.3g}; {certificate}"))
    matched = s["scratch_flops_to_grown_loss"]
    rows.append(row(AREA, f"FLOPs spent, against scratch's FLOPs to reach the grown run's final loss, {case}",
                    "from scratch (its FLOPs to that loss)", base=matched, value=s["grown_flops"],
                    ratio=s["fraction_at_grown_loss"], unit="count",
                    note=f"the grown run's final loss {s['grown_final_val']:.3f}" if matched is not None
                    else "scratch never got down to the grown run's final loss"))
    return rows


if __name__ == "__main__":
    import benchutil

    benchutil.set_quick("--quick" in sys.argv)
    for r in run((sys.argv[sys.argv.index("--operator") + 1],) if "--operator" in sys.argv else OPERATORS):
        print(r)
