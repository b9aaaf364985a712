"""Putting torch's thread-global modes (and the garbage collector) back after an interrupted ``with`` block.

``with torch.device("meta"):`` pushes a mode on torch's function-mode stack
and pops it in ``__exit__``. A ``KeyboardInterrupt`` delivered just as the
block ends, before ``__exit__`` has run, skips the pop: every tensor the
program creates afterwards lands on the meta device. ``torch.no_grad()``
(used as a decorator by the function-preserving initialisation) has the same
window, and would leave autograd off. Python cannot make a ``with`` statement
safe against that, so the code that promises to leave everything as it was
(``plan.apply``'s rollback) records these modes first and restores them on
failure.
"""

from __future__ import annotations

import gc
from typing import Any

import torch

try:  # private but stable since torch 2.0; without them there is nothing to repair
    import torch.utils._device as _device
    from torch.overrides import _get_current_function_mode_stack
except ImportError:  # pragma: no cover - very old or very new torch
    _get_current_function_mode_stack = None  # type: ignore[assignment]
    _device = None  # type: ignore[assignment]


class FunctionModes:
    """torch's function-mode stack, default device and grad mode, restorable.

    Example:
        >>> saved = FunctionModes()
        >>> context = torch.device("meta")
        >>> _ = context.__enter__()  # entered, and never exited (an interrupt at the wrong moment)
        >>> torch.empty(1).device.type
        'meta'
        >>> _ = torch.set_grad_enabled(False)  # a no_grad block cut short the same way
        >>> saved.restore()
        >>> torch.empty(1).device.type, torch.is_grad_enabled()
        ('cpu', True)
    """

    def __init__(self) -> None:
        self.modes: list[Any] | None = (list(_get_current_function_mode_stack())
                                        if _get_current_function_mode_stack is not None else None)
        self.device = getattr(_device, "CURRENT_DEVICE", None)
        self.grad = torch.is_grad_enabled()
        self.collecting = gc.isenabled()  # chainspec pauses the garbage collector while it builds

    def restore(self) -> None:
        """Put the stack and grad mode back as they were when this object was made (a no-op when unchanged)."""
        torch.set_grad_enabled(self.grad)
        if self.collecting:
            gc.enable()
        if self.modes is None or _get_current_function_mode_stack is None:
            return
        if list(_get_current_function_mode_stack()) != self.modes:
            while torch._C._len_torch_function_stack():
                torch._C._pop_torch_function_stack()
            for mode in self.modes:
                torch._C._push_on_torch_function_stack(mode)
        if _device is not None and hasattr(_device, "CURRENT_DEVICE"):
            _device.CURRENT_DEVICE = self.device
