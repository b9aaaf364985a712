"""The ``chainspec`` command line: a parser builder, ``main(argv) -> int``, one error path.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``;
the parser stores the function to run as ``func``. Library errors become exit
code 1 with the message on stderr; usage errors exit 2; no traceback reaches
the user unless ``CHAINSPEC_DEBUG=1`` is set. A spec named ``-`` is read from
stdin; every character printed that a terminal would obey is escaped.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .._errors import ChainspecError
from .._gc import spare_exit_collection
from . import build, diff, graph, schema, types, validate
from ._io import begin, escaped_output

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = [build, graph, types, validate, schema, diff]


def main_parser() -> argparse.ArgumentParser:
    """Build the argument parser for ``chainspec``.

    Example:
        >>> main_parser().parse_args(["build", "specs/blog.yaml"]).command
        'build'
    """
    parser = argparse.ArgumentParser(prog="chainspec",
                                     description="Validate, build and revise PyTorch models from YAML specs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``chainspec`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Exit codes: 0 success, 1 invalid input (messages on stderr), 2 usage error; ``diff``, whose
    1 means "different", fails with 2. When the reader of stdout goes away (``| head``) it stops
    quietly with the command's failure code. Whatever goes wrong, the
    user sees a message, never a traceback (unless ``CHAINSPEC_DEBUG=1``), and nothing printed
    can drive the terminal: every stream escapes its control characters (see ``cli._io``).

    Example:
        >>> main(["types", "--filter", "pixel"])  # doctest: +SKIP
        0
    """
    with escaped_output():
        code = _main(argv)
        try:
            sys.stdout.flush()  # here, so that a closed pipe is caught and not reported at interpreter exit
        except BrokenPipeError:
            return _reader_gone()
        except (OSError, ValueError):  # stdout closed or gone: nothing more to say there
            pass
        return code


def console_main() -> int:
    """The installed ``chainspec`` command (and ``python -m chainspec``): :func:`main` on ``sys.argv``.

    The process exits right after, so the objects left are spared the exit's last garbage
    collection (see :func:`chainspec._gc.spare_exit_collection`): it would cost about what a
    ``chainspec validate`` of a spec does. Call :func:`main` to run the command line in a process
    that goes on.

    Example:
        >>> import subprocess, sys
        >>> spec = "chainspec: 1\\nchains: {n: {input_shape: [2], nodes: [{id: a, type: relu}]}}"
        >>> subprocess.run([sys.executable, "-m", "chainspec", "validate", "-q", "-"], input=spec, text=True).returncode
        0
    """
    code = main()
    spare_exit_collection()
    return code


def _main(argv: Sequence[str] | None) -> int:
    debug = bool(os.environ.get("CHAINSPEC_DEBUG"))
    failed = 1  # the exit code of a failure; a subcommand whose 1 means something else sets error_code
    begin()
    try:
        try:
            args = main_parser().parse_args(argv)
        except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        failed = int(getattr(args, "error_code", 1))
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _reader_gone()
        return failed
    except ChainspecError as exc:
        print(_text(exc), file=sys.stderr)
        return failed
    except (ValueError, OSError) as exc:
        if debug:
            raise
        print(f"chainspec: error: {_text(exc)}", file=sys.stderr)
        return failed
    except KeyboardInterrupt:
        print("chainspec: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the truly unexpected: one line, and how to see more
        if debug:
            raise
        print(f"chainspec: internal error: {type(exc).__name__}: {_text(exc)}\n"
              "TIP: rerun with CHAINSPEC_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return failed


def _text(exc: BaseException) -> str:
    """``str(exc)``, or its type's name when even that fails."""
    try:
        return str(exc)
    except Exception:
        return type(exc).__name__


def _reader_gone() -> int:
    """The reader of stdout went away (``chainspec build ... | head``): stop quietly, with status 1.

    stdout is pointed at the null device so that Python's own last flush does not report it again.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (captured, replaced)
        pass
    return 1


if __name__ == "__main__":
    sys.exit(main())
