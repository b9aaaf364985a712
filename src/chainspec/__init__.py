"""chainspec: declarative, growable PyTorch models built from YAML specs.

A spec names node types and the stage at which each node joins; ``load``
validates it and ``Spec.build`` turns it into a :class:`Chain`, a doubly
linked list of ``nn.Module`` nodes that can be spliced while training.

Every name but the errors and :class:`Limits` is imported on first use: ``import chainspec``
takes milliseconds, reading a spec imports pydantic and the spec models, and only names that
need torch (``Chain``, ``Node``, ...) import it, so ``chainspec validate`` runs without torch.

Example:
    >>> import chainspec
    >>> spec = chainspec.load("specs/blog.yaml")  # doctest: +SKIP
    >>> net = spec.build(stage=2)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import ChainspecError, CheckpointError, PlanError, Problem, SpecError, TorchMissingError, require_torch
from ._limits import Limits

if TYPE_CHECKING:
    from .build.chain import Chain, Node, NodeNotFoundError, Revision
    from .build.summary import ChainSummary, NodeSummary
    from .grow.blend import Blend
    from .grow.grower import Grower, GrowthEvent
    from .read.schedule import Schedule
    from .read.spec import Spec, load, loads
    from .revise.apply import RemovedNodes, removed_nodes
    from .revise.certify import Certificate, CertificateError
    from .revise.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from .revise.diff import diff, diff_all
    from .revise.ops import Op
    from .revise.plan import Plan, PlanSet
    from .revise.watch import SpecWatcher
    from .types.registry import NodeType, get_type, is_registered, list_types, register_type

__version__ = "0.1.0"

__all__ = [
    "Blend",
    "Certificate",
    "CertificateError",
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

#: Public names that need no torch, loaded on first access: ``import chainspec`` then costs
#: milliseconds, and reading a spec pays for pydantic and the models when it first happens.
_READING = {
    "Schedule": ".read.schedule",
    "Spec": ".read.spec",
    "load": ".read.spec",
    "loads": ".read.spec",
    "NodeType": ".types.registry",
    "get_type": ".types.registry",
    "is_registered": ".types.registry",
    "list_types": ".types.registry",
    "register_type": ".types.registry",
}

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
    "Certificate": ".revise.certify",
    "CertificateError": ".revise.certify",
    "removed_nodes": ".revise.apply",
    "Checkpoint": ".revise.checkpoint",
    "load_checkpoint": ".revise.checkpoint",
    "save_checkpoint": ".revise.checkpoint",
    "Blend": ".grow.blend",
    "Grower": ".grow.grower",
    "GrowthEvent": ".grow.grower",
}


def __getattr__(name: str) -> Any:
    module = _READING.get(name) or _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chainspec' has no attribute {name!r}")
    import importlib

    if name in _LAZY:
        require_torch(f"chainspec.{name}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
