"""Spec texts several test modules share, in one place.

``MLP`` is the revision most apply/diff/fault tests start from: every kind of node a plan handles
(weights, buffers, a parameter-free activation with an argument, dropout). Tests derive their
variants from it with :func:`without` and ``str.replace`` rather than pasting another copy.
"""

from __future__ import annotations

MLP = """\
chainspec: 1
chains:
  net:
    input_shape: [8]
    nodes:
      - {id: fc1, type: linear, args: {in_features: 8, out_features: 16}}
      - {id: act1, type: leaky_relu, args: {negative_slope: 0.2}}
      - {id: drop, type: dropout, args: {p: 0.1}}
      - {id: fc2, type: linear, args: {in_features: 16, out_features: 16}}
      - {id: bn, type: batchnorm1d, args: {num_features: 16}}
      - {id: act2, type: relu}
      - {id: fc3, type: linear, args: {in_features: 16, out_features: 4}}
"""


def without(text: str, *node_ids: str) -> str:
    """``text`` with the node lines of ``node_ids`` removed.

    Example:
        >>> "id: bn," in without(MLP, "bn")
        False
    """
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if not any(f"{{id: {i}," in line for i in node_ids))


def one_chain(*nodes: str, input_shape: str = "[8]", name: str = "net") -> str:
    """A spec text of one chain ``name`` with the node lines ``nodes`` (each a flow mapping).

    Example:
        >>> "      - {id: a, type: relu}" in one_chain("{id: a, type: relu}")
        True
    """
    lines = "\n".join(f"      - {node}" for node in nodes)
    return f"chainspec: 1\nchains:\n  {name}:\n    input_shape: {input_shape}\n    nodes:\n{lines}\n"
