"""DistributedDataParallel: wrap a chain remembering how, re-wrap it after its parameters change, find the live DDP."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .groups import DistributedError, _collective

#: Where :func:`wrap` records a DDP's constructor keyword arguments, for :func:`rewrap`.
_KWARGS_ATTR = "_chainspec_ddp_kwargs"
#: Where :func:`rewrap` records, on the old DDP, the DDP that replaced it (see :func:`current`).
_REPLACED_ATTR = "_chainspec_replaced_by"
#: DistributedDataParallel attributes that give back a constructor argument of the same name, for DDPs
#: not built by :func:`wrap`. Anything else (bucket sizes, mixed precision, ...) must be passed to rewrap.
_INFERRED = ("device_ids", "output_device", "dim", "process_group", "find_unused_parameters",
             "gradient_as_bucket_view")


def wrap(module: nn.Module, **ddp_kwargs: Any) -> DistributedDataParallel:
    """``DistributedDataParallel(module, **ddp_kwargs)``, remembering the kwargs for :func:`rewrap`.

    Example:
        >>> ddp = wrap(chain, device_ids=[local_rank])  # doctest: +SKIP
    """
    ddp = DistributedDataParallel(module, **ddp_kwargs)
    ddp.__dict__[_KWARGS_ATTR] = dict(ddp_kwargs)
    return ddp


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel, or ``model`` itself.

    Example:
        >>> unwrap(nn.ReLU())
        ReLU()
    """
    return model.module if isinstance(model, DistributedDataParallel) else model


def ddp_kwargs(ddp: DistributedDataParallel) -> dict[str, Any]:
    """The constructor kwargs of ``ddp``: those :func:`wrap` recorded, else the ones its attributes give back.

    Example:
        >>> ddp_kwargs(wrap(chain, device_ids=[0]))  # doctest: +SKIP
        {'device_ids': [0]}
    """
    recorded = ddp.__dict__.get(_KWARGS_ATTR)
    if recorded is not None:
        return dict(recorded)
    kwargs = {name: getattr(ddp, name) for name in _INFERRED if hasattr(ddp, name)}
    if getattr(ddp, "static_graph", False):
        kwargs["static_graph"] = True
    return kwargs


def _stale_forward(*args: Any, **kwargs: Any) -> Any:
    raise DistributedError("this DistributedDataParallel was replaced after its chain changed (its reducer only "
                           "knows the old parameters); use the one the lockstep helper returned "
                           "(result.model, watcher.model or grower.models[name])")


def rewrap(ddp: DistributedDataParallel, **overrides: Any) -> DistributedDataParallel:
    """A new DistributedDataParallel around ``ddp.module``, with the same constructor kwargs (plus ``overrides``).

    Needed after every structural change: DDP's reducer is built at construction for the parameters it
    saw then. The new DDP syncs the module from rank 0 as any DDP does. The old one is disabled (calling
    it raises :class:`DistributedError`), so a stale reference cannot silently train without gradient
    averaging. Every rank must call it (construction is a collective).

    The kwargs are those :func:`wrap` recorded; for a DDP built directly they are read back from its
    attributes (``device_ids``, ``output_device``, ``dim``, ``process_group``, ``find_unused_parameters``,
    ``gradient_as_bucket_view``, ``static_graph``): pass any other (``bucket_cap_mb``,
    ``broadcast_buffers``, ``mixed_precision``, ...) again as ``overrides``, or build with :func:`wrap`.

    Example:
        >>> ddp = rewrap(ddp)  # doctest: +SKIP
    """
    kwargs = {**ddp_kwargs(ddp), **overrides}
    module = ddp.module
    with _collective("re-wrapping DistributedDataParallel"):
        new = wrap(module, **kwargs)
    ddp.__dict__["forward"] = _stale_forward
    ddp.__dict__[_REPLACED_ATTR] = new
    return new


def current(model: nn.Module) -> nn.Module:
    """The DDP that now stands for ``model``: follows :func:`rewrap`'s replacements (``model`` itself if none).

    Lets code that kept a reference from before a growth step find the live DDP.

    Example:
        >>> current(nn.ReLU())
        ReLU()
    """
    while isinstance(model, DistributedDataParallel) and _REPLACED_ATTR in model.__dict__:
        model = model.__dict__[_REPLACED_ATTR]
    return model
