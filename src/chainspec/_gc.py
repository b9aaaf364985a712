"""Pausing Python's cyclic garbage collector while chainspec makes many objects at once.

Reading a 256 KiB spec makes about 50,000 YAML nodes and building it thousands of modules,
each with eight dictionaries. None of that becomes garbage until the call returns, but the
collector does not know it: every 700 allocations it scans the young objects, and every so
often all of them, so that the work grows with the square of what is made. On the hostile
corpus's spec of 9,800 relus (``deep-growing-input-conv`` in ``tests/hostile_corpus.py``),
``chainspec.loads`` took 0.64 s and ``Spec.build`` 0.42 s with the collector running, 0.26 s
and 0.15 s with it paused (best of two runs each, on a 2-core AMD EPYC).

The pause is the only effect: whatever becomes garbage in the meantime is collected once
the outermost pause ends, as it would have been (a collection runs on the next allocations).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the ``with`` block, if it is running.

    Only the pause that found the collector running starts it again, so nested pauses are one
    pause, and a program that disabled the collector keeps it disabled. There is no lock for an
    interrupt to leave held; a ``KeyboardInterrupt`` landing exactly between the block's end and the
    restart can leave the collector paused, which only costs memory (``plan.apply``'s rollback
    starts it again; see ``revise.torchstate``).

    Example:
        >>> import gc
        >>> with gc_paused():
        ...     gc.isenabled()
        False
        >>> gc.isenabled()
        True
    """
    running = gc.isenabled()
    try:
        gc.disable()
        yield
    finally:
        if running:
            gc.enable()


def spare_exit_collection() -> None:
    """Keep every object alive now out of the full collection CPython runs when the process exits.

    Only for a process that is about to exit, as the ``chainspec`` command is when it calls this.
    That last collection scans every object still tracked, which costs about what validating a
    spec does: ``chainspec validate specs/pggan.yaml`` run as ``python -c "import sys; sys.argv = [...];
    from chainspec.cli import main; main()"`` takes 132 ms, and 113 ms with ``console_main`` in
    place of ``main``; for an invalid spec, whose errors import pydantic-core, 183 ms and 151 ms
    (medians of 15 runs on a 2-core AMD EPYC).
    What exit frees it still frees; what is spared is objects in reference cycles, which exit
    would have collected one by one and the operating system reclaims at once. Files are closed
    by chainspec where they are written, and the standard streams are flushed at exit as before.

    Example:
        >>> import subprocess, sys
        >>> code = "from chainspec._gc import spare_exit_collection; spare_exit_collection(); print('ok')"
        >>> subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
        'ok\\n'
    """
    gc.freeze()
