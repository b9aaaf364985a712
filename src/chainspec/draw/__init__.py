"""Pictures of chains and plans: Mermaid and Graphviz text, and SVG through Graphviz's ``dot``.

:func:`chain_graph` turns a spec's chain into a :class:`Graph` (the spine of nodes, skip edges
by id, each node's output shape and parameters, and with every stage the stage each node joins);
:func:`plan_graph` turns a plan into one (inserted nodes green, removed red, replaced amber,
moved ones with a dashed arrow from where they were). :func:`to_mermaid` needs nothing;
:func:`to_dot` writes Graphviz's language; :func:`to_svg` runs ``dot``.
"""

from .graph import Edge, Graph, GraphNode, chain_graph, plan_graph
from .render import GraphvizMissing, render, to_dot, to_mermaid, to_svg

__all__ = ["Edge", "Graph", "GraphNode", "GraphvizMissing", "chain_graph", "plan_graph", "render", "to_dot",
           "to_mermaid", "to_svg"]
