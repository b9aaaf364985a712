"""Building: ``Spec.build()`` against writing the same model by hand as ``nn.Sequential(...)``.

``Spec.build`` shape-checks the chain (in closed form for built-in types), refuses what would not
fit in memory, builds every node's module on the CPU and links them into a ``Chain``. The
baseline constructs the very same modules (each node type's factory called with the node's
arguments, a composite as an ``nn.Sequential`` of its parts) into an ``nn.Sequential``, as a
hand-written model would, and nothing else. Both sides allocate and initialise the same weights,
so the ratio is what the spec machinery adds on top (target: 2x at most).

Cases: a chain of 2,000 ``Linear(16, 16)``, and every chain of every shipped spec
(``specs/*.yaml``) at its final stage. Each case is timed in interleaved rounds
(``benchutil.compare``), one build per block: as many rounds as fit in a few seconds (at least 31).

Example:
    >>> rows = run()  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from benchutil import Row, compare, pick, row
from torch import nn

import chainspec
from chainspec.read.resolve import Leaf, Tree

AREA = "build"
SPECS = Path(__file__).resolve().parent.parent / "specs"
TARGET = 2.0
BASELINE = "the same modules by hand, nn.Sequential"


def linear_spec(nodes: int) -> str:
    """A spec of one chain of ``nodes`` ``Linear(16, 16)`` nodes.

    Example:
        >>> len(chainspec.loads(linear_spec(3)).resolved().nodes)
        3
    """
    items = "".join(f"      - {{id: n{i}, type: linear, args: {{in_features: 16, out_features: 16}}}}\n"
                    for i in range(nodes))
    return f"chainspec: 1\nchains:\n  net:\n    input_shape: [16]\n    nodes:\n{items}"


def _by_hand(tree: Tree) -> Callable[[], nn.Module]:
    """A constructor of ``tree``'s module written out directly: the factory called with its arguments."""
    if isinstance(tree, Leaf):
        return functools.partial(tree.factory, **tree.args)
    parts = [(part_id, _by_hand(sub)) for part_id, sub in tree.parts]
    return lambda: nn.Sequential(OrderedDict((part_id, make()) for part_id, make in parts))


def by_hand(spec: chainspec.Spec, chain: str, stage: int) -> Callable[[], nn.Sequential]:
    """A function building ``chain`` at ``stage`` as a hand-written ``nn.Sequential`` of the same modules."""
    makers = [_by_hand(node.tree) for node in spec.resolved(chain).at(stage)]
    return lambda: nn.Sequential(*(make() for make in makers))


def _leaf_types(module: nn.Module) -> list[type[nn.Module]]:
    return [type(m) for m in module.modules() if next(m.children(), None) is None]


def _case(name: str, spec: chainspec.Spec, chain: str, rounds: int | None) -> Row:
    stage = spec.stage_index("final")
    hand = by_hand(spec, chain, stage)
    built, written = spec.build(chain, stage=stage), hand()  # the two are the same model
    assert _leaf_types(built) == _leaf_types(written), name
    base, value, ratio = compare(hand, lambda: spec.build(chain, stage=stage), rounds=rounds, number=1,
                                 budget=pick(4.0, 0.05))
    params = sum(p.numel() for p in written.parameters())
    rounds_text = "at least 31 interleaved rounds" if rounds is None else f"{rounds} round(s)"
    return row(AREA, name, BASELINE, base=base, value=value, ratio=ratio, target=TARGET,
               note=f"{len(spec.resolved(chain).at(stage)):,} nodes, {params:,} parameters; median of {rounds_text}")


def run() -> list[Row]:
    """The linear chain, then each chain of each shipped spec at its final stage (quick: 20 nodes, blog only)."""
    nodes, rounds = pick(2000, 20), pick(None, 1)
    rows = [_case(f"spec.build(), {nodes:,} x Linear(16, 16)", chainspec.loads(linear_spec(nodes)), "net", rounds)]
    for path in pick(sorted(SPECS.glob("*.yaml")), [SPECS / "blog.yaml"]):
        spec = chainspec.load(path)
        for chain in spec.chain_names:
            rows.append(_case(f"spec.build({chain!r}, stage='final'), {path.name}", spec, chain, rounds))
    return rows


if __name__ == "__main__":
    from run import render_table

    print(render_table(run()))
