"""The package's layout is its pipeline: imports point one way, down it, and never in a cycle.

Layers, lowest first: the shared floor (``_errors``, ``_limits``, ``_gc``, ``_quickcheck``), ``types`` (the node types),
``read`` (spec text to a validated, expanded spec; no torch), ``build`` (modules, the shape engine,
chains), ``revise`` (plans, the transaction that applies them, watchers, checkpoints), ``grow``,
``distributed``, and the command line. A module may import from its own layer and the layers below.

One kind of upward import is part of the design: ``read.spec.Spec`` is the facade users hold, and
its ``build``/``summary``/``check`` methods call into ``build`` when they are called, so that
reading and validating a spec never imports torch. Those imports are listed in
:data:`FACADE` and nothing else may go up.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "chainspec"
LAYERS = {"_errors": 0, "_limits": 0, "_gc": 0, "_quickcheck": 0, "types": 1, "read": 2, "build": 3, "revise": 4,
          "grow": 5, "draw": 5, "distributed": 6, "cli": 7, "__init__": 8, "__main__": 8}
#: The facade's calls into building, by (importing module, imported module).
FACADE = {("read.spec", "build.compile"), ("read.spec", "build.shapes"), ("read.spec", "build.memory"),
          ("read.spec", "build.summary"), ("read.spec", "build.chain")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> Iterator[tuple[str, int, bool]]:
    """(imported chainspec module, line, run when ``path`` is imported) for every import in ``path``, those inside
    functions and under ``if TYPE_CHECKING:`` included (the flag is False for those)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}  # module level; an `if TYPE_CHECKING:` block's body is not run
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join([*base, node.module] if node.module else base)
            elif node.module and node.module.startswith("chainspec"):
                target = node.module.removeprefix("chainspec").lstrip(".")
            else:
                continue
            names = [alias.name for alias in node.names]
            for imported in names:
                candidate = f"{target}.{imported}" if target else imported
                full = candidate if (SRC / candidate.replace(".", "/")).with_suffix(".py").exists() or \
                    (SRC / candidate.replace(".", "/")).is_dir() else target
                if full:
                    yield full, node.lineno, id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("chainspec."):
                    yield alias.name.removeprefix("chainspec."), node.lineno, id(node) in top


def layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def graph() -> dict[str, list[tuple[str, int, bool]]]:
    return {module_name(p): sorted(set(imports(p))) for p in SRC.rglob("*.py")}


def test_every_module_belongs_to_a_layer() -> None:
    assert all(name.split(".")[0] in LAYERS for name in graph()), sorted(graph())


def test_imports_point_down_the_pipeline() -> None:
    upward = [f"{module}:{line} imports {target}" for module, targets in graph().items()
              for target, line, _ in targets
              if layer(target) > layer(module) and (module, target) not in FACADE
              and module not in ("__init__", "__main__")]
    assert not upward, "imports that go back up the pipeline:\n" + "\n".join(upward)


def test_the_facade_imports_building_only_when_called() -> None:
    at_top = [f"{module}:{line} imports {target}" for module, targets in graph().items()
              for target, line, top in targets if (module, target) in FACADE and top]
    assert not at_top, "read.spec must not import torch-dependent building when it is imported:\n" + "\n".join(at_top)


def test_no_import_cycles() -> None:
    """Between modules, counting imports inside functions and under TYPE_CHECKING (packages' __init__ aside)."""
    edges = {module: {t for t, _, _ in targets if t != module and (module, t) not in FACADE}
             for module, targets in graph().items()}
    packages = {m for m in edges if (SRC / m.replace(".", "/")).is_dir()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt in packages or nxt not in edges:
                continue
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state and module not in packages:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", ["chainspec", "chainspec.read.spec", "chainspec.cli.validate"])
def test_reading_a_spec_does_not_import_torch(module: str) -> None:
    import subprocess
    import sys

    spec = "chainspec: 1\\nchains: {n: {input_shape: [2], nodes: [{id: a, type: relu}]}}"
    code = f"import sys, {module}\nimport chainspec\nchainspec.loads('{spec}')\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
