"""chainspec: declarative, growable PyTorch models built from YAML specs.

A spec names node types and the stage at which each node joins; ``load``
validates it and ``Spec.build`` turns it into a :class:`Chain`, a doubly
linked list of ``nn.Module`` nodes that can be spliced while training.

Names that need torch (``Chain``, ``Node``) are imported on first use, so that
``chainspec validate`` runs without importing torch.

Example:
    >>> import chainspec
    >>> spec = chainspec.load("specs/blog.yaml")  # doctest: +SKIP
    >>> net = spec.build(stage=2)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import ChainspecError, CheckpointError, PlanError, Problem, SpecError
from ._limits import Limits
from ._registry import NodeType, get_type, is_registered, list_types, register_type
from ._schedule import Schedule
from ._spec import Spec, load, loads

if TYPE_CHECKING:
    from ._apply import RemovedNodes, removed_nodes
    from ._blend import Blend
    from ._chain import Chain, Node, NodeNotFoundError
    from ._checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from ._compile import ChainSummary, NodeSummary
    from ._diff import Op, Plan, PlanSet, diff
    from ._grow import Grower, GrowthEvent
    from ._watch import SpecWatcher

__version__ = "0.1.0"

__all__ = [
    "Blend",
    "Chain",
    "ChainSummary",
    "ChainspecError",
    "Checkpoint",
    "CheckpointError",
    "Grower",
    "GrowthEvent",
    "Limits",
    "Node",
    "NodeNotFoundError",
    "NodeSummary",
    "NodeType",
    "Op",
    "Plan",
    "PlanError",
    "PlanSet",
    "Problem",
    "RemovedNodes",
    "Schedule",
    "Spec",
    "SpecError",
    "SpecWatcher",
    "__version__",
    "diff",
    "get_type",
    "is_registered",
    "list_types",
    "load",
    "load_checkpoint",
    "loads",
    "register_type",
    "removed_nodes",
    "save_checkpoint",
]

#: Public names that live in modules importing torch, loaded on first access.
_LAZY = {
    "Chain": "._chain",
    "Node": "._chain",
    "NodeNotFoundError": "._chain",
    "ChainSummary": "._compile",
    "NodeSummary": "._compile",
    "Op": "._diff",
    "Plan": "._diff",
    "PlanSet": "._diff",
    "diff": "._diff",
    "SpecWatcher": "._watch",
    "RemovedNodes": "._apply",
    "removed_nodes": "._apply",
    "Checkpoint": "._checkpoint",
    "load_checkpoint": "._checkpoint",
    "save_checkpoint": "._checkpoint",
    "Blend": "._blend",
    "Grower": "._grow",
    "GrowthEvent": "._grow",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chainspec' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
