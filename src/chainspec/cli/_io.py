"""What the command line reads and prints: specs from files or stdin, and text a terminal cannot obey.

Reading: a spec named ``-`` is read from stdin, with the same bounds as a
file (``Limits.max_bytes``, and ``Limits.read_timeout`` for a pipe whose
writer stays open), and reported as ``<stdin>``.

Printing: while a command runs, ``sys.stdout`` and ``sys.stderr`` escape every
non-printable character but the newline (escape sequences, C1 controls, DEL,
bidi overrides), whoever writes to them, so no spec text, file name or library
message can clear the screen or forge output. JSON goes out with the same
characters as ``\\uXXXX`` escapes, so it stays valid JSON.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from .._errors import Problem, SpecError, printable
from .._limits import DEFAULT_LIMITS

if TYPE_CHECKING:
    from ..read.spec import Spec

#: The name that stands for stdin on the command line, and the source its problems are reported under.
STDIN = "-"
STDIN_SOURCE = "<stdin>"
#: The bounds every command reads specs under.
LIMITS = DEFAULT_LIMITS


def load_spec(name: str, allow_imports: Iterable[str] = ()) -> Spec:
    """Load the spec ``name`` names on the command line: a file, or stdin for ``-``.

    Raises:
        SpecError: as :func:`chainspec.load`; stdin's problems are located in ``<stdin>``.

    Example:
        >>> load_spec("no/such.yaml")
        Traceback (most recent call last):
        ...
        chainspec._errors.SpecError: no/such.yaml: cannot read spec: No such file or directory
    """
    from ..read.document import read_head, too_big
    from ..read.spec import load, loads

    if name != STDIN:
        return load(name, allow_imports=allow_imports, limits=LIMITS)
    try:
        if sys.stdin is None:
            raise OSError("there is no stdin")
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):  # no stdin, or one that is not a file (replaced, closed)
        raise SpecError([Problem(STDIN_SOURCE, None, None, "", "cannot read spec: stdin is not open")]) from None
    try:
        raw, size = read_head(fd, LIMITS.max_bytes, LIMITS.read_timeout)
    except OSError as exc:
        raise SpecError([Problem(STDIN_SOURCE, None, None, "", f"cannot read spec: {exc.strerror or exc}")]) from None
    if len(raw) > LIMITS.max_bytes:
        raise SpecError([too_big(STDIN_SOURCE, size, LIMITS.max_bytes)])
    return loads(raw, source=STDIN_SOURCE, allow_imports=allow_imports, limits=LIMITS)


def source_name(name: str) -> str:
    """The name a spec's problems are reported under: ``<stdin>`` for ``-``, else the name itself.

    Example:
        >>> source_name("-"), source_name("net.yaml")
        ('<stdin>', 'net.yaml')
    """
    return STDIN_SOURCE if name == STDIN else name


def escape(text: str) -> str:
    """``text`` with every non-printable character escaped but the newlines that separate its lines.

    Example:
        >>> print(escape("b1  \\x1b[2J\\u202eok\\nPlan: 1 to update."))
        b1  \\x1b[2J\\u202eok
        Plan: 1 to update.
    """
    if text.isprintable():
        return text
    return "\n".join(printable(line) for line in text.split("\n"))


def json_text(data: Any, *, ensure_ascii: bool = True, default: Any = None) -> str:
    """``data`` as indented JSON in which every non-printable character is a ``\\uXXXX`` escape.

    ``json`` escapes C0 controls itself, but with ``ensure_ascii=False`` it writes DEL, C1
    controls and bidi overrides raw; here they are escaped too, and the text stays valid JSON.

    Example:
        >>> print(json_text({"name": "caf\\u00e9\\u202e\\x7f"}, ensure_ascii=False))
        {
          "name": "café\\u202e\\u007f"
        }
    """
    text = json.dumps(data, indent=2, ensure_ascii=ensure_ascii, default=default)
    return "\n".join(line if line.isprintable() else "".join(map(_json_char, line)) for line in text.split("\n"))


def _json_char(char: str) -> str:
    if char.isprintable():
        return char
    if ord(char) < 0x10000:
        return f"\\u{ord(char):04x}"
    return json.dumps(char, ensure_ascii=True)[1:-1]  # a surrogate pair


class EscapingStream:
    """A text stream that writes everything through :func:`escape`; anything else goes to the stream it wraps.

    A character the wrapped stream cannot encode (a non-UTF-8 terminal) is written as a
    backslash escape instead of raising.

    Example:
        >>> import io
        >>> buffer = io.StringIO()
        >>> EscapingStream(buffer).write("\\x1b]0;owned\\x07done\\n")
        15
        >>> buffer.getvalue()
        '\\\\x1b]0;owned\\\\x07done\\n'
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        """Write ``text``, escaped; return its length as given."""
        safe = escape(text)
        try:
            self.stream.write(safe)
        except UnicodeEncodeError:
            encoding = getattr(self.stream, "encoding", None) or "ascii"
            self.stream.write(safe.encode(encoding, "backslashreplace").decode(encoding, "replace"))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        """Write each of ``lines``, escaped."""
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def escaped_output() -> Iterator[None]:
    """Within the block, ``sys.stdout`` and ``sys.stderr`` escape what a terminal would obey.

    Example:
        >>> with escaped_output():
        ...     print("\\x1b[2Jstill here")
        \\x1b[2Jstill here
    """
    saved = sys.stdout, sys.stderr
    try:
        for attr in ("stdout", "stderr"):
            stream = getattr(sys, attr)
            if stream is not None and not isinstance(stream, EscapingStream):
                setattr(sys, attr, EscapingStream(stream))
        yield
    finally:
        sys.stdout, sys.stderr = saved

