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
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from ._errors import Problem
from ._expr import MAX_INT

#: Largest spec file accepted. Real specs are a few kilobytes; refusing huge
#: files up front keeps validation fast (well under a second) and memory bounded.
MAX_BYTES = 256 * 1024
#: Most values a document may hold, or expand to once aliases are followed. A
#: billion-laughs document stays tiny on disk but would expand far past this;
#: the full PG-GAN spec holds well under a thousand.
MAX_VALUES = 50_000
#: Deepest nesting accepted. Specs nest a handful of levels; the bound keeps
#: the walk (and the error path) well inside Python's recursion limit.
MAX_DEPTH = 64

_CORE = "tag:yaml.org,2002:"
#: libyaml's parser when PyYAML was built with it (about ten times faster), else the pure-Python one.
#: Either way only the parser is used: composing and constructing are done here, safely.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SCALAR_TAGS = {_CORE + t for t in ("null", "bool", "int", "float", "str")}
#: Floats as YAML 1.2 writes them. PyYAML follows YAML 1.1, where a float needs a
#: dot and a signed exponent, so that ``eps: 1e-5`` would silently be a string.
_FLOAT_12 = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+")

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
    #: Paths of values the walker refused (a bad tag, NaN, a huge integer); they read as None.
    rejected: set[Path] = field(default_factory=set)

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
            doc.problems.append(too_big(source, len(text)))
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
        doc.problems.append(too_big(source, len(text)))
        return doc
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from a file name decoded with surrogateescape
        before = text[:exc.start]
        doc.problems.append(Problem(source, before.count("\n") + 1, exc.start - (before.rfind("\n") + 1) + 1, "",
                                    f"text holds an unpaired surrogate U+{ord(text[exc.start]):04X}, which is "
                                    "not Unicode", "save the file as UTF-8"))
        return doc
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        doc.problems.append(_empty(source))
        return doc
    loader = _Loader(text)
    try:
        root, aliased = _compose(loader)
    except _Limit as exc:
        doc.problems.append(Problem(source, exc.mark.line + 1, exc.mark.column + 1, "", exc.message, exc.hint))
        return doc
    except yaml.MarkedYAMLError as exc:
        doc.problems.append(_syntax_problem(exc, source, text))
        return doc
    except yaml.reader.ReaderError as exc:  # a character YAML forbids; it carries an offset, not a mark
        before = text[:exc.position]
        line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        doc.problems.append(Problem(source, line, col, "", f"character U+{char:04X} is not allowed in YAML "
                                    f"({exc.reason})", "remove it, or write it as an escape in a quoted string"))
        return doc
    except yaml.YAMLError as exc:
        doc.problems.append(Problem(source, 1, 1, "", f"invalid YAML: {exc}"))
        return doc
    finally:
        loader.dispose()
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == _CORE + "null" and not root.value):
        doc.problems.append(_empty(source))  # no document, or only '---'
        return doc
    big = _oversized(root) if aliased else None
    if big is not None:
        doc.problems.append(Problem(source, big.start_mark.line + 1, big.start_mark.column + 1, "",
                                    f"value expands to more than {MAX_VALUES:,} values through aliases (alias bomb?)",
                                    "avoid deeply nested aliases"))
        return doc
    walker = _Walker(doc, loader)
    try:
        doc.data = walker.value(root, ())
    except _Abort:
        doc.data = None
    return doc


def _syntax_problem(exc: yaml.MarkedYAMLError, source: str, text: str) -> Problem:
    """A PyYAML syntax error as a located problem, with a hint for tabs."""
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
    if "nesting depth" in (exc.problem or ""):
        # PyYAML >= 6.0.4 bounds flow nesting in its scanner, which reads ahead of our own bound.
        return Problem(source, line, col, "", f"nesting is too deep (the limit is {MAX_DEPTH} levels)",
                       "flatten the structure")
    msg = exc.problem or str(exc)
    if exc.context:
        msg = f"{exc.context}, {msg}"
    return Problem(source, line, col, "", f"invalid YAML: {msg}", _tab_hint(text, mark.line if mark else None))


def read_head(path: str | os.PathLike[str]) -> tuple[bytes, int | None]:
    """Read at most ``MAX_BYTES + 1`` bytes of a spec file, without ever blocking on opening it.

    Returns the bytes and, when there are more than ``MAX_BYTES`` of them, the file's size (None if
    unknown, as for ``/dev/zero``). A named pipe with no writer would block a plain ``open`` forever (a
    FIFO named ``x.yaml``, or a watched spec replaced by one): it is opened non-blocking, then read as
    usual, so it reads as empty, while a pipe with a writer (``/dev/stdin`` in a shell pipeline) is
    read to its end. Raises ``OSError`` as ``open`` would.

    Example:
        >>> read_head("specs/blog.yaml")[0][:12]  # doctest: +SKIP
        b'chainspec: 1'
    """
    nonblock = getattr(os, "O_NONBLOCK", 0)  # POSIX; Windows has no FIFOs to block on
    fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_BINARY", 0))
    try:
        if nonblock:
            os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        raw = handle.read(MAX_BYTES + 1)
        size = os.fstat(handle.fileno()).st_size if len(raw) > MAX_BYTES else 0
    return raw, (size if size > MAX_BYTES else None)


def _empty(source: str) -> Problem:
    return Problem(source, 1, 1, "", "file is empty", "a spec needs at least 'chainspec: 1' and 'chains:'")


def abbreviate(text: str, limit: int = 40) -> str:
    """``text``, or its start and end with the length between, for quoting a scalar in a message.

    Example:
        >>> abbreviate("9" * 5000)
        '9999999999999999...9999999999999999 (5000 characters)'
    """
    if len(text) <= limit:
        return text
    return f"{text[:16]}...{text[-16:]} ({len(text)} characters)"


def too_big(source: str, size: int | None) -> Problem:
    """The problem reported for a spec over ``MAX_BYTES`` (``size`` in bytes, None when unknown).

    Example:
        >>> too_big("x.yaml", 50_000_000).message
        'file is 50,000,000 bytes; specs are limited to 262,144 bytes'
    """
    actual = f"file is {size:,} bytes" if size is not None else "file is too large"
    return Problem(source, 1, 1, "", f"{actual}; specs are limited to {MAX_BYTES:,} bytes",
                   "split the spec or remove generated content")


def _tab_hint(text: str, line: int | None) -> str | None:
    """Both parsers reject tab indentation, but only one says so; look at the offending line."""
    lines = text.splitlines()
    if line is not None and 0 <= line < len(lines) and "\t" in lines[line]:
        return "indent with spaces, not tabs"
    return None


class _Limit(Exception):
    """The document breaks a size bound while being composed."""

    def __init__(self, mark: Any, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.mark, self.message, self.hint = mark, message, hint


def _compose(loader: Any) -> tuple[yaml.Node | None, bool]:
    """Compose the single document of ``loader``'s event stream into a node graph, iteratively.

    Returns the root (None for an empty stream) and whether any alias was used.

    Same result as PyYAML's ``get_single_node``, but PyYAML composes recursively
    (10,000 nested brackets hit Python's recursion limit, and libyaml's
    composer recurses in C), while this loop stops at ``MAX_DEPTH`` levels and
    ``MAX_VALUES`` nodes, pointing at the offending line.
    """
    loader.get_event()  # stream start
    if loader.check_event(yaml.StreamEndEvent):
        return None, False
    loader.get_event()  # document start
    anchors: dict[str, yaml.Node] = {}
    stack: list[yaml.Node] = []  # open collections, outermost first
    pending: list[yaml.Node | None] = []  # per open mapping: a key still waiting for its value
    root: yaml.Node | None = None
    count = 0
    aliased = False
    while root is None:
        event = loader.get_event()
        node: yaml.Node
        if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            node = stack.pop()
            pending.pop()
            node.end_mark = event.end_mark
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in anchors:
                raise yaml.composer.ComposerError(None, None, f"found undefined alias {event.anchor!r}",
                                                  event.start_mark)
            node = anchors[event.anchor]
            aliased = True
        else:
            count += 1
            if count > MAX_VALUES:
                raise _Limit(event.start_mark, f"document has more than {MAX_VALUES:,} values",
                             "specs are small; remove generated content")
            node = _new_node(loader, event, anchors)
            if not isinstance(node, yaml.ScalarNode):
                if len(stack) >= MAX_DEPTH:
                    raise _Limit(event.start_mark, f"nesting is too deep (the limit is {MAX_DEPTH} levels)",
                                 "flatten the structure")
                stack.append(node)
                pending.append(None)
                continue
        if not stack:
            root = node
        elif isinstance(stack[-1], yaml.SequenceNode):
            stack[-1].value.append(node)
        elif pending[-1] is None:
            pending[-1] = node
        else:
            stack[-1].value.append((pending[-1], node))
            pending[-1] = None
    loader.get_event()  # document end
    if not loader.check_event(yaml.StreamEndEvent):
        event = loader.get_event()
        raise yaml.composer.ComposerError("expected a single document in the stream", root.start_mark,
                                          "but found another document", event.start_mark)
    return root, aliased


def _new_node(loader: Any, event: Any, anchors: dict[str, yaml.Node]) -> yaml.Node:
    """The node a scalar or collection-start event begins, with its tag resolved and its anchor recorded."""
    if event.anchor is not None and event.anchor in anchors:
        raise yaml.composer.ComposerError(f"found duplicate anchor {event.anchor!r}; first occurrence",
                                          anchors[event.anchor].start_mark, "second occurrence", event.start_mark)
    tag = event.tag
    node: yaml.Node
    if isinstance(event, yaml.ScalarEvent):
        if tag is None or tag == "!":
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
            if tag == _CORE + "str" and not event.style and _FLOAT_12.fullmatch(event.value):
                tag = _CORE + "float"  # 1e-5: a string to YAML 1.1, a float to YAML 1.2 and to people
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
    else:
        kind = yaml.SequenceNode if isinstance(event, yaml.SequenceStartEvent) else yaml.MappingNode
        if tag is None or tag == "!":
            tag = loader.resolve(kind, None, event.implicit)
        node = kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
    if event.anchor is not None:
        anchors[event.anchor] = node
    return node


def _oversized(root: yaml.Node) -> yaml.Node | None:
    """The first node that would expand past ``MAX_VALUES`` values once aliases are followed, if any.

    Each distinct node is sized once (aliases share nodes), so a billion-laughs
    document is refused in time linear in its length, before any expansion.
    A node met again while it is being sized is a self-reference; it counts
    once here and the walker reports it.
    """
    size: dict[int, int] = {}
    todo: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while todo:
        node, children_done = todo.pop()
        key = id(node)
        if key in size:
            continue
        if isinstance(node, yaml.ScalarNode):
            size[key] = 1
            continue
        children = [c for pair in node.value for c in (pair if isinstance(pair, tuple) else (pair,))]
        if children_done:
            open_.discard(key)
            total = 1 + sum(size.get(id(c), 1) for c in children)
            if total > MAX_VALUES:
                return node
            size[key] = total
            continue
        if key in open_:
            continue  # a cycle: the walker reports it with its path
        open_.add(key)
        todo.append((node, True))
        todo.extend((c, False) for c in children if id(c) not in size and id(c) not in open_)
    return None


class _Abort(Exception):
    """Stops the walk once continuing would only repeat or explode."""


class _Walker:
    def __init__(self, doc: Document, loader: yaml.SafeLoader) -> None:
        self.doc = doc
        self.loader = loader
        self.count = 0
        self.stack: set[int] = set()

    def fail(self, node: yaml.Node, path: Path, message: str, hint: str | None = None) -> None:
        self.doc.rejected.add(path)
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
        try:
            value = self.loader.construct_object(node)
        except ValueError:  # an integer with more digits than Python converts (sys.get_int_max_str_digits)
            value = MAX_INT + 1
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            # One bound for every integer, the same as for ${...} results: far above any real size,
            # count or schedule length, and it keeps 5,000-digit numbers out of arithmetic and messages.
            self.fail(node, path, f"integer {abbreviate(node.value)} is too large (the limit is 2**63)",
                      "use a smaller number")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(node, path, f"{abbreviate(node.value)!r} is not a finite number", "use an ordinary number")
            return None
        return value

    def key(self, node: yaml.ScalarNode) -> str:
        """A mapping key as text: the constructed scalar (``1``, ``True``), or its source if that fails."""
        try:
            return str(self.loader.construct_object(node))
        except ValueError:  # a key of thousands of digits
            return str(node.value)

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        seen: dict[str, int] = {}
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in self._pairs(node, path, merged):
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                self.fail(key_node, path, "mapping keys must be plain strings")
                continue
            key = self.key(key_node)
            if key in seen:
                if seen[key] >= 0:
                    self.fail(key_node, (*path, key),
                              f"duplicate key {key!r} (first defined at line {seen[key] + 1})", "remove one of them")
                continue
            seen[key] = key_node.start_mark.line
            self.doc.positions[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.value(value_node, (*path, key))
        for key_node, value_node in merged:
            key = self.key(key_node)
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
