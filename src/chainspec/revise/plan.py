"""A :class:`Plan` turns a chain from one revision into the next; a :class:`PlanSet` does it for several chains.

Both print like ``terraform plan``, give the same as JSON, and apply themselves all or nothing
(:mod:`.apply`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .._errors import PlanError
from .apply import apply_plans, restorable
from .certify import Certificate, certificate, claims_identity, function_note, probe_output
from .ops import MARKERS, Op

if TYPE_CHECKING:
    from torch import Tensor
    from torch.optim import Optimizer

    from ..build.chain import Chain
    from ..read.resolve import ResolvedNode
    from ..read.spec import Spec


class Plan:
    """What it takes to turn a chain built from one revision into the next.

    Build it with :func:`diff`. ``ops`` lists removes first (old order), then
    for each node of the new chain, head to tail, its insert or move and its
    update or replace. ``str(plan)`` renders it like ``terraform plan``;
    ``plan.to_dict()`` gives the same as JSON; ``plan.apply(chain, optimizer)``
    carries it out on a live chain, all or nothing; ``plan.restoring(chain)``
    marks the inserts that bring back a node the chain kept when a revision
    removed it (``(restored)``).

    Example:
        >>> import chainspec
        >>> old = chainspec.loads('''
        ... chainspec: 1
        ... chains:
        ...   net:
        ...     input_shape: [4]
        ...     nodes:
        ...       - {id: fc, type: linear, args: {in_features: 4, out_features: 8}}
        ...       - {id: act, type: leaky_relu, args: {negative_slope: 0.2}}
        ... ''')
        >>> new = chainspec.loads(old.text.replace("0.2", "0.1"))
        >>> plan = chainspec.diff(old, new)
        >>> [(op.kind, op.node_id) for op in plan.ops]
        [('update', 'act')]
        >>> net = old.build()
        >>> plan.apply(net)
        >>> net["act"].module.negative_slope
        0.1
    """

    def __init__(self, *, chain: str, old_spec: Spec, new_spec: Spec, old_stage: int, new_stage: int,
                 ops: list[Op], old_nodes: Sequence[ResolvedNode] = (), new_nodes: Sequence[ResolvedNode] = (),
                 same_input: bool = True) -> None:
        self.chain = chain
        self.old_spec = old_spec
        self.new_spec = new_spec
        self.old_stage = old_stage
        self.new_stage = new_stage
        self.ops = ops
        #: The nodes of the chain before and after, head to tail.
        self.old_nodes = tuple(old_nodes)
        self.new_nodes = tuple(new_nodes)
        self.old_ids = tuple(n.id for n in self.old_nodes)
        self.new_ids = tuple(n.id for n in self.new_nodes)
        #: False when the chain's input shape differs between the revisions.
        self.same_input = same_input
        #: The shape check of the new chain, ``(what was checked, its summary)``: diff's rehearsal
        #: leaves it here and ``apply`` reuses it when the dtype is the same (``apply.shape_check``).
        self._shapes: tuple[Any, Any] | None = None
        #: False when ``diff`` found that the chain's output units change (a preserve widening at the end).
        self.same_output = True

    def __repr__(self) -> str:
        return f"<Plan chain={self.chain!r} stage {self.old_stage}→{self.new_stage}: {self.summary()}>"

    @property
    def is_empty(self) -> bool:
        """True when the plan has no ops: applying it changes nothing in the chain or its optimizer.

        Except that ``apply(..., policy="reset")`` still clears the chain's optimizer state, as at a
        growth step of PG-GAN where this chain does not change (``SpecWatcher`` skips the reset).
        """
        return not self.ops

    @property
    def param_delta(self) -> int:
        """The change in the chain's parameter count."""
        return sum(op.param_delta for op in self.ops if op.kind != "move")

    def counts(self) -> dict[str, int]:
        """How many ops of each kind, in marker order (insert, remove, move, update, replace).

        Example:
            >>> Plan(chain="c", old_spec=None, new_spec=None, old_stage=0, new_stage=0, ops=[]).counts()["insert"]
            0
        """
        counts = dict.fromkeys(MARKERS, 0)
        for op in self.ops:
            counts[op.kind] += 1
        return counts

    def summary(self) -> str:
        """One line: the op counts and the parameter change, or ``no changes``."""
        if self.is_empty:
            return "no changes"
        restored = sum(op.restored for op in self.ops)
        parts = [f"{n} to {kind}" + (f" ({restored} restored)" if kind == "insert" and restored else "")
                 for kind, n in self.counts().items() if n]
        return ", ".join(parts) + f"; parameters {self.param_delta:+,}"

    def __str__(self) -> str:
        stages = (f"stage {self.old_stage}" if self.old_stage == self.new_stage
                  else f"stage {self.old_stage} → {self.new_stage}")
        sources = (self.old_spec.source if self.old_spec.source == self.new_spec.source
                   else f"{self.old_spec.source} → {self.new_spec.source}")
        header = f"chain {self.chain!r}, {stages} ({sources})"
        if self.is_empty:
            return f"{header}\nNo changes: the chain matches the revision."
        rows = [(f"  {op.marker} {op.describe()}", f"{op.param_delta:+,} params" if op.param_delta else "")
                for op in self.ops]
        width = max(len(left) for left, _ in rows)
        lines = [header, ""]
        lines += [f"{left:<{width}}   {right}".rstrip() for left, right in rows]
        lines += ["", f"Plan: {self.summary()}."]
        note = function_note(self)
        if note is not None:
            lines.append(note)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (what ``chainspec diff --format json`` prints per chain)."""
        return {"chain": self.chain,
                "old": {"source": self.old_spec.source, "stage": self.old_stage},
                "new": {"source": self.new_spec.source, "stage": self.new_stage},
                "empty": self.is_empty, "counts": self.counts(), "param_delta": self.param_delta,
                "function_preserved": claims_identity(self), "ops": [op.to_dict() for op in self.ops]}

    def restoring(self, chain: Chain) -> Plan:
        """This plan as it would apply to ``chain``: each insert whose module the chain still keeps is restored.

        A revision that removes a node keeps its module and optimizer state in the chain's store of
        removed nodes (see :class:`chainspec.revise.apply.RemovedNodes`); an insert of the same id with the
        same definition then brings them back instead of new weights. :func:`diff` has no chain, so
        its plan cannot know; this returns a copy whose ops say so (``+ fc2 (linear) after fc
        (restored)``, ``"restored": true`` in :meth:`to_dict`). :meth:`apply` decides the same way,
        and marks the plan it applied.

        Example:
            >>> import chainspec
            >>> text = '''
            ... chainspec: 1
            ... chains:
            ...   net:
            ...     input_shape: [4]
            ...     nodes:
            ...       - {id: fc, type: linear, args: {in_features: 4, out_features: 4}}
            ...       - {id: fc2, type: linear, args: {in_features: 4, out_features: 4}}
            ... '''
            >>> full = chainspec.loads(text)
            >>> short = chainspec.loads(text.split("      - {id: fc2")[0])
            >>> net = full.build()
            >>> weight = net["fc2"].module.weight
            >>> chainspec.diff(full, short).apply(net)  # fc2 leaves the chain; its module is kept
            >>> back = chainspec.diff(short, full)
            >>> [op.restored for op in back.ops], [op.restored for op in back.restoring(net).ops]
            ([False], [True])
            >>> back.apply(net)
            >>> print(back)
            chain 'net', stage 0 (<string>)
            <BLANKLINE>
              + fc2 (linear) after fc (restored)   +20 params
            <BLANKLINE>
            Plan: 1 to insert (1 restored); parameters +20.
            >>> net["fc2"].module.weight is weight
            True
        """

        return self._marked(set(restorable(self, chain)))

    def _marked(self, restored: set[str]) -> Plan:
        """A copy whose inserts are marked restored exactly when their id is in ``restored``."""
        plan = copy.copy(self)
        plan.ops = [op if op.restored == (op.kind == "insert" and op.node_id in restored)
                    else replace(op, restored=not op.restored) for op in self.ops]
        return plan

    def apply(self, chain: Chain, optimizer: Optimizer | None = None, *, policy: str = "keep", probe: Any = None,
              loss: Callable[[Tensor], Tensor] | None = None, tolerance: float = 1e-5) -> Certificate | None:
        """Carry out the plan on a live chain (and its optimizer), all or nothing.

        Every new module is built and the whole new chain shape-checked before
        anything is spliced; if anything fails (even ``KeyboardInterrupt``),
        the chain, its parameters and the optimizer are exactly as before.

        A removed node's module (and its optimizer state) is kept in the chain's store of removed
        nodes, and an insert of the same id with the same definition brings it back (see
        :meth:`restoring`); once applied, the plan's ops say which inserts were restored.

        Args:
            chain: the chain built from the plan's old revision (same ids, same order).
            optimizer: the optimizer training it, if any; new parameters join it and
                removed ones leave it (see docs/revisions.md for the group rule).
            policy: ``"keep"`` (surviving parameters keep their optimizer state) or
                ``"reset"`` (the chain's optimizer state is cleared, as PG-GAN does at each growth step).
            probe: an input batch: the chain's output on it is measured before and after (in eval
                mode), and a :class:`~chainspec.revise.certify.Certificate` is returned. If the plan
                claims to keep the function (every insert and replace ``init: preserve``) and the
                output moved by more than ``tolerance``, the apply is rolled back.
            loss: with ``probe``, a function of the output whose change the certificate also reports.
            tolerance: the largest output change a claimed identity may show, relative to
                ``max(1, largest output element)``.

        Returns:
            The certificate when ``probe`` is given, else None.

        Raises:
            CertificateError: (a PlanError) a claimed identity moved the output; nothing was changed.
            PlanError: the chain is not the plan's old revision, or a bad policy.
            SpecError: the new revision does not shape-check, or an ``init``/``optim`` setting cannot apply.
            TypeError: ``chain`` is not a :class:`Chain`, or ``optimizer`` not an optimizer.

        Example:
            >>> import chainspec, torch
            >>> old = chainspec.loads("chainspec: 1\\nchains: {n: {input_shape: [4], nodes: ["
            ...                       "{id: fc, type: linear, args: {in_features: 4, out_features: 4}}]}}")
            >>> new = chainspec.loads("chainspec: 1\\nchains: {n: {input_shape: [4], nodes: ["
            ...                       "{id: fc, type: linear, args: {in_features: 4, out_features: 4}}, {id: fc2, "
            ...                       "type: linear, args: {in_features: 4, out_features: 4}, init: preserve}]}}")
            >>> net = old.build()
            >>> chainspec.diff(old, new).apply(net, probe=torch.randn(8, 4)).holds
            True
        """
        if probe is None:
            apply_plans([(self, chain, optimizer)], policy=policy)
            return None
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
        before = probe_output(chain, probe)
        found: list[Certificate] = []

        def confirm() -> None:  # inside the transaction: a failed claim rolls the apply back
            found.append(certificate(self, before, probe_output(chain, probe), loss, tolerance))

        apply_plans([(self, chain, optimizer)], policy=policy, confirm=confirm)
        return found[0]


class PlanSet(dict[str, Plan]):
    """The plans of several chains of one revision, by chain name (what a multi-chain watcher returns).

    Example:
        >>> PlanSet().is_empty
        True
    """

    @property
    def is_empty(self) -> bool:
        """True when no chain changes."""
        return all(p.is_empty for p in self.values())

    @property
    def param_delta(self) -> int:
        """The change in parameter count over all chains."""
        return sum(p.param_delta for p in self.values())

    def __str__(self) -> str:
        return "\n\n".join(str(p) for p in self.values())

    def to_dict(self) -> dict[str, Any]:
        """``{"empty": ..., "chains": {name: plan.to_dict()}}``."""
        return {"empty": self.is_empty, "chains": {name: p.to_dict() for name, p in self.items()}}

    def apply(self, chains: Mapping[str, Chain],
              optimizers: Optimizer | Mapping[str, Optimizer | None] | None = None, *,
              policy: str = "keep") -> None:
        """Carry out every plan on its chain (a generator's and a discriminator's, say) as one all-or-nothing step.

        Every chain is prepared (built, shape-checked, optimizer changes worked out) before any is
        changed; if anything fails for any chain, every chain and optimizer is exactly as before.

        Args:
            chains: the live chains, by the names the plans have.
            optimizers: one optimizer for all chains, or a dict by chain name (None: no optimizer).
            policy: ``"keep"`` or ``"reset"`` optimizer state of surviving parameters (see :meth:`Plan.apply`).

        Raises:
            PlanError: a chain is not its plan's old revision, a chain is missing, or a bad policy.
            SpecError: a revision does not shape-check, or an ``init``/``optim`` setting cannot apply.
            TypeError: ``chains`` is not a dict of chains, or an optimizer is not an optimizer.

        Example:
            >>> import chainspec
            >>> text = ("chainspec: 1\\nchains:\\n  g: {input_shape: [2], nodes: [{id: a, type: relu}]}\\n"
            ...         "  d: {input_shape: [2], nodes: [{id: b, type: relu}]}\\n")
            >>> old = chainspec.loads(text)
            >>> new = chainspec.loads(text.replace("type: relu}]}\\n  d", "type: tanh}]}\\n  d"))
            >>> chains = old.build_all()
            >>> plans = chainspec.diff_all(old, new)
            >>> plans.apply(chains)
            >>> chains["g"]["a"].type, chains["d"]["b"].type
            ('tanh', 'relu')
        """
        if not isinstance(chains, Mapping):
            raise TypeError(f"chains must be a dict of chains by name, got {type(chains).__name__}")
        missing = [name for name in self if name not in chains]
        if missing:
            raise PlanError(f"no chain given for the plan of {missing[0]!r}; the plans are for {', '.join(self)}")
        if isinstance(optimizers, Mapping):
            items = [(plan, chains[name], optimizers.get(name)) for name, plan in self.items()]
        else:
            items = [(plan, chains[name], optimizers) for name, plan in self.items()]
        apply_plans(items, policy=policy)


