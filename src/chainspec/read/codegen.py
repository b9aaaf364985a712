"""Write the validators of the spec format as plain data, so that ``chainspec validate`` starts fast.

pydantic builds a model's validator in two steps: it walks the model's annotations
in Python to make a *core schema* (a dict), then hands that to pydantic-core,
whose Rust ``SchemaValidator`` does the validating. The first step costs more
than everything else ``chainspec validate`` does to a spec. This module runs it
once, at development time, and writes its result into two generated modules:

- ``read/records.py``: the core schema of the spec format (:mod:`chainspec.read.model`)
  and, for each of its models, a plain read-only record class the validator fills in;
- ``types/argschemas.py``: the core schema of each built-in node type's arguments.

At run time a valid document goes through them on :mod:`chainspec._quickcheck`'s
plain-Python fast path, and anything else to pydantic-core, which gives the errors;
neither builds a pydantic model. The models stay the single source of truth; the
generated files are checked against them by the tests (``--check``). They hold no
version: the pydantic versions chainspec accepts write the same schemas (each
``config`` with its keys sorted, since their order changes between versions and
means nothing). Should the installed pydantic-core refuse one, chainspec makes it
from the models at run time instead, as :func:`spec_core_schema` does.

Run ``python -m chainspec.read.codegen`` after changing the models or a built-in
type's arguments, and ``python -m chainspec.read.codegen --check`` to see whether
the generated files are current.

Example:
    >>> schema = spec_core_schema()
    >>> schema["schema"]["cls"].__name__, schema["schema"]["config"]["strict"]
    ('SpecData', True)
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..types.registry import builtin_type_names, get_type
from . import model, records

PACKAGE = Path(__file__).resolve().parents[1]
#: The generated modules, by path.
RECORDS_PATH = PACKAGE / "read" / "records.py"
ARGSCHEMAS_PATH = PACKAGE / "types" / "argschemas.py"
#: The pydantic models of the format and the record class each becomes, in the order they are written.
MODELS: dict[type[BaseModel], str] = {
    model.SpecModel: "SpecData", model.ChainSpec: "ChainData", model.NodeSpec: "NodeData",
    model.PartSpec: "PartData", model.CopyInit: "CopyData", model.TypeDef: "TypeData",
    model.GrowthSpec: "GrowthData", model.StagePhases: "StagePhasesData",
}
#: Keys of a core schema that only pydantic's Python side reads (JSON Schema hooks, class bookkeeping).
_DROPPED_KEYS = {"metadata", "custom_init", "root_model", "post_init"}


class _Name:
    """A name in generated source (a class): its ``repr`` is the name as written, not quoted."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _plain(schema: Any, classes: Callable[[type], Any], refs: dict[str, str]) -> Any:
    """``schema`` without pydantic's Python-side keys, with stable refs and each model class replaced."""
    if isinstance(schema, dict):
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key in _DROPPED_KEYS:
                continue
            if key == "cls":
                out[key] = classes(value)
            elif key == "config":
                out[key] = dict(sorted(value.items()))
            elif key in ("ref", "schema_ref"):
                out[key] = refs.setdefault(value, value.split(":")[0].rsplit(".", 1)[-1])
            elif key == "default_factory":
                if value not in (dict, list):
                    raise TypeError(f"cannot write default factory {value!r}")
                out[key] = classes(value)
            else:
                out[key] = _plain(value, classes, refs)
        return out
    if isinstance(schema, list):
        return [_plain(item, classes, refs) for item in schema]
    if isinstance(schema, tuple):
        return tuple(_plain(item, classes, refs) for item in schema)
    if callable(schema):
        raise TypeError(f"cannot write {schema!r} into a generated schema")
    return schema


def spec_core_schema() -> dict[str, Any]:
    """The core schema of the spec format, its models replaced by the records of :mod:`.records`.

    What ``read/records.py`` holds as ``SPEC_SCHEMA``, derived now from the models.
    """
    by_model = {cls: getattr(records, name) for cls, name in MODELS.items()}
    return _plain(model.SpecModel.__pydantic_core_schema__, lambda cls: by_model.get(cls, cls), {})


def _annotation(hint: Any) -> str:
    """An annotation as a record's field declares it: the models' classes by their records' names."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _annotation(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_annotation(arg) for arg in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(arg) for arg in args)}]"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_annotation(arg) for arg in args)}]"
    if hint is type(None):
        return "None"
    if hint is typing.Any:
        return "Any"
    if hint in MODELS:
        return MODELS[hint]
    return str(hint.__name__)


def _record_source(cls: type[BaseModel], name: str) -> str:
    """The source of the record class of one model."""
    doc = (cls.__doc__ or "").strip().splitlines()[0]
    lines = [f"class {name}(Record):", f'    """{doc}"""', ""]
    keys = []
    for field_name, info in cls.model_fields.items():
        lines.append(f"    {field_name}: {_annotation(info.annotation)}")
        keys.append(info.validation_alias if isinstance(info.validation_alias, str) else field_name)
    lines.append(f"    KEYS = {tuple(keys)!r}")
    return "\n".join(lines)


_RECORDS_HEAD = '''"""The spec format's validator as plain data, and the read-only records it fills in.

GENERATED by ``python -m chainspec.read.codegen`` from the pydantic models in
:mod:`chainspec.read.model`; do not edit. ``SPEC_SCHEMA`` is pydantic-core's
schema of :class:`~chainspec.read.model.SpecModel` with each model replaced by
its record class below: the same checks and the same errors, without building
the models when a spec is read.

Example:
    >>> from pydantic_core import SchemaValidator
    >>> spec = SchemaValidator(SPEC_SCHEMA).validate_python(
    ...     {"chainspec": 1, "chains": {"net": {"input_shape": [4], "nodes": [{"id": "a", "type": "relu"}]}}})
    >>> spec.chains["net"].nodes[0].id, spec.chains["net"].nodes[0].init
    ('a', 'fresh')
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal


class Record:
    """A validated part of a spec: read-only attributes, one per key of its YAML mapping.

    ``KEYS`` names those keys as a spec writes them (``from``, where the attribute is ``from_``).
    """

    __slots__ = ("__dict__", "__pydantic_extra__", "__pydantic_fields_set__", "__pydantic_private__")
    KEYS: ClassVar[tuple[str, ...]] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def __reduce__(self) -> tuple[Any, ...]:
        return _record, (type(self), vars(self))  # copy, deepcopy and pickle go through here


def _record(cls: type[Record], values: dict[str, Any]) -> Record:
    """A record of class ``cls`` holding ``values`` (how copies and unpickled records are made)."""
    record = object.__new__(cls)
    object.__setattr__(record, "__dict__", dict(values))
    return record
'''

_ARGS_HEAD = '''"""The built-in node types' argument validators as plain data.

GENERATED by ``python -m chainspec.read.codegen`` from the built-in types'
signatures; do not edit. ``ARG_SCHEMAS[name]`` is pydantic-core's schema of the
arguments model :attr:`~chainspec.types.registry.NodeType.args_model` builds for
that type, with the model replaced by :class:`Args`: the same checks and errors,
without building the models when a spec is validated.

Example:
    >>> from pydantic_core import SchemaValidator
    >>> vars(SchemaValidator(ARG_SCHEMAS["leaky_relu"]).validate_python({}))
    {'negative_slope': 0.01}
"""

from __future__ import annotations

from typing import Any


class Args:
    """The validated arguments of one node: an attribute per argument (extra ones in ``__pydantic_extra__``)."""

    __slots__ = ("__dict__", "__pydantic_extra__", "__pydantic_fields_set__", "__pydantic_private__")
'''


def _names_for(values: dict[type, str]) -> Callable[[type], _Name]:
    def name(cls: type) -> _Name:
        if cls in values:
            return _Name(values[cls])
        raise TypeError(f"cannot write class {cls!r} into a generated schema")
    return name


def _source(value: Any, indent: int = 0, lead: int = 0, width: int = 116) -> str:
    """``value`` as Python source: on one line where it fits (after ``lead`` characters of key), else one item
    per line, indented by 4."""
    flat = repr(value)
    if indent + lead + len(flat) <= width or not isinstance(value, (dict, list, tuple)) or not value:
        return flat
    inner = " " * (indent + 4)
    if isinstance(value, dict):
        items = [f"{key!r}: {_source(item, indent + 4, len(repr(key)) + 2, width)}" for key, item in value.items()]
        opening, closing = "{", "}"
    else:
        items = [_source(item, indent + 4, 0, width) for item in value]
        opening, closing = ("[", "]") if isinstance(value, list) else ("(", ")")
    body = ",\n".join(inner + item for item in items)
    trailing = "," if isinstance(value, tuple) and len(value) == 1 else ""
    return f"{opening}\n{body}{trailing}\n{' ' * indent}{closing}"


def _hoisted(schema: Any, out: dict[str, Any]) -> Any:
    """``schema`` with each model's schema inside it replaced by a name, that schema put in ``out`` under it
    (inner ones first): generated source that a reader can follow, and short lines."""
    if isinstance(schema, dict):
        inner = {key: _hoisted(value, out) for key, value in schema.items()}
        if schema.get("type") == "model":
            name = "_" + re.sub(r"(?<!^)(?=[A-Z])", "_", repr(schema["cls"])).upper() + "_SCHEMA"
            out[name] = inner
            return _Name(name)
        return inner
    if isinstance(schema, list):
        return [_hoisted(item, out) for item in schema]
    return schema


def _literal(name: str, value: Any) -> str:
    return f"{name} = {_source(value)}\n"


def records_source() -> str:
    """The text of ``read/records.py`` as the models make it now."""
    parts = [_RECORDS_HEAD]
    for cls, name in MODELS.items():
        parts.append("\n\n" + _record_source(cls, name) + "\n")
    classes = {cls: name for cls, name in MODELS.items()} | {dict: "dict", list: "list"}
    schema = _plain(model.SpecModel.__pydantic_core_schema__, _names_for(classes), {})
    models: dict[str, Any] = {}
    top = _hoisted(schema, models)
    parts.append("\n\n#: pydantic-core's schema of each record's model.\n")
    parts.extend(_literal(f"{name}: dict[str, Any]", value) for name, value in models.items())
    parts.append("#: pydantic-core's schema of the spec format.\n")
    parts.append(_literal("SPEC_SCHEMA: dict[str, Any]", top))
    return "".join(parts)


def argschemas_source() -> str:
    """The text of ``types/argschemas.py`` as the built-in types make it now."""
    schemas = {}
    for name in builtin_type_names():
        built = get_type(name).args_model
        schemas[name] = _plain(built.__pydantic_core_schema__, _names_for({built: "Args", dict: "dict", list: "list"}),
                               {})
    return "".join([
        _ARGS_HEAD,
        "\n\n#: pydantic-core's schema of each built-in type's arguments, by type name.\n",
        _literal("ARG_SCHEMAS: dict[str, dict[str, Any]]", schemas),
    ])


def generated() -> dict[Path, str]:
    """Each generated file and the text it should have."""
    return {RECORDS_PATH: records_source(), ARGSCHEMAS_PATH: argschemas_source()}


def stale() -> list[Path]:
    """The generated files whose text is not what the models and built-in types make now."""
    return [path for path, text in generated().items()
            if not path.exists() or path.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    """Write the generated modules, or with ``--check`` exit 1 if one is not current."""
    parser = argparse.ArgumentParser(prog="python -m chainspec.read.codegen", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is not current")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"{path.relative_to(PACKAGE.parent)} is not current: run python -m chainspec.read.codegen")
        return 1 if old else 0
    for path, text in generated().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(PACKAGE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
