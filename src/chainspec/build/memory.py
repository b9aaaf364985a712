"""Refusing, before allocating, a chain whose weights cannot fit in the memory of its device.

Shape inference runs on the meta device, so a spec asking for a linear layer
of 2**31 x 2**20 features passes it; allocating that for real would fail deep
inside torch, or worse, succeed on an overcommitting OS and get the process
killed. The build compares the bytes the summary measured on the meta-device
build (parameters, buffers such as running statistics, any other tensor a module
keeps) with what the device has free and raises a located :class:`SpecError` instead.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from .._errors import SpecError
from ..read.document import Document
from ..read.resolve import ResolvedChain

if TYPE_CHECKING:
    from .summary import ChainSummary


def available_bytes(device: torch.device | str | None = None) -> int | None:
    """Bytes free for new tensors on ``device``, or None when it cannot be told.

    CPU: the least of Linux's ``MemAvailable`` plus free swap (what can be allocated
    without the OOM killer; elsewhere the physical memory size), what the process's
    cgroup memory limit leaves (a container's ``--memory``), and what ``RLIMIT_AS``
    (``ulimit -v``) leaves of the address space. CUDA: the driver's free memory.
    Other devices: None (no check).

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
    """The least of what the machine, the process's cgroup and its address-space limit leave free."""
    bounds = [b for b in (_machine_available(), _cgroup_available(), _address_space_available()) if b is not None]
    return min(bounds) if bounds else None


def _machine_available() -> int | None:
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


#: cgroup v2 and v1 files: the memory limit and the memory in use, of the process's own cgroup.
_CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _cgroup_available() -> int | None:
    """What a container's memory limit leaves (None when there is no limit, or no cgroup to read)."""
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            with open(limit_file, encoding="ascii") as fh:
                limit = fh.read().strip()
            with open(usage_file, encoding="ascii") as fh:
                usage = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:  # v1 writes "no limit" as a huge number
            return None
        return max(0, int(limit) - usage)
    return None


def _address_space_available() -> int | None:
    """What ``RLIMIT_AS`` (``ulimit -v``) leaves of the address space, if it is set."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm", encoding="ascii") as fh:
            in_use = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        return max(0, soft - in_use)
    except (ImportError, OSError, ValueError, IndexError, AttributeError):
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


def needed_bytes(summary: ChainSummary, dtype: torch.dtype | None) -> int:
    """Bytes building the summary's nodes allocates: every tensor measured on the meta build.

    Example:
        >>> from chainspec.build.summary import ChainSummary, NodeSummary
        >>> needed_bytes(ChainSummary("net", 0, (8,), (NodeSummary("fc", "linear", (8,), 72),)), None)
        288
    """
    itemsize = (dtype or torch.get_default_dtype()).itemsize
    return sum(n.nbytes or n.params * itemsize for n in summary.nodes)


#: Builds needing at most this many bytes are never refused: the guard is for builds that cannot fit
#: anywhere (a spec asking for 170 GB of running statistics), not for the last megabytes of a machine.
ALWAYS_FITS = 16 << 20


def check_fits(summary: ChainSummary, chain: ResolvedChain, doc: Document, *,
               device: torch.device | str | None, dtype: torch.dtype | None, others: int = 0) -> None:
    """Raise :class:`SpecError` at the largest node if building the summary's nodes exceeds the device's free memory.

    Builds of at most :data:`ALWAYS_FITS` bytes (16 MiB) are not checked.

    Every tensor the modules hold counts, as measured on their meta-device build
    (``NodeSummary.param_bytes`` and ``buffer_bytes``): parameters, buffers persistent
    or not (batch norm's running statistics), and any other tensor a module keeps, summed
    over all nodes, so many medium tensors are refused like one huge one. A row without
    measured bytes counts its parameters at ``dtype``'s size. ``others`` is what chains built
    alongside it need (``Spec.build_all``), so that together they are refused before any is built.

    Example:
        >>> from chainspec.build.summary import ChainSummary, NodeSummary
        >>> from chainspec.read.resolve import ResolvedChain
        >>> from chainspec.read.document import parse_yaml
        >>> rows = tuple(NodeSummary(f"bn{i}", "batchnorm1d", (8,), 0, buffer_bytes=10**17) for i in range(10))
        >>> check_fits(ChainSummary("net", 0, (8,), rows), ResolvedChain("net", (8,), ()), parse_yaml("{}", "x.yaml"),
        ...            device="cpu", dtype=None)
        Traceback (most recent call last):
        ...
        chainspec._errors.SpecError: x.yaml:1:1: chains.net: chain 'net' needs 1000.0 PB of weights and buffers ...
    """
    itemsize = (dtype or torch.get_default_dtype()).itemsize
    sizes = [n.nbytes or n.params * itemsize for n in summary.nodes]
    need = needed_bytes(summary, dtype)
    if need + others <= ALWAYS_FITS:  # not worth reading the free memory (a third of a small build's time)
        return
    free = available_bytes(device)
    if free is None or need + others <= free or not summary.nodes:
        return
    biggest = summary.nodes[max(range(len(sizes)), key=sizes.__getitem__)]
    node = next((n for n in chain.nodes if n.id == biggest.id), None)
    where = torch.device(device) if device is not None else torch.get_default_device()
    buffers = any(n.buffer_bytes for n in summary.nodes)
    holds = [f"{biggest.params:,} parameters"] if biggest.params else []
    holds += [f"{format_bytes(biggest.buffer_bytes)} of buffers"] if biggest.buffer_bytes else []
    besides = f" (and the other chains {format_bytes(others)})" if others else ""
    raise SpecError([doc.problem(
        node.path if node is not None else ("chains", chain.name),
        f"chain {chain.name!r} needs {format_bytes(need)} of weights{' and buffers' if buffers else ''} at stage "
        f"{summary.stage}{besides}, but {where} has {format_bytes(free)} free; this node alone holds "
        f"{' and '.join(holds) or format_bytes(max(sizes))}",
        "reduce its sizes, or build on a device with more memory",
        label=f" ({biggest.id})" if node is not None else "")])
