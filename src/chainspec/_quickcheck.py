"""A fast path for valid input through a pydantic-core schema, in plain Python.

``chainspec validate`` runs pydantic's own validators (written out as plain data in
``read/records.py`` and ``types/argschemas.py``), but importing pydantic-core alone
costs it more than everything else it does: a third of its cold start on Python
3.11. Most specs are valid, and for a valid document this module gives the same
result pydantic-core would, without importing it. It walks the handful of schema
kinds those files use (models, strings with patterns, bounded numbers, literals,
unions, lists, tuples, dicts) with the strictest reading of each: exact types, the
pattern matched whole in ASCII.

It only ever vouches for input. Anything it does not know, anything it cannot be
sure pydantic-core would accept the same way, and every invalid value raise
:class:`Unsure`, and the caller hands the input to pydantic-core, which gives the
verdict and the errors. So a document is never accepted here that pydantic-core
would refuse; ``tests/test_codegen.py`` holds the two to the same results on every
spec, fixture and generated document.

Example:
    >>> schema = {"type": "list", "items_schema": {"type": "int", "ge": 1}, "max_length": 3}
    >>> validate_quickly(schema, [1, 2])
    [1, 2]
    >>> validate_quickly(schema, [0])
    Traceback (most recent call last):
    ...
    chainspec._quickcheck.Unsure: int: 0 is out of bounds
"""

from __future__ import annotations

import math
import operator
import re
from typing import Any

__all__ = ["Unsure", "validate_quickly"]


class Unsure(Exception):
    """The fast path cannot vouch for the input: ask pydantic-core (it may well be valid there)."""


def validate_quickly(schema: dict[str, Any], value: Any) -> Any:
    """``value`` validated by ``schema`` as pydantic-core would, or :class:`Unsure`.

    Raises:
        Unsure: the value is invalid, or valid in a way this path does not follow.
    """
    definitions: dict[str, Any] = {}
    if schema["type"] == "definitions":
        definitions = {item["ref"]: item for item in schema["definitions"]}
        schema = schema["schema"]
    return _Walk(definitions).run(schema, value)


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _pattern(text: str) -> re.Pattern[str]:
    found = _PATTERNS.get(text)
    if found is None:
        # ASCII: Python's \s and \w, narrowed so, match no more than the Rust regex pydantic-core runs.
        found = _PATTERNS[text] = re.compile(text, re.ASCII)
    return found


class _Walk:
    """One validation: the schema's definitions, and how far the value is from an exact match."""

    def __init__(self, definitions: dict[str, Any]) -> None:
        self.definitions = definitions
        self.conversions = 0  # values taken by conversion (an int where a float goes), not as they are

    def run(self, schema: dict[str, Any], value: Any) -> Any:
        step = _STEPS.get(schema["type"])
        if step is None:
            raise Unsure(f"schema kind {schema['type']!r}")
        return step(self, schema, value)

    def on_any(self, schema: dict[str, Any], value: Any) -> Any:
        return value

    def on_bool(self, schema: dict[str, Any], value: Any) -> Any:
        return _exactly(value, bool, schema)

    def on_int(self, schema: dict[str, Any], value: Any) -> Any:
        return _bounded(schema, _exactly(value, int, schema))

    def on_float(self, schema: dict[str, Any], value: Any) -> Any:
        if type(value) is int:  # strict mode takes an int for a float, as a float
            self.conversions += 1
            try:
                value = float(value)
            except OverflowError:
                raise Unsure(f"float: {value!r} is too large") from None
        _exactly(value, float, schema)
        if not math.isfinite(value) and (schema.get("allow_inf_nan") is False or math.isnan(value)):
            raise Unsure(f"float: {value!r}")
        return _bounded(schema, value)

    def on_str(self, schema: dict[str, Any], value: Any) -> Any:
        _exactly(value, str, schema)
        _sized(schema, value)
        pattern = schema.get("pattern")
        if pattern is not None and _pattern(pattern).fullmatch(value) is None:
            raise Unsure(f"str: {value!r} does not match {pattern}")
        return value

    def on_literal(self, schema: dict[str, Any], value: Any) -> Any:
        if any(type(value) is type(expected) and value == expected for expected in schema["expected"]):
            return value
        raise Unsure(f"literal: {value!r}")

    def on_nullable(self, schema: dict[str, Any], value: Any) -> Any:
        return None if value is None else self.run(schema["schema"], value)

    def on_default(self, schema: dict[str, Any], value: Any) -> Any:
        return self.run(schema["schema"], value)

    def on_definition_ref(self, schema: dict[str, Any], value: Any) -> Any:
        return self.run(self.definitions[schema["schema_ref"]], value)

    def on_union(self, schema: dict[str, Any], value: Any) -> Any:
        """pydantic-core's smart union, for choices a value can match exactly once: the one exact match, else
        the one match."""
        exact, converted = [], []
        for choice in schema["choices"]:
            if isinstance(choice, tuple):  # (schema, label)
                choice = choice[0]
            before = self.conversions
            try:
                result = self.run(choice, value)
            except Unsure:
                continue
            (exact if self.conversions == before else converted).append(result)
            self.conversions = before
        if len(exact) == 1:
            return exact[0]
        if not exact and len(converted) == 1:
            self.conversions += 1
            return converted[0]
        raise Unsure(f"union: {len(exact)} exact and {len(converted)} other matches")

    def on_list(self, schema: dict[str, Any], value: Any) -> Any:
        _sized(schema, _exactly(value, list, schema))
        items = schema.get("items_schema")
        return list(value) if items is None else [self.run(items, item) for item in value]

    def on_tuple(self, schema: dict[str, Any], value: Any) -> Any:
        _sized(schema, _exactly(value, tuple, schema))
        items: list[dict[str, Any]] = schema.get("items_schema", [])
        variadic = schema.get("variadic_item_index")
        if variadic is None:
            if len(value) != len(items):
                raise Unsure(f"tuple: {len(value)} items, not {len(items)}")
            return tuple(self.run(item, v) for item, v in zip(items, value, strict=True))
        tail = len(items) - variadic - 1
        if len(value) < variadic + tail:
            raise Unsure("tuple: too short")
        out = [self.run(items[i], value[i]) for i in range(variadic)]
        out += [self.run(items[variadic], v) for v in value[variadic:len(value) - tail]]
        out += [self.run(items[variadic + 1 + i], value[len(value) - tail + i]) for i in range(tail)]
        return tuple(out)

    def on_dict(self, schema: dict[str, Any], value: Any) -> Any:
        _sized(schema, _exactly(value, dict, schema))
        keys, values = schema.get("keys_schema"), schema.get("values_schema")
        return {(key if keys is None else self.run(keys, key)): (item if values is None else self.run(values, item))
                for key, item in value.items()}

    def on_model(self, schema: dict[str, Any], value: Any) -> Any:
        _exactly(value, dict, schema)
        fields = schema["schema"]
        if fields["type"] != "model-fields" or fields.get("computed_fields"):
            raise Unsure("model: not plain fields")
        extra = schema.get("config", {}).get("extra_fields_behavior") or fields.get("extra_behavior") or "ignore"
        values: dict[str, Any] = {}
        given: set[str] = set()
        used: set[Any] = set()
        for name, field in fields["fields"].items():
            key = field.get("validation_alias", name)
            if not isinstance(key, str):
                raise Unsure(f"model: alias path {key!r}")
            inner = field["schema"]
            if key in value:
                values[name] = self.run(inner, value[key])
                given.add(name)
                used.add(key)
            elif inner["type"] == "default" and "default_factory" in inner:
                if inner.get("default_factory_takes_data"):
                    raise Unsure("model: default factory taking data")
                values[name] = inner["default_factory"]()
            elif inner["type"] == "default":
                values[name] = inner["default"]
            else:
                raise Unsure(f"model: missing {key!r}")
        extras = {key: item for key, item in value.items() if key not in used}
        if extras and extra != "allow":
            if extra == "forbid":
                raise Unsure(f"model: unknown keys {sorted(map(str, extras))}")
            extras = {}
        record = object.__new__(schema["cls"])
        object.__setattr__(record, "__dict__", values)
        object.__setattr__(record, "__pydantic_extra__", extras if extra == "allow" else None)
        object.__setattr__(record, "__pydantic_fields_set__", given | set(extras))
        object.__setattr__(record, "__pydantic_private__", None)
        return record


def _exactly(value: Any, kind: type, schema: dict[str, Any]) -> Any:
    if type(value) is not kind:
        raise Unsure(f"{schema['type']}: a {type(value).__name__}")
    return value


def _bounded(schema: dict[str, Any], value: Any) -> Any:
    for key, holds in (("ge", operator.ge), ("gt", operator.gt), ("le", operator.le), ("lt", operator.lt)):
        bound = schema.get(key)
        if bound is not None and not holds(value, bound):
            raise Unsure(f"{schema['type']}: {value!r} is out of bounds")
    return value


def _sized(schema: dict[str, Any], value: Any) -> None:
    low, high = schema.get("min_length"), schema.get("max_length")
    if (low is not None and len(value) < low) or (high is not None and len(value) > high):
        raise Unsure(f"{schema['type']}: {len(value)} items or characters, out of bounds")


_STEPS = {
    "any": _Walk.on_any, "bool": _Walk.on_bool, "int": _Walk.on_int, "float": _Walk.on_float, "str": _Walk.on_str,
    "literal": _Walk.on_literal, "nullable": _Walk.on_nullable, "default": _Walk.on_default,
    "definition-ref": _Walk.on_definition_ref, "union": _Walk.on_union, "list": _Walk.on_list,
    "tuple": _Walk.on_tuple, "dict": _Walk.on_dict, "model": _Walk.on_model,
}
