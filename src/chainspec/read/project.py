"""The project a spec belongs to: the ``[tool.chainspec]`` table of the nearest ``pyproject.toml``.

A project declares once what every way of reading its specs (``chainspec.load``, the command line,
the pre-commit hook) should import, so that the node types it registers in Python are known
without flags::

    [tool.chainspec]
    imports = ["myproject.layers"]       # modules imported before a spec is read (they call register_type)
    allow-imports = ["myproject"]        # module prefixes whose module:attr import paths specs may name
    pythonpath = ["src"]                 # more directories to import from, relative to the project root

The project of a spec file is found by walking up from the file's directory to the nearest
``pyproject.toml``, never past the root of the git repository holding the file (a directory
holding ``.git``). The nearest ``pyproject.toml`` is the project, with or without the table. The
directory holding it, the project root, and the ``pythonpath`` directories are on ``sys.path``
while the modules are imported and while the spec's import paths are resolved, and are taken off
again afterwards.

Security: a spec names no project. Which ``pyproject.toml`` applies is decided by where the spec
file is, and the file is trusted like the program that calls chainspec (it is the project's own
configuration, as ``conftest.py`` is pytest's). One whose file or directory is writable by every
user (``/tmp``) is refused: anyone could have put it there. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import stat
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .._errors import Problem, SpecError, printable
from ..types.registry import close_match

#: The file a project is described in.
PYPROJECT = "pyproject.toml"
#: Where in it: ``[tool.chainspec]``.
TABLE = "tool.chainspec"
#: The keys the table may hold.
KEYS = ("imports", "allow-imports", "pythonpath")
#: The largest ``pyproject.toml`` read (a real one is a few kB).
MAX_PYPROJECT_BYTES = 1 << 20


@dataclass(frozen=True)
class Project:
    """A project's ``[tool.chainspec]`` table: the modules to import and the import paths to allow.

    Find one with :func:`find_project` (the project of a spec file) or :func:`read_project`.

    Example:
        >>> project = Project("/work/proj/pyproject.toml", imports=("proj.layers",), allow_imports=("proj",))
        >>> project.root, project.paths
        ('/work/proj', ('/work/proj',))
    """

    #: The ``pyproject.toml`` the table was read from (an absolute path).
    pyproject: str
    #: Modules imported before a spec of the project is read.
    imports: tuple[str, ...] = ()
    #: Module prefixes whose ``module:attr`` import paths the project's specs may name.
    allow_imports: tuple[str, ...] = ()
    #: Directories to import from besides the project root (absolute paths).
    pythonpath: tuple[str, ...] = ()
    #: The file's text, to locate problems in it.
    text: str = field(default="", repr=False, compare=False)

    @property
    def root(self) -> str:
        """The directory holding the ``pyproject.toml``."""
        return os.path.dirname(self.pyproject)

    @property
    def paths(self) -> tuple[str, ...]:
        """What goes on ``sys.path`` while the project's modules are imported: the root, then ``pythonpath``."""
        return tuple(dict.fromkeys((self.root, *self.pythonpath)))

    def on_path(self) -> contextlib.AbstractContextManager[None]:
        """Within the block, the project's :attr:`paths` are importable (see :func:`importable`).

        Example:
            >>> with Project("/work/proj/pyproject.toml").on_path():
            ...     "/work/proj" in sys.path
            True
        """
        return importable(self.paths)

    def import_modules(self) -> None:
        """Import the modules of ``imports``, each once per process (the ones already imported are not run again).

        Raises:
            SpecError: one problem per module that cannot be imported, located in the ``pyproject.toml``
                (a missing module, or anything the module raised), never a traceback.

        Example:
            >>> Project("/work/proj/pyproject.toml", imports=("no_such_module_here",)).import_modules()
            Traceback (most recent call last):
            ...
            chainspec._errors.SpecError: /work/proj/pyproject.toml: tool.chainspec.imports[0]: cannot import ...
        """
        problems = []
        for index, name in enumerate(self.imports):
            failure = _import(name, self.paths)
            if failure is not None:
                message, hint = failure
                problems.append(self.problem("imports", message, hint, index))
        if problems:
            raise SpecError(problems)

    def problem(self, key: str | None, message: str, hint: str | None = None, index: int | None = None) -> Problem:
        """A :class:`Problem` located at ``key`` (its ``index``-th entry) of the table, as well as the text allows.

        Example:
            >>> text = '[project]\\nname = "x"\\n\\n[tool.chainspec]\\nimports = ["a", "b"]\\n'
            >>> Project("p/pyproject.toml", text=text).problem("imports", "cannot import 'b'", index=1).format()
            "p/pyproject.toml:5:17: tool.chainspec.imports[1]: cannot import 'b'"
        """
        line, col = _locate(self.text, key, index)
        path = TABLE if key is None else f"{TABLE}.{key}" + ("" if index is None else f"[{index}]")
        return Problem(shown(self.pyproject), line, col, path, message, hint)


def shown(path: str) -> str:
    """``path`` as a message shows it: relative to the current directory when it is below it, else as it is.

    Example:
        >>> shown(os.path.join(os.getcwd(), "pyproject.toml")), shown("/elsewhere/pyproject.toml")
        ('pyproject.toml', '/elsewhere/pyproject.toml')
    """
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if relative == os.pardir or relative.startswith(os.pardir + os.sep) else relative


def find_pyproject(start: str | os.PathLike[str]) -> str | None:
    """The nearest ``pyproject.toml`` at or above ``start`` (a spec file or a directory), as an absolute path.

    The walk stops at the root of the git repository holding ``start`` (a directory holding
    ``.git``) and at the root of the file system; None when it finds none.

    Example:
        >>> os.makedirs("proj/specs", exist_ok=True)
        >>> _ = open("proj/pyproject.toml", "w").write("[project]\\nname = 'proj'\\n")
        >>> find_pyproject("proj/specs/net.yaml") == os.path.abspath("proj/pyproject.toml")
        True
    """
    here = os.path.abspath(os.fspath(start))
    if not os.path.isdir(here):
        here = os.path.dirname(here)
    while True:
        candidate = os.path.join(here, PYPROJECT)
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(here)
        if parent == here or os.path.exists(os.path.join(here, ".git")):
            return None
        here = parent


def find_project(start: str | os.PathLike[str]) -> Project | None:
    """The project of a spec file (or of a directory): the ``[tool.chainspec]`` table of the nearest ``pyproject.toml``.

    None when there is no ``pyproject.toml`` (see :func:`find_pyproject`) or the nearest one has no
    such table.

    Raises:
        SpecError: the file cannot be read, is not TOML, or its table is malformed or not to be trusted
            (see :func:`read_project`).

    Example:
        >>> os.makedirs("proj/specs", exist_ok=True)
        >>> _ = open("proj/pyproject.toml", "w").write('[tool.chainspec]\\nallow-imports = ["proj"]\\n')
        >>> find_project("proj/specs/net.yaml").allow_imports
        ('proj',)
    """
    pyproject = find_pyproject(start)
    return None if pyproject is None else read_project(pyproject)


def read_project(pyproject: str | os.PathLike[str]) -> Project | None:
    """Read the ``[tool.chainspec]`` table of ``pyproject``; None if it has none.

    On Python 3.10 the table is read with ``tomli`` (Python 3.11 has ``tomllib``); without it, a
    file that seems to hold the table is an error saying to install it.

    Raises:
        SpecError: located in the file: it cannot be read, it is not TOML, the table has an unknown key
            or a value that is not a list of module names (or of directories, for ``pythonpath``), or
            the file or its directory is writable by every user.

    Example:
        >>> _ = open("pyproject.toml", "w").write('[tool.chainspec]\\nimports = "proj.layers"\\n')
        >>> read_project("pyproject.toml")
        Traceback (most recent call last):
        ...
        chainspec._errors.SpecError: ...pyproject.toml:2:1: tool.chainspec.imports: must be a list of ...
    """
    path = os.path.abspath(os.fspath(pyproject))
    blank = Project(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_PYPROJECT_BYTES + 1)
    except OSError as exc:
        raise SpecError([blank.problem(None, f"cannot read {PYPROJECT}: {exc.strerror or exc}")]) from None
    if len(raw) > MAX_PYPROJECT_BYTES:
        raise SpecError([Problem(shown(path), None, None, "", f"larger than {MAX_PYPROJECT_BYTES:,} bytes; "
                                                       "is it a pyproject.toml?")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(shown(path), None, None, "", f"not UTF-8 text: {exc.reason}")]) from None
    project = Project(path, text=text)
    parse = _toml_parser()
    if parse is None:
        if not _mentions_table(text):
            return None
        raise SpecError([project.problem(None, "reading [tool.chainspec] needs Python 3.11 or the tomli package",
                                         "pip install tomli")])
    try:
        data = parse(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError
        message, line, col = _toml_error(exc)
        raise SpecError([Problem(shown(path), line, col, "", f"not valid TOML: {message}")]) from None
    tool = data.get("tool")
    table = tool.get("chainspec") if isinstance(tool, dict) else None
    if table is None:
        return None
    if not isinstance(table, dict):
        raise SpecError([project.problem(None, f"must be a table, got {_kind(table)}",
                                         'write it as [tool.chainspec] with imports = ["mypkg.layers"]')])
    values, problems = _read_table(project, table)
    unsafe = _writable_by_all(path)
    if unsafe is not None:
        problems.append(project.problem(None, f"not used: {unsafe} is writable by every user, so anyone could have "
                                              "written the modules it imports", "chmod o-w it, or move the project"))
    if problems:
        raise SpecError(problems)
    root = project.root
    return Project(path, imports=values["imports"], allow_imports=values["allow-imports"],
                   pythonpath=tuple(os.path.normpath(os.path.join(root, p)) for p in values["pythonpath"]), text=text)


def _read_table(project: Project, table: dict[str, Any]) -> tuple[dict[str, tuple[str, ...]], list[Problem]]:
    problems: list[Problem] = []
    for key in table:
        if key not in KEYS:
            close = close_match(str(key), KEYS, cutoff=0.5)
            hint = f"did you mean {close!r}?" if close else f"allowed keys: {', '.join(KEYS)}"
            problems.append(project.problem(str(key), f"unknown key {key!r}", hint))
    values: dict[str, tuple[str, ...]] = {}
    for key in KEYS:
        value = table.get(key, [])
        example = '["src"]' if key == "pythonpath" else '["mypkg.layers"]' if key == "imports" else '["mypkg"]'
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(project.problem(key, f"must be a list of strings, got {_kind(value)}",
                                            f"write {key} = {example}"))
            values[key] = ()
            continue
        for index, entry in enumerate(value):
            if key != "pythonpath" and not is_module_name(entry):
                problems.append(project.problem(key, f"{entry!r} is not a module name", f"write {key} = {example}",
                                                index))
            elif key == "pythonpath" and not entry.strip():
                problems.append(project.problem(key, "an empty directory name", "write '.' for the project root",
                                                index))
        values[key] = tuple(value)
    return values, problems


def is_module_name(name: str) -> bool:
    """Tell whether ``name`` is a dotted module name (``mypkg.layers``), as ``imports`` and ``allow-imports`` take.

    Example:
        >>> is_module_name("mypkg.layers"), is_module_name("mypkg:Block"), is_module_name("my-pkg")
        (True, False, False)
    """
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def import_modules(names: Iterable[str], *, paths: Iterable[str] = (), flag: str = "--import") -> None:
    """Import each of ``names`` with ``paths`` importable; what the command line's ``--import MODULE`` does.

    Raises:
        SpecError: one problem per module that cannot be imported, reported under ``flag`` and the
            name (``--import mypkg.layers: cannot import ...``), never a traceback.

    Example:
        >>> import_modules(["json"])
        >>> import_modules(["no_such_module_here"])
        Traceback (most recent call last):
        ...
        chainspec._errors.SpecError: --import no_such_module_here: cannot import 'no_such_module_here': ...
    """
    paths = tuple(paths)
    problems = []
    for name in names:
        failure = _import(name, paths) if is_module_name(name) else (
            f"{name!r} is not a module name", "name a module: --import mypkg.layers")
        if failure is not None:
            problems.append(Problem(f"{flag} {name}", None, None, "", *failure))
    if problems:
        raise SpecError(problems)


@contextlib.contextmanager
def importable(paths: Iterable[str]) -> Iterator[None]:
    """Within the block, each of ``paths`` is on ``sys.path`` (first, in order); those it added are taken off after.

    ``sys.path`` is one per process: a thread importing meanwhile sees the same entries.

    Example:
        >>> with importable(["/work/proj"]):
        ...     sys.path[0]
        '/work/proj'
    """
    added = [p for p in dict.fromkeys(os.path.abspath(p) for p in paths) if p not in sys.path]
    if added:
        sys.path[:0] = added
        importlib.invalidate_caches()  # a directory that was looked in before may hold new modules by now
    try:
        yield
    finally:
        for entry in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def _import(name: str, paths: tuple[str, ...]) -> tuple[str, str | None] | None:
    """Import ``name``; None if it imports, else ``(message, hint)`` saying why not."""
    if name in sys.modules and sys.modules[name] is not None:
        return None
    with importable(paths):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing and (name == missing or name.startswith(missing + ".")):
                where = f"is it in {' or '.join(paths)}, or installed?" if paths else "is it installed?"
                return f"cannot import {name!r}: no module named {missing!r}", where
            hint = ("the pre-commit hook's environment has no torch: import torch inside the factories, or add "
                    "torch to the hook's additional_dependencies") if missing.split(".")[0] == "torch" else None
            return f"cannot import {name!r}: {_describe(exc, paths)}", hint
        except (Exception, SystemExit) as exc:  # anything the module's own code raises, even sys.exit()
            return f"cannot import {name!r}: {_describe(exc, paths)}", None
    return None


def _describe(exc: BaseException, paths: tuple[str, ...] = ()) -> str:
    """``ZeroDivisionError: division by zero (at layers.py:3)``: the error and the line that raised it, the innermost
    in a file under ``paths`` (the project's own code) if there is one, else the innermost outside chainspec."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    inside = [f for f in frames if any(f.filename.startswith(os.path.join(p, "")) for p in paths)]
    outside = [f for f in frames if not f.filename.startswith(_PACKAGE)]
    frame = (inside or outside or frames or [None])[-1]
    where = f" (at {frame.filename}:{frame.lineno})" if frame is not None else ""
    return printable(f"{type(exc).__name__}: {first}{where}" if first else f"{type(exc).__name__}{where}")


#: chainspec's own source directory: its frames are not where a project's module went wrong.
_PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")


def _writable_by_all(pyproject: str) -> str | None:
    """The file or directory among ``pyproject`` and its directory that every user may write to, if any."""
    if os.name != "posix":
        return None
    for path in (pyproject, os.path.dirname(pyproject)):
        try:
            if os.stat(path).st_mode & stat.S_IWOTH:
                return path
        except OSError:
            continue
    return None


def _toml_parser() -> Callable[[str], dict[str, Any]] | None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            return None
    return tomllib.loads


#: Where a pyproject.toml could define [tool.chainspec] (a header, a dotted key, or a key under [tool]).
_TABLE_TEXT = re.compile(r"""^\s*(\[\s*)?["']?tool["']?\s*\.\s*["']?chainspec\b""", re.MULTILINE)
_TOOL_HEADER = re.compile(r"""^\s*\[\s*["']?tool["']?\s*\]""", re.MULTILINE)
_CHAINSPEC_KEY = re.compile(r"""^\s*["']?chainspec["']?\s*[.=]""", re.MULTILINE)


def _mentions_table(text: str) -> bool:
    """Whether TOML text may define ``[tool.chainspec]`` (read without a TOML parser: Python 3.10 without tomli)."""
    return bool(_TABLE_TEXT.search(text) or (_TOOL_HEADER.search(text) and _CHAINSPEC_KEY.search(text)))


def _toml_error(exc: ValueError) -> tuple[str, int | None, int | None]:
    """tomllib's ``Invalid value (at line 3, column 9)`` as its message and position."""
    text = str(exc)
    found = re.search(r"\s*\(at line (\d+), column (\d+)\)\s*$", text)
    if found is None:
        return text.replace(" (at end of document)", " at the end of the file"), None, None
    return text[:found.start()], int(found.group(1)), int(found.group(2))


_HEADER = re.compile(r"""^\s*\[\s*["']?tool["']?\s*\.\s*["']?chainspec["']?\s*\]""")


def _locate(text: str, key: str | None, index: int | None) -> tuple[int | None, int | None]:
    """The line and column of ``key`` in the ``[tool.chainspec]`` table of ``text`` (its ``index``-th string, if
    given); the table's header if the key is not found there; ``(None, None)`` without the header."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _HEADER.match(line)), None)
    if start is None:
        return None, None
    if key is None:
        return start + 1, 1
    pattern = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*=""")
    for i in range(start + 1, len(lines)):
        if lines[i].lstrip().startswith("["):
            break
        if pattern.match(lines[i]):
            if index is None:
                return i + 1, len(lines[i]) - len(lines[i].lstrip()) + 1
            return _locate_string(lines, i, index) or (i + 1, len(lines[i]) - len(lines[i].lstrip()) + 1)
    return start + 1, 1


_TOKEN = re.compile(r""""(?:[^"\\]|\\.)*"|'[^']*'|#|\]""")


def _locate_string(lines: list[str], first: int, index: int) -> tuple[int, int] | None:
    """Where the ``index``-th string of the array that starts on line ``first`` is (the array may span lines)."""
    count = 0
    for i in range(first, len(lines)):
        offset = lines[i].index("=") + 1 if i == first else 0
        for found in _TOKEN.finditer(lines[i], offset):
            token = found.group()
            if token == "#":
                break  # a comment: the rest of the line
            if token == "]":
                return None
            if count == index:
                return i + 1, found.start() + 1
            count += 1
    return None


def _kind(value: Any) -> str:
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number", dict: "a table",
            list: "a list of other things"}.get(type(value), type(value).__name__)
