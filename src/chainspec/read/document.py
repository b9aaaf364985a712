"""Safe YAML loading that remembers where every value came from.

PyYAML's ``safe_load`` throws positions away, keeps the last of two duplicate
keys without a word, and expands aliases without bound. This module composes
the document with the safe loader, then walks the node graph itself so that it
can record a ``(line, col)`` for every key path, report duplicate keys, refuse
self-referencing anchors, bound alias expansion and nesting depth, and reject
every tag outside YAML's core schema.
"""

from __future__ import annotations

import errno
import math
import os
import re
import select
import stat
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from .._errors import Problem
from .._limits import DEFAULT_LIMITS, Limits, limits_or_default, too_many_problems
from .expr import MAX_INT

#: Largest spec file accepted by default (``Limits.max_bytes``). Real specs are a few kilobytes;
#: refusing huge files up front keeps validation fast (well under a second) and memory bounded.
MAX_BYTES = DEFAULT_LIMITS.max_bytes
#: Most values a document may hold by default, or expand to once aliases are followed
#: (``Limits.max_values``). A billion-laughs document stays tiny on disk but would expand far
#: past this; the full PG-GAN spec holds well under a thousand.
MAX_VALUES = DEFAULT_LIMITS.max_values
#: Deepest nesting accepted by default (``Limits.max_yaml_depth``). Specs nest a handful of
#: levels; the bound keeps the walk (and the error path) well inside Python's recursion limit.
MAX_DEPTH = DEFAULT_LIMITS.max_yaml_depth

_CORE = "tag:yaml.org,2002:"
#: libyaml's parser when PyYAML was built with it (about ten times faster), else the pure-Python one.
#: Either way only the parser is used: composing and constructing are done here, safely.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SCALAR_TAGS = {_CORE + t for t in ("null", "bool", "int", "float", "str")}
#: Floats as YAML 1.2 writes them. PyYAML follows YAML 1.1, where a float needs a
#: dot and a signed exponent, so that ``eps: 1e-5`` would silently be a string.
_FLOAT_12 = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+")
#: Integers as YAML 1.1 writes them (PyYAML's resolver), underscores allowed: binary, octal (a
#: leading 0), decimal, hexadecimal and base 60 (``1:30`` is 90); and YAML 1.2's octal ``0o17``,
#: which PyYAML constructs when tagged. Explicitly tagged ``!!int`` scalars must match too.
_INT = re.compile(r"[-+]?(?:0b[01_]+|0x[0-9a-fA-F_]+|0o[0-7_]+|0[0-7_]+|0|[1-9][0-9_]*(?::[0-5]?[0-9])*)")
#: Floats as YAML 1.1 or 1.2 write them (``1.5``, ``.5``, ``1.``, ``1e-3``, ``1:30.5``), underscores
#: allowed; infinities and NaN are told apart before this is tried.
_FLOAT = re.compile(r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
                    r"|[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*)")
_BOOLS = {"yes": True, "no": False, "true": True, "false": False, "on": True, "off": False}
#: More significant digits than any integer within 2**63 has, in any base: refused without converting.
_MAX_DIGITS = 64

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


def parse_yaml(text: str | bytes, source: str = "<string>", limits: Limits | None = None) -> Document:
    """Parse YAML text safely, recording positions and collecting problems.

    Never raises for bad input: every problem lands in ``Document.problems``.

    Example:
        >>> parse_yaml("a: 1\\na: 2\\n", "d.yaml").problems[0].format()
        "d.yaml:2:1: a: duplicate key 'a' (first defined at line 1); remove one of them"
    """
    limits = limits_or_default(limits)
    doc = Document(source)
    if isinstance(text, bytes):
        if len(text) > limits.max_bytes:
            doc.problems.append(too_big(source, len(text), limits.max_bytes))
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
    if len(text) > limits.max_bytes:
        doc.problems.append(too_big(source, len(text), limits.max_bytes))
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
        root, aliased = _compose(loader, limits)
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
    big = _oversized(root, limits.max_values) if aliased else None
    if big is not None:
        doc.problems.append(Problem(source, big.start_mark.line + 1, big.start_mark.column + 1, "",
                                    f"value expands to more than {limits.max_values:,} values through aliases "
                                    "(alias bomb?)",
                                    "avoid deeply nested aliases"))
        return doc
    walker = _Walker(doc, limits)
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


def read_head(path: str | os.PathLike[str] | int, max_bytes: int = MAX_BYTES,
              timeout: float | None = None) -> tuple[bytes, int | None]:
    """Read at most ``max_bytes + 1`` bytes of a spec, never blocking for longer than ``timeout`` seconds.

    ``path`` names a regular file or a pipe (following symlinks), or is an open file descriptor
    (``0`` for stdin, which is read from its current position and left open). Returns the bytes
    and, when there are more than ``max_bytes`` of them, the file's size (None if unknown, as for a
    pipe). ``timeout`` defaults to :data:`READ_TIMEOUT` (``Limits.read_timeout``).

    Nothing else is read, so no spec can block its reader: a directory, a character device
    (``/dev/zero``, ``/dev/kmsg``, a terminal), a block device or a socket is refused before it is
    opened, and again after (the kind is checked on the open descriptor, so a symlink swapped in
    between changes nothing). A pipe is read without blocking: with no writer (a FIFO named
    ``x.yaml``, or a watched spec replaced by one) it reads as empty at once; with a writer it is
    read to its end, or to ``max_bytes + 1`` bytes, within ``timeout`` seconds in all. Raises
    ``OSError`` as ``open`` would, and for each kind refused; ``TimeoutError`` (a subclass) when a
    writer stays open without finishing in time.

    Example:
        >>> read_head("specs/blog.yaml")[0][:12]  # doctest: +SKIP
        b'chainspec: 1'
        >>> read_head("/dev/zero")  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        OSError: [Errno 22] it is a character device; specs are limited to regular files and pipes: '/dev/zero'
    """
    timeout = READ_TIMEOUT if timeout is None else timeout
    if isinstance(path, int):
        return _read_fd(path, max_bytes, timeout, None)
    name = os.fspath(path)
    _refuse_kind(os.stat(path).st_mode, name)  # before opening: opening a device can have effects
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0))
    try:
        return _read_fd(fd, max_bytes, timeout, name)
    finally:
        os.close(fd)


#: Seconds a spec read from a pipe may take by default (``Limits.read_timeout``).
READ_TIMEOUT = DEFAULT_LIMITS.read_timeout
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # POSIX; Windows has no FIFOs to block on
_KINDS = ((stat.S_ISDIR, "a directory", errno.EISDIR), (stat.S_ISCHR, "a character device", errno.EINVAL),
          (stat.S_ISBLK, "a block device", errno.EINVAL), (stat.S_ISSOCK, "a socket", errno.EINVAL))


def _refuse_kind(mode: int, name: str | None, *, streams: bool = False) -> None:
    """Raise ``OSError`` unless ``mode`` is a regular file or a pipe (or, for ``streams``, a socket)."""
    if stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or (streams and stat.S_ISSOCK(mode)):
        return
    what, code = next(((w, c) for test, w, c in _KINDS if test(mode)), ("not a regular file", errno.EINVAL))
    raise OSError(code, f"it is {what}; specs are limited to regular files and pipes", name)


def _read_fd(fd: int, max_bytes: int, timeout: float, name: str | None) -> tuple[bytes, int | None]:
    """Read ``fd`` as :func:`read_head` describes; ``name`` is its path, None for a descriptor given."""
    st = os.fstat(fd)
    if name is None and stat.S_ISCHR(st.st_mode) and os.isatty(fd):
        raise OSError(errno.EINVAL, "it is a terminal; pipe a spec in, as in 'chainspec validate - < net.yaml'")
    _refuse_kind(st.st_mode, name, streams=name is None)
    if stat.S_ISREG(st.st_mode):
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))  # os.read allocates what it is asked for
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        raw = b"".join(chunks)
        size = os.fstat(fd).st_size if total > max_bytes else None
        return raw, (size if size is not None and size > max_bytes else None)
    return _read_pipe(fd, max_bytes, timeout, name), None


def _read_pipe(fd: int, max_bytes: int, timeout: float, name: str | None) -> bytes:
    """Up to ``max_bytes + 1`` bytes of a pipe, by non-blocking reads, waiting at most ``timeout`` in all."""
    if not hasattr(os, "get_blocking"):  # no non-blocking pipes here (Windows before 3.12): a plain bounded read
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(max_bytes + 1)
    deadline = time.monotonic() + timeout
    blocking = os.get_blocking(fd)
    if blocking:
        os.set_blocking(fd, False)  # a descriptor we did not open (stdin) gets its mode back below
    try:
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            try:
                chunk = os.read(fd, min(1 << 16, max_bytes + 1 - total))
            except BlockingIOError:  # a writer is open but has nothing more yet
                left = deadline - time.monotonic()
                if left <= 0 or not _readable(fd, left):
                    break
                continue
            if not chunk:  # end of file: every writer closed (or none ever came)
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if time.monotonic() > deadline:
                break
        else:
            return b"".join(chunks)  # more than max_bytes: the caller refuses it as too large
    finally:
        if blocking:
            os.set_blocking(fd, True)
    raise TimeoutError(errno.ETIMEDOUT, f"the pipe did not finish within {timeout:g} seconds ({total:,} bytes read); "
                       "its writer is still open (the limit is Limits.read_timeout)", name)


def _readable(fd: int, seconds: float) -> bool:
    """Wait until ``fd`` has data or end of file, at most ``seconds``; whether it does."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(1, math.ceil(seconds * 1000))))
    return bool(select.select([fd], [], [], seconds)[0])


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


def too_big(source: str, size: int | None, max_bytes: int = MAX_BYTES) -> Problem:
    """The problem reported for a spec over ``max_bytes`` (``size`` in bytes, None when unknown).

    Example:
        >>> too_big("x.yaml", 50_000_000).message
        'file is 50,000,000 bytes; specs are limited to 262,144 bytes'
    """
    actual = f"file is {size:,} bytes" if size is not None else "file is too large"
    return Problem(source, 1, 1, "", f"{actual}; specs are limited to {max_bytes:,} bytes",
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


def _compose(loader: Any, limits: Limits) -> tuple[yaml.Node | None, bool]:
    """Compose the single document of ``loader``'s event stream into a node graph, iteratively.

    Returns the root (None for an empty stream) and whether any alias was used.

    Same result as PyYAML's ``get_single_node``, but PyYAML composes recursively
    (10,000 nested brackets hit Python's recursion limit, and libyaml's
    composer recurses in C), while this loop stops at ``limits.max_yaml_depth`` levels and
    ``limits.max_values`` nodes, pointing at the offending line.
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
            if count > limits.max_values:
                raise _Limit(event.start_mark, f"document has more than {limits.max_values:,} values",
                             "specs are small; remove generated content")
            node = _new_node(loader, event, anchors)
            if not isinstance(node, yaml.ScalarNode):
                if len(stack) >= limits.max_yaml_depth:
                    raise _Limit(event.start_mark,
                                 f"nesting is too deep (the limit is {limits.max_yaml_depth} levels)",
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


def _oversized(root: yaml.Node, max_values: int) -> yaml.Node | None:
    """The first node that would expand past ``max_values`` values once aliases are followed, if any.

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
            if total > max_values:
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


class _BadScalar(Exception):
    """A scalar whose text does not fit its tag (``!!bool maybe``, ``!!int ""``)."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


class _TooLarge(_BadScalar):
    """An integer past the bound of 2**63, found without converting all of it."""

    def __init__(self, text: str) -> None:
        super().__init__(f"integer {abbreviate(text)} is too large (the limit is 2**63)", "use a smaller number")


def construct_scalar(tag: str, text: str) -> Any:
    """The value of a core-schema scalar, in time linear in its length.

    Replaces PyYAML's constructors, which raise ``KeyError`` or ``IndexError`` for a
    tagged scalar that does not fit its tag (``!!bool maybe``, ``!!int ""``), take
    time quadratic in the length of a base-60 integer (``1:2:3:...``, 260 kB: seven
    seconds) and convert decimal integers of thousands of digits before anyone
    bounds them. Here every form is checked against its pattern first, and an
    integer with more significant digits than 2**63 has is refused unconverted.
    Raises ``ValueError`` (with the message a spec's problem reports) when ``text``
    does not fit ``tag``; NaN and infinities are returned, for the caller to refuse.

    Example:
        >>> construct_scalar("tag:yaml.org,2002:int", "1:30"), construct_scalar("tag:yaml.org,2002:bool", "on")
        (90, True)
        >>> construct_scalar("tag:yaml.org,2002:bool", "maybe")
        Traceback (most recent call last):
        ...
        ValueError: 'maybe' is not a boolean
    """
    try:
        return _construct(tag, text)
    except _BadScalar as exc:
        raise ValueError(exc.message) from None


def _construct(tag: str, text: str) -> Any:
    kind = tag.removeprefix(_CORE)
    if kind == "str":
        return text
    if kind == "null":
        if text in ("", "~") or text.lower() == "null":
            return None
        raise _BadScalar(f"{abbreviate(text)!r} is not null", "write null or ~, or leave the value out")
    if kind == "bool":
        value = _BOOLS.get(text.lower())
        if value is None:
            raise _BadScalar(f"{abbreviate(text)!r} is not a boolean", "write true or false")
        return value
    if kind == "int":
        return _int(text)
    if kind == "float":
        return _float(text)
    raise _BadScalar(f"unsupported tag {tag!r}", "specs never construct Python objects")


def _int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise _BadScalar(f"{abbreviate(text)!r} is not an integer", "write digits, such as 42, 0x2a or 1_000")
    digits = text.replace("_", "")
    sign = -1 if digits[0] == "-" else 1
    digits = digits.lstrip("+-")
    if ":" in digits:  # base 60, "1:30" is 90: one part at a time, stopping once past the bound
        value = 0
        for part in digits.split(":"):
            if len(part.lstrip("0")) > _MAX_DIGITS:
                raise _TooLarge(text)
            value = value * 60 + int(part)
            if value > MAX_INT:
                raise _TooLarge(text)
        return sign * value
    if digits[:2] in ("0b", "0o", "0x"):
        base, body = {"b": 2, "o": 8, "x": 16}[digits[1]], digits[2:]
    elif len(digits) > 1 and digits[0] == "0":
        base, body = 8, digits[1:]
    else:
        base, body = 10, digits
    if not body:  # "0b_", "0x"
        raise _BadScalar(f"{abbreviate(text)!r} is not an integer", "write digits, such as 42, 0x2a or 1_000")
    if len(body.lstrip("0")) > _MAX_DIGITS:
        raise _TooLarge(text)
    value = sign * int(body, base)
    if abs(value) > MAX_INT:
        raise _TooLarge(text)
    return value


def _float(text: str) -> float:
    lowered = text.replace("_", "").lower()
    sign = -1.0 if lowered[:1] == "-" else 1.0
    core = lowered[1:] if lowered[:1] in ("+", "-") else lowered
    if core in (".inf", "inf", "infinity"):
        return sign * math.inf
    if core in (".nan", "nan"):
        return math.nan
    bad = _BadScalar(f"{abbreviate(text)!r} is not a number", "write a number such as 0.5, 1e-3 or 10")
    if not _FLOAT.fullmatch(text):
        raise bad
    if ":" in core:  # base 60, "1:30.5" is 90.5; overflows to inf, which the caller refuses
        value = 0.0
        for part in core.split(":"):
            value = value * 60 + float(part)
        return sign * value
    try:
        return sign * float(core)
    except ValueError:  # ".", "._"
        raise bad from None


class _Walker:
    def __init__(self, doc: Document, limits: Limits) -> None:
        self.doc = doc
        self.limits = limits
        self.count = 0
        self.stack: set[int] = set()

    def fail(self, node: yaml.Node, path: Path, message: str, hint: str | None = None) -> None:
        self.doc.rejected.add(path)
        self.doc.problems.append(Problem(self.doc.source, node.start_mark.line + 1, node.start_mark.column + 1,
                                         format_path(path), message, hint))
        if len(self.doc.problems) >= self.limits.max_problems:
            self.doc.problems.append(too_many_problems(self.limits, self.doc.problems[-1]))
            raise _Abort

    def value(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > self.limits.max_values:
            self.fail(node, path, f"document expands to more than {self.limits.max_values:,} values (alias bomb?)",
                      "avoid deeply nested aliases")
            raise _Abort
        if len(path) > self.limits.max_yaml_depth:
            self.fail(node, path, f"nesting is too deep (the limit is {self.limits.max_yaml_depth} levels)")
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
            # One bound for every integer, the same as for ${...} results: far above any real size,
            # count or schedule length, and it keeps 5,000-digit numbers out of arithmetic and messages.
            value = _construct(node.tag, node.value)
        except _BadScalar as exc:
            self.fail(node, path, exc.message, exc.hint)
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(node, path, f"{abbreviate(node.value)!r} is not a finite number", "use an ordinary number")
            return None
        return value

    def key(self, node: yaml.Node, path: Path) -> str | None:
        """A mapping key as text: the constructed scalar (``1``, ``True``), or None after reporting why not."""
        if not isinstance(node, yaml.ScalarNode) or node.tag not in _SCALAR_TAGS:
            self.fail(node, path, "mapping keys must be plain strings")
            return None
        try:
            return str(_construct(node.tag, node.value))
        except _TooLarge:  # a key of thousands of digits: its text
            return str(node.value)
        except _BadScalar as exc:  # ? !!bool maybe
            self.fail(node, (*path, str(node.value)), exc.message, exc.hint)
            return None

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        seen: dict[str, int] = {}
        explicit, merged = self._split(node, path)
        for key_node, value_node in explicit:
            key = self.key(key_node, path)
            if key is None:
                continue
            if key in seen:
                self.fail(key_node, (*path, key),
                          f"duplicate key {key!r} (first defined at line {seen[key] + 1})", "remove one of them")
                continue
            seen[key] = key_node.start_mark.line
            self.doc.positions[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.value(value_node, (*path, key))
        # Merged keys come after, and never override: the mapping's own keys first, then each source
        # in the order written, a source's own keys before those it merges in turn.
        for key_node, value_node in merged:
            key = self.key(key_node, path)
            if key is not None and key not in seen:
                seen[key] = -1
                out[key] = self.value(value_node, (*path, key))
        return out

    def _split(self, node: yaml.MappingNode,
               path: Path) -> tuple[list[tuple[yaml.Node, yaml.Node]], list[tuple[yaml.Node, yaml.Node]]]:
        """The mapping's own pairs, and the pairs its ``<<`` merge keys bring in, nested merges flattened.

        Each distinct source is flattened once (a later occurrence adds nothing), iteratively: merges
        nested through a thousand anchors cost a thousand steps and no recursion.
        """
        explicit: list[tuple[yaml.Node, yaml.Node]] = []
        sources: list[yaml.MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag == _CORE + "merge":
                sources += self._sources(value_node, path)
            else:
                explicit.append((key_node, value_node))
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        done = {id(node)}
        todo = sources[::-1]
        while todo:
            src = todo.pop()
            if id(src) in done:
                continue
            done.add(id(src))
            self.count += len(src.value)
            nested: list[yaml.MappingNode] = []
            for key_node, value_node in src.value:
                if key_node.tag == _CORE + "merge":
                    nested += self._sources(value_node, path)
                else:
                    merged.append((key_node, value_node))
            todo += nested[::-1]
        return explicit, merged

    def _sources(self, value: yaml.Node, path: Path) -> list[yaml.MappingNode]:
        """The mappings a ``<<`` key's value names: plain mappings only, tags refused as anywhere else."""
        if isinstance(value, yaml.SequenceNode):
            if value.tag != _CORE + "seq":
                self.fail(value, path, f"unsupported tag {value.tag!r}", "specs use plain YAML lists")
                return []
            items = value.value
        else:
            items = [value]
        out: list[yaml.MappingNode] = []
        for src in items:
            if not isinstance(src, yaml.MappingNode):
                self.fail(src if src is not value else value, path, "'<<' merges only mappings")
            elif src.tag != _CORE + "map":
                self.fail(src, path, f"unsupported tag {src.tag!r}", "specs use plain YAML mappings")
            elif id(src) in self.stack:
                self.fail(value, path, "anchor refers to itself")
                raise _Abort
            else:
                out.append(src)
        return out
