"""Turning resolved nodes into modules: shape inference on the meta device, then the real build.

Shape inference builds every module under ``torch.device("meta")`` and runs a
meta tensor through them: no weight or activation memory is allocated, so even
the full 1024x1024 PG-GAN is checked in milliseconds, and a mismatch is
reported at the spec line of the node that cannot take its input.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._chain import Chain
from ._errors import Problem, SpecError
from ._layers import Composite, EqualizedConv2d, MinibatchStddev
from ._memory import check_fits
from ._resolve import Group, ResolvedChain, ResolvedNode, Tree
from ._yaml import Document, format_path

#: Batch size of the meta tensor used for shape inference. Big enough for
#: batch norm (which needs two samples) and a full minibatch-stddev group.
PROBE_BATCH = 4


@dataclass(frozen=True)
class NodeSummary:
    """One row of a build summary: a node's id, type, per-sample output shape and parameter count.

    Example:
        >>> row = NodeSummary("fc", "linear", (8,), 40)
        >>> row.output_shape, row.params
        ((8,), 40)
    """

    id: str
    type: str
    output_shape: tuple[int, ...]
    params: int


@dataclass(frozen=True)
class ChainSummary:
    """What a chain builds at one stage: its rows, output shape and total parameter count.

    Example:
        >>> import chainspec
        >>> spec = chainspec.loads(open("specs/blog.yaml").read(), source="blog.yaml")  # doctest: +SKIP
        >>> spec.summary("net", stage=2).params  # doctest: +SKIP
        93472
    """

    name: str
    stage: int
    input_shape: tuple[int, ...]
    nodes: tuple[NodeSummary, ...]

    @property
    def params(self) -> int:
        """Total parameter count."""
        return sum(n.params for n in self.nodes)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the chain's output."""
        return self.nodes[-1].output_shape if self.nodes else self.input_shape

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used by ``chainspec build --format json``."""
        return {"stage": self.stage, "params": self.params,
                "nodes": [{"id": n.id, "type": n.type, "output_shape": list(n.output_shape), "params": n.params}
                          for n in self.nodes]}


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


def build_module(tree: Tree) -> nn.Module:
    """Instantiate the module for one expanded node (under whatever default device is active)."""
    if isinstance(tree, Group):
        return Composite(tree.type, [(part_id, build_module(sub)) for part_id, sub in tree.parts])
    module = tree.factory(**tree.args)
    if not isinstance(module, nn.Module):
        raise TypeError(f"node type {tree.type!r} returned {type(module).__name__}, not an nn.Module")
    return module


def infer(chain: ResolvedChain, stage: int, doc: Document, *, dtype: torch.dtype | None = None,
          nodes: list[ResolvedNode] | None = None, cache: dict[Any, Any] | None = None
          ) -> tuple[ChainSummary | None, list[Problem]]:
    """Shape-check a chain at ``stage`` on the meta device; return its summary or the problems.

    ``cache``, shared across calls on the same spec, remembers each node's output for each input
    shape: checking many stages of a chain that grows one node at a time then builds each node once.
    """
    rows: list[NodeSummary] = []
    input_shape = chain.input_shape_at(stage)
    x: torch.Tensor | None
    try:
        x = torch.empty((PROBE_BATCH, *input_shape), device="meta", dtype=dtype or torch.float32)
    except RuntimeError as exc:  # each dimension is legal, but together they overflow a tensor's size
        where = ("chains", chain.name, "input_shape")
        return None, [doc.problem(where, f"input shape {list(input_shape)} is too large for a tensor: "
                                         f"{_first_line(exc)}", "use smaller dimensions")]
    shape, x_dtype = tuple(x.shape), x.dtype
    previous: str | None = None
    for node in nodes if nodes is not None else chain.at(stage):
        key = (id(node), shape, x_dtype, dtype)
        if cache is not None and key in cache:
            shape, x_dtype, params = cache[key]
            rows.append(NodeSummary(node.id, node.type, shape[1:], params))
            x, previous = None, node.id  # made again only if a node after this one is not cached
            continue
        if x is None:
            x = torch.empty(shape, device="meta", dtype=x_dtype)
        try:
            with torch.device("meta"):
                module = build_module(node.tree)
                if dtype is not None:
                    module = module.to(dtype)
        except Exception as exc:  # a factory rejecting legal-looking args, e.g. groups not dividing channels
            return None, [doc.problem(node.path, f"cannot build: {_first_line(exc)}", None, label=f" ({node.id})")]
        for sub in module.modules():
            if isinstance(sub, _RANKED):
                sub.register_forward_pre_hook(_check_rank)
            if isinstance(sub, _LAX_CHANNELS):
                sub.register_forward_pre_hook(_check_channels)
        try:
            y = module(x)
        except Exception as exc:
            return None, [_shape_problem(doc, node, module, x, previous, exc)]
        if not isinstance(y, torch.Tensor):
            return None, [doc.problem(node.path, f"returns {type(y).__name__}, not a tensor", None,
                                      label=f" ({node.id})")]
        if y.dim() == 0 or y.shape[0] != x.shape[0]:  # e.g. flatten from dim 0: samples merged or dropped
            hint = "start_dim counts the batch as dimension 0; start at 1" if node.type == "flatten" else None
            return None, [doc.problem(node.path, f"does not keep the batch dimension: a batch of {x.shape[0]} "
                                      f"in, shape {list(y.shape)} out", hint, label=f" ({node.id})")]
        rows.append(NodeSummary(node.id, node.type, tuple(y.shape[1:]), _count(module)))
        if cache is not None:
            cache[key] = (tuple(y.shape), y.dtype, rows[-1].params)
        x, shape, x_dtype, previous = y, tuple(y.shape), y.dtype, node.id
    return ChainSummary(chain.name, stage, input_shape, tuple(rows)), []


#: Modules that accept a wrong channel count on the meta device (transposed convs,
#: whose CPU and CUDA kernels refuse it) or everywhere with only a warning (instance
#: norms without affine weights or running stats ignore ``num_features``).
_LAX_CHANNELS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.modules.instancenorm._InstanceNorm)


#: Modules with per-channel weights or statistics, with the per-sample shapes (batch left out)
#: they are meant for. Most also take an unbatched input: given a sample of one dimension less,
#: torch reads the probe batch as the channels, so a conv2d with 4 input channels would "fit"
#: samples of shape [3, 8] and then fail, or mix samples, at any other batch size. (Pools hold
#: nothing per channel: on a sample of one dimension less they pool each sample on its own.)
_RANKS: tuple[tuple[tuple[type[nn.Module], ...], tuple[int, ...], str], ...] = (
    ((nn.Conv1d, nn.ConvTranspose1d, nn.InstanceNorm1d), (2,), "[C, L]"),
    ((nn.BatchNorm1d,), (1, 2), "[C] or [C, L]"),
    ((nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d, EqualizedConv2d, MinibatchStddev),
     (3,), "[C, H, W]"),
)
_RANKED = tuple(cls for classes, _, _ in _RANKS for cls in classes)


class _RankError(RuntimeError):
    """A module got a sample of the wrong number of dimensions; ``form`` is what it takes."""

    def __init__(self, form: str) -> None:
        super().__init__(f"expected input of shape {form} per sample")
        self.form = form


def _check_rank(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Refuse a sample whose number of dimensions the module is not meant for (see ``_RANKS``)."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor):
        return
    for classes, ranks, form in _RANKS:
        if isinstance(module, classes):
            if x.dim() - 1 not in ranks:
                raise _RankError(form)
            return


def _check_channels(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Refuse, on the meta device too, an input whose channel count the module cannot take."""
    x = args[0] if args else None
    expected = getattr(module, "in_channels", None) or getattr(module, "num_features", None)
    if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[1] != expected:
        raise RuntimeError(f"expected input to have {expected} channels, but got {x.shape[1]} channels")


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


#: Attributes that say how many channels or features a module expects, and which
#: input dimension (per sample, without the batch) holds them.
_EXPECTS: tuple[tuple[str, int, str], ...] = (
    ("in_channels", 0, "input channels"),
    ("num_features", 0, "input channels"),
    ("num_channels", 0, "input channels"),
    ("in_features", -1, "input features"),
)


def _shape_problem(doc: Document, node: ResolvedNode, module: nn.Module, x: torch.Tensor, previous: str | None,
                   exc: Exception) -> Problem:
    """Say which node (or which part of a composite node) cannot take its input, and what it expected."""
    path, label = node.path, f" ({node.id})"
    failure = _failing_part(module, node.tree, x)
    if failure is not None and failure[0][2] is not None:
        # A part inside a composite cannot take what the part before it makes: the
        # composite's definition is at fault, so report that part, at its line in
        # ``types:``, and the chain node it is in. (When the first part fails, the
        # node's input is wrong, and the node is reported.)
        (type_name, index, previous), module, x, exc = failure
        path, label = ("types", type_name, "nodes", index), f" (in {format_path(node.path)} ({node.id}))"
    shape = list(x.shape[1:])
    source = f"{previous} produces" if previous else "the chain input has"
    if isinstance(exc, _RankError):
        return doc.problem(path, f"expects input of shape {exc.form} per sample, but {source} shape {shape}",
                           None, label=label)
    first = _first_leaf(module)
    for attr, dim, what in _EXPECTS:
        expected = getattr(first, attr, None)
        if isinstance(expected, int) and shape:
            actual = shape[dim] if len(shape) >= abs(dim) + (dim >= 0) else None
            if actual is not None and actual != expected:
                return doc.problem(path, f"expects {expected} {what}, but {source} {actual} (shape {shape})",
                                   None, label=label)
            break
    return doc.problem(path, f"cannot take input of shape {shape} ({source} it): {_first_line(exc)}", None,
                       label=label)


def _failing_part(module: nn.Module, tree: Tree, x: torch.Tensor) -> tuple[
        tuple[str, int, str | None], nn.Module, torch.Tensor, Exception] | None:
    """Run a composite part by part (on meta tensors) to find the innermost part that fails.

    Returns ``((composite type, part index, id of the part before it), part module,
    the part's input, the error)`` for the innermost part that cannot take what
    the part before it makes (the part before is None when the composite's first
    part fails on the composite's own input), or None when ``tree`` is not a
    composite or no single part fails.
    """
    if not isinstance(tree, Group):
        return None
    previous: str | None = None
    for index, (part_id, sub) in enumerate(tree.parts):
        part = module._modules[part_id]
        assert part is not None
        try:
            y = part(x)
        except Exception as exc:
            inner = _failing_part(part, sub, x)
            if inner is not None and inner[0][2] is not None:
                return inner  # a later part inside this one fails: the fault is in there
            return (tree.type, index, previous), part, x, exc  # this part cannot take its input
        x, previous = y, part_id
    return None


def _first_leaf(module: nn.Module) -> nn.Module:
    for sub in module.modules():
        if not list(sub.children()):
            return sub
    return module


def build_chain(chain: ResolvedChain, stage: int, doc: Document, *, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> Chain:
    """Shape-check, then build the real modules of ``chain`` at ``stage`` and link them."""
    summary, problems = infer(chain, stage, doc, dtype=dtype)
    if problems or summary is None:
        raise SpecError(problems)
    check_fits(summary, chain, doc, device=device, dtype=dtype)  # refuse before allocating, not during
    built = Chain(name=chain.name)
    for node in chain.at(stage):
        built.append(node.id, instantiate(node, device=device, dtype=dtype), node_type=node.type)
    built.stage = stage
    # Where later revisions put new nodes once no tensor is left to tell (see _apply).
    built.placement = (torch.device(device) if device is not None else torch.get_default_device(),
                       dtype or torch.get_default_dtype())
    return built


def instantiate(node: ResolvedNode, *, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> nn.Module:
    """Build one node's module on ``device`` with ``dtype``."""
    with torch.device(device) if device is not None else nullcontext():
        module = build_module(node.tree)
    if dtype is not None:
        module = module.to(dtype)
    return module
