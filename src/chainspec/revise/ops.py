"""The operations of a plan (insert, remove, move, update, replace) and how they print.

Data only: :mod:`.plan` gathers ops into a :class:`~.plan.Plan`, :mod:`.diff` computes them
and :mod:`.apply` carries them out. :class:`Revising` is what the apply needs of a plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .._errors import printable
from ..read.resolve import ResolvedNode

if TYPE_CHECKING:
    from ..read.spec import Spec

OpKind = Literal["insert", "remove", "move", "update", "replace"]

#: The marker each op kind prints with, as in ``terraform plan``.
MARKERS: dict[str, str] = {"insert": "+", "remove": "-", "move": ">", "update": "~", "replace": "!"}

#: How a replace starts its new weights, as the plan prints it.
INIT_NOTES = {"fresh": "weights reinitialized", "keep": "overlapping weights kept",
              "preserve": "init: preserve, new units made from old ones"}

class _Absent:
    """Stands for an argument or part that one side of a change does not have."""

    def __repr__(self) -> str:
        return "(none)"


ABSENT: Any = _Absent()


@dataclass(frozen=True)
class Change:
    """One changed field of a node: an argument, a part's argument, its type or an optimizer override.

    Example:
        >>> Change("negative_slope", 0.2, 0.1).format()
        'negative_slope 0.2 → 0.1'
    """

    field: str
    old: Any
    new: Any

    def format(self) -> str:
        """Render as ``field old → new``."""
        return f"{self.field} {format_value(self.old)} → {format_value(self.new)}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"field", "old", "new"}`` (an absent side is null)."""
        return {"field": self.field, "old": jsonable(self.old), "new": jsonable(self.new)}


@dataclass(frozen=True)
class Op:
    """One step of a :class:`Plan`.

    Attributes:
        kind: ``insert``, ``remove``, ``move``, ``update`` or ``replace``.
        node_id: the node it acts on.
        type: the node's type (in the new revision; in the old one for a remove).
        position: the node's index in the new chain (None for a remove).
        after: the id of the node it follows in the new chain, None at the head (insert and move).
        changes: what changed (update and replace).
        params_before: the node's parameter count before the op.
        params_after: its parameter count after the op.
        init: how a replace or insert starts its new weights (``fresh``, ``keep``, ``preserve`` or ``copy``).
        copy: with ``init`` ``copy``, the id of the node it copies; ``copy_state``: its optimizer state too.
        restored: an insert whose module, trained weights and optimizer state come back from the
            chain's store of removed nodes (see :meth:`Plan.restoring`), rather than new weights.

    Example:
        >>> Op("update", "act", "leaky_relu", 2, "b2", (Change("negative_slope", 0.2, 0.1),)).describe()
        'act (leaky_relu): negative_slope 0.2 → 0.1'
    """

    kind: OpKind
    node_id: str
    type: str
    position: int | None = None
    after: str | None = None
    changes: tuple[Change, ...] = ()
    params_before: int = 0
    params_after: int = 0
    init: str = "fresh"
    #: The node in the old / new revision (what apply builds from); not part of the op's identity.
    old: ResolvedNode | None = field(default=None, repr=False, compare=False)
    new: ResolvedNode | None = field(default=None, repr=False, compare=False)
    #: False for an update that only changes optimizer overrides: the module is not rebuilt.
    rebuild: bool = field(default=True, repr=False, compare=False)
    restored: bool = False
    #: With ``init: copy``: the node whose weights (and, with ``copy_state``, optimizer state) it starts from.
    copy: str | None = None
    copy_state: bool = False

    @property
    def marker(self) -> str:
        """``+``, ``-``, ``>``, ``~`` or ``!``."""
        return MARKERS[self.kind]

    @property
    def param_delta(self) -> int:
        """Parameters added (positive) or dropped (negative) by this op."""
        return self.params_after - self.params_before

    def describe(self) -> str:
        """The text after the marker: the node, its type and what happens to it."""
        head = f"{self.node_id} ({self.type})"
        where = f"after {self.after}" if self.after is not None else "at the head"
        if self.kind == "insert":
            if self.restored:
                return f"{head} {where} (restored)"
            if self.init == "copy":
                return f"{head} {where} (copy of {self.copy}{', optimizer state too' if self.copy_state else ''})"
            return f"{head} {where}" + (" (identity init)" if self.init == "preserve" else "")
        if self.kind == "remove":
            return head
        if self.kind == "move":
            return f"{head} moved {where}"
        text = f"{head}: " + ", ".join(c.format() for c in self.changes)
        ties = dict(self.new.ties) if self.new is not None else {}
        if self.kind == "replace" and (self.params_before or self.params_after or ties):
            tied = "; " + ", ".join(f"{path} tied to {ref}" for path, ref in ties.items()) if ties else ""
            text += f" ({INIT_NOTES.get(self.init, self.init)}{tied})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the op."""
        return {"kind": self.kind, "marker": self.marker, "node_id": self.node_id, "type": self.type,
                "position": self.position, "after": self.after,
                "changes": [c.to_dict() for c in self.changes], "params_before": self.params_before,
                "params_after": self.params_after, "param_delta": self.param_delta, "init": self.init,
                "restored": self.restored, **({"copy": self.copy, "copy_state": self.copy_state}
                                              if self.init == "copy" else {})}



class Revising(Protocol):
    """What applying needs of a plan: the chain's name, both revisions, and the ops (see :class:`~.plan.Plan`)."""

    chain: str
    old_spec: Spec
    new_spec: Spec
    old_stage: int
    new_stage: int
    ops: list[Op]
    old_nodes: tuple[ResolvedNode, ...]
    new_nodes: tuple[ResolvedNode, ...]
    old_ids: tuple[str, ...]
    new_ids: tuple[str, ...]
    same_input: bool
    same_output: bool
    _shapes: tuple[Any, Any] | None

    @property
    def is_empty(self) -> bool: ...

    def _marked(self, restored: set[str]) -> Revising: ...


# -- rendering helpers ----------------------------------------------------------------------------

def format_value(value: Any) -> str:
    """Render an argument value the way the plan prints it.

    Example:
        >>> format_value((3, 3)), format_value("nearest"), format_value(None), format_value(True)
        ('[3, 3]', 'nearest', 'null', 'true')
    """
    if value is ABSENT:
        return "(none)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{printable(str(k))}: {format_value(v)}" for k, v in value.items()) + "}"
    # A value from the spec may hold escape sequences: a printed plan must not drive the terminal.
    return printable(str(value))


def jsonable(value: Any) -> Any:
    """Turn an argument value into JSON-ready data (tuples become lists, absent becomes null).

    Example:
        >>> jsonable({"k": (1, 2)})
        {'k': [1, 2]}
    """
    if value is ABSENT:
        return None
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
