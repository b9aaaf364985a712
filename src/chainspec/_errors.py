"""The exception hierarchy and the problem records every error carries."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where it is, and what to do about it.

    Example:
        >>> Problem("net.yaml", 3, 5, "chains.net.nodes[0].type", "unknown node type 'conv3'",
        ...         hint="did you mean 'conv2d'?").format()
        "net.yaml:3:5: chains.net.nodes[0].type: unknown node type 'conv3'; did you mean 'conv2d'?"
    """

    source: str
    line: int | None
    col: int | None
    path: str
    message: str
    hint: str | None = None

    def format(self) -> str:
        """Render as ``file:line:col: path: message; hint``."""
        where = self.source
        if self.line is not None:
            where += f":{self.line}:{self.col if self.col is not None else 1}"
        path, message = _clip(self.path), _clip(self.message)
        text = f"{where}: {path}: {message}" if path else f"{where}: {message}"
        if self.hint:
            text += f"; {_clip(self.hint)}"
        return printable(text)


#: Longest path, message or hint a problem prints. Messages quote values from the spec; a
#: 200 kB string must not turn one line of output into 200 kB.
MAX_PART = 300


def _clip(text: str) -> str:
    if len(text) <= MAX_PART:
        return text
    return f"{text[:MAX_PART - 60]} ... {text[-40:]} ({len(text):,} characters)"


def printable(text: str) -> str:
    """Escape every non-printable character, so that spec text cannot drive a terminal through a message.

    A key written as ``"\\e[2J"`` in a spec reaches paths and messages as an
    escape sequence; printed raw it would clear the screen or forge output.

    Example:
        >>> printable("chains.\\x1b[2Jnet: caf\\u00e9")
        'chains.\\\\x1b[2Jnet: café'
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class ChainspecError(Exception):
    """Root of every error chainspec raises on purpose.

    Example:
        >>> issubclass(SpecError, ChainspecError)
        True
    """


class SpecError(ChainspecError, ValueError):
    """A spec is invalid. Carries every problem found, not just the first.

    Example:
        >>> err = SpecError([Problem("x.yaml", 1, 1, "chains", "must not be empty")])
        >>> str(err)
        'x.yaml:1:1: chains: must not be empty'
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(p.format() for p in self.problems))


class PlanError(ChainspecError):
    """A plan cannot be applied to the chain it was given.

    Example:
        >>> issubclass(PlanError, ChainspecError)
        True
    """


class CheckpointError(ChainspecError):
    """A checkpoint is missing, truncated, foreign, or does not match its chain.

    Example:
        >>> issubclass(CheckpointError, ChainspecError)
        True
    """


#: How to install PyTorch, as the message of a missing torch says it.
TORCH_INSTALL = ("pip install torch (the CPU build: pip install torch --index-url "
                 "https://download.pytorch.org/whl/cpu), or pip install 'chainspec[torch]'")


class TorchMissingError(ChainspecError, ImportError):
    """Something that builds, checks shapes or trains was asked for, and PyTorch is not installed.

    Reading and validating specs (``chainspec.load``, ``chainspec validate``, the pre-commit hook)
    never needs torch; chainspec does not install it (as transformers does not), so that a
    validation-only environment stays small.

    Example:
        >>> str(TorchMissingError("chainspec build")).split(";")[0]
        'chainspec build needs PyTorch, which is not installed'
    """

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs PyTorch, which is not installed; {TORCH_INSTALL}")


def require_torch(what: str) -> None:
    """Raise :class:`TorchMissingError` naming ``what`` unless torch can be imported.

    Example:
        >>> require_torch("Spec.build")  # torch is installed here
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        raise TorchMissingError(what) from None
