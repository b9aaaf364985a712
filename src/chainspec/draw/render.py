"""Writing a :class:`~chainspec.draw.graph.Graph` down: Mermaid, Graphviz's dot language, SVG by ``dot``."""

from __future__ import annotations

import shutil
import subprocess

from .._errors import ChainspecError
from .graph import Graph

#: Fill colours by state: Fiddle's graphviz diff convention (green added, red removed), amber for new weights.
COLOURS = {"same": "#ffffff", "insert": "#c8f7c5", "remove": "#f7c5c5", "replace": "#ffe2a8",
           "update": "#fff4d6", "move": "#dde8ff"}


class GraphvizMissing(ChainspecError):
    """SVG needs Graphviz's ``dot`` program, which is not on this machine's PATH.

    Example:
        >>> str(GraphvizMissing()).startswith("--format svg needs Graphviz")
        True
    """

    def __init__(self) -> None:
        super().__init__("--format svg needs Graphviz's 'dot' program, which is not installed (Debian/Ubuntu: "
                         "apt-get install graphviz; macOS: brew install graphviz); --format dot writes the same "
                         "picture as text, and --format mermaid needs nothing")


def _text(line: str) -> str:
    return line.replace('"', "'").replace("<", "‹").replace(">", "›")


def _key(node_id: str) -> str:
    """An identifier Mermaid and dot accept for any node id."""
    return "n_" + "".join(c if c.isalnum() else f"_{ord(c):x}_" for c in node_id)


def to_mermaid(graph: Graph) -> str:
    """Mermaid flowchart text (renders on GitHub in a ```` ```mermaid ```` block).

    Example:
        >>> from chainspec.draw import Edge, Graph, GraphNode
        >>> print(to_mermaid(Graph("t", (GraphNode("a", ("a (relu)",)), GraphNode("b", ("b",), "insert")),
        ...                        (Edge("a", "b"),))))
        ---
        title: "t"
        ---
        flowchart TD
          n_a["a (relu)"]
          n_b["b"]
          n_a --> n_b
          classDef insert fill:#c8f7c5,stroke:#2e7d32
          class n_b insert
    """
    title = _text(graph.title).replace("\\", "\\\\")
    lines = ["---", f'title: "{title}"', "---", "flowchart TD"]  # quoted (and escaped): front matter is YAML
    for node in graph.nodes:
        label = "<br/>".join(_text(line) for line in node.lines)
        lines.append(f'  {_key(node.id)}["{label}"]')
    for edge in graph.edges:
        arrow = {"spine": "-->", "skip": "-.->", "moved": "-. moved .->"}[edge.kind]
        if edge.label and edge.kind == "skip":
            arrow = f"-. {_text(edge.label)} .->"
        lines.append(f"  {_key(edge.source)} {arrow} {_key(edge.target)}")
    strokes = {"insert": "#2e7d32", "remove": "#c62828", "replace": "#ef6c00", "update": "#f9a825", "move": "#1565c0"}
    used = sorted({node.state for node in graph.nodes} - {"same"})
    for state in used:
        lines.append(f"  classDef {state} fill:{COLOURS[state]},stroke:{strokes[state]}")
        members = ",".join(_key(n.id) for n in graph.nodes if n.state == state)
        lines.append(f"  class {members} {state}")
    return "\n".join(lines)


def to_dot(graph: Graph) -> str:
    """Graphviz dot text: boxes top to bottom; with stages, one cluster per stage.

    Example:
        >>> from chainspec.draw import Graph, GraphNode
        >>> print(to_dot(Graph("t", (GraphNode("a", ("a (relu)",)),))).splitlines()[0])
        digraph chain {
    """
    lines = ["digraph chain {", f'  label="{_text(graph.title)}"; labelloc=t; fontname="Helvetica";',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=9];']
    stages = sorted({n.stage for n in graph.nodes if n.stage is not None})
    for node in graph.nodes:
        if node.stage is None or not stages:
            lines.append("  " + _dot_node(node.id, node.lines, node.state))
    for stage in stages:
        lines.append(f'  subgraph cluster_stage_{stage} {{ label="stage {stage}"; style=dashed;')
        lines += ["    " + _dot_node(n.id, n.lines, n.state) for n in graph.nodes if n.stage == stage]
        lines.append("  }")
    for edge in graph.edges:
        style = {"spine": "", "skip": ' [style=dashed, color="#555555"', "moved": ' [style=dashed, color="#1565c0"'}
        attrs = style[edge.kind]
        if attrs:
            attrs += f', label="{_text(edge.label)}"]' if edge.label else "]"
        lines.append(f"  {_key(edge.source)} -> {_key(edge.target)}{attrs};")
    lines.append("}")
    return "\n".join(lines)


def _dot_node(node_id: str, lines: tuple[str, ...], state: str) -> str:
    label = "\\n".join(_text(line) for line in lines)
    return f'{_key(node_id)} [label="{label}", fillcolor="{COLOURS[state]}"];'


def to_svg(graph: Graph) -> str:
    """SVG, drawn by Graphviz's ``dot`` from :func:`to_dot`.

    Raises:
        GraphvizMissing: ``dot`` is not installed.

    Example:
        >>> from chainspec.draw import Graph, GraphNode
        >>> to_svg(Graph("t", (GraphNode("a", ("a",)),))).startswith("<?xml")  # doctest: +SKIP
        True
    """
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizMissing()
    done = subprocess.run([dot, "-Tsvg"], input=to_dot(graph), capture_output=True, text=True, timeout=60,
                          check=False)
    if done.returncode != 0:
        raise ChainspecError(f"dot could not draw the picture: {done.stderr.strip()}")
    return done.stdout


def render(graph: Graph, form: str) -> str:
    """``graph`` as ``mermaid``, ``dot`` or ``svg`` text.

    Example:
        >>> from chainspec.draw import Graph, GraphNode
        >>> render(Graph("t", (GraphNode("a", ("a",)),)), "mermaid").splitlines()[-1]
        '  n_a["a"]'
    """
    writers = {"mermaid": to_mermaid, "dot": to_dot, "svg": to_svg}
    if form not in writers:
        raise ValueError(f"format must be one of {', '.join(writers)}, got {form!r}")
    return writers[form](graph)
