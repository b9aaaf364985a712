"""Safe YAML loading that remembers where every value came from.

PyYAML's ``safe_load`` throws positions away, keeps the last of two duplicate
keys without a word, and expands aliases without bound. This module composes
the document with the safe loader, then walks the node graph itself so that it
can record a ``(line, col)`` for every key path, report duplicate keys, refuse
self-referencing anchors, bound alias expansion and nesting depth, and reject
every tag outside YAML's core schema.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from ._errors import Problem

#: Largest spec file accepted. Real specs are a few kilobytes; refusing huge
#: files up front keeps validation fast and memory bounded.
MAX_BYTES = 5 * 1024 * 1024
#: Most values a document may expand to once aliases are followed. A
#: billion-laughs document stays tiny on disk but would expand far past this.
MAX_VALUES = 200_000
#: Deepest nesting accepted. Specs nest a handful of levels; the bound keeps
#: the walk (and the error path) well inside Python's recursion limit.
MAX_DEPTH = 64

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_CORE + t for t in ("null", "bool", "int", "float", "str")}

Path = tuple[str | int, ...]


@dataclass
class Document:
    """A parsed YAML document and the position of every value in it.

    Example:
        >>> doc = parse_yaml("a:\\n  b: [1, 2]\\n", "x.yaml")
        >>> doc.data, doc.where(("a", "b"))
        ({'a': {'b': [1, 2]}}, (2, 3))
    """

    source: str
    data: Any = None
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def where(self, path: Path) -> tuple[int | None, int | None]:
        """Return the position of ``path``, or of its closest recorded ancestor."""
        for end in range(len(path), -1, -1):
            pos = self.positions.get(tuple(path[:end]))
            if pos is not None:
                return pos
        return (None, None)

    def problem(self, path: Path, message: str, hint: str | None = None, *, label: str = "") -> Problem:
        """Build a :class:`Problem` located at ``path``."""
        line, col = self.where(path)
        return Problem(self.source, line, col, format_path(path) + label, message, hint)


def format_path(path: Path) -> str:
    """Render a key path the way the docs write it: ``chains.net.nodes[1].args``.

    Example:
        >>> format_path(("chains", "net", "nodes", 1, "args"))
        'chains.net.nodes[1].args'
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_yaml(text: str | bytes, source: str = "<string>") -> Document:
    """Parse YAML text safely, recording positions and collecting problems.

    Never raises for bad input: every problem lands in ``Document.problems``.

    Example:
        >>> parse_yaml("a: 1\\na: 2\\n", "d.yaml").problems[0].format()
        "d.yaml:2:1: a: duplicate key 'a' (first defined at line 1); remove one of them"
    """
    doc = Document(source)
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            doc.problems.append(_too_big(source, len(text)))
            return doc
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = text.count(b"\n", 0, exc.start) + 1
            col = exc.start - (text.rfind(b"\n", 0, exc.start) + 1) + 1
            doc.problems.append(
                Problem(source, line, col, "", f"file is not valid UTF-8 (byte 0x{text[exc.start]:02x})",
                        "save the file as UTF-8")
            )
            return doc
    if len(text) > MAX_BYTES:
        doc.problems.append(_too_big(source, len(text)))
        return doc
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        doc.problems.append(Problem(source, 1, 1, "", "file is empty", "a spec needs at least 'chainspec: 1' and 'chains:'"))
        return doc
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        msg = exc.problem or str(exc)
        if exc.context:
            msg = f"{exc.context}, {msg}"
        hint = "indent with spaces, not tabs" if "\\t" in msg or "\t" in msg else None
        doc.problems.append(Problem(source, mark.line + 1 if mark else None,
                                    mark.column + 1 if mark else None, "", f"invalid YAML: {msg}", hint))
        return doc
    except RecursionError:
        doc.problems.append(Problem(source, 1, 1, "", f"nesting is too deep (the limit is {MAX_DEPTH} levels)"))
        return doc
    except yaml.YAMLError as exc:
        doc.problems.append(Problem(source, 1, 1, "", f"invalid YAML: {exc}"))
        return doc
    finally:
        loader.dispose()
    if root is None:
        doc.problems.append(Problem(source, 1, 1, "", "file is empty", "a spec needs at least 'chainspec: 1' and 'chains:'"))
        return doc
    walker = _Walker(doc, loader)
    try:
        doc.data = walker.value(root, ())
    except _Abort:
        doc.data = None
    return doc


def _too_big(source: str, size: int) -> Problem:
    return Problem(source, 1, 1, "", f"file is {size / 1e6:.1f} MB; specs are limited to {MAX_BYTES / 1e6:.0f} MB",
                   "split the spec or remove generated content")


class _Abort(Exception):
    """Stops the walk once continuing would only repeat or explode."""


class _Walker:
    def __init__(self, doc: Document, loader: yaml.SafeLoader) -> None:
        self.doc = doc
        self.loader = loader
        self.count = 0
        self.stack: set[int] = set()

    def fail(self, node: yaml.Node, path: Path, message: str, hint: str | None = None) -> None:
        self.doc.problems.append(Problem(self.doc.source, node.start_mark.line + 1, node.start_mark.column + 1,
                                         format_path(path), message, hint))

    def value(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            self.fail(node, path, f"document expands to more than {MAX_VALUES:,} values (alias bomb?)",
                      "avoid deeply nested aliases")
            raise _Abort
        if len(path) > MAX_DEPTH:
            self.fail(node, path, f"nesting is too deep (the limit is {MAX_DEPTH} levels)")
            raise _Abort
        self.doc.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if id(node) in self.stack:
            self.fail(node, path, "anchor refers to itself", "an alias cannot point into its own anchor")
            raise _Abort
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        self.stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _CORE + "seq":
                    self.fail(node, path, f"unsupported tag {node.tag!r}", "specs use plain YAML lists")
                    return None
                return [self.value(item, (*path, i)) for i, item in enumerate(node.value)]
            if node.tag != _CORE + "map":
                self.fail(node, path, f"unsupported tag {node.tag!r}", "specs use plain YAML mappings")
                return None
            return self.mapping(node, path)
        finally:
            self.stack.discard(id(node))

    def scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        if node.tag == _CORE + "timestamp":
            return node.value
        if node.tag not in _SCALAR_TAGS:
            self.fail(node, path, f"unsupported tag {node.tag!r}", "specs never construct Python objects")
            return None
        value = self.loader.construct_object(node)
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(node, path, f"{node.value!r} is not a finite number", "use an ordinary number")
            return None
        return value

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        seen: dict[str, int] = {}
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in self._pairs(node, path, merged):
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                self.fail(key_node, path, "mapping keys must be plain strings")
                continue
            key = str(self.loader.construct_object(key_node))
            if key in seen:
                if seen[key] >= 0:
                    self.fail(key_node, (*path, key),
                              f"duplicate key {key!r} (first defined at line {seen[key] + 1})", "remove one of them")
                continue
            seen[key] = key_node.start_mark.line
            self.doc.positions[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.value(value_node, (*path, key))
        for key_node, value_node in merged:
            key = str(self.loader.construct_object(key_node))
            if key not in seen:
                seen[key] = -1
                out[key] = self.value(value_node, (*path, key))
        return out

    def _pairs(self, node: yaml.MappingNode, path: Path,
               merged: list[tuple[yaml.Node, yaml.Node]]) -> Iterator[tuple[yaml.Node, yaml.Node]]:
        """Yield explicit pairs; collect pairs brought in by ``<<`` merge keys."""
        for key_node, value_node in node.value:
            if key_node.tag == _CORE + "merge":
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for src in sources:
                    if not isinstance(src, yaml.MappingNode):
                        self.fail(value_node, path, "'<<' merges only mappings")
                        continue
                    if id(src) in self.stack:
                        self.fail(value_node, path, "anchor refers to itself")
                        raise _Abort
                    self.count += len(src.value)
                    merged.extend(src.value)
                continue
            yield key_node, value_node
