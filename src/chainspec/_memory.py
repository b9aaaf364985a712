"""Refusing, before allocating, a chain whose weights cannot fit in the memory of its device.

Shape inference runs on the meta device, so a spec asking for a linear layer
of 2**31 x 2**20 features passes it; allocating that for real would fail deep
inside torch, or worse, succeed on an overcommitting OS and get the process
killed. The build compares the parameter bytes the summary counted with what
the device has free and raises a located :class:`SpecError` instead.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from ._errors import SpecError
from ._resolve import ResolvedChain
from ._yaml import Document

if TYPE_CHECKING:
    from ._compile import ChainSummary


def available_bytes(device: torch.device | str | None = None) -> int | None:
    """Bytes free for new tensors on ``device``, or None when it cannot be told.

    CPU: Linux's ``MemAvailable`` plus free swap (what can be allocated without
    the OOM killer); elsewhere the physical memory size. CUDA: the driver's
    free memory. Other devices: None (no check).

    Example:
        >>> available_bytes("cpu") > 0
        True
    """
    dev = torch.device(device) if device is not None else torch.get_default_device()
    if dev.type == "cpu":
        return _cpu_available()
    if dev.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    return None


def _cpu_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            fields = {k: int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in fh) if v.strip()}
        return fields["MemAvailable"] + fields.get("SwapFree", 0)
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(size: float) -> str:
    """Render a byte count for messages.

    Example:
        >>> format_bytes(34_359_738_368)
        '34.4 GB'
    """
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if size < 1000 or unit == "PB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def check_fits(summary: ChainSummary, chain: ResolvedChain, doc: Document, *,
               device: torch.device | str | None, dtype: torch.dtype | None) -> None:
    """Raise :class:`SpecError` at the largest node if the chain's weights exceed the device's free memory."""
    itemsize = torch.empty((), dtype=dtype or torch.get_default_dtype(), device="meta").element_size()
    need = summary.params * itemsize
    free = available_bytes(device)
    if free is None or need <= free or not summary.nodes:
        return
    biggest = max(summary.nodes, key=lambda n: n.params)
    node = next(n for n in chain.nodes if n.id == biggest.id)
    where = torch.device(device) if device is not None else torch.get_default_device()
    raise SpecError([doc.problem(
        node.path,
        f"chain {chain.name!r} needs {format_bytes(need)} of weights at stage {summary.stage}, but {where} has "
        f"{format_bytes(free)} free; this node alone holds {biggest.params:,} parameters",
        "reduce its sizes, or build on a device with more memory", label=f" ({node.id})")])
