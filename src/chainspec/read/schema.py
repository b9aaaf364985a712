"""The published JSON Schema (draft 2020-12) of spec format version 1.

It is generated, never written by hand: the structure comes from the pydantic
models in :mod:`chainspec.read.model`, and each built-in node type contributes the
schema of its ``args`` from its signature (``NodeType.args_model``), so an
editor completes and checks ``args`` under ``type: conv2d``.

Three things make the published file differ from pydantic's raw output:

* ``${...}`` expression strings are accepted wherever an argument value is
  expected, at every nesting level, since composite parts and ``vars`` use them.
* ``type`` lists the built-in node types for completion, yet accepts any
  identifier or ``module:attr`` path, so that composites defined under
  ``types:``, runtime-registered types and plugins validate too.
* Mapping keys that must be identifiers (chain names, vars, composite names)
  are checked with ``propertyNames``; pydantic writes ``patternProperties``,
  which lets a non-matching key through where the models reject it.

Required arguments are not marked required in the schema, since ``defaults:``
may supply them; ``chainspec validate`` checks them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from typing import Any

from ..types.registry import NodeType, describe_annotation, list_types
from .format import SCHEMA_PATH  # noqa: F401 - where the published schema lives, with it
from .model import FORMAT_VERSION, IDENT, SpecModel, TypeDef

#: The JSON Schema dialect of the published schema.
DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: A string holding at least one ``${...}`` expression (searched, not anchored).
EXPRESSION_PATTERN = r"\$\{[^{}]*\}"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = rf"{_NAME}(\.{_NAME})*"
#: A node type as a spec may write it: a name (built-in, registered, plugin or
#: composite; matched case-insensitively by the registry) or ``module:attr``.
TYPE_NAME_PATTERN = rf"^({_NAME}|{_DOTTED}:{_DOTTED})$"

_EXPR_REF = {"$ref": "#/$defs/Expression"}
_ANNOTATIONS = ("title", "description", "default", "examples")
#: Keywords that restrict which strings a string schema accepts.
_STRING_LIMITS = ("enum", "const", "pattern", "minLength", "maxLength", "format")

_EXAMPLE = {
    "chainspec": 1,
    "chains": {
        "net": {
            "input_shape": [3, 32, 32],
            "nodes": [
                {"id": "conv", "type": "conv2d", "args": {"in_channels": 3, "out_channels": 32, "padding": 1}},
                {"id": "act", "type": "relu"},
                {"id": "pool", "type": "avgpool2d", "stage": 1},
            ],
        }
    },
}


def build_schema(installed: bool = False, composites: Mapping[str, TypeDef] | None = None) -> dict[str, Any]:
    """Generate the JSON Schema of the spec format (built-in node types only, unless ``installed``).

    ``composites`` (a spec's ``types:``, by name) lists those types too, each with its description
    and its params as ``args``: the per-project schema of ``chainspec schema --for SPEC``, which an
    editor can offer after ``type:``.

    By default, types registered at run time or by plugins are not listed, so
    the result is the same on every machine; their names still validate through
    the pattern, with any ``args``. With ``installed=True`` every type registered
    in this process is listed with its ``args`` schema (plugins, ``register_type``
    calls, a built-in replaced with ``replace=True``), for a schema of one's own
    project; a type whose args need nested schemas is listed with free ``args``.

    Example:
        >>> schema = build_schema()
        >>> schema["$schema"]
        'https://json-schema.org/draft/2020-12/schema'
        >>> {"const": "conv2d", "description": "2-D convolution (``torch.nn.Conv2d``)."} in schema["$defs"][
        ...     "NodeTypeName"]["anyOf"]
        True
    """
    schema = SpecModel.model_json_schema()
    _identifier_keys(schema)
    builtins = [t for t in list_types() if installed or t.origin == "builtin"]
    defs = schema["$defs"]
    for name in ("PartSpec", "NodeSpec"):
        model = defs[name]
        props = model["properties"]
        props["type"] = {key: props["type"][key] for key in _ANNOTATIONS if key in props["type"]}
        props["type"]["$ref"] = "#/$defs/NodeTypeName"
        model["allOf"] = [{"$ref": "#/$defs/BuiltinArgs"}]
    defaults = schema["properties"]["defaults"]
    defaults["properties"] = {t.name: {"$ref": f"#/$defs/args_{t.name}"} for t in builtins}
    defs["Expression"] = {
        "title": "expression",
        "description": "A string holding ${...} expressions, evaluated against vars and composite params "
                       "(a string that is exactly one ${...} takes the value's type).",
        "type": "string",
        "pattern": EXPRESSION_PATTERN,
        "examples": ["${base_ch * 2}", "${min(512, 8192 // 2**s)}"],
    }
    own = dict(composites or {})
    defs["NodeTypeName"] = _type_name_schema(builtins, {name: t.description for name, t in own.items()})
    defs["BuiltinArgs"] = {
        "description": "Checks args against the signature of the built-in type named by 'type'.",
        "allOf": [{"if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                   "then": {"properties": {"args": {"$ref": f"#/$defs/args_{name}"}}}}
                  for name in [*(t.name for t in builtins), *own]],
    }
    for name, typedef in own.items():
        defs[f"args_{name}"] = _composite_args(name, typedef)
    for t in builtins:
        try:
            defs[f"args_{t.name}"] = args_schema(t)
        except ValueError:  # only a registered type can get here: its args stay free
            defs[f"args_{t.name}"] = {"title": f"{t.name} args", "type": "object",
                                      "description": t.description or f"Arguments of {t.name}."}
    _required_apart(schema)
    return {
        "$schema": DIALECT,
        "$comment": "Generated from chainspec's models by 'chainspec schema'; do not edit by hand.",
        **schema,
        "title": f"chainspec spec, format version {FORMAT_VERSION}",
        "description": "A YAML spec that chainspec compiles into growable chains of nn.Module nodes. "
                       "Validate it fully (types, args, ids, stages, shapes) with 'chainspec validate'.",
        "examples": [_EXAMPLE],
    }


def render_schema(schema: dict[str, Any] | None = None) -> str:
    """Serialise the schema the way it is published: sorted keys, two-space indent, final newline.

    Example:
        >>> render_schema({"b": 1, "a": [2]})
        '{\\n  "a": [\\n    2\\n  ],\\n  "b": 1\\n}\\n'
    """
    return json.dumps(build_schema() if schema is None else schema, indent=2, sort_keys=True,
                      ensure_ascii=False) + "\n"


def args_schema(node_type: NodeType) -> dict[str, Any]:
    """The schema of one node type's ``args``, accepting ``${...}`` strings for every value.

    Example:
        >>> from chainspec.types.registry import get_type
        >>> s = args_schema(get_type("dropout"))
        >>> s["properties"]["p"]["anyOf"][1]
        {'$ref': '#/$defs/Expression'}
    """
    raw = copy.deepcopy(node_type.args_model.model_json_schema())
    if "$defs" in raw:  # nested models: no built-in has them, and their refs would not resolve here
        raise ValueError(f"the args of node type {node_type.name!r} need $defs, which the schema cannot embed")
    required = raw.pop("required", [])
    props = {name: _allow_expressions(prop) for name, prop in raw.get("properties", {}).items()}
    for arg in node_type.args:
        # Hover text: the docstring's words, else the annotation as `chainspec types` shows it.
        if arg.name in props and "description" not in props[arg.name]:
            props[arg.name]["description"] = describe_annotation(arg.annotation)
    description = node_type.description or f"Arguments of {node_type.name}."
    if required:
        description += f" Required (here or under defaults): {', '.join(required)}."
    out: dict[str, Any] = {
        "title": f"{node_type.name} args",
        "description": description,
        "type": "object",
        "properties": props,
        "additionalProperties": raw.get("additionalProperties", True),
    }
    return out


def _type_name_schema(builtins: list[NodeType], composites: dict[str, str] | None = None) -> dict[str, Any]:
    """One alternative per known type, each a ``const`` with its own description, so that an editor's
    hover on a type name shows that type alone; any other name is checked by the pattern."""
    known = [*(t.name for t in builtins), *(composites or {})]
    return {
        "title": "node type",
        "description": "A built-in type (listed), a composite defined under 'types:', a type registered in Python "
                       "or by a plugin, or a 'module:attr' import path the calling code allows.",
        "type": "string",
        "anyOf": [
            *({"const": t.name, "description": t.description or f"The {t.name} node type."} for t in builtins),
            *({"const": name, "description": f"Composite type (this spec): {text}" if text
               else "Composite type defined under 'types:' in this spec."}
              for name, text in (composites or {}).items()),
            {"description": "A composite, registered or plugin type, or a 'module:attr' import path.",
             "pattern": TYPE_NAME_PATTERN, "not": {"enum": known}},
        ],
        "examples": ["conv2d", "conv_block", "mypkg.layers:Block"],
    }


def _composite_args(name: str, typedef: TypeDef) -> dict[str, Any]:
    """The ``args`` of a spec's own composite type: its params, any value or ``${...}``."""
    required = [param for param, default in typedef.params.items() if default is None]
    description = typedef.description or f"Parameters of the composite type {name!r}."
    if required:
        description += f" Required: {', '.join(required)}."
    return {"title": f"{name} args", "description": description, "type": "object",
            "properties": {param: {"description": "required" if default is None else f"default: {default!r}"}
                           for param, default in typedef.params.items()},
            "additionalProperties": False}


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    """Every dict in a JSON tree, each before its children (which are read after the caller's changes)."""
    if isinstance(node, list):
        for item in node:
            yield from _objects(item)
    elif isinstance(node, dict):
        yield node
        for child in list(node.values()):
            yield from _objects(child)


def _required_apart(schema: dict[str, Any]) -> None:
    """Move each object's ``required`` list into an ``allOf`` entry, in place: the same constraint.

    The YAML language server offers a skeleton of an object's required keys as an extra completion,
    labelled with the object's title ("NodeSpec", "chainspec spec, format version 1"), beside the
    keys themselves; with ``required`` beside ``properties`` moved apart, it offers the keys alone.
    """
    for node in _objects(schema):
        if "properties" in node and "required" in node:
            node.setdefault("allOf", []).append({"required": node.pop("required")})


def _identifier_keys(schema: dict[str, Any]) -> None:
    """Turn pydantic's ``patternProperties`` for identifier keys into ``propertyNames`` checks, in place."""
    for node in _objects(schema):
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict) and list(patterns) == [IDENT] and "properties" not in node:
            value = patterns[IDENT]
            node.pop("patternProperties")
            node["propertyNames"] = {**node.get("propertyNames", {}), "pattern": IDENT}
            node["additionalProperties"] = value if value else True


def _accepts_any_string(schema: dict[str, Any]) -> bool:
    if not schema or schema is True:
        return True
    types = schema.get("type")
    is_string = types == "string" or (isinstance(types, list) and "string" in types)
    return is_string and not any(k in schema for k in _STRING_LIMITS)


def _children(schema: dict[str, Any]) -> dict[str, Any]:
    """Copy ``schema`` with expressions allowed inside its items, properties and branches."""
    out = dict(schema)
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _allow_expressions(out[key])
    if "prefixItems" in out:
        out["prefixItems"] = [_allow_expressions(s) for s in out["prefixItems"]]
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _allow_expressions(s) for k, s in out["properties"].items()}
    if "anyOf" in out:
        out["anyOf"] = [_children(s) for s in out["anyOf"]]
    return out


def _allow_expressions(schema: dict[str, Any]) -> dict[str, Any]:
    """A value schema that also accepts a ``${...}`` string, here and at every level below."""
    out = _children(schema)
    if "anyOf" in out:
        if not any(_accepts_any_string(s) for s in out["anyOf"]):
            out["anyOf"] = [*out["anyOf"], _EXPR_REF]
        return out
    if _accepts_any_string(out):
        return out
    notes = {k: out.pop(k) for k in _ANNOTATIONS if k in out}
    return {**notes, "anyOf": [out, _EXPR_REF]}
