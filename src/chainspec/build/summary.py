"""What a shape check finds out about a chain: each node's output shape, parameters and bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NodeSummary:
    """One row of a build summary: a node's id, type, per-sample output shape and parameter count.

    ``param_bytes`` and ``buffer_bytes`` are the memory its module holds, measured on the
    meta-device build in the dtype asked for: its parameters, and its buffers (persistent or
    not, such as batch norm's running statistics) with any other tensor it keeps.

    Example:
        >>> row = NodeSummary("fc", "linear", (8,), 40, param_bytes=160)
        >>> row.output_shape, row.params, row.nbytes
        ((8,), 40, 160)
    """

    id: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    param_bytes: int = field(default=0, compare=False)
    buffer_bytes: int = field(default=0, compare=False)

    @property
    def nbytes(self) -> int:
        """Bytes a build of this node allocates: parameters and buffers."""
        return self.param_bytes + self.buffer_bytes


@dataclass(frozen=True)
class ChainSummary:
    """What a chain builds at one stage: its rows, output shape and total parameter count.

    Example:
        >>> import chainspec
        >>> spec = chainspec.loads(open("specs/blog.yaml").read(), source="blog.yaml")  # doctest: +SKIP
        >>> spec.summary("net", stage=2).params  # doctest: +SKIP
        93472
    """

    name: str
    stage: int
    input_shape: tuple[int, ...]
    nodes: tuple[NodeSummary, ...]

    @property
    def params(self) -> int:
        """Total parameter count."""
        return sum(n.params for n in self.nodes)

    @property
    def param_bytes(self) -> int:
        """Bytes of all parameters, in the dtype the summary was inferred with."""
        return sum(n.param_bytes for n in self.nodes)

    @property
    def buffer_bytes(self) -> int:
        """Bytes of all buffers (running statistics and the like) and other tensors the modules hold."""
        return sum(n.buffer_bytes for n in self.nodes)

    @property
    def nbytes(self) -> int:
        """Bytes building the chain allocates for its modules: parameters plus buffers."""
        return self.param_bytes + self.buffer_bytes

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the chain's output."""
        return self.nodes[-1].output_shape if self.nodes else self.input_shape

    def to_dict(self, *, memory: bool = False) -> dict[str, Any]:
        """The JSON form used by ``chainspec build --format json``; ``memory`` adds the byte counts."""
        out: dict[str, Any] = {"stage": self.stage, "params": self.params, "nodes": []}
        if memory:
            out.update(param_bytes=self.param_bytes, buffer_bytes=self.buffer_bytes)
        for n in self.nodes:
            row: dict[str, Any] = {"id": n.id, "type": n.type, "output_shape": list(n.output_shape), "params": n.params}
            if memory:
                row.update(param_bytes=n.param_bytes, buffer_bytes=n.buffer_bytes)
            out["nodes"].append(row)
        return out
