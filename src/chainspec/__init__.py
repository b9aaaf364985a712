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

from ._errors import ChainspecError, CheckpointError, PlanError, Problem, SpecError, TorchMissingError, require_torch
from ._limits import Limits
from .read.schedule import Schedule
from .read.spec import Spec, load, loads
from .types.registry import NodeType, get_type, is_registered, list_types, register_type

if TYPE_CHECKING:
    from .build.chain import Chain, Node, NodeNotFoundError, Revision
    from .build.summary import ChainSummary, NodeSummary
    from .grow.blend import Blend
    from .grow.grower import Grower, GrowthEvent
    from .revise.apply import RemovedNodes, removed_nodes
    from .revise.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from .revise.diff import diff, diff_all
    from .revise.ops import Op
    from .revise.plan import Plan, PlanSet
    from .revise.watch import SpecWatcher

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
    "Revision",
    "Schedule",
    "Spec",
    "SpecError",
    "SpecWatcher",
    "TorchMissingError",
    "__version__",
    "diff",
    "diff_all",
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
    "Chain": ".build.chain",
    "Node": ".build.chain",
    "NodeNotFoundError": ".build.chain",
    "ChainSummary": ".build.summary",
    "NodeSummary": ".build.summary",
    "Op": ".revise.ops",
    "Plan": ".revise.plan",
    "PlanSet": ".revise.plan",
    "diff": ".revise.diff",
    "diff_all": ".revise.diff",
    "Revision": ".build.chain",
    "SpecWatcher": ".revise.watch",
    "RemovedNodes": ".revise.apply",
    "removed_nodes": ".revise.apply",
    "Checkpoint": ".revise.checkpoint",
    "load_checkpoint": ".revise.checkpoint",
    "save_checkpoint": ".revise.checkpoint",
    "Blend": ".grow.blend",
    "Grower": ".grow.grower",
    "GrowthEvent": ".grow.grower",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chainspec' has no attribute {name!r}")
    import importlib

    require_torch(f"chainspec.{name}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
