"""``Grower``: progressive growing of several chains in lockstep, with PG-GAN's fade-in.

A grower follows the spec's growth schedule (:mod:`chainspec.read.schedule`).
``grower.step(batch_size)`` counts the images (or steps) just trained; when a
phase boundary is crossed it acts on every chain at once:

* **fade into stage k**: the growth plan ``diff(spec, spec, stage=(k-1, k))``
  is applied through the diff engine (all chains as one all-or-nothing step,
  optimizers included); then the nodes the plan removed are put back beside
  the new ones, inside a blend (:mod:`chainspec.grow.blend`), with alpha = 0.
  The old nodes keep their Parameter objects, their state_dict keys and their
  optimizer state (under ``policy="keep"``);
* **during the fade** alpha rises linearly with the count, shared by all chains;
* **stabilise**: alpha reaches 1 and the blend collapses: the old nodes leave
  the chain and the optimizer, leaving exactly the chain of stage k;
* a fade of length 0 grows abruptly: the plan is applied and that is all.

``state_dict()``/``load_state_dict()`` and :meth:`Grower.save` /
:meth:`Grower.from_checkpoint` resume a run anywhere, mid-fade included, with
the same alpha and the same outputs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .._errors import CheckpointError, PlanError
from ..build.chain import Chain
from ..build.modules import instantiate, placement_of
from ..read.schedule import Phase, Schedule
from ..revise import optim as _optim
from ..revise.apply import apply_plans
from ..revise.checkpoint import (
    _path,
    _q,
    _show,
    state_layout_problem,
    state_mismatch,
    state_shape_problem,
    state_value_problem,
    tensor_problem,
)
from ..revise.diff import diff
from ..revise.plan import Plan
from ..revise.transaction import Transaction
from .blend import Blend, blend_ids, resize_adapter, wrap

if TYPE_CHECKING:
    from ..read.spec import Spec
    from ..revise.checkpoint import Checkpoint

#: Layout version of :meth:`Grower.state_dict`.
STATE_VERSION = 1

EventKind = Literal["fade", "grow", "stabilize", "done"]


@dataclass(frozen=True)
class GrowthEvent:
    """Something :meth:`Grower.step` did: a fade began, a stage grew abruptly, a fade ended, the schedule ended.

    Example:
        >>> GrowthEvent("fade", 2, 1_600_000)
        GrowthEvent(kind='fade', stage=2, position=1600000)
    """

    kind: EventKind
    stage: int
    position: int


@dataclass(frozen=True)
class Region:
    """The part of a chain that a growth plan replaces: the old path, the new path, and where they sit.

    ``after`` is the node right before the region in both stages (None: the
    head); ``pre`` and ``post`` adapt the old path to the new path's input and
    output shapes (None: no adapter needed).
    """

    after: str | None
    old_ids: tuple[str, ...]
    new_ids: tuple[str, ...]
    old_shapes: tuple[tuple[int, ...], tuple[int, ...]]  # (input, output) at the old stage
    new_shapes: tuple[tuple[int, ...], tuple[int, ...]]  # (input, output) at the new stage


@dataclass(frozen=True)
class Transition:
    """The growth of one chain into ``stage``: its plan, and the region a fade blends (None: nothing to blend)."""

    chain: str
    stage: int
    plan: Plan
    region: Region | None

    def adapters(self) -> tuple[nn.Module | None, nn.Module | None]:
        """Fresh ``(pre, post)`` adapter modules for the old path (parameter-free)."""
        if self.region is None:
            return None, None
        (old_in, old_out), (new_in, new_out) = self.region.old_shapes, self.region.new_shapes
        return resize_adapter(new_in, old_in), resize_adapter(old_out, new_out)


class Grower:
    """Grows several chains (a generator and a discriminator) through a spec's stages, fading new layers in.

    Args:
        spec: the spec the chains were built from; its ``growth`` section is the schedule.
        chains: the chains, by their names in the spec, all at the same stage.
        optimizers: the optimizer of each chain, by chain name (one optimizer may serve several).
        schedule: overrides the spec's schedule (e.g. shorter phases for a smoke test).
        policy: ``"keep"`` or ``"reset"`` optimizer state at each growth step (default: the spec's).

    Example:
        >>> spec = chainspec.load("specs/pggan_tiny.yaml")  # doctest: +SKIP
        >>> chains = spec.build_all(stage=0)  # doctest: +SKIP
        >>> opts = {n: torch.optim.Adam(c.parameters(), 1e-3, betas=(0.0, 0.99)) for n, c in chains.items()}
        ... # doctest: +SKIP
        >>> grower = chainspec.Grower(spec, chains=chains, optimizers=opts)  # doctest: +SKIP
        >>> for batch in batches:  # doctest: +SKIP
        ...     train_step(chains, opts, batch, alpha=grower.alpha)
        ...     grower.step(len(batch))
    """

    def __init__(self, spec: Spec, chains: Mapping[str, Chain],
                 optimizers: Mapping[str, Optimizer | None] | None = None, *, schedule: Schedule | None = None,
                 policy: str | None = None) -> None:
        if not chains:
            raise ValueError("Grower needs at least one chain, e.g. chains={'generator': g, 'discriminator': d}")
        for name in chains:
            spec.resolved(name)  # ValueError with a hint for an unknown chain
        unknown = [name for name in (optimizers or {}) if name not in chains]
        if unknown:
            raise ValueError(f"optimizers given for {unknown}, which are not among the chains {list(chains)}; "
                             "key optimizers by chain name")
        self.spec = spec
        self.chains: dict[str, Chain] = dict(chains)
        self.optimizers: dict[str, Optimizer | None] = {name: (optimizers or {}).get(name) for name in chains}
        self.schedule = schedule or Schedule.from_model(spec.data.growth, spec.stages)
        if self.schedule.stages != spec.stages:
            raise ValueError(f"the schedule has {self.schedule.stages} stages but {spec.source} has {spec.stages}")
        self.policy = policy or self.schedule.policy
        if self.policy not in ("keep", "reset"):
            raise ValueError(f"policy must be 'keep' or 'reset', got {self.policy!r}")
        self._blend_ids = {name: blend_ids({n.id for n in spec.resolved(name).nodes}) for name in chains}
        self._transitions: dict[tuple[str, int], Transition] = {}
        for stage in range(1, spec.stages):  # check every transition now, not hours into training
            for name in chains:
                self.transition(name, stage)
        stage = self._plain_stage()
        self._index = next(i for i, p in enumerate(self.schedule.phases) if p.stage == stage and p.kind != "fade")
        self.position: int = self.schedule.phases[self._index].start
        self.images = self.position if self.schedule.unit == "images" else 0
        self.steps = self.position if self.schedule.unit == "steps" else 0
        self.blends: dict[str, Blend] = {}

    # -- where the run is -------------------------------------------------------------------------
    @property
    def phase(self) -> Phase:
        """The current phase of the schedule."""
        return self.schedule.phases[self._index]

    @property
    def stage(self) -> int:
        """The current stage (during a fade into stage k: k)."""
        return self.phase.stage

    @property
    def alpha(self) -> float:
        """The fade-in weight of the new layers: rising 0 -> 1 during a fade, 1 otherwise."""
        return self.phase.alpha_at(self.position)

    @property
    def minibatch(self) -> int | None:
        """The minibatch size the spec's growth section gives the current stage (its fade-in included), or
        None where it gives none. ``specs/pggan.yaml`` states the paper's: 16 up to 128x128, then 14, 6 and 3."""
        return self.schedule.minibatch(self.stage)

    @property
    def fading(self) -> bool:
        """True while a new stage fades in."""
        return self.phase.kind == "fade"

    @property
    def done(self) -> bool:
        """True once the last stage has stabilised (training may go on at the final stage)."""
        return self.phase.kind == "done"

    def __repr__(self) -> str:
        return (f"<Grower stage {self.stage} ({self.phase.kind}), alpha {self.alpha:.3f}, "
                f"{self.position:,} {self.schedule.unit}>")

    # -- transitions -------------------------------------------------------------------------------
    def transition(self, chain: str, stage: int) -> Transition:
        """The growth of ``chain`` into ``stage``: its plan (``print(t.plan)``) and the region a fade blends.

        Raises:
            PlanError: the plan's changes cannot be blended (not one contiguous region, or shapes that
                no resize adapter bridges); set that stage's fade to 0 in the spec to grow abruptly.
        """
        key = (chain, stage)
        found = self._transitions.get(key)
        if found is None:
            plan = diff(self.spec, self.spec, chain=chain, stage=(stage - 1, stage))
            found = Transition(chain, stage, plan, self._region(chain, stage, plan))
            try:
                found.adapters()
            except PlanError as exc:
                raise PlanError(f"cannot fade chain {chain!r}, stage {stage - 1} -> {stage}: {exc}; "
                                f"{_abrupt_hint(stage)}") from None
            self._transitions[key] = found
        return found

    def _region(self, name: str, stage: int, plan: Plan) -> Region | None:
        fade = any(p.kind == "fade" and p.stage == stage for p in self.schedule.phases)
        old, new = list(plan.old_ids), list(plan.new_ids)
        removed = [op.node_id for op in plan.ops if op.kind == "remove"]
        inserted = [op.node_id for op in plan.ops if op.kind == "insert"]
        if not fade or not (removed or inserted):
            return None
        where = f"chain {name!r}, stage {stage - 1} -> {stage}"
        hint = _abrupt_hint(stage)
        old_after = _contiguous(old, removed, where, "removed", hint)
        new_after = _contiguous(new, inserted, where, "inserted", hint)
        after = new_after if inserted else old_after
        if after is not None and (after not in old or after not in new):
            raise PlanError(f"cannot fade {where}: the node before the region, {after!r}, is not in both stages; "
                            f"{hint}")
        if removed and inserted and old_after != new_after:
            raise PlanError(f"cannot fade {where}: the removed nodes follow {old_after or 'the head'} but the "
                            f"inserted ones follow {new_after or 'the head'}; {hint}")
        before_old = _next(old, removed[-1]) if removed else _next(old, after) if after else (old[0] if old else None)
        before_new = _next(new, inserted[-1]) if inserted else _next(new, after) if after else (new[0] if new else None)
        if before_old != before_new:
            raise PlanError(f"cannot fade {where}: the region is followed by {before_old!r} before and "
                            f"{before_new!r} after; {hint}")
        old_sum, new_sum = self.spec.summary(name, stage=stage - 1), self.spec.summary(name, stage=stage)

        def shapes(summary: Any, ids: list[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
            out = {n.id: n.output_shape for n in summary.nodes}
            start = out[after] if after is not None else summary.input_shape
            return start, out[ids[-1]] if ids else start

        return Region(after, tuple(removed), tuple(inserted), shapes(old_sum, removed), shapes(new_sum, inserted))

    def _plain_stage(self) -> int:
        """The stage all chains are at (each chain's node ids are those of that stage)."""
        common: set[int] | None = None
        for name, chain in self.chains.items():
            ids = chain.ids()
            resolved = self.spec.resolved(name)
            stages = {k for k in range(self.spec.stages) if [n.id for n in resolved.at(k)] == ids}
            if not stages:
                raise PlanError(f"chain {name!r} matches no stage of {self.spec.source}: it has nodes {ids[:8]}"
                                f"{'...' if len(ids) > 8 else ''}; build it with spec.build({name!r}, stage=...)")
            common = stages if common is None else common & stages
        if not common:
            raise PlanError("the chains are at different stages; build them all at the same stage")
        # Several stages can share a chain's node ids; the stage a build or apply recorded settles it.
        recorded = {getattr(c, "stage", None) for c in self.chains.values()}
        only = recorded.pop() if len(recorded) == 1 else None
        return only if isinstance(only, int) and only in common else min(common)

    # -- advancing -----------------------------------------------------------------------------------
    def step(self, batch_size: int | None = None) -> list[GrowthEvent]:
        """Count one training step of ``batch_size`` images; grow, fade or collapse as the schedule says.

        Call it after each optimizer step (of the discriminator, for a GAN). ``batch_size`` is required
        when the schedule counts images. Returns what happened at this step (usually nothing).

        Example:
            >>> grower.step(16)  # doctest: +SKIP
            []
            >>> grower.step(16)  # the step that reaches 6,000 images, the end of stage 0  # doctest: +SKIP
            [GrowthEvent(kind='fade', stage=1, position=6000)]
        """
        if self.schedule.unit == "images":
            if batch_size is None or isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
                raise ValueError(f"the schedule counts images: pass the batch size to step(), got {batch_size!r}")
            self.images += int(batch_size)
        elif batch_size is not None:
            self.images += int(batch_size)
        self.steps += 1
        return self._advance(self.images if self.schedule.unit == "images" else self.steps)

    def _advance(self, position: int) -> list[GrowthEvent]:
        events: list[GrowthEvent] = []
        self.position = position
        while (end := self.phase.end) is not None and position >= end:
            nxt = self.schedule.phases[self._index + 1]
            kind: EventKind
            if nxt.kind == "fade":
                self._start_fade(nxt.stage)
                kind = "fade"
            elif nxt.kind == "stabilize" and self.phase.kind == "fade":
                self._collapse()
                kind = "stabilize"
            elif nxt.kind == "stabilize":
                self._grow(nxt.stage)
                kind = "grow"
            else:
                kind = "done"
            self._index += 1
            events.append(GrowthEvent(kind, nxt.stage, nxt.start))
        self._set_alpha()
        return events

    def _set_alpha(self) -> None:
        alpha = self.alpha
        for blend in self.blends.values():
            blend.alpha = alpha

    def _grow(self, stage: int) -> None:
        """Grow every chain into ``stage`` abruptly (no fade)."""
        items = [(self.transition(name, stage).plan, chain, self.optimizers[name])
                 for name, chain in self.chains.items()]
        apply_plans(items, policy=self.policy)

    def _start_fade(self, stage: int) -> None:
        """Apply the growth plans, then blend each chain's old path back in beside the new one, alpha = 0."""
        saved: dict[str, list[tuple[str, Tensor, int | None, Any]]] = {}
        old_nodes: dict[str, list[tuple[str, nn.Module, str]]] = {}
        adapters: dict[str, tuple[nn.Module | None, nn.Module | None]] = {}
        for name, chain in self.chains.items():
            region = self.transition(name, stage).region
            if region is None:
                continue
            old_nodes[name] = [(i, chain[i].module, chain[i].type) for i in region.old_ids]
            saved[name] = _optimizer_entries(self.optimizers[name], old_nodes[name])
            adapters[name] = self.transition(name, stage).adapters()
        self._grow(stage)
        for name, old in old_nodes.items():
            self._wrap(name, stage, old, adapters[name], saved[name], alpha=0.0)

    def _wrap(self, name: str, stage: int, old: list[tuple[str, nn.Module, str]],
              adapters: tuple[nn.Module | None, nn.Module | None],
              entries: list[tuple[str, Tensor, int | None, Any]], alpha: float) -> None:
        region = self.transition(name, stage).region
        assert region is not None
        chain = self.chains[name]
        pre, post = adapters
        self.blends[name] = wrap(chain, old, region.new_ids, after=region.after, pre=pre, post=post, alpha=alpha,
                                 ids=self._blend_ids[name])
        optimizer = self.optimizers[name]
        if optimizer is None:
            return
        # The old path keeps training during the fade, in the group it was in, with its moments (policy keep).
        for param_name, param, group_index, state in entries:
            if group_index is None:
                continue  # it was not being trained (frozen, or left out of the optimizer on purpose)
            groups = optimizer.param_groups
            group = groups[group_index] if group_index < len(groups) else groups[0]
            _optim.add_params(optimizer, [(param_name, param)], group)
            if state is not None and self.policy == "keep":
                optimizer.state[param] = state

    def _collapse(self) -> None:
        """End every fade: the blend nodes and the old paths leave the chains and the optimizers.

        Under ``policy="reset"`` the chains' optimizer state is cleared here too, as the official
        PG-GAN code does (``reset_opt_for_new_lod`` runs whenever the level of detail starts or stops
        changing: at the start of every fade and of every stabilise phase).
        """
        for name, blend in self.blends.items():
            removed = blend.collapse()
            optimizer = self.optimizers[name]
            if optimizer is not None:
                _optim.remove_params(optimizer, [p for node in removed for p in node.module.parameters()])
        self.blends = {}
        if self.policy == "reset":
            for name, chain in self.chains.items():
                optimizer = self.optimizers[name]
                if optimizer is not None:
                    _optim.clear_state(optimizer, chain.parameters())

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the run is in the schedule, plus, mid-fade, the old paths' weights and optimizer state.

        Only strings, numbers and tensors: it fits in a :func:`chainspec.save_checkpoint` ``extra``
        or a ``torch.save`` file.

        Example:
            >>> state = grower.state_dict()  # doctest: +SKIP
            >>> state["stage"], state["phase"], state["alpha"], state["images"]  # doctest: +SKIP
            (1, 'fade', 0.25, 7500)
        """
        state: dict[str, Any] = {"version": STATE_VERSION, "unit": self.schedule.unit, "position": self.position,
                                 "images": self.images, "steps": self.steps, "stage": self.stage,
                                 "phase": self.phase.kind, "alpha": self.alpha, "schedule": self.schedule.to_dict(),
                                 "fade": {}}
        for name, blend in self.blends.items():
            modules = blend.old_modules()
            weights = {f"{node_id}.{key}": value.detach().clone() for node_id, module in modules.items()
                       for key, value in module.state_dict().items()}
            entries = _optimizer_entries(self.optimizers[name], [(i, m, "") for i, m in modules.items()])
            optim = {pname: {"group": -1 if group is None else group, "state": _copy_state(st)}
                     for pname, _, group, st in entries}
            state["fade"][name] = {"weights": weights, "optimizer": optim}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Bring the chains (and optimizers) to the saved point of the schedule, mid-fade included.

        The chains must be at a plain stage no later than the saved one (freshly built, or rebuilt
        from a checkpoint): they are grown to it, and a fade in progress is blended in again with
        the saved old-path weights, optimizer state and alpha. Load the chains' and optimizers' own
        state dicts after this call, if you saved them separately.

        Every field of ``state`` is checked before anything changes, and a failure while growing
        puts the chains, the optimizers, torch's RNG and this grower back as they were.

        Raises:
            CheckpointError: ``state`` is malformed; the message names the field (a missing key, a
                wrong type, a count that is negative or past 2**63, a stage outside the spec's, an
                alpha outside [0, 1], a fade-in whose weights or optimizer state do not fit the old
                path).
            PlanError: the chains are already past the saved stage, or mid-fade, or the schedule no
                longer puts the saved position in the same phase.

        Example:
            >>> chains = spec.build_all(stage=0)  # doctest: +SKIP
            >>> grower = chainspec.Grower(spec, chains=chains, optimizers=make_optimizers(chains))  # doctest: +SKIP
            >>> grower.load_state_dict(saved["grower"])  # doctest: +SKIP
            >>> grower.stage, grower.alpha  # the saved fade, blended in again  # doctest: +SKIP
            (1, 0.25)
            >>> for name, chain in chains.items():  # doctest: +SKIP
            ...     chain.load_state_dict(saved[name])
        """
        index, position, images, steps, fade = self._checked(state)
        phase = self.schedule.phases[index]
        change = self._transaction()
        try:
            for stage in range(self.stage + 1, phase.stage + 1):
                self._grow(stage)
            if phase.kind == "fade":
                self._restore_fade(phase.stage, fade)
            self._index = index
            self.position = position
            self.images, self.steps = images, steps
            self._set_alpha()
        except BaseException:
            change.rollback()
            raise

    def _transaction(self) -> Transaction:
        """A transaction protecting everything loading a state changes: the chains, the optimizers, this grower."""
        change = Transaction()
        for chain in self.chains.values():
            change.protect_chain(chain)
        for optimizer in self.optimizers.values():
            change.protect_optimizer(optimizer)
        kept = (self._index, self.position, self.images, self.steps, dict(self.blends))

        def restore_self() -> None:
            self._index, self.position, self.images, self.steps, blends = kept
            self.blends = dict(blends)

        change.protect(restore_self)
        return change

    def _checked(self, state: Any) -> tuple[int, int, int, int, Mapping[str, Any]]:
        """Check every field of a saved state against this grower; return where it puts the run.

        Returns ``(phase index, position, images, steps, fade-ins)``.
        """
        if not isinstance(state, Mapping):
            raise CheckpointError(f"grower state should be a dict, got {type(state).__name__}")
        version = state.get("version")
        if type(version) is not int or version != STATE_VERSION:
            raise CheckpointError(f"grower state has version {_q(version)}; this release reads {STATE_VERSION}")
        unit = state.get("unit")
        if not isinstance(unit, str) or unit not in ("images", "steps"):
            raise _invalid("unit", f"should be 'images' or 'steps', got {_q(unit)}")
        if unit != self.schedule.unit:
            raise PlanError(f"the saved run counts {unit} but the schedule counts {self.schedule.unit}")
        if self.blends:
            raise PlanError("load_state_dict needs chains at a plain stage, but a fade is in progress; "
                            "build fresh chains (spec.build_all) and a new Grower, then load")
        position, images, steps = (_count(state, key) for key in ("position", "images", "steps"))
        counted = images if unit == "images" else steps
        if position != counted:
            raise _invalid("position", f"is {position}, but the run counted {counted} {unit}")
        saved_stage, saved_kind = self._checked_point(state)
        fade = state.get("fade", {})
        if not isinstance(fade, Mapping):
            raise _invalid("fade", f"should be a dict, got {type(fade).__name__}")
        index = self.schedule.index(position)
        phase = self.schedule.phases[index]
        if (phase.kind, phase.stage) != (saved_kind, saved_stage):
            raise PlanError(f"the saved run was in the {saved_kind} phase of stage {saved_stage} at "
                            f"{position:,} {self.schedule.unit}, but this schedule puts that position in the "
                            f"{phase.kind} phase of stage {phase.stage}; use the schedule the run was saved with")
        if self.stage > phase.stage:
            raise PlanError(f"the chains are at stage {self.stage}, past the saved stage {phase.stage}; "
                            "build them at an earlier stage")
        self._check_fades(phase, fade)
        return index, position, images, steps, fade

    def _checked_point(self, state: Mapping[str, Any]) -> tuple[int, str]:
        """The saved stage and phase kind, and checks of alpha and the saved schedule."""
        stage = state.get("stage")
        if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < self.spec.stages:
            raise _invalid("stage", f"should be a stage of {_show(self.spec.source)} (0..{self.spec.stages - 1}), "
                                    f"got {_q(stage)}")
        kind = state.get("phase")
        if not isinstance(kind, str) or kind not in ("stabilize", "fade", "done"):
            raise _invalid("phase", f"should be 'stabilize', 'fade' or 'done', got {_q(kind)}")
        alpha = state.get("alpha")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
                (math.isfinite(alpha) if isinstance(alpha, float) else True) and 0 <= alpha <= 1):
            raise _invalid("alpha", f"should be a number in [0, 1], got {_q(alpha)}")
        if "schedule" in state:
            try:
                Schedule.from_dict(state["schedule"])
            except ValueError as exc:
                raise _invalid("schedule", f"is not a schedule: {_show(str(exc))}") from None
        return stage, kind

    def _check_fades(self, phase: Phase, fade: Mapping[str, Any]) -> None:
        """The saved fade-ins: exactly one per chain the saved phase blends, each fitting its old path."""
        fading = [name for name in self.chains
                  if phase.kind == "fade" and self.transition(name, phase.stage).region is not None]
        for name in fade:
            if not isinstance(name, str) or name not in fading:
                raise _invalid(("fade", name), f"is a fade-in of a chain that is not fading in the saved phase "
                                               f"({phase.kind} of stage {phase.stage})")
        for name in fading:
            if name not in fade:
                raise CheckpointError(f"the saved grower state has no fade-in of chain {_q(name)} into stage "
                                      f"{phase.stage}")
            self._check_fade(name, phase.stage, fade[name])

    def _check_fade(self, name: str, stage: int, entry: Any) -> None:
        """Check one saved fade-in against a meta-device build of the old path."""
        where = ("fade", name)
        if not isinstance(entry, Mapping):
            raise _invalid(where, f"should be a dict, got {type(entry).__name__}")
        weights, optim = entry.get("weights"), entry.get("optimizer")
        for key, value in (("weights", weights), ("optimizer", optim)):
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise _invalid((*where, key), "should be a dict with string keys")
        region = self.transition(name, stage).region
        assert region is not None
        nodes = {n.id: n for n in self.spec.resolved(name).at(stage - 1)}
        _, dtype = placement_of(self.chains[name])
        expected: dict[str, Tensor] = {}
        params: dict[str, Tensor] = {}
        with torch.random.fork_rng(devices=[]):
            for node_id in region.old_ids:
                module = instantiate(nodes[node_id], device="meta", dtype=dtype)
                expected.update((f"{node_id}.{k}", v) for k, v in module.state_dict().items())
                params.update((f"{node_id}.{k}", p) for k, p in module.named_parameters())
        for key, value in weights.items():
            _check(tensor_problem(value), (*where, "weights", key))
        mismatched = state_mismatch(weights, expected)
        if mismatched:
            raise _invalid((*where, "weights"), f"do not fit the old path: {_show('; '.join(mismatched), 2000)}")
        for key, value in weights.items():
            if value.is_floating_point() != expected[key].is_floating_point():
                raise _invalid((*where, "weights", key), f"is a {value.dtype} tensor where the old path has "
                                                         f"{expected[key].dtype}")
        optimizer = self.optimizers[name]
        for pname, saved in optim.items():
            self._check_old_state((*where, "optimizer", pname), saved, params.get(pname),
                                  type(optimizer) if optimizer is not None else None)

    @staticmethod
    def _check_old_state(where: tuple[object, ...], saved: Any, param: Tensor | None,
                         cls: type[Optimizer] | None) -> None:
        if param is None:
            raise _invalid(where, "is not a parameter of the old path")
        if not isinstance(saved, Mapping):
            raise _invalid(where, f"should be a dict, got {type(saved).__name__}")
        group = saved.get("group")
        if isinstance(group, bool) or not isinstance(group, int) or not -1 <= group <= MAX_COUNT:
            raise _invalid((*where, "group"), f"should be a group index (or -1: untrained), got {_q(group)}")
        state = saved.get("state")
        if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
            raise _invalid((*where, "state"), "should be a dict with string keys")
        for key, value in state.items():
            _check(state_value_problem(key, value) or state_shape_problem(cls, key, value, param),
                   (*where, "state", key))

    def _restore_fade(self, stage: int, saved: Mapping[str, Any]) -> None:
        """Blend the saved old paths in again (``saved`` is checked: see :meth:`_check_fade`)."""
        for name, chain in self.chains.items():
            transition = self.transition(name, stage)
            if transition.region is None:
                continue
            weights, optim = saved[name]["weights"], saved[name]["optimizer"]
            nodes = {n.id: n for n in self.spec.resolved(name).at(stage - 1)}
            device, dtype = placement_of(chain)
            old: list[tuple[str, nn.Module, str]] = []
            with torch.random.fork_rng(devices=[]):  # a resumed run draws the same random numbers
                for node_id in transition.region.old_ids:
                    module = instantiate(nodes[node_id], device=device, dtype=dtype)
                    own = {k[len(node_id) + 1:]: v for k, v in weights.items() if k.startswith(node_id + ".")}
                    try:
                        module.load_state_dict(own, strict=True)
                    except RuntimeError as exc:
                        raise CheckpointError(f"cannot restore the old path {_q(node_id)} of chain {_q(name)}: "
                                              f"{_show(str(exc).splitlines()[0])}") from None
                    module.train(chain.training)
                    old.append((node_id, module, nodes[node_id].type))
            entries = []
            optimizer = self.optimizers[name]
            for node_id, module, _ in old:
                for pname, param in module.named_parameters():
                    saved_entry = optim.get(f"{node_id}.{pname}")
                    group = None if saved_entry is None or saved_entry["group"] < 0 else int(saved_entry["group"])
                    st = _to_param(saved_entry["state"], param) if saved_entry and saved_entry["state"] else None
                    if optimizer is not None and group is not None and st is not None:
                        groups = optimizer.param_groups
                        found = state_layout_problem(type(optimizer), groups[group] if group < len(groups)
                                                     else groups[0], st, param)
                        if found is not None:
                            raise _invalid(("fade", name, "optimizer", f"{node_id}.{pname}", "state", found[0]),
                                           found[1])
                    entries.append((f"{node_id}.{pname}", param, group, st))
            self._wrap(name, stage, old, transition.adapters(), entries, alpha=0.0)

    # -- checkpoints ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, extra: Mapping[str, Any] | None = None) -> None:
        """Save a :func:`chainspec.save_checkpoint` of the chains, optimizers and schedule, mid-fade included.

        The checkpoint holds the chains of the current stage; a fade in progress (old paths, their
        optimizer state, alpha) travels in ``extra["grower"]``. Resume with :meth:`from_checkpoint`.
        """
        from ..revise.checkpoint import save_checkpoint

        extra = dict(extra or {})
        if "grower" in extra or "grower_optimizers" in extra:
            raise ValueError("extra keys 'grower' and 'grower_optimizers' are reserved for the grower's state")
        hidden = {name: {*blend.ids, *blend.old_ids} for name, blend in self.blends.items()}
        views = {}
        for name, chain in self.chains.items():
            skip = hidden.get(name, set())
            view = Chain([(n.id, n.module) for n in chain if n.id not in skip], name=chain.name)
            view.training = chain.training
            views[name] = view
        keys: dict[str, str] = {}
        unique: dict[str, Optimizer] = {}
        for name, optimizer in self.optimizers.items():
            if optimizer is None:
                continue
            key = next((k for k, o in unique.items() if o is optimizer), name)
            unique[key] = optimizer
            keys[name] = key
        old_params = [p for blend in self.blends.values() for m in blend.old_modules().values() for p in m.parameters()]
        extra.update(grower=self.state_dict(), grower_optimizers=keys)  # before the old params leave the optimizers
        snapshots = [_optim.snapshot(o) for o in unique.values()]
        try:
            for optimizer in unique.values():
                _optim.remove_params(optimizer, old_params)  # they travel in extra["grower"]
            save_checkpoint(path, spec=self.spec, chains=views, stage=self.stage, optimizers=unique,
                            alpha=self.alpha, extra=extra)
        finally:
            for snap in snapshots:
                snap.restore()

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, *, schedule: Schedule | None = None,
                        policy: str | None = None) -> Grower:
        """Resume from a checkpoint written by :meth:`save`: its chains and optimizers, grown and blended as saved.

        The schedule is the one the run was saved with, unless ``schedule`` is given. The grower
        state in the checkpoint is checked field by field before the chains change; on any failure
        they are left as :func:`chainspec.load_checkpoint` rebuilt them.

        Raises:
            CheckpointError: the checkpoint has no grower state, or its grower state, its saved schedule
                or its optimizer map is malformed or does not fit its spec (the message names the field).
            PlanError: ``schedule`` was given and does not put the saved position in the saved phase.
            ValueError: ``schedule`` or ``policy`` is not valid for this spec.

        Example:
            >>> ckpt = chainspec.load_checkpoint("run/last.pt")  # doctest: +SKIP
            >>> grower = chainspec.Grower.from_checkpoint(ckpt)  # doctest: +SKIP
            >>> g, d = grower.chains["generator"], grower.chains["discriminator"]  # doctest: +SKIP
        """
        if policy is not None and policy not in ("keep", "reset"):
            raise ValueError(f"policy must be 'keep' or 'reset', got {policy!r}")
        if schedule is not None and schedule.stages != checkpoint.spec.stages:
            raise ValueError(f"the schedule has {schedule.stages} stages but {checkpoint.spec.source} has "
                             f"{checkpoint.spec.stages}")
        extra = checkpoint.extra
        state = extra.get("grower") if isinstance(extra, Mapping) else None
        if state is None:
            raise CheckpointError("the checkpoint has no grower state; save it with Grower.save")
        if not isinstance(state, Mapping):
            raise _invalid((), f"should be a dict, got {type(state).__name__}")
        optimizers = _saved_optimizers(checkpoint)
        given = schedule is not None
        if schedule is None and "schedule" in state:
            try:
                schedule = Schedule.from_dict(state["schedule"])
            except ValueError as exc:
                raise _invalid("schedule", f"is not a schedule: {_show(str(exc))}") from None
        try:
            grower = cls(checkpoint.spec, checkpoint.chains, optimizers, schedule=schedule, policy=policy)
            grower.load_state_dict(state)
        except (ValueError, PlanError) as exc:
            if given and isinstance(exc, PlanError):
                raise
            raise CheckpointError(f"cannot resume a grower from the checkpoint: {_show(str(exc), 2000)}") from exc
        return grower


def _saved_optimizers(checkpoint: Checkpoint) -> dict[str, Optimizer]:
    """The optimizer of each chain, from the checkpoint's ``extra["grower_optimizers"]`` map."""
    keys = checkpoint.extra.get("grower_optimizers", {})
    if not isinstance(keys, Mapping):
        raise CheckpointError(f"the checkpoint's grower_optimizers should be a dict, got {type(keys).__name__}")
    optimizers: dict[str, Optimizer] = {}
    for name, key in keys.items():
        if not isinstance(name, str) or name not in checkpoint.chains:
            raise CheckpointError(f"the checkpoint's grower_optimizers names {_q(name)}, which is not one of its "
                                  f"chains ({_show(', '.join(checkpoint.chains))})")
        if not isinstance(key, str) or key not in checkpoint.optimizers:
            raise CheckpointError(f"the checkpoint's grower_optimizers gives chain {_q(name)} the optimizer "
                                  f"{_q(key)}, which the checkpoint does not have")
        optimizers[name] = checkpoint.optimizers[key]
    unused = [key for key in checkpoint.optimizers if key not in set(keys.values())]
    if unused:
        raise CheckpointError(f"the checkpoint's optimizer {_q(unused[0])} is no chain's in its grower_optimizers; "
                              "growing without it would leave it training parameters that leave the chains")
    return optimizers


#: Largest count (images, steps, a position, a group index) a grower state may hold.
MAX_COUNT = 2**63 - 1


def _invalid(field: str | tuple[object, ...], problem: str) -> CheckpointError:
    """A malformed grower state, naming the field (``fade.generator.weights``)."""
    path = _path(field if isinstance(field, tuple) else (field,))
    return CheckpointError(f"grower state: '{path}' {problem}" if path else f"grower state {problem}")


def _check(problem: str | None, field: tuple[object, ...]) -> None:
    if problem is not None:
        raise _invalid(field, problem)


def _count(state: Mapping[str, Any], key: str) -> int:
    value = state.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise _invalid(key, f"should be a count in [0, 2**63 - 1], got {_q(value)}")
    return value


def _abrupt_hint(stage: int) -> str:
    return f"set growth.per_stage: [{{stage: {stage}, fade: 0}}] in the spec to grow this stage without a fade"


def _contiguous(ids: list[str], part: list[str], where: str, what: str, hint: str) -> str | None:
    """Check that ``part`` is a contiguous run of ``ids``; return the id before it (None at the head)."""
    if not part:
        return None
    start = ids.index(part[0])
    if ids[start:start + len(part)] != part:
        raise PlanError(f"cannot fade {where}: the {what} nodes {part} are not one contiguous run; {hint}")
    return ids[start - 1] if start else None


def _next(ids: list[str], node_id: str) -> str | None:
    i = ids.index(node_id)
    return ids[i + 1] if i + 1 < len(ids) else None


def _optimizer_entries(optimizer: Optimizer | None, nodes: list[tuple[str, nn.Module, str]]
                       ) -> list[tuple[str, Tensor, int | None, Any]]:
    """``(name, param, group index or None, state or None)`` of each parameter of ``nodes``."""
    if optimizer is None:
        return []
    where = _optim.group_of_params(optimizer)
    return [(f"{node_id}.{pname}", p, where.get(id(p)), optimizer.state.get(p))
            for node_id, module, _ in nodes for pname, p in module.named_parameters()]


def _copy_state(state: Mapping[str, Any] | None) -> dict[str, Any]:
    """A detached copy of one parameter's optimizer state (the optimizer updates its tensors in place)."""
    return {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in (state or {}).items()}


def _to_param(state: Mapping[str, Any], param: Tensor) -> dict[str, Any]:
    """Optimizer state moved next to its parameter (step counters stay where torch keeps them)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, Tensor) and key != "step":
            out[key] = value.to(device=param.device, dtype=param.dtype if value.is_floating_point() else value.dtype)
        else:
            out[key] = value
    return out


