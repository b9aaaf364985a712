"""Running a call with a hook on every line of chainspec it executes (for interrupt-at-any-line tests)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import chainspec

#: chainspec's source folder: only frames of files under it are traced.
PKG = os.path.dirname(chainspec.__file__)


def traced(fn: Callable[[], None], on_line: Callable[[Any], None]) -> None:
    """Run ``fn`` with ``on_line(frame)`` called as each chainspec line is about to run.

    Example:
        >>> lines = []
        >>> traced(lambda: chainspec.loads("chainspec: 1\\nchains: {n: {input_shape: [1], nodes: "
        ...                                "[{id: a, type: relu}]}}"), lambda frame: lines.append(frame))
        >>> len(lines) > 100
        True
    """

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            on_line(frame)
        return local

    def global_(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename.startswith(PKG) else None

    sys.settrace(global_)
    try:
        fn()
    finally:
        sys.settrace(None)
