"""What the command line reads and prints: specs from files or stdin, and text a terminal cannot obey.

Reading: a spec named ``-`` is read from stdin, with the same bounds as a
file (``Limits.max_bytes``, and ``Limits.read_timeout`` for a pipe whose
writer stays open), and reported as ``<stdin>``.

Importing: every command takes ``--import MODULE`` (imported first, with the
current directory importable) and ``--no-project``; without the latter, the
``[tool.chainspec]`` table of each spec's project (see
:mod:`chainspec.read.project`; for stdin, ``types`` and ``schema``, the
current directory's) is used as :func:`chainspec.load` uses it, each project
read and imported once per command.

Printing: while a command runs, ``sys.stdout`` and ``sys.stderr`` escape every
non-printable character but the newline (escape sequences, C1 controls, DEL,
bidi overrides), whoever writes to them, so no spec text, file name or library
message can clear the screen or forge output. JSON goes out with the same
characters as ``\\uXXXX`` escapes, so it stays valid JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from .._errors import Problem, SpecError, printable
from .._limits import DEFAULT_LIMITS
from ..read.project import TABLE, Project, find_project, import_modules, importable

if TYPE_CHECKING:
    from ..read.spec import Spec

#: The name that stands for stdin on the command line, and the source its problems are reported under.
STDIN = "-"
STDIN_SOURCE = "<stdin>"
#: The bounds every command reads specs under.
LIMITS = DEFAULT_LIMITS


def add_import_options(parser: argparse.ArgumentParser, *, allow_import: bool = True) -> None:
    """Add the options that say which code a command imports: ``--import``, ``--allow-import``, ``--no-project``.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_import_options(parser)
        >>> args = parser.parse_args(["--import", "mypkg.layers", "--allow-import", "mypkg"])
        >>> args.imports, args.allow_import, args.no_project
        (['mypkg.layers'], ['mypkg'], False)
    """
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first, from the current directory or the installed packages: the "
                             "module that registers your node types (repeatable)")
    if allow_import:
        parser.add_argument("--allow-import", action="append", default=[], metavar="MODULE",
                            help="allow node types named by import path under MODULE (repeatable)")
    parser.add_argument("--no-project", action="store_true",
                        help=f"ignore [{TABLE}] in the pyproject.toml of the spec's project (or of the current "
                             "directory)")


def begin() -> None:
    """Forget the projects an earlier command found (``main`` calls it first): each command looks again.

    Example:
        >>> begin()
    """
    _PROJECTS.clear()


def import_flagged(args: argparse.Namespace) -> None:
    """Import the modules ``--import`` names, with the current directory importable (as ``python -m`` has it).

    Raises:
        SpecError: a module that does not import, reported as ``--import MODULE: cannot import ...``.

    Example:
        >>> import_flagged(argparse.Namespace(imports=["json"]))
    """
    if args.imports:
        import_modules(args.imports, paths=[os.getcwd()])


def use_project_here(args: argparse.Namespace) -> None:
    """Import what the current directory's project declares (``types``, ``schema --installed``), unless
    ``--no-project``.

    Example:
        >>> use_project_here(argparse.Namespace(no_project=True))
    """
    if not getattr(args, "no_project", False):
        _project(os.getcwd())


def load_spec(name: str, allow_imports: Iterable[str] = (), *, project: bool = True) -> Spec:
    """Load the spec ``name`` names on the command line: a file, or stdin for ``-``.

    Unless ``project`` is False, the spec's project (the ``[tool.chainspec]`` table of the nearest
    ``pyproject.toml`` above the file; for stdin, above the current directory) is used as
    :func:`chainspec.load` uses it; each project is read and its modules imported once per command.
    ``allow_imports`` (``--allow-import``) resolve with the current directory importable.

    Raises:
        SpecError: as :func:`chainspec.load`; stdin's problems are located in ``<stdin>``.

    Example:
        >>> load_spec("no/such.yaml")
        Traceback (most recent call last):
        ...
        chainspec._errors.SpecError: no/such.yaml: cannot read spec: No such file or directory
    """
    from ..read.spec import loads

    allow_imports = tuple(allow_imports)
    try:
        raw = _read(name)  # an unreadable file is reported before its project is looked at
        found = _project(os.getcwd() if name == STDIN else name) if project else None
        paths = (*(found.paths if found else ()), *((os.getcwd(),) if allow_imports else ()))
        allowed = (*allow_imports, *(found.allow_imports if found else ()))
        with importable(paths):
            return loads(raw, source=source_name(name), allow_imports=allowed, limits=LIMITS)
    except SpecError as exc:
        raise SpecError([_cli_hint(p) for p in exc.problems]) from None


def _read(name: str) -> bytes:
    """The bytes of the spec ``name`` names, read as :func:`chainspec.load` reads a file (stdin for ``-``)."""
    from ..read.document import read_head, too_big

    source = source_name(name)
    try:
        if name == STDIN:
            if sys.stdin is None:
                raise OSError("stdin is not open")
            try:
                target: Any = sys.stdin.fileno()
            except (AttributeError, ValueError, OSError):  # not a file (replaced, closed)
                raise OSError("stdin is not open") from None
        else:
            target = name
        raw, size = read_head(target, LIMITS.max_bytes, LIMITS.read_timeout)
    except OSError as exc:
        raise SpecError([Problem(source, None, None, "", f"cannot read spec: {exc.strerror or exc}")]) from None
    if len(raw) > LIMITS.max_bytes:
        raise SpecError([too_big(source, size, LIMITS.max_bytes)])
    return raw


#: The projects this command found, by the directory looked from: a project is read and its modules imported
#: once per command however many specs it has (a module that fails to import is not run again for each).
_PROJECTS: dict[str, Project | SpecError | None] = {}


def _project(start: str) -> Project | None:
    """The project of ``start`` (a spec file or a directory), its modules imported; cached per directory."""
    here = os.path.abspath(start)
    key = here if os.path.isdir(here) else os.path.dirname(here)
    if key not in _PROJECTS:
        try:
            found = find_project(key)
            if found is not None:
                found.import_modules()
            _PROJECTS[key] = found
        except SpecError as exc:
            _PROJECTS[key] = exc
    result = _PROJECTS[key]
    if isinstance(result, SpecError):
        raise SpecError(result.problems)
    return result


#: The hint the library gives for an import path outside the allow-list, and the module it names.
_LIBRARY_HINT = "the calling code must pass allow_imports=[...] naming its module"
_NOT_ALLOWED = re.compile(r"import path '([^':]*):[^']*' is not allowed")


def _cli_hint(problem: Problem) -> Problem:
    """The problem, with the command line's way to allow an import path in place of the library's.

    Example:
        >>> library = Problem("x.yaml", 6, 20, "chains.net.nodes[0].type", "import path 'mypkg.layers:Block' "
        ...                   "is not allowed", hint=_LIBRARY_HINT)
        >>> print(_cli_hint(library).hint)
        pass --allow-import mypkg.layers, or list it in allow-imports under [tool.chainspec] in your pyproject.toml
    """
    found = _NOT_ALLOWED.search(problem.message)
    if problem.hint != _LIBRARY_HINT or found is None:
        return problem
    module = found.group(1) or "MODULE"
    return dataclasses.replace(problem, hint=f"pass --allow-import {module}, or list it in allow-imports under "
                                             f"[{TABLE}] in your pyproject.toml")


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

