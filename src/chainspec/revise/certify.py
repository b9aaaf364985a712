"""Growth certificates: what a revision did to a chain's function, measured on a probe batch.

A plan whose inserts and replacements all say ``init: preserve`` claims that the revised chain
computes what the old one did. ``plan.apply(chain, optimizer, probe=x)`` checks the claim
instead of trusting it: the chain's output on ``x`` is taken before and after (in eval mode, so
that dropout draws nothing and batch norm reads its running statistics; every module's mode is
put back), and the apply is rolled back with a :class:`CertificateError` if a claimed identity
moved the output by more than the tolerance. The :class:`Certificate` it returns says how far
the output (and, with a ``loss``, the loss) moved, claim or not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._errors import PlanError
from ..read.resolve import Leaf
from .widen import IDENTITY_IF_NON_NEGATIVE

if TYPE_CHECKING:
    from .ops import Revising


class CertificateError(PlanError):
    """A plan that claims to preserve the chain's function changed its output on the probe batch.

    The apply was rolled back: the chain and optimizer are as they were. ``certificate`` holds
    what was measured.

    Example:
        >>> issubclass(CertificateError, PlanError)
        True
    """

    def __init__(self, message: str, certificate: Certificate) -> None:
        super().__init__(message)
        self.certificate = certificate


@dataclass(frozen=True)
class Certificate:
    """How a revision changed a chain's output on a probe batch.

    Attributes:
        claimed: whether the plan claimed to keep the function (every insert and replace ``init: preserve``).
        output_change: the largest absolute change of any output element.
        output_scale: the largest absolute output element before the revision.
        tolerance: the largest change a claim may show, relative to ``max(1, output_scale)``.
        loss_before: ``loss(output)`` before, if a loss was given.
        loss_after: the same after.

    Example:
        >>> c = Certificate(True, 1e-7, 2.0, 1e-5, 0.5, 0.5)
        >>> c.holds, c.loss_change
        (True, 0.0)
    """

    claimed: bool
    output_change: float
    output_scale: float
    tolerance: float
    loss_before: float | None = None
    loss_after: float | None = None

    @property
    def holds(self) -> bool:
        """Whether the output moved by at most the tolerance (relative to ``max(1, output_scale)``)."""
        return self.output_change <= self.tolerance * max(1.0, self.output_scale)

    @property
    def loss_change(self) -> float | None:
        """``loss_after - loss_before``, if a loss was given."""
        if self.loss_before is None or self.loss_after is None:
            return None
        return self.loss_after - self.loss_before

    def __str__(self) -> str:
        claim = "claims the function is kept" if self.claimed else "makes no claim"
        loss = "" if self.loss_change is None else f", loss {self.loss_before:.6g} → {self.loss_after:.6g}"
        return f"the plan {claim}; largest output change {self.output_change:.3g}{loss}"


def claims_identity(plan: Revising) -> bool:
    """Whether ``plan`` claims to keep the chain's function: it inserts or replaces something, every such op
    says ``init: preserve``, nothing is removed or moved, and the input and the output units stay the same."""
    built = [op for op in plan.ops if op.kind in ("insert", "replace")]
    return bool(built) and plan.same_input and plan.same_output and all(
        op.init == "preserve" for op in built) and not any(
        op.kind in ("remove", "move") or (op.kind == "update" and op.rebuild) for op in plan.ops)


def function_note(plan: Revising) -> str | None:
    """The plan's one line on the chain's function: claimed kept (:func:`claims_identity`), or why no claim
    is made (which may still keep it: ``keep`` on a widened layer with ``preserve`` on its consumer does).

    None when no op says ``init: preserve`` (no claim was asked for).

    Example:
        >>> import chainspec
        >>> old = chainspec.loads("chainspec: 1\\nchains: {n: {input_shape: [4], nodes: ["
        ...                       "{id: fc, type: linear, args: {in_features: 4, out_features: 4}}]}}")
        >>> new = chainspec.loads("chainspec: 1\\nchains: {n: {input_shape: [4], nodes: ["
        ...                       "{id: fc, type: linear, args: {in_features: 4, out_features: 4}}, {id: fc2, "
        ...                       "type: linear, args: {in_features: 4, out_features: 4}, init: preserve}]}}")
        >>> function_note(chainspec.diff(old, new))
        'Function: preserved (every insert and replace is init: preserve; apply with probe= to measure it).'
    """
    built = [op for op in plan.ops if op.kind in ("insert", "replace")]
    if not any(op.init == "preserve" for op in built):
        return None
    if claims_identity(plan):
        conditional = [f"{op.node_id} ({', '.join(kinds)})" for op in built if op.kind == "insert"
                       and op.new is not None and (kinds := _identity_if_non_negative(op.new.tree))]
        if conditional:
            return (f"Function: preserved where the inputs of {', '.join(conditional)} are not negative "
                    "(apply with probe= to measure it).")
        return "Function: preserved (every insert and replace is init: preserve; apply with probe= to measure it)."
    reasons = []
    if not plan.same_input:
        reasons.append("the chain's input changes")
    if not plan.same_output:
        reasons.append("the chain's output gains units")
    for op in plan.ops:
        if op.kind == "remove":
            reasons.append(f"{op.node_id} is removed")
        elif op.kind == "move":
            reasons.append(f"{op.node_id} moves")
        elif op.kind == "update" and op.rebuild:
            reasons.append(f"{op.node_id} changes ({', '.join(c.field for c in op.changes)})")
        elif op.kind in ("insert", "replace") and op.init != "preserve":
            starts = {"copy": "starts as a copy", "keep": "keeps only its overlapping weights"}
            reasons.append(f"{op.node_id} {starts.get(op.init, 'starts fresh')}")
    return "Function: not claimed: " + "; ".join(reasons) + "."


def _identity_if_non_negative(tree: Any) -> list[str]:
    """The layer types of an inserted node that start as the identity only on non-negative inputs (a relu
    the node applies to its input, or after a residual sum; not one inside a residual body, which adds 0)."""
    if isinstance(tree, Leaf):
        return [tree.type] if tree.type in IDENTITY_IF_NON_NEGATIVE else []
    parts = dict(tree.parts)
    if tree.kind == "residual":
        return _identity_if_non_negative(parts["after"]) if "after" in parts else []
    return [kind for _, part in tree.parts for kind in _identity_if_non_negative(part)]


def probe_output(chain: nn.Module, probe: Any) -> torch.Tensor:
    """The chain's output on ``probe`` in eval mode, without gradients; every module's mode is put back."""
    modes = [(module, module.training) for module in chain.modules()]
    try:
        chain.eval()
        with torch.no_grad():
            out = chain(probe)
    finally:
        for module, training in modes:
            module.training = training
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the chain's output on the probe is a {type(out).__name__}, not a tensor")
    return out.detach().clone()


def certificate(plan: Revising, before: torch.Tensor, after: torch.Tensor,
                loss: Callable[[torch.Tensor], torch.Tensor] | None, tolerance: float) -> Certificate:
    """Compare the outputs before and after a plan; raise :class:`CertificateError` if a claim fails."""
    claimed = claims_identity(plan)
    if before.shape != after.shape:
        change = math.inf
    else:
        change = float((after.double() - before.double()).abs().max()) if before.numel() else 0.0
    scale = float(before.double().abs().max()) if before.numel() else 0.0
    losses = (float(loss(before)), float(loss(after))) if loss is not None else (None, None)
    found = Certificate(claimed, change, scale, tolerance, *losses)
    if claimed and not found.holds:
        raise CertificateError(f"chain {plan.chain!r}: the plan claims to keep the function, but the output on "
                               f"the probe batch moved by {change:.3g} (tolerance {tolerance:g} x "
                               f"{max(1.0, scale):.3g}); the revision was rolled back", found)
    return found
