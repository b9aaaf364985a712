"""The node-type registry: built-in types, user types, plugins and allowed imports.

A node type is a callable that returns an ``nn.Module``: a function or an
``nn.Module`` subclass. Its keyword arguments, with their annotations and
defaults, *are* its argument schema: they drive validation of ``args`` in
specs, the error messages, ``chainspec types`` and the published JSON Schema.
This module never imports torch, so validating a spec stays fast; nor does it
build pydantic models for the built-in types, whose argument validators come
ready-made from :mod:`.argschemas` (other types' models are built on first use).
"""

from __future__ import annotations

import difflib
import heapq
import importlib
import inspect
import itertools
import sys
import types
import typing
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import ChainspecError
from .._limits import FLOAT32_MAX, MAX_DIM
from .._quickcheck import Unsure, validate_quickly
from . import argschemas

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic_core import SchemaValidator

#: Entry-point group through which plugin packages contribute node types.
ENTRY_POINT_GROUP = "chainspec.types"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Arg:
    """One argument of a node type.

    Example:
        >>> Arg("kernel_size", int, 3).required
        False
    """

    name: str
    annotation: Any
    default: Any = inspect.Parameter.empty
    description: str = ""

    @property
    def required(self) -> bool:
        """True when the spec must give this argument."""
        return self.default is inspect.Parameter.empty


@dataclass(frozen=True, eq=False)
class NodeType:
    """A registered node type: its name, its factory and its arguments.

    Example:
        >>> t = get_type("leaky_relu")
        >>> [a.name for a in t.args]
        ['negative_slope']
    """

    name: str
    factory: Callable[..., Any]
    args: tuple[Arg, ...]
    description: str = ""
    origin: str = "python"
    accepts_extra: bool = False

    @cached_property
    def args_model(self) -> type[BaseModel]:
        """A pydantic model of the arguments (strict: ``"3"`` is not an int)."""
        # pydantic's model layer is imported here, when a model is first built: validating the built-in
        # types' arguments uses their generated validators (``_validator``) and never needs it.
        from pydantic import ConfigDict, Field, create_model

        fields: dict[str, Any] = {}
        for arg in self.args:
            default = ... if arg.required else arg.default
            # YAML lists arrive as tuples (see ``_tuples``); a ``list`` arg, bare or ``list[...]``, alone or in a
            # union, takes them as lists (its items stay strict).
            fields[arg.name] = (yaml_lists(arg.annotation), Field(default, description=arg.description or None))
        config = ConfigDict(strict=True, extra="allow" if self.accepts_extra else "forbid",
                            arbitrary_types_allowed=True, title=f"{self.name} args")
        return create_model(f"{self.name}_args", __config__=config, **fields)

    @cached_property
    def _validator(self) -> SchemaValidator:
        """The arguments' validator: a built-in type's generated one (:mod:`.argschemas`), else the model's."""
        import pydantic_core  # not at import: valid arguments of a built-in type are checked without it

        schema = argschemas.ARG_SCHEMAS.get(self.name) if self.origin == "builtin" else None
        if schema is not None:
            try:
                return pydantic_core.SchemaValidator(schema)
            except pydantic_core.SchemaError:  # a pydantic-core that refuses the written schema: the model's
                pass
        return self.args_model.__pydantic_validator__

    def validate(self, args: dict[str, Any], *, hints: bool = True
                 ) -> tuple[dict[str, Any], list[tuple[str | None, str, str | None]]]:
        """Check ``args``; return the keyword arguments and ``(arg, message, hint)`` problems.

        ``hints=False`` leaves out the did-you-mean hints of unknown arguments (a caller
        reporting thousands of them computes only the first few).

        Example:
            >>> get_type("dropout").validate({"pp": 0.1})[1]
            [('pp', "unknown argument 'pp'", "did you mean 'p'?")]
        """
        problems: list[tuple[str | None, str, str | None]] = []
        names = self._names
        if not self.accepts_extra:
            for key in args:
                if key not in names:
                    close = close_match(key, names, cutoff=0.5) if hints else None
                    takes = _listed(names, "no arguments")
                    hint = f"did you mean {close!r}?" if close else f"{self.name} takes {takes}"
                    problems.append((key, f"unknown argument {key!r}", hint))
        known = {k: _tuples(v) if isinstance(v, list) else v for k, v in args.items()
                 if self.accepts_extra or k in names}
        generated = argschemas.ARG_SCHEMAS.get(self.name) if self.origin == "builtin" else None
        if generated is not None and not problems:
            try:  # the fast path for valid arguments (chainspec._quickcheck); the rest goes to pydantic-core
                return _values(validate_quickly(generated, known)), []
            except Unsure:
                pass
        from pydantic_core import ValidationError

        try:
            validator = self._validator
        except Exception as exc:  # an annotation pydantic cannot model (a registered type's, or an allowed import's)
            return {}, [(None, f"the arguments of node type {self.name!r} cannot be checked: {_first_error_line(exc)}",
                         "give the factory's parameters plain annotations (int, float, bool, str, tuples)")]
        try:
            model = validator.validate_python(known)
        except ValidationError as exc:
            # A union (int | tuple[int, int]) fails once per branch: report one error per argument, the
            # one that got deepest into the value (the branch whose shape the value has).
            best: dict[str | None, Any] = {}
            for err in exc.errors(include_url=False):
                loc = err["loc"]
                key = str(loc[0]) if loc else None
                if err["type"] == "missing":
                    problems.append((None, f"missing required argument {key!r}",
                                     f"{self.name} needs {_required(self)}"))
                elif key not in best or len(loc) > len(best[key]["loc"]):
                    best[key] = err
            for key, err in best.items():
                value = args.get(key) if key else None  # as written: a YAML list reads [1, 2], not (1, 2)
                problems.append((key, f"{_error_text(err)}, got {value!r}", _type_hint(self, key)))
            return {}, problems
        if problems:
            return {}, problems
        return _values(model), []

    @cached_property
    def _names(self) -> list[str]:
        return [a.name for a in self.args]


def _values(model: Any) -> dict[str, Any]:
    """The arguments a validated model holds, as ``dict(model)`` gives them, without pydantic's per-call overhead."""
    values = dict(model.__dict__)
    if model.__pydantic_extra__:
        values.update(model.__pydantic_extra__)
    return values


def _tuples(value: Any) -> Any:
    """YAML has lists only; node types take tuples for sizes like ``kernel_size``."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


#: Deepest annotation :func:`yaml_lists` rewrites; deeper parts are kept as they are.
_MAX_ANNOTATION_DEPTH = 16


def yaml_lists(annotation: Any, depth: int = 0) -> Any:
    """``annotation`` with every ``list`` in it (bare, ``list[...]``, ``typing.List``, in a union, a tuple or an
    ``Annotated``) taking a tuple as a list: YAML lists reach the args model as tuples (see ``_tuples``).

    Example:
        >>> from pydantic import TypeAdapter
        >>> strict = TypeAdapter(yaml_lists(int | list[int] | None), config={"strict": True})
        >>> strict.validate_python((1, 2)), strict.validate_python(3)
        ([1, 2], 3)
        >>> strict.validate_python(("3",))  # the items stay strict
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: ...
    """
    if depth > _MAX_ANNOTATION_DEPTH:
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is list or origin is list:
        from pydantic import BeforeValidator  # only while a model is built (see NodeType.args_model)

        inner = list[yaml_lists(args[0], depth + 1)] if args else list  # type: ignore[misc]
        return typing.Annotated[inner, BeforeValidator(_as_list)]
    try:
        if origin is typing.Annotated:
            return typing.Annotated[(yaml_lists(args[0], depth + 1), *args[1:])]  # type: ignore[valid-type]
        if origin is typing.Union or origin is types.UnionType:
            return typing.Union[tuple(yaml_lists(a, depth + 1) for a in args)]  # noqa: UP007
        if origin is tuple and args:
            return tuple[tuple(a if a is Ellipsis else yaml_lists(a, depth + 1) for a in args)]  # type: ignore[misc]
    except TypeError:  # an annotation typing cannot rebuild: keep it as written
        return annotation
    return annotation


def _listed(names: list[str], none: str, most: int = 12) -> str:
    """``a, b, c``, or the first ``most`` names and how many there are in all.

    Example:
        >>> _listed([f"p{i}" for i in range(20)], "none", most=3)
        'p0, p1, p2, ... (20 in all)'
    """
    if not names:
        return none
    if len(names) <= most:
        return ", ".join(names)
    return ", ".join(names[:most]) + f", ... ({len(names):,} in all)"


def _first_error_line(exc: BaseException) -> str:
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return text if len(text) <= 200 else text[:200] + "..."


def _required(node_type: NodeType) -> str:
    return ", ".join(a.name for a in node_type.args if a.required)


def _type_hint(node_type: NodeType, key: str | None) -> str | None:
    for arg in node_type.args:
        if arg.name == key:
            return f"{key} is {describe_annotation(arg.annotation)}"
    return None


def describe_annotation(annotation: Any) -> str:
    """Render an annotation the way ``chainspec types`` shows it.

    Example:
        >>> describe_annotation(int | tuple[int, int])
        'int | tuple[int, int]'
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _with_bounds(describe_annotation(args[0]), args[1:])
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(describe_annotation(a) for a in args)
    if annotation is type(None):
        return "None"
    if origin is not None and origin is not typing.Literal and args:
        inner = ", ".join("..." if a is Ellipsis else describe_annotation(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(annotation, type) and not args:
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_BOUND_WORDS = {"less_than_equal": ("le", "less than or equal to"), "less_than": ("lt", "less than"),
                "greater_than_equal": ("ge", "greater than or equal to"), "greater_than": ("gt", "greater than")}


def _error_text(err: Any) -> str:
    """Pydantic's message for one argument, lower-cased; a float bound in short form (``3.40282e+38``, not 39 digits).

    Example:
        >>> _error_text({"type": "less_than_equal", "msg": "Input should be ...", "ctx": {"le": 3.4028234663852886e38}})
        'input should be less than or equal to 3.40282e+38'
    """
    words = _BOUND_WORDS.get(err.get("type", ""))
    bound = (err.get("ctx") or {}).get(words[0]) if words else None
    if words and isinstance(bound, float):
        return f"input should be {words[1]} {bound:g}"
    return str(err["msg"]).rstrip(".").lower()


def _with_bounds(base: str, metadata: tuple[Any, ...]) -> str:
    """``int >= 1``, ``float in [0.0, 1.0]``: the numeric bounds of an ``Annotated`` type, readably.

    An upper bound equal to the format's limit on any dimension, and the float32 range every
    real-valued argument shares, are left out: they apply to every argument alike and would only
    add noise (a value past them is still refused, with the bound in the message).
    """

    items: list[Any] = []
    for meta in metadata:
        items.extend(getattr(meta, "metadata", None) or [meta])
    low = high = None
    for item in items:
        for attr, sign in (("ge", "["), ("gt", "(")):
            if getattr(item, attr, None) is not None and getattr(item, attr) != -FLOAT32_MAX:
                low = (sign, getattr(item, attr))
        for attr, sign in (("le", "]"), ("lt", ")")):
            if getattr(item, attr, None) is not None and getattr(item, attr) not in (MAX_DIM, FLOAT32_MAX):
                high = (sign, getattr(item, attr))
    if low and high:
        return f"{base} in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"{base} {'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{base} {'<=' if high[0] == ']' else '<'} {high[1]}"
    return base


_REGISTRY: dict[str, NodeType] = {}
_PLUGINS_LOADED = False


def _signature_args(factory: Callable[..., Any]) -> tuple[tuple[Arg, ...], bool]:
    target = factory.__init__ if inspect.isclass(factory) else factory  # type: ignore[misc]
    sig = inspect.signature(target)
    hints = _param_hints(target)
    docs = _arg_docs(inspect.getdoc(target) or inspect.getdoc(factory) or "")
    args: list[Arg] = []
    extra = False
    params = list(sig.parameters.values())
    if inspect.isclass(factory):
        params = params[1:]  # self
    for p in params:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            extra = True
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            continue
        args.append(Arg(p.name, hints.get(p.name, Any), p.default, docs.get(p.name, "")))
    return tuple(args), extra


def _param_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    raw = getattr(fn, "__annotations__", {})
    out: dict[str, Any] = {}
    namespace = dict(getattr(fn, "__globals__", {}))
    namespace.setdefault("typing", typing)
    for name, ann in raw.items():
        if name == "return":
            continue
        if isinstance(ann, str):
            try:
                ann = eval(ann, namespace)  # annotation strings of registered Python code, never spec text
            except Exception:
                ann = Any
        out[name] = ann
    return out


def _arg_docs(doc: str) -> dict[str, str]:
    """Pull ``name: text`` lines out of a Google-style ``Args:`` section."""
    out: dict[str, str] = {}
    in_args = False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:"):
            in_args = True
            continue
        if in_args:
            if not stripped or (not line.startswith(" ") and stripped.endswith(":")):
                if stripped.endswith(":"):
                    break
                continue
            name, sep, text = stripped.partition(":")
            if sep and name.isidentifier():
                out[name] = text.strip()
    return out


def _first_line(factory: Callable[..., Any]) -> str:
    doc = inspect.getdoc(factory) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _add(name: str, factory: Callable[..., Any], origin: str, replace: bool = False) -> NodeType:
    key = name.lower()
    if not key.isidentifier():
        raise ChainspecError(f"node type name {name!r} must be a valid identifier")
    if key in _REGISTRY and not replace and _REGISTRY[key].factory is not factory:
        raise ChainspecError(f"node type {name!r} is already registered by {_REGISTRY[key].origin}; "
                             "pick another name or pass replace=True")
    args, extra = _signature_args(factory)
    node_type = NodeType(key, factory, args, _first_line(factory), origin, extra)
    _REGISTRY[key] = node_type
    return node_type


@typing.overload
def register_type(name: F, *, replace: bool = False) -> F: ...


@typing.overload
def register_type(name: str | None = None, *, replace: bool = False) -> Callable[[F], F]: ...


def register_type(name: str | F | None = None, *, replace: bool = False) -> Callable[[F], F] | F:
    """Register a function or ``nn.Module`` class as a node type; returns it unchanged.

    The keyword arguments of the function (or of the class's ``__init__``),
    with their annotations and defaults, become the type's argument schema.
    Use it as ``@register_type("name")``, ``@register_type()`` or bare
    ``@register_type``; the last two name the type after the callable. An
    argument annotated ``list`` (bare or ``list[int]``) takes a YAML list.

    A registration lasts for the process. For ``chainspec build/validate/diff``,
    the pre-commit hook and ``chainspec.load`` to see it without your code
    running first, list its module under ``imports`` in the ``[tool.chainspec]``
    table of your project's ``pyproject.toml`` (or pass ``--import MODULE``).

    Args:
        name: the name specs use; defaults to the callable's name in lower case.
        replace: allow replacing an existing registration.

    Example:
        >>> import torch.nn as nn
        >>> @register_type("scaled_tanh", replace=True)
        ... class ScaledTanh(nn.Module):
        ...     def __init__(self, scale: float = 1.0) -> None:
        ...         super().__init__()
        ...         self.scale = scale
        ...     def forward(self, x):
        ...         return self.scale * x.tanh()
        >>> is_registered("scaled_tanh")
        True
    """

    if callable(name):  # bare ``@register_type``: the callable itself was passed
        return register_type(None, replace=replace)(name)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"register_type: the name must be a string, got {type(name).__name__}")

    def decorator(factory: F) -> F:
        if not callable(factory):
            raise TypeError(f"register_type: expected a function or an nn.Module class, got {type(factory).__name__}")
        _add(name or factory.__name__, factory, f"{factory.__module__}.{factory.__qualname__}", replace)
        return factory

    return decorator


def unregister_type(name: str) -> None:
    """Remove a registered type (mostly for tests).

    Example:
        >>> unregister_type("no_such_type")  # a no-op for unknown names
    """
    _REGISTRY.pop(name.lower(), None)


def _ensure_loaded() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    load_plugins()


def load_plugins() -> list[str]:
    """Register the node types of installed plugins (entry-point group ``chainspec.types``).

    Each entry point names a factory (function or ``nn.Module`` class); it is
    registered under the entry point's name. Called once automatically. A
    plugin that fails to import, or whose name is taken, is skipped with a
    warning: one broken package must not take chainspec (or other plugins) down.

    Example:
        >>> isinstance(load_plugins(), list)
        True
    """
    added = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        origin = f"plugin {ep.dist.name if ep.dist is not None else ep.value}"
        existing = _REGISTRY.get(ep.name.lower())
        if existing is not None:
            if existing.origin != origin:
                warnings.warn(f"chainspec: node type {ep.name!r} of {origin} is ignored: the name is taken by "
                              f"{existing.origin}", stacklevel=2)
            continue
        try:
            _add(ep.name, ep.load(), origin)
        except Exception as exc:
            warnings.warn(f"chainspec: cannot load node type {ep.name!r} from {origin} ({ep.value}): "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)
            continue
        added.append(ep.name.lower())
    return added


def is_registered(name: str) -> bool:
    """Tell whether a node type of that name exists (case-insensitive).

    Raises:
        TypeError: ``name`` is not a string.

    Example:
        >>> is_registered("Conv2d"), is_registered("conv3")
        (True, False)
    """
    _ensure_loaded()
    return _type_name(name).lower() in _REGISTRY


def _type_name(name: object, what: str = "a node type name") -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a string, got {type(name).__name__}")
    return name


def list_types(filter: str | None = None) -> list[NodeType]:  # noqa: A002 - mirrors timm.list_models
    """List registered node types, sorted by name, optionally those containing ``filter``.

    Raises:
        TypeError: ``filter`` is neither a string nor None.

    Example:
        >>> [t.name for t in list_types("pool")]
        ['adaptive_avgpool2d', 'avgpool2d', 'maxpool2d']
    """
    _ensure_loaded()
    part = None if filter is None else _type_name(filter, "the filter").lower()
    return [t for k, t in sorted(_REGISTRY.items()) if part is None or part in k]


def builtin_type_names() -> list[str]:
    """Names of the types chainspec itself ships.

    Example:
        >>> "pixel_norm" in builtin_type_names()
        True
    """
    _ensure_loaded()
    return sorted(k for k, t in _REGISTRY.items() if t.origin == "builtin")


def get_type(name: str, *, allow_imports: Iterable[str] = ()) -> NodeType:
    """Look up a node type by name, or by ``module:attr`` import path if allowed.

    Import paths resolve only when their module is, or is inside, one of the
    ``allow_imports`` prefixes given by the calling code; a spec alone can
    never make chainspec import anything.

    Raises:
        KeyError: unknown name, or an import path outside the allow-list.
        ImportError: an allowed import path that does not import, or names no node type
            (not a class or function, or one whose arguments cannot be checked).
        TypeError: ``name`` is not a string.

    Example:
        >>> get_type("ReLU").name
        'relu'
    """
    _ensure_loaded()
    key = _type_name(name).lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    if ":" in name:
        return _import_type(name, tuple(allow_imports))
    raise KeyError(name)


def suggest(name: str, extra: Iterable[str] = ()) -> str | None:
    """The closest known type name to ``name``, for a "did you mean" hint.

    Example:
        >>> suggest("conv3")
        'conv2d'
    """
    _ensure_loaded()
    return close_match(name.lower(), [*_REGISTRY, *extra], cutoff=0.6)


#: Longest name a did-you-mean hint is looked for: no typo of an identifier is longer, and comparing
#: two strings costs the product of their lengths.
MAX_HINT_NAME = 120
#: Most candidates looked at for one hint (real specs have a few dozen types, parameters or vars).
MAX_HINT_SCAN = 1000
#: Most candidates of a fitting length whose similarity is estimated for one hint (those sharing the
#: most characters with the name).
MAX_HINT_POOL = 32
#: Most candidates compared in full (difflib's ratio) for one hint when the names are the longest: the
#: work of a full comparison is the product of the two lengths, and one hint does at most this many
#: comparisons' worth of it (so all of a few dozen short names, as difflib would).
MAX_HINT_RATIOS = 8


def close_match(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The candidate most similar to ``word``, as ``difflib.get_close_matches(word, candidates, n=1,
    cutoff=cutoff)`` finds it, with bounded work whatever the number and length of the names.

    Only the first :data:`MAX_HINT_SCAN` candidates are looked at, and of them only those whose
    length allows a ratio of ``cutoff`` (at most :data:`MAX_HINT_POOL`, those sharing the most
    characters with ``word``); they are ranked by difflib's cheap
    upper bound (``quick_ratio``) and compared in full from the best down, at most
    :data:`MAX_HINT_RATIOS` of the longest names' worth of work, stopping as soon as no other can do better.

    Example:
        >>> close_match("chanels", ["channels", "kernel_size", "stride"])
        'channels'
        >>> close_match("x" * 5000, ["x"]) is None
        True
    """
    if len(word) > MAX_HINT_NAME:
        return None
    size = len(word)
    # ratio = 2 * matches / (len(a) + len(b)) <= 2 * min(len(a), len(b)) / (len(a) + len(b))
    # Each name once: copies of one name would take the places of others among the few compared in full.
    names = dict.fromkeys(c for c in itertools.islice(candidates, MAX_HINT_SCAN) if isinstance(c, str))
    pool = [c for c in names if 2 * min(len(c), size) >= cutoff * (len(c) + size)]
    if not pool:
        return None
    if len(pool) > MAX_HINT_POOL:  # keep those sharing the most characters with the word (a C-speed estimate)
        chars = set(word)
        pool = heapq.nlargest(MAX_HINT_POOL, pool, key=lambda c: len(chars.intersection(c)))
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(word)
    bounds = []
    for candidate in pool:
        matcher.set_seq1(candidate)
        if matcher.real_quick_ratio() >= cutoff:
            quick = matcher.quick_ratio()
            if quick >= cutoff:
                bounds.append((quick, candidate))
    bounds.sort(reverse=True)
    best: tuple[float, str] | None = None
    work = MAX_HINT_RATIOS * MAX_HINT_NAME * MAX_HINT_NAME
    for quick, candidate in bounds:
        if best is not None and quick < best[0]:
            break  # the ratio is at most the quick ratio: nothing further down can win
        work -= len(candidate) * size
        if work < 0:
            break
        matcher.set_seq1(candidate)
        score = matcher.ratio()
        if score >= cutoff and (best is None or (score, candidate) > best):
            best = (score, candidate)
    return best[1] if best else None


def is_import_path(name: str) -> bool:
    """Tell whether a type name is written as a ``module:attr`` import path.

    Example:
        >>> is_import_path("mypkg.layers:Block"), is_import_path("conv2d")
        (True, False)
    """
    return ":" in name


def import_allowed(name: str, allow_imports: Iterable[str]) -> bool:
    """Tell whether ``module:attr`` falls under one of the allowed module prefixes.

    Example:
        >>> import_allowed("mypkg.layers:Block", ["mypkg"]), import_allowed("os:system", ["mypkg"])
        (True, False)
    """
    module = name.partition(":")[0]
    return any(module == p or module.startswith(p + ".") for p in allow_imports)


_IMPORTED: dict[str, NodeType] = {}


def _import_type(name: str, allow_imports: tuple[str, ...]) -> NodeType:
    """The node type at an allowed import path; ``KeyError`` outside the allow-list, else ``ImportError``.

    Whatever importing or describing the object raises (a module failing to import, a property
    raising, a signature ``inspect`` or pydantic cannot read) is an ``ImportError`` saying why,
    which the spec reports at the type.
    """
    if not import_allowed(name, allow_imports):
        raise KeyError(name)
    if name in _IMPORTED:
        return _IMPORTED[name]
    try:
        node_type = _describe_import(name, allow_imports)
    except ImportError:
        raise
    except Exception as exc:
        raise ImportError(f"{type(exc).__name__}: {_first_error_line(exc)}") from None
    _IMPORTED[name] = node_type
    return node_type


def _describe_import(name: str, allow_imports: tuple[str, ...]) -> NodeType:
    module_name, _, attr = name.partition(":")
    parts = attr.split(".")
    # Private and dunder names are no node types, and walking them (``__globals__``,
    # ``__builtins__``) is the classic way out of a namespace.
    if not all(part.isidentifier() and not part.startswith("_") for part in parts):
        raise ImportError(f"{attr!r} is not a public name; name a class or function as module:Name")
    obj: Any = importlib.import_module(module_name)
    for part in parts:
        obj = getattr(obj, part)
    # Allowing a module allows what it defines, not everything it imports:
    # ``mypkg:os.system`` must not slip through an allow-list naming ``mypkg``.
    home = getattr(obj, "__module__", None)
    if not isinstance(home, str) or not import_allowed(f"{home}:", allow_imports):
        raise ImportError(f"{attr!r} is defined in {home or 'no module'!s}, outside the allowed modules "
                          f"({', '.join(allow_imports)}); allow that module or name the type by it")
    if not callable(obj):
        raise ImportError(f"{attr!r} is a {type(obj).__name__}, not a class or function")
    module_type = getattr(sys.modules.get("torch.nn"), "Module", None)  # loaded by now if obj can make one
    if inspect.isclass(obj) and isinstance(module_type, type) and not issubclass(obj, module_type):
        raise ImportError(f"{attr!r} is a class but not an nn.Module; a node type is an nn.Module class or "
                          "a function returning one")
    args, extra = _signature_args(obj)
    node_type = NodeType(name, obj, args, _first_line(obj), f"import {name}", extra)
    try:
        node_type.args_model  # noqa: B018 - built now, so that a signature pydantic cannot model is refused here
    except Exception as exc:
        raise ImportError(f"the arguments of {attr!r} cannot be checked: {_first_error_line(exc)}") from None
    return node_type


def builtin(name: str) -> Callable[[F], F]:
    """Register one of chainspec's own types (used by ``_builtins``)."""

    def decorator(factory: F) -> F:
        _add(name, factory, "builtin")
        return factory

    return decorator
