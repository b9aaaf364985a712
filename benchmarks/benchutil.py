"""Shared helpers of the benchmark areas: timing, rows, the machine description.

Every figure a benchmark reports is a ratio against a baseline measured in the
same process, right next to it: :func:`compare` times the baseline and the
candidate in interleaved rounds (A B B A ...), so that drift and noise from
other processes on a shared CPU hit both alike, and takes the median of the
per-round ratios.

Example:
    >>> base, cand, ratio = compare(lambda: sum(range(100)), lambda: sum(range(100)), rounds=3, number=10)
    >>> 0.2 < ratio < 5
    True
"""

from __future__ import annotations

import gc
import os
import platform
import shutil
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Set by ``run.py --quick`` (and the smoke test): tiny sizes and repetition counts.
QUICK = os.environ.get("CHAINSPEC_BENCH_QUICK", "") not in ("", "0")

Row = dict[str, Any]


def set_quick(quick: bool) -> None:
    """Switch every area to tiny sizes and repetition counts (for development and the smoke test)."""
    global QUICK
    QUICK = quick


def pick(full: Any, quick: Any) -> Any:
    """``quick`` under ``--quick``, else ``full``."""
    return quick if QUICK else full


def _timed(fn: Callable[[], Any], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - start


def calibrate(fn: Callable[[], Any], *, min_time: float | None = None) -> int:
    """How many calls of ``fn`` take at least ``min_time`` seconds (like ``timeit.Timer.autorange``)."""
    target = min_time if min_time is not None else BLOCK
    number = 1
    while True:
        if _timed(fn, number) >= target or number >= 1 << 20:
            return number
        number *= 2


#: Seconds per timed block. Short on purpose: on a shared machine other
#: processes preempt this one every few milliseconds (one call in ten of
#: 400 µs takes several times longer), so long blocks are all disturbed and
#: their ratios wander by 10%; with blocks well under a millisecond most
#: escape untouched and the median of many settles within about 1% (a
#: callable against itself).
BLOCK = 0.0003


def compare(baseline: Callable[[], Any], candidate: Callable[[], Any], *, rounds: int | None = None,
            number: int | None = None, budget: float | None = None) -> tuple[float, float, float]:
    """Time two callables in interleaved rounds; return (baseline s/call, candidate s/call, ratio).

    Each round times a short block of ``number`` calls of each, in alternating
    order (A B, B A, ...), for ``rounds`` rounds or, by default, as many as fit
    in ``budget`` seconds (at least 31). The times are the medians over rounds
    and the ratio is the median of the per-round ratios candidate/baseline.
    The garbage collector is off while timing (as in ``timeit``), so that a
    collection triggered by one side is not billed to it.
    """
    baseline()  # warm-up: caches, lazy initialisation, allocator pools
    candidate()
    if number is None:
        number = max(calibrate(baseline), calibrate(candidate))
    if rounds is None:
        block = max(_timed(baseline, number), _timed(candidate, number))
        budget = budget if budget is not None else pick(2.0, 0.05)
        rounds = min(max(int(budget / (2 * block)), pick(31, 3)), 5001)
    base_times: list[float] = []
    cand_times: list[float] = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(rounds):
            if i % 2 == 0:
                b = _timed(baseline, number)
                c = _timed(candidate, number)
            else:
                c = _timed(candidate, number)
                b = _timed(baseline, number)
            base_times.append(b / number)
            cand_times.append(c / number)
    finally:
        if enabled:
            gc.enable()
    ratios = [c / b for b, c in zip(base_times, cand_times, strict=True)]
    return statistics.median(base_times), statistics.median(cand_times), statistics.median(ratios)


def interleaved(cases: dict[Any, Callable[[], Any]], *, number: int, rounds: int | None = None
                ) -> tuple[dict[Any, float], dict[Any, float]]:
    """Time several callables round-robin; return each one's median s/call and median ratio to the first.

    Like :func:`compare`, for more than two: in every round each case is
    timed once (the order rotating from round to round), and each case's
    ratio is the median over rounds of its time over the first case's time
    in the same round.
    """
    rounds = rounds if rounds is not None else pick(61, 3)
    keys = list(cases)
    for fn in cases.values():
        fn()
    times: dict[Any, list[float]] = {k: [] for k in keys}
    enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            shift = r % len(keys)
            for k in keys[shift:] + keys[:shift]:
                times[k].append(_timed(cases[k], number) / number)
    finally:
        if enabled:
            gc.enable()
    first = keys[0]
    ratios = {k: statistics.median(t / b for t, b in zip(times[k], times[first], strict=True)) for k in keys}
    return {k: statistics.median(v) for k, v in times.items()}, ratios


def median_time(fn: Callable[[], Any], *, rounds: int | None = None, number: int = 1,
                setup: Callable[[], Any] | None = None) -> float:
    """The median over ``rounds`` of the time per call of ``fn``; ``setup`` runs untimed before each round."""
    rounds = rounds if rounds is not None else pick(7, 2)
    times = []
    for _ in range(rounds):
        if setup is not None:
            setup()
        times.append(_timed(fn, number) / number)
    return statistics.median(times)


def row(area: str, case: str, baseline: str, *, base: float | None, value: float | None, ratio: float | None,
        target: float | str | None = None, unit: str = "s", note: str = "", ok: bool | None = None) -> Row:
    """One line of the results table.

    ``base`` and ``value`` are the baseline's and the candidate's figures in
    ``unit`` (seconds unless told); ``ratio`` is value/baseline; ``target`` is
    the largest acceptable ratio, if there is one (``ok`` is then computed
    unless given), or a goal in words (``"< 0.5 s"``) with ``ok`` given.
    """
    if ok is None and isinstance(target, float | int) and ratio is not None:
        ok = ratio <= target
    return {"area": area, "case": case, "baseline": baseline, "base": base, "value": value, "ratio": ratio,
            "target": target, "unit": unit, "note": note, "ok": ok}


def machine(threads: int | None = None) -> dict[str, str]:
    """The CPU model, core count, OS, Python and torch versions, and torch's thread count (or ``threads``)."""
    from importlib.metadata import version

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "torch": version("torch"),
        "torch threads": str(threads) if threads is not None else _torch_threads(),
    }


def _torch_threads() -> str:
    import torch

    return str(torch.get_num_threads())


def _num(value: float) -> str:
    text = f"{value:.3g}"
    return f"{value:,.0f}" if "e" in text else text


def fmt_amount(value: float | None, unit: str) -> str:
    """A figure with a readable unit: seconds as s/ms/µs, bytes as KiB/MiB, counts as is.

    Example:
        >>> fmt_amount(0.0009996, "s"), fmt_amount(3 << 20, "B"), fmt_amount(294307, "count")
        ('1,000 µs', '3 MiB', '294,307')
    """
    if value is None:
        return "-"
    if unit == "s":
        for scale, name in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if abs(value) >= scale or name == "µs":
                return f"{_num(value / scale)} {name}"
    if unit == "B":
        for scale, name in ((1 << 20, "MiB"), (1 << 10, "KiB")):
            if abs(value) >= scale:
                return f"{_num(value / scale)} {name}"
        return f"{value:.0f} B"
    text = f"{value:,}" if float(value).is_integer() else _num(value)
    return text + (f" {unit}" if unit not in ("", "count") else "")


def fmt_ratio(ratio: float) -> str:
    """A ratio with two decimals where that reads best.

    Example:
        >>> fmt_ratio(1.0), fmt_ratio(0.0347), fmt_ratio(19100.4)
        ('1.00', '0.035', '19,100')
    """
    if ratio >= 100:
        return f"{ratio:,.0f}"
    if ratio >= 0.1:
        return f"{ratio:.2f}"
    return f"{ratio:.2g}"


def installed_script(name: str) -> str | None:
    """The command ``name`` as pip installed it for this interpreter (a virtualenv's ``bin/``), else as found on
    ``PATH``. Not a version manager's shim: pyenv's start a shell and pyenv first, 60 to 80 ms a command."""
    here = Path(sysconfig.get_path("scripts")) / name
    return str(here) if here.is_file() else shutil.which(name)
