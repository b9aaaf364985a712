"""Pausing Python's cyclic garbage collector while chainspec makes many objects at once.

Reading a 256 KiB spec makes about 50,000 YAML nodes and building it thousands of modules,
each with eight dictionaries. None of that becomes garbage until the call returns, but the
collector does not know it: every 700 allocations it scans the young objects, and every so
often all of them, so that the work grows with the square of what is made. On the hostile
corpus's spec of 9,800 relus (``deep-growing-input-conv`` in ``tests/hostile_corpus.py``),
``chainspec.loads`` took 0.64 s and ``Spec.build`` 0.42 s with the collector running, 0.26 s
and 0.15 s with it paused (best of two runs each, on the machine of ``benchmarks/results-hostile.md``).

The pause is the only effect: whatever becomes garbage in the meantime is collected once
the outermost pause ends, as it would have been (a collection runs on the next allocations).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_resume = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the ``with`` block; nested and concurrent pauses are one pause.

    The collector runs again when the last pause ends, and only if it was running when the first began
    (a program that disabled it keeps it disabled).

    Example:
        >>> import gc
        >>> with gc_paused():
        ...     gc.isenabled()
        False
        >>> gc.isenabled()
        True
    """
    global _depth, _resume
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()
