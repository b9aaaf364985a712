"""Building a chain: check the device and dtype, shape-check, refuse what cannot fit, then allocate and link."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .._errors import SpecError
from .._gc import gc_paused
from ..read.document import Document
from ..read.resolve import ResolvedChain, ResolvedNode
from .chain import Chain
from .memory import check_fits
from .modules import instantiate
from .shapes import infer
from .ties import TieError, tie


def check_device(device: Any) -> torch.device | None:
    """Turn ``device`` into a ``torch.device`` that this process can allocate on, or refuse it.

    A string that names no device, and a device this build or machine lacks (``"cuda"`` without
    CUDA, ``"cuda:7"`` on a one-GPU machine), are the caller's mistake: ``ValueError``, not
    torch's ``RuntimeError`` or ``AssertionError`` from deep inside a build.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("nope")
        Traceback (most recent call last):
        ...
        ValueError: device must name a torch device such as 'cpu' or 'cuda:0', got 'nope'
    """
    if device is None:
        return None
    if not isinstance(device, (str, int, torch.device)) or isinstance(device, bool):
        raise TypeError(f"device must be a torch.device, a string or an index, got {type(device).__name__}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
    try:
        torch.empty(0, device=parsed)
    except (RuntimeError, AssertionError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"device {str(parsed)!r} is not available here: {reason}") from None
    return parsed


def check_dtype(dtype: Any) -> None:
    """Refuse a ``dtype`` parameters cannot have, as the caller's mistake rather than the spec's.

    Example:
        >>> check_dtype(torch.float16)
        >>> check_dtype(torch.int64)
        Traceback (most recent call last):
        ...
        ValueError: dtype must be a floating-point or complex dtype for parameters, got torch.int64
    """
    if dtype is None:
        return
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float16, got {dtype!r}")
    if not (dtype.is_floating_point or dtype.is_complex):
        raise ValueError(f"dtype must be a floating-point or complex dtype for parameters, got {dtype}")


@gc_paused()
def build_chain(chain: ResolvedChain, stage: int, doc: Document, *, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> Chain:
    """Shape-check, then build the real modules of ``chain`` at ``stage`` and link them."""
    # Built-in definitions are measured in closed form, not built on the meta device first: the real
    # build below reports a factory's refusal as the shape check would have.
    summary, problems = infer(chain, stage, doc, dtype=dtype, trust_factories=True)
    if problems or summary is None:
        raise SpecError(problems)
    check_fits(summary, chain, doc, device=device, dtype=dtype)  # refuse before allocating, not during
    built = Chain(name=chain.name)
    nodes = chain.at(stage)
    for node in nodes:
        try:
            module = instantiate(node, device=device, dtype=dtype)
        except Exception as exc:  # a factory refusing legal-looking arguments (groups not dividing channels)
            text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise SpecError([doc.problem(node.path, f"cannot build: {text}", None,
                                         label=f" ({node.id})")]) from None
        built.append(node.id, module, node_type=node.type)
    for node in nodes:
        if node.sources:
            built.route(node.id, node.sources, node.merge)
    tie_nodes(built, nodes, doc)
    # Where later revisions put new nodes once no tensor is left to tell (see revise.apply).
    built.record_revision(None, stage, (torch.device(device) if device is not None else torch.get_default_device(),
                                        dtype or torch.get_default_dtype()))
    return built


def tie_nodes(chain: Chain, nodes: Iterable[ResolvedNode], doc: Document) -> None:
    """Make the tied parameters of ``nodes`` the parameters their ``tie`` names, in ``chain`` (again, after a
    ``load_state_dict(assign=True)`` has given each name a tensor of its own).

    Raises:
        SpecError: at the tie, if a path names no parameter or the shapes differ.
    """
    for node in nodes:
        if not node.ties:
            continue
        try:
            tie(chain[node.id].module, node.ties, lambda owner: chain[owner].module, node.id)
        except TieError as exc:
            raise SpecError([doc.problem((*node.path, "tie", exc.param), exc.message, None,
                                         label=f" ({node.id})")]) from None
