"""Closed-form output shapes of the built-in node types: the shape engine's fast path.

Running a module on the meta device is exact but not free: torch's meta kernels are partly Python
(``torch._refs``, ``torch._decomp``), and the first ``batch_norm`` or ``linear`` in a process
imports ``torch._dynamo`` and sympy, one to two seconds once. For a built-in type the shape rule is
known, so :func:`infer_tree` works it out from the node's arguments, leaf by leaf through a
composite, without running anything. ``build.shapes.Probes`` uses it when every leaf of a
definition has a rule (:func:`covers`) and falls back to the meta device otherwise: for registered
and imported types, and for any case a rule leaves open.

Each rule is a function of ``(args, input shape, dtype)``, the input shape with the batch first, and
answers one of three ways:

- the output shape (batch first): torch's meta device gives that shape;
- a :class:`Misfit`: the module cannot take the input, for a reason the shape engine words without
  torch's own message ("expects 3 input features, but fc produces 2 (shape [2])");
- None: the rule does not cover the case (a kernel larger than its input, whose message is torch's,
  a padding mode it does not model, ...): the meta device decides.

``tests/test_shape_rules.py`` checks every rule against the meta device on random arguments and
inputs. Bilinear upsampling is deliberately left to the meta device: it is torch's slowest meta
kernel and the one the shape check's time bound is tested with (``tests/test_deep_check.py``).

Example:
    >>> import torch
    >>> from chainspec.read.resolve import Leaf
    >>> from chainspec.types.builtins import conv2d
    >>> conv = Leaf("conv2d", {"in_channels": 3, "out_channels": 8, "padding": 1}, conv2d)
    >>> infer_tree(conv, (4, 3, 32, 32), torch.float32)
    (4, 8, 32, 32)
    >>> infer_tree(conv, (4, 1, 32, 32), torch.float32).misfit.message("the chain input has")
    'expects 3 input channels, but the chain input has 1 (shape [1, 32, 32])'
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..read.resolve import Group, Leaf, Tree
from ..types import builtins

Shape = tuple[int, ...]

#: The dtypes the rules speak for (the module's and its input's, which must be the same).
REAL_FLOATS = frozenset({torch.float32, torch.float64, torch.float16, torch.bfloat16})
#: Outputs at least this many elements are left to the meta device, which knows where torch's sizes overflow.
MAX_NUMEL = 1 << 60


@dataclass(frozen=True)
class Misfit:
    """Why a module cannot take its input, in the shape engine's words; ``message`` adds where the input came from.

    Example:
        >>> Misfit.count(3, "input features", (2,)).message("fc produces")
        'expects 3 input features, but fc produces 2 (shape [2])'
        >>> Misfit.rank("[C, H, W]", (3, 8)).message("the chain input has")
        'expects input of shape [C, H, W] per sample, but the chain input has shape [3, 8]'
    """

    expects: str
    got: str

    @classmethod
    def count(cls, expected: int, what: str, sample: Shape, dim: int = 0) -> Misfit:
        """The module holds ``expected`` channels or features but the sample has ``sample[dim]``."""
        return cls(f"{expected} {what}", f"{sample[dim]} (shape {list(sample)})")

    @classmethod
    def rank(cls, form: str, sample: Shape) -> Misfit:
        """The module takes samples of the form ``form`` (``"[C, H, W]"``), not of ``sample``'s rank."""
        return cls(f"input of shape {form} per sample", f"shape {list(sample)}")

    @classmethod
    def spread(cls, sample: Shape) -> Misfit:
        """An instance norm in training needs more than one value per channel to normalise over."""
        return cls("more than one value per channel to normalise in training", f"shape {list(sample)}")

    def message(self, source: str) -> str:
        """The problem's text; ``source`` is ``"<previous node> produces"`` or ``"the chain input has"``."""
        return f"expects {self.expects}, but {source} {self.got}"


@dataclass(frozen=True)
class Refusal:
    """A tree that cannot take its input: the :class:`Misfit` and, inside a composite, the part that has it.

    ``where`` is ``(where the parts are listed, part index, id of the part before it)`` for the innermost part
    that cannot take what the part before it makes, as ``build.shapes`` locates a composite's
    failing part; None when the tree's first leaf refuses the tree's own input.

    Example:
        >>> Refusal(Misfit.count(4, "input features", (5,)), (("types", "pair", "nodes"), 1, "one")).where[2]
        'one'
    """

    misfit: Misfit
    where: tuple[tuple[str, ...], int, str | None] | None = None


#: What a rule makes of an input: an output shape, a refusal it can word, or None (not covered).
Outcome = Shape | Misfit | None
#: A rule: ``(args, input shape with the batch first, dtype) -> outcome``.
Rule = Callable[[Mapping[str, Any], Shape, torch.dtype], Outcome]


def _pair(value: Any, n: int = 2) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def _count(expected: int, what: str, shape: Shape, dim: int = 0) -> Misfit | None:
    """The misfit torch's refusal is reported as when the sample's channels (``dim`` 0) or features (-1) differ.

    None when they agree: torch then refuses for a reason only its own message says.
    """
    sample = shape[1:]
    if not sample or sample[dim] == expected:
        return None
    return Misfit.count(expected, what, sample, dim)


# -- convolutions ----------------------------------------------------------------------------------------------------

def conv_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int | None:
    """One output dimension of a convolution, or None where torch refuses (the kernel outgrows the padded input).

    Example:
        >>> conv_size(32, 3, 1, 1, 1), conv_size(32, 3, 2, 0, 2), conv_size(2, 3, 1, 0, 1)
        (32, 14, None)
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    return None if span < 0 else span // stride + 1


def transposed_size(size: int, kernel: int, stride: int, padding: int, output_padding: int, dilation: int
                    ) -> int | None:
    """One output dimension of a transposed convolution, or None where it would not be positive.

    Example:
        >>> transposed_size(4, 4, 2, 1, 0, 1), transposed_size(1, 1, 1, 1, 0, 1)
        (8, None)
    """
    out = (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1
    return out if out > 0 else None


def _padding(args: Mapping[str, Any], sample: Shape, n: int) -> list[tuple[int, int]] | None:
    """The padding a conv's input gets, ``(before, after)`` per spatial dimension; None where not modelled.

    ``"same"`` pads ``dilation * (kernel - 1)`` in all, the odd one after; a padding mode other
    than zeros pads with ``F.pad`` first, which refuses a reflection as wide as the input and a
    circular padding wider than it.
    """
    padding, mode = args["padding"], args.get("padding_mode", "zeros")
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(_pair(args["dilation"], n), _pair(args["kernel_size"], n), strict=True)]
        pads = [(t // 2, t - t // 2) for t in totals]
    elif padding == "valid":
        pads = [(0, 0)] * n
    elif isinstance(padding, str):
        return None
    else:
        pads = [(p, p) for p in _pair(padding, n)]
    fits = _PADDING_FITS.get(mode)
    if fits is None or not all(fits(max(p), s) for p, s in zip(pads, sample[1:], strict=True)):
        return None
    return pads


#: Padding mode -> whether a padding of ``p`` fits a dimension of size ``s`` (``F.pad``'s bounds).
_PADDING_FITS: dict[str, Callable[[int, int], bool]] = {
    "zeros": lambda p, s: True, "replicate": lambda p, s: True, "reflect": lambda p, s: p < s,
    "circular": lambda p, s: p <= s}


def _conv(n: int, form: str) -> Rule:
    def rule(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
        sample = shape[1:]
        if len(sample) != n + 1:
            return Misfit.rank(form, sample)
        channels = args["in_channels"]
        if channels % args["groups"] or args["out_channels"] % args["groups"]:
            return None  # the factory refuses these; never reached through a spec
        if sample[0] != channels:
            return _count(channels, "input channels", shape)
        pads = _padding(args, sample, n)
        if pads is None:
            return None
        sizes = [conv_size(size + before + after, kernel, stride, 0, dilation)
                 for size, (before, after), kernel, stride, dilation in zip(
                     sample[1:], pads, _pair(args["kernel_size"], n), _pair(args["stride"], n),
                     _pair(args["dilation"], n), strict=True)]
        return None if None in sizes else (shape[0], args["out_channels"], *sizes)  # type: ignore[misc]

    return rule


_conv2d = _conv(2, "[C, H, W]")


def _eq_conv2d(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    return _conv2d({**args, "dilation": 1, "groups": 1, "padding_mode": "zeros"}, shape, dtype)


def _conv_transpose2d(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    sample = shape[1:]
    if len(sample) != 3:
        return Misfit.rank("[C, H, W]", sample)
    channels, groups = args["in_channels"], args["groups"]
    if channels % groups or args["out_channels"] % groups:
        return None
    if sample[0] != channels:  # refused on the meta device too (build.shapes checks it there)
        return _count(channels, "input channels", shape)
    strides, dilations = _pair(args["stride"]), _pair(args["dilation"])
    output_padding = _pair(args["output_padding"])
    if any(op >= s and op >= d for op, s, d in zip(output_padding, strides, dilations, strict=True)):
        return None  # torch refuses (in its own words), but the meta device lets it through: left to that
    sizes = [transposed_size(*dims) for dims in zip(sample[1:], _pair(args["kernel_size"]), strides,
                                                     _pair(args["padding"]), output_padding, dilations, strict=True)]
    return None if None in sizes else (shape[0], args["out_channels"], *sizes)  # type: ignore[misc]


# -- pooling ---------------------------------------------------------------------------------------------------------

def pool_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil_mode: bool = False
              ) -> int | None:
    """One output dimension of a max or average pool, or None where torch refuses.

    torch refuses a padding over half the kernel (dilated or not) and an output smaller than 1.
    With ``ceil_mode`` the last window may hang over the end, but must start inside the input or
    its left padding.

    Example:
        >>> pool_size(32, 2, 2, 0), pool_size(5, 2, 2, 0, ceil_mode=True), pool_size(1, 3, 1, 0)
        (16, 3, None)
    """
    if padding > kernel // 2:
        return None
    span = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1  # floor division, as torch's div_rtn
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out if out >= 1 else None


def _pool(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    if len(shape) not in (3, 4):  # [C, H, W] samples, or [H, W] ones each pooled on its own
        return None
    kernels = _pair(args["kernel_size"])
    strides = kernels if args.get("stride") is None else _pair(args["stride"])
    sizes = [pool_size(*dims, _pair(args.get("dilation", 1))[i], args.get("ceil_mode", False))
             for i, dims in enumerate(zip(shape[-2:], kernels, strides, _pair(args.get("padding", 0)), strict=True))]
    return None if None in sizes else (*shape[:-2], *sizes)  # type: ignore[misc]


def _avgpool2d(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    return _pool({**args, "dilation": 1}, shape, dtype)  # average pools take no dilation


def _adaptive_avgpool2d(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    size = _pair(args["output_size"])
    if len(shape) in (3, 4) or (size == (1, 1) and len(shape) >= 2):  # to 1x1, torch takes a mean of any rank
        return (*shape[:-2], *size)
    return None


# -- norms -----------------------------------------------------------------------------------------------------------

def _batchnorm(ranks: tuple[int, ...], form: str) -> Rule:
    def rule(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
        if len(shape) - 1 not in ranks:
            return Misfit.rank(form, shape[1:])
        if shape[1] != args["num_features"] and (args["affine"] or args["track_running_stats"]):
            return _count(args["num_features"], "input channels", shape)  # weights or statistics per channel
        return shape

    return rule


def _instancenorm2d(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    if len(shape) != 4:
        return Misfit.rank("[C, H, W]", shape[1:])
    if shape[1] != args["num_features"]:  # refused on the meta device too (build.shapes checks it there)
        return _count(args["num_features"], "input channels", shape)
    return shape if shape[2] * shape[3] > 1 else Misfit.spread(shape[1:])


def _groupnorm(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    if len(shape) < 2:
        return None
    channels, groups = args["num_channels"], args["num_groups"]
    if channels % groups:
        return None
    if shape[1] != channels and (args["affine"] or shape[1] % groups):
        return _count(channels, "input channels", shape)
    return shape


def _layernorm(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    normalized = _pair(args["normalized_shape"], 1)
    return shape if len(shape) >= len(normalized) and shape[len(shape) - len(normalized):] == normalized else None


def _per_pixel(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    return shape if len(shape) >= 2 else None  # PixelNorm: normalised over dim 1


def _channel_bias(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    if len(shape) < 2:
        return None
    channels = args["num_channels"]
    if shape[1] in (channels, 1) or channels == 1:  # x + bias.view(1, C, 1, ...): broadcast along dim 1
        return (shape[0], max(shape[1], channels), *shape[2:])
    return _count(channels, "input channels", shape)


def _minibatch_stddev(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    if len(shape) != 4:
        return Misfit.rank("[C, H, W]", shape[1:])
    if shape[0] % min(args["group_size"], shape[0]):
        return None  # torch refuses a batch its groups do not divide
    return (shape[0], shape[1] + 1, *shape[2:])


# -- dense, reshaping, resampling, elementwise -----------------------------------------------------------------------

def _linear(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    if len(shape) < 2:  # samples of no dimension: torch takes the batch for one sample's features
        return (args["out_features"],) if shape[0] == args["in_features"] else None
    if shape[-1] != args["in_features"]:
        return _count(args["in_features"], "input features", shape, -1)
    return (*shape[:-1], args["out_features"])


def _reshape(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    target = (shape[0], *args["shape"])
    if 0 in target or target.count(-1) > 1:
        return None
    numel, known = math.prod(shape), math.prod(d for d in target if d != -1)
    if -1 not in target:
        return target if known == numel else None
    return None if numel % known else tuple(numel // known if d == -1 else d for d in target)


def _flatten(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    rank = len(shape)
    start, end = args["start_dim"], args["end_dim"]
    if not (-rank <= start < rank and -rank <= end < rank):
        return None
    start, end = start % rank, end % rank
    if start > end:
        return None
    return (*shape[:start], math.prod(shape[start:end + 1]), *shape[end + 1:])


def _upsample(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    if args["mode"] != "nearest" or len(shape) not in (3, 4, 5):
        return None  # bilinear: left to the meta device (see the module docstring)
    scale = float(args["scale_factor"])
    sizes = [size * int(scale) if scale.is_integer() else int(size * scale) for size in shape[2:]]
    return (*shape[:2], *sizes) if min(sizes) > 0 else None


def _same(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    return shape


# -- residual shortcuts, tokens and attention ------------------------------------------------------------------------

def _subsample_pad(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    if len(shape) != 4:
        return None
    if shape[1] != args["in_channels"]:
        return _count(args["in_channels"], "input channels", shape)
    if args["out_channels"] < args["in_channels"]:
        return None  # the factory refuses it
    stride = args["stride"]
    return (shape[0], args["out_channels"], -(-shape[2] // stride), -(-shape[3] // stride))


def _token_embedding(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    if dtype.is_floating_point or dtype.is_complex:
        return None  # refused on the meta device, in the same words (build.shapes checks it there)
    return (*shape, args["embedding_dim"])


def _position_embedding(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    if len(shape) != 3 or shape[2] != args["dim"] or shape[1] > args["max_len"]:
        return None
    return shape


def _attention(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    if len(shape) != 3 or shape[2] != args["dim"] or (args.get("head_dim") is None and args["dim"] % args["heads"]):
        return None
    return shape


def _rmsnorm(args: Mapping[str, Any], shape: Shape, dtype: torch.dtype) -> Outcome:
    return shape if shape[-1] == args["dim"] else None


#: Told of each leaf the rules walk through: ``(type, arguments with defaults, input shape, output shape)``.
Seen = Callable[[str, Mapping[str, Any], Shape, Shape], None]

#: Built-in type name -> its shape rule. Every built-in type has one (``tests/test_shape_rules.py`` checks it).
RULES: dict[str, Rule] = {
    "conv1d": _conv(1, "[C, L]"),
    "conv2d": _conv2d,
    "conv_transpose2d": _conv_transpose2d,
    "eq_conv2d": _eq_conv2d,
    "avgpool2d": _avgpool2d,
    "maxpool2d": _pool,
    "adaptive_avgpool2d": _adaptive_avgpool2d,
    "batchnorm1d": _batchnorm((1, 2), "[C] or [C, L]"),
    "batchnorm2d": _batchnorm((3,), "[C, H, W]"),
    "instancenorm2d": _instancenorm2d,
    "groupnorm": _groupnorm,
    "layernorm": _layernorm,
    "pixel_norm": _per_pixel,
    "channel_bias": _channel_bias,
    "minibatch_stddev": _minibatch_stddev,
    "linear": _linear,
    "eq_linear": _linear,
    "reshape": _reshape,
    "flatten": _flatten,
    "upsample": _upsample,
    "subsample_pad": _subsample_pad,
    "token_embedding": _token_embedding,
    "position_embedding": _position_embedding,
    "causal_self_attention": _attention,
    "rmsnorm": _rmsnorm,
    **dict.fromkeys(("relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid", "dropout", "identity"), _same),
}

# -- what a built-in module holds, in closed form ---------------------------------------------------------------------

#: ``(parameter elements, buffer elements in the module's dtype, buffer bytes in a dtype of their own)``.
Holding = tuple[int, int, int]


def _weighted(args: Mapping[str, Any], weight: int, outputs: int) -> Holding:
    return weight + (outputs if args.get("bias", True) else 0), 0, 0


def _conv_holds(args: Mapping[str, Any]) -> Holding:
    kernel = math.prod(_pair(args["kernel_size"], 1 if isinstance(args["kernel_size"], int) else 2))
    return _weighted(args, args["out_channels"] * (args["in_channels"] // args["groups"]) * kernel,
                     args["out_channels"])


def _conv2d_holds(args: Mapping[str, Any]) -> Holding:
    kernel = math.prod(_pair(args["kernel_size"]))
    return _weighted(args, args["out_channels"] * (args["in_channels"] // args.get("groups", 1)) * kernel,
                     args["out_channels"])


def _norm_holds(args: Mapping[str, Any]) -> Holding:
    channels = args["num_features"]
    tracked = args["track_running_stats"]
    return (2 * channels if args["affine"] else 0), (2 * channels if tracked else 0), (8 if tracked else 0)


def _attention_holds(args: Mapping[str, Any]) -> Holding:
    dim, head_dim = args["dim"], args.get("head_dim")
    inner = dim if head_dim is None else args["heads"] * head_dim
    return 4 * dim * inner + (3 * inner + dim if args["bias"] else 0), 0, 0


def _layernorm_holds(args: Mapping[str, Any]) -> Holding:
    size = math.prod(_pair(args["normalized_shape"], 1))
    if not args["elementwise_affine"]:
        return 0, 0, 0
    return size * (2 if args["bias"] else 1), 0, 0


#: Built-in type name -> what its module holds (types absent here hold nothing).
HOLDINGS: dict[str, Callable[[Mapping[str, Any]], Holding]] = {
    "conv1d": _conv_holds,
    "conv2d": _conv2d_holds,
    "conv_transpose2d": _conv2d_holds,
    "eq_conv2d": _conv2d_holds,
    "linear": lambda a: _weighted(a, a["in_features"] * a["out_features"], a["out_features"]),
    "eq_linear": lambda a: _weighted(a, a["in_features"] * a["out_features"], a["out_features"]),
    "batchnorm1d": _norm_holds,
    "batchnorm2d": _norm_holds,
    "instancenorm2d": _norm_holds,
    "groupnorm": lambda a: (2 * a["num_channels"] if a["affine"] else 0, 0, 0),
    "layernorm": _layernorm_holds,
    "channel_bias": lambda a: (a["num_channels"], 0, 0),
    "token_embedding": lambda a: (a["num_embeddings"] * a["embedding_dim"], 0, 0),
    "position_embedding": lambda a: (a["max_len"] * a["dim"], 0, 0),
    "causal_self_attention": _attention_holds,
    "rmsnorm": lambda a: (a["dim"], 0, 0),
}


def holdings(tree: Tree, dtype: torch.dtype) -> tuple[int, int, int] | None:
    """``(parameters, parameter bytes, buffer bytes)`` of the module ``tree`` builds in ``dtype``, in closed
    form; None where a leaf is not a built-in type. What ``build.shapes`` measures on a meta-device build.

    Example:
        >>> from chainspec.types.builtins import batchnorm1d
        >>> holdings(Leaf("batchnorm1d", {"num_features": 4}, batchnorm1d), torch.float32)
        (8, 32, 40)
    """
    size = dtype.itemsize
    params = buffers = other = 0
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, Group):
            todo.extend(sub for _, sub in node.parts)
            continue
        found = _rule_of(node.factory)
        if found is None:
            return None
        count = HOLDINGS.get(node.type)
        if count is not None:
            try:
                held = count({**found[1], **node.args})
            except Exception:  # arguments a spec could not give (a Leaf made by hand): measure a build
                return None
            params, buffers, other = params + held[0], buffers + held[1], other + held[2]
    return params, params * size, buffers * size + other


#: id of a built-in factory -> (the factory, its rule, its default arguments). A type registered under a
#: built-in's name with ``replace=True`` has another factory, so it gets no rule.
_BY_FACTORY: dict[int, tuple[Any, Rule, dict[str, Any]]] = {}


def _rule_of(factory: Any) -> tuple[Rule, dict[str, Any]] | None:
    """The rule and default arguments of a built-in factory (None for any other; compared by identity)."""
    if not _BY_FACTORY:
        for name, rule in RULES.items():
            built_in = getattr(builtins, name)
            defaults = {p.name: p.default for p in inspect.signature(built_in).parameters.values()
                        if p.default is not inspect.Parameter.empty}
            _BY_FACTORY[id(built_in)] = (built_in, rule, defaults)
    found = _BY_FACTORY.get(id(factory))
    return None if found is None or found[0] is not factory else found[1:]


def covers(tree: Tree) -> bool:
    """Whether every leaf of ``tree`` is a built-in type with a rule (its shapes then need no meta-device run).

    Example:
        >>> from chainspec.types.builtins import relu
        >>> covers(Leaf("relu", {}, relu)), covers(Leaf("relu", {}, lambda: None))
        (True, False)
    """
    if isinstance(tree, Leaf):
        return _rule_of(tree.factory) is not None
    return all(covers(sub) for _, sub in tree.parts)


def infer_tree(tree: Tree, shape: Shape, dtype: torch.dtype, tick: Callable[[], None] | None = None
               ) -> Shape | Refusal | None:
    """What ``tree`` makes of an input of ``shape`` (batch first): a shape, a :class:`Refusal`, or None (not covered).

    ``dtype`` is the input's and the modules' (the rules speak for :data:`REAL_FLOATS` only).
    ``tick`` is called before each leaf (a time budget's check). A leaf that would change the batch
    size or make an empty or huge output is not covered: the meta device reports it.

    Example:
        >>> from chainspec.types.builtins import linear
        >>> infer_tree(Leaf("linear", {"in_features": 4, "out_features": 2}, linear), (4, 7, 4), torch.float32)
        (4, 7, 2)
    """
    if dtype not in REAL_FLOATS:
        return None
    found = infer_state(tree, shape, dtype, dtype, tick)
    return found[0] if isinstance(found, tuple) else found


def infer_state(tree: Tree, shape: Shape, dtype: torch.dtype, module_dtype: torch.dtype,
                tick: Callable[[], None] | None = None, seen: Seen | None = None
                ) -> tuple[Shape, torch.dtype] | Refusal | None:
    """As :func:`infer_tree`, for an input of any ``dtype`` into modules of ``module_dtype``: the output's
    shape and dtype. Integer token ids become ``module_dtype`` vectors in a ``token_embedding``; any
    other built-in type refuses them.

    Example:
        >>> from chainspec.types.builtins import token_embedding
        >>> infer_state(Leaf("token_embedding", {"num_embeddings": 9, "embedding_dim": 4}, token_embedding),
        ...             (4, 7), torch.int64, torch.float32)
        ((4, 7, 4), torch.float32)
    """
    if module_dtype not in REAL_FLOATS or (dtype.is_floating_point and dtype != module_dtype):
        return None
    if dtype.is_complex or dtype == torch.bool:
        return None
    return _walk(tree, tuple(shape), dtype, module_dtype, tick, seen)


def _walk(tree: Tree, shape: Shape, dtype: torch.dtype, module_dtype: torch.dtype,
          tick: Callable[[], None] | None, seen: Seen | None = None) -> tuple[Shape, torch.dtype] | Refusal | None:
    if isinstance(tree, Leaf):
        if tick is not None:
            tick()
        found = _rule_of(tree.factory)
        if found is None:
            return None
        rule, defaults = found
        integer = not dtype.is_floating_point
        if integer and rule is not _token_embedding:
            return Refusal(Misfit("floating-point input", f"{str(dtype).removeprefix('torch.')} values "
                                                          f"(shape {list(shape[1:])})"))
        args = {**defaults, **tree.args}
        try:
            out = rule(args, shape, dtype)
        except Exception:  # arguments a spec could not give (a Leaf made by hand): the meta device decides
            return None
        if isinstance(out, Misfit):
            return Refusal(out)
        if out is None or out[0] != shape[0] or min(out) < 1 or math.prod(out) >= MAX_NUMEL:
            return None
        if seen is not None:
            seen(tree.type, args, shape, tuple(out))
        return tuple(out), module_dtype if integer else dtype
    if tree.kind == "residual":
        return _residual(tree, shape, dtype, module_dtype, tick, seen)
    previous: str | None = None
    for index, (part_id, sub) in enumerate(tree.parts):
        result = _walk(sub, shape, dtype, module_dtype, tick, seen)
        if result is None:
            return None
        if isinstance(result, Refusal):
            if result.where is not None and result.where[2] is not None:
                return result  # a part deeper inside cannot take what the part before it makes
            return Refusal(result.misfit, (tree.location, index, previous))
        (shape, dtype), previous = result, part_id
    return shape, dtype


def _residual(tree: Group, shape: Shape, dtype: torch.dtype, module_dtype: torch.dtype,
              tick: Callable[[], None] | None, seen: Seen | None = None
              ) -> tuple[Shape, torch.dtype] | Refusal | None:
    """``after(body(x) + shortcut(x))``; None (the meta device words it) where the two sums differ in shape."""
    parts = dict(tree.parts)
    outs = []
    for key in ("body", "shortcut"):
        if key not in parts:
            outs.append((shape, dtype))
            continue
        result = _walk(parts[key], shape, dtype, module_dtype, tick, seen)
        if result is None or isinstance(result, Refusal):
            return result
        outs.append(result)
    if outs[0] != outs[1]:
        return None
    if "after" not in parts:
        return outs[0]
    result = _walk(parts["after"], *outs[0], module_dtype, tick, seen)
    if isinstance(result, Refusal) and (result.where is None or result.where[2] is None):
        after = parts["after"]
        assert isinstance(after, Group)
        return Refusal(result.misfit, (after.location, 0, SUM))  # the sum is made inside the block
    return result


#: What the first ``after`` part of a residual block is given, in messages ("the residual sum produces ...").
SUM = "the residual sum"
