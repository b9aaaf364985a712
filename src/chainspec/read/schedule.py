"""The growth schedule: which stage and fade-in alpha a run is at after so many images or steps.

A spec's ``growth`` section gives each stage a stabilise phase and each stage
after the first a fade-in before it::

    stage 0: stabilize | stage 1: fade, stabilize | ... | stage N-1: fade, stabilize | done

During the fade into stage k, alpha rises linearly from 0 to 1; everywhere
else it is 1. This module is pure arithmetic on counts (torch-free): it is
what ``chainspec validate`` checks and what :class:`chainspec.Grower` follows.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from .._errors import Problem, printable
from .document import Document
from .records import GrowthData, SpecData

if TYPE_CHECKING:
    from .model import GrowthSpec

PhaseKind = Literal["stabilize", "fade", "done"]


@dataclass(frozen=True)
class Phase:
    """One span of the schedule: ``[start, end)`` in the growth unit, at ``stage``.

    Example:
        >>> Phase("fade", 1, 100, 300).alpha_at(150)
        0.25
    """

    kind: PhaseKind
    stage: int
    start: int
    end: int | None  # None: the open-ended "done" phase after the last stabilise

    @property
    def length(self) -> int | None:
        """The phase's length, None for the open-ended ``done`` phase."""
        return None if self.end is None else self.end - self.start

    def alpha_at(self, position: float) -> float:
        """The fade-in alpha at ``position`` (1.0 outside fades), clamped to [0, 1]."""
        if self.kind != "fade" or not self.length:
            return 1.0
        return min(1.0, max(0.0, (position - self.start) / self.length))


@dataclass(frozen=True)
class Schedule:
    """The phases of a growth schedule, in order, and the unit they count.

    Example:
        >>> sched = Schedule.lengths(3, stabilize=100, fade=50)
        >>> [(p.kind, p.stage, p.start, p.end) for p in sched.phases]  # doctest: +NORMALIZE_WHITESPACE
        [('stabilize', 0, 0, 100), ('fade', 1, 100, 150), ('stabilize', 1, 150, 250),
         ('fade', 2, 250, 300), ('stabilize', 2, 300, 400), ('done', 2, 400, None)]
        >>> sched.at(125).stage, sched.alpha(125)
        (1, 0.5)
    """

    phases: tuple[Phase, ...]
    unit: Literal["images", "steps"] = "images"
    policy: Literal["keep", "reset"] = "keep"
    #: The minibatch size of each stage (from the growth section); empty where the spec gives none.
    minibatches: tuple[int | None, ...] = ()

    def minibatch(self, stage: int) -> int | None:
        """The minibatch size the schedule gives ``stage``, or None where it leaves it to the training script.

        Example:
            >>> from chainspec.read.model import GrowthSpec, StagePhases
            >>> sched = Schedule.from_model(GrowthSpec(minibatch=16, per_stage=[StagePhases(stage=2, minibatch=6)]), 3)
            >>> [sched.minibatch(k) for k in range(3)]
            [16, 16, 6]
        """
        if not 0 <= stage < self.stages:
            raise ValueError(f"stage {stage} is out of range; the schedule has stages 0..{self.stages - 1}")
        return self.minibatches[stage] if self.minibatches else None

    @classmethod
    def lengths(cls, stages: int, *, stabilize: int | list[int], fade: int | list[int],
                unit: Literal["images", "steps"] = "images", policy: Literal["keep", "reset"] = "keep") -> Schedule:
        """Build a schedule from per-stage lengths (one value for all stages, or a list of ``stages`` values).

        ``fade[0]`` is ignored: nothing fades into stage 0.
        """
        stab = [stabilize] * stages if isinstance(stabilize, int) else list(stabilize)
        fades = [fade] * stages if isinstance(fade, int) else list(fade)
        if len(stab) != stages or len(fades) != stages:
            raise ValueError(f"need {stages} stabilize and fade lengths, got {len(stab)} and {len(fades)}")
        if any(n < 0 for n in stab + fades):
            raise ValueError(f"phase lengths must be >= 0, got stabilize={stab} fade={fades}")
        phases: list[Phase] = []
        t = 0
        for k in range(stages):
            if k and fades[k]:
                phases.append(Phase("fade", k, t, t + fades[k]))
                t += fades[k]
            phases.append(Phase("stabilize", k, t, t + stab[k]))
            t += stab[k]
        phases.append(Phase("done", stages - 1, t, None))
        return cls(tuple(phases), unit, policy)

    @classmethod
    def from_model(cls, growth: GrowthData | GrowthSpec | None, stages: int) -> Schedule:
        """The schedule a spec's ``growth`` section describes (the paper's 800k + 800k images if absent).

        ``growth`` is the section as a loaded spec holds it (``spec.data.growth``) or as its pydantic model.
        """
        if growth is None:
            from .model import GrowthSpec  # its defaults: the models are built only for a spec without the section

            growth = GrowthSpec()
        stab = [growth.stabilize] * stages
        fades = [growth.fade] * stages
        batches: list[int | None] = [growth.minibatch] * stages
        for entry in growth.per_stage:
            if entry.stage < stages:  # out-of-range entries are reported by growth_problems
                if entry.stabilize is not None:
                    stab[entry.stage] = entry.stabilize
                if entry.fade is not None:
                    fades[entry.stage] = entry.fade
                if entry.minibatch is not None:
                    batches[entry.stage] = entry.minibatch
        schedule = cls.lengths(stages, stabilize=stab, fade=fades, unit=growth.unit, policy=growth.policy)
        return replace(schedule, minibatches=tuple(batches)) if any(b is not None for b in batches) else schedule

    @property
    def stages(self) -> int:
        """Number of stages."""
        return self.phases[-1].stage + 1

    @property
    def total(self) -> int:
        """Where the last stabilise phase ends (the ``done`` phase starts)."""
        return self.phases[-1].start

    def index(self, position: float) -> int:
        """Index in ``phases`` of the phase holding ``position``."""
        if position < 0:
            raise ValueError(f"schedule position must be >= 0, got {position}")
        for i, phase in enumerate(self.phases):
            if phase.end is None or position < phase.end:
                return i
        return len(self.phases) - 1  # unreachable: the last phase is open-ended

    def at(self, position: float) -> Phase:
        """The phase holding ``position``."""
        return self.phases[self.index(position)]

    def alpha(self, position: float) -> float:
        """The fade-in alpha at ``position``."""
        return self.at(position).alpha_at(position)

    def start_of(self, stage: int) -> int:
        """Where ``stage`` begins (its fade-in, if it has one).

        Example:
            >>> Schedule.lengths(2, stabilize=10, fade=4).start_of(1)
            10
        """
        if not 0 <= stage < self.stages:
            raise ValueError(f"stage {stage} is out of range; the schedule has stages 0..{self.stages - 1}")
        return next(p.start for p in self.phases if p.stage == stage)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the unit, the policy and each phase."""
        out: dict[str, Any] = {"unit": self.unit, "policy": self.policy, "phases": [
            {"kind": p.kind, "stage": p.stage, "start": p.start, "end": p.end} for p in self.phases]}
        if self.minibatches:
            out["minibatches"] = list(self.minibatches)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """The inverse of :meth:`to_dict`, checking every field (the dict may come from a file).

        Raises:
            ValueError: naming the field: a missing key, a value of the wrong type or out of range, or
                phases that are not a schedule (a stabilize phase per stage, a fade only before a
                stabilize of the stage it fades into, contiguous spans, one open-ended ``done`` at the end).

        Example:
            >>> sched = Schedule.lengths(3, stabilize=5, fade=2, unit="steps")
            >>> Schedule.from_dict(sched.to_dict()) == sched
            True
            >>> Schedule.from_dict({"unit": "steps", "policy": "keep", "phases": []})
            Traceback (most recent call last):
            ...
            ValueError: schedule.phases: a schedule's phases must end with exactly one open-ended 'done' phase
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"schedule: should be a dict, got {type(data).__name__}")
        unit = _choice(data, "unit", ("images", "steps"))
        policy = _choice(data, "policy", ("keep", "reset"))
        raw = data.get("phases")
        if not isinstance(raw, (list, tuple)):
            raise ValueError(f"schedule.phases: should be a list, got {type(raw).__name__}")
        if len(raw) > MAX_PHASES:
            raise ValueError(f"schedule.phases: has {len(raw):,} phases; at most {MAX_PHASES:,}")
        phases = tuple(_phase(item, i) for i, item in enumerate(raw))
        if not phases or phases[-1].end is not None or any(p.end is None for p in phases[:-1]):
            raise ValueError("schedule.phases: a schedule's phases must end with exactly one open-ended 'done' phase")
        _check_sequence(phases)
        batches = data.get("minibatches", [])
        stages = phases[-1].stage + 1
        if not isinstance(batches, (list, tuple)) or (batches and len(batches) != stages) or any(
                b is not None and (isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_POSITION)
                for b in batches):
            raise ValueError(f"schedule.minibatches: should be a list of {stages} sizes (>= 1, or null)")
        return cls(phases, unit, policy, tuple(batches))  # type: ignore[arg-type]


#: Most phases a schedule read from a dict may have (two per stage, stages up to ``read.model.MAX_STAGES``).
MAX_PHASES = 4096
#: Largest position (images or steps) in a schedule read from a dict.
MAX_POSITION = 2**63 - 1
_KINDS = ("stabilize", "fade", "done")


def _choice(data: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = data.get(key)
    if not isinstance(value, str) or value not in allowed:
        shown = repr(value[:80]) if isinstance(value, str) else type(value).__name__
        raise ValueError(f"schedule.{key}: should be one of {', '.join(allowed)}, got {printable(shown)}")
    return value


def _count(item: Mapping[str, Any], key: str, where: str) -> int:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}.{key}: should be an int, got {type(value).__name__}")
    if not 0 <= value <= MAX_POSITION:
        raise ValueError(f"{where}.{key}: should be in [0, 2**63 - 1], got {value if abs(value) < 10**30 else 'more'}")
    return value


def _phase(item: Any, i: int) -> Phase:
    where = f"schedule.phases[{i}]"
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: should be a dict, got {type(item).__name__}")
    kind = item.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(f"{where}.kind: should be one of {', '.join(_KINDS)}")
    stage, start = _count(item, "stage", where), _count(item, "start", where)
    end = None if "end" in item and item["end"] is None else _count(item, "end", where)
    if end is not None and end < start:
        raise ValueError(f"{where}.end: {end} is before its start {start}")
    return Phase(kind, stage, start, end)  # type: ignore[arg-type]


def _check_sequence(phases: tuple[Phase, ...]) -> None:
    """Phases in the order :meth:`Schedule.lengths` makes them: stage 0 stabilizes first, each later stage
    optionally fades in then stabilizes, spans are contiguous from 0, and ``done`` is at the last stage."""
    if phases[0].kind != "stabilize" or phases[0].stage != 0 or phases[0].start != 0:
        raise ValueError("schedule.phases[0]: a schedule starts with stage 0 stabilizing at 0")
    for i, (prev, phase) in enumerate(itertools.pairwise(phases), start=1):
        where = f"schedule.phases[{i}]"
        if phase.start != prev.end:
            raise ValueError(f"{where}.start: {phase.start} is not where the phase before it ends ({prev.end})")
        if phase.kind == "done":
            ok = prev.kind == "stabilize" and phase.stage == prev.stage
        elif phase.kind == "fade":
            ok = prev.kind == "stabilize" and phase.stage == prev.stage + 1
        else:
            ok = phase.stage == (prev.stage if prev.kind == "fade" else prev.stage + 1)
        if not ok:
            raise ValueError(f"{where}: a {phase.kind} phase of stage {phase.stage} cannot follow a {prev.kind} "
                             f"phase of stage {prev.stage}")


def growth_problems(model: SpecData, doc: Document, stages: int) -> list[Problem]:
    """The whole-document checks of a spec's ``growth`` section: stages in range, no duplicates, no fade into 0.

    Example:
        >>> from chainspec.read.document import parse_yaml
        >>> text = "chainspec: 1\\ngrowth: {per_stage: [{stage: 0, fade: 10}]}\\nchains: {}"
        >>> doc = parse_yaml(text, "g.yaml")
        >>> from chainspec.read.model import GrowthSpec, SpecModel
        >>> model = SpecModel.model_construct(growth=GrowthSpec.model_validate(doc.data["growth"]))
        >>> growth_problems(model, doc, 2)[0].format()
        'g.yaml:2:33: growth.per_stage[0].fade: nothing fades into stage 0; remove fade here (stage 0 only stabilizes)'
    """
    growth = model.growth
    if growth is None:
        return []
    problems: list[Problem] = []
    seen: dict[int, int] = {}
    for i, entry in enumerate(growth.per_stage):
        path = ("growth", "per_stage", i)
        if entry.stage >= stages:
            problems.append(doc.problem((*path, "stage"), f"stage {entry.stage} is out of range; the spec has "
                                        f"stages 0..{stages - 1}", "use an existing stage"))
        if entry.stage in seen:
            problems.append(doc.problem((*path, "stage"), f"stage {entry.stage} is listed twice (also at "
                                        f"growth.per_stage[{seen[entry.stage]}])", "merge the two entries"))
        seen.setdefault(entry.stage, i)
        if entry.stage == 0 and entry.fade is not None:
            problems.append(doc.problem((*path, "fade"), "nothing fades into stage 0",
                                        "remove fade here (stage 0 only stabilizes)"))
    return problems
