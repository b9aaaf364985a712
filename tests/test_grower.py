"""Grower: the schedule, lockstep growth with fade-ins, optimizer bookkeeping, and resuming mid-fade."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import chainspec
from chainspec import Grower, Schedule

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "pggan_tiny.yaml"
PGGAN = ROOT / "specs" / "pggan.yaml"
LATENT = 32


@pytest.fixture(scope="module")
def tiny() -> chainspec.Spec:
    return chainspec.load(TINY)


def make(spec: chainspec.Spec, schedule: Schedule | None = None, *, stage: int = 0, seed: int = 0,
         policy: str | None = None) -> tuple[dict[str, chainspec.Chain], dict[str, torch.optim.Optimizer], Grower]:
    torch.manual_seed(seed)
    chains = spec.build_all(stage=stage)
    opts = {n: torch.optim.Adam(c.parameters(), lr=1e-3, betas=(0.0, 0.99)) for n, c in chains.items()}
    return chains, opts, Grower(spec, chains=chains, optimizers=opts, schedule=schedule, policy=policy)


def train_step(chains: dict[str, chainspec.Chain], opts: dict[str, torch.optim.Optimizer], grower: Grower,
               step: int, batch: int = 4) -> None:
    """One WGAN-style step on made-up data; every random number comes from a generator seeded by ``step``."""
    gen = torch.Generator().manual_seed(1000 + step)
    res = 4 * 2**grower.stage
    real = torch.rand(batch, 3, res, res, generator=gen) * 2 - 1
    z = torch.randn(batch, LATENT, generator=gen)
    g, d = chains["generator"], chains["discriminator"]
    opts["discriminator"].zero_grad()
    loss_d = d(g(z).detach()).mean() - d(real).mean()
    loss_d.backward()
    opts["discriminator"].step()
    opts["generator"].zero_grad()
    loss_g = -d(g(z)).mean()
    loss_g.backward()
    opts["generator"].step()
    grower.step(batch)


def optimizer_params(opt: torch.optim.Optimizer) -> set[int]:
    return {id(p) for group in opt.param_groups for p in group["params"]}


# -- the schedule ------------------------------------------------------------------------------------

def test_schedule_from_the_spec_with_overrides(tiny: chainspec.Spec) -> None:
    sched = Schedule.from_model(tiny.model.growth, tiny.stages)
    assert [(p.kind, p.stage, p.start, p.end) for p in sched.phases] == [
        ("stabilize", 0, 0, 6000), ("fade", 1, 6000, 12000), ("stabilize", 1, 12000, 18000),
        ("fade", 2, 18000, 24000), ("stabilize", 2, 24000, 30000), ("fade", 3, 30000, 36000),
        ("stabilize", 3, 36000, 48000), ("done", 3, 48000, None)]
    assert sched.unit == "images" and sched.total == 48000


def test_papers_schedule_is_800k_plus_800k_images() -> None:
    sched = Schedule.from_model(chainspec.load(PGGAN).model.growth, 9)
    assert sched.phases[1].start == 800_000 and sched.phases[1].length == 800_000
    assert sched.total == 800_000 + 8 * 1_600_000
    assert sched.alpha(800_000 + 200_000) == 0.25


def test_zero_length_fade_grows_abruptly() -> None:
    sched = Schedule.lengths(3, stabilize=10, fade=[0, 0, 5])
    assert [p.kind for p in sched.phases] == ["stabilize", "stabilize", "fade", "stabilize", "done"]


def test_schedule_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Schedule.lengths(2, stabilize=-1, fade=1)
    with pytest.raises(ValueError, match="need 3"):
        Schedule.lengths(3, stabilize=[1, 2], fade=1)


# -- growing in lockstep -------------------------------------------------------------------------------

def test_alpha_and_stage_follow_the_schedule_in_lockstep(tiny: chainspec.Spec) -> None:
    chains, _, grower = make(tiny, Schedule.lengths(4, stabilize=8, fade=16))
    seen = []
    for _ in range(26):
        events = grower.step(4)
        merges = [c[grower.blends[n].ids[2]].module.alpha_value for n, c in chains.items() if n in grower.blends]
        seen.append((grower.stage, grower.phase.kind, grower.alpha, [e.kind for e in events], merges))
    assert seen[0] == (0, "stabilize", 1.0, [], [])
    assert seen[1] == (1, "fade", 0.0, ["fade"], [0.0, 0.0])  # 8 images: the fade begins, alpha 0
    assert seen[2] == (1, "fade", 0.25, [], [0.25, 0.25])  # G and D share alpha
    assert seen[4] == (1, "fade", 0.75, [], [0.75, 0.75])
    assert seen[5] == (1, "stabilize", 1.0, ["stabilize"], [])
    assert [s[3] for s in seen if s[3]] == [["fade"], ["stabilize"], ["fade"], ["stabilize"], ["fade"],
                                            ["stabilize"], ["done"]]
    assert grower.done and grower.stage == 3
    for name, chain in chains.items():
        assert chain.ids() == [n.id for n in tiny.resolved(name).at(3)]


def test_steps_unit_counts_optimizer_steps(tiny: chainspec.Spec) -> None:
    sched = Schedule.lengths(4, stabilize=2, fade=4, unit="steps")
    _, _, grower = make(tiny, sched)
    grower.step()
    events = grower.step()
    assert [e.kind for e in events] == ["fade"] and grower.alpha == 0.0
    grower.step(64)  # a batch size is allowed, and counted as images
    assert (grower.alpha, grower.steps, grower.images) == (0.25, 3, 64)


def test_the_specs_growth_section_can_count_steps(tiny: chainspec.Spec) -> None:
    text = TINY.read_text().replace("unit: images ", "unit: steps  ").replace("stabilize: 6000 ", "stabilize: 2 ")
    text = text.replace("fade: 6000 ", "fade: 4 ").replace("stabilize: 12000}", "stabilize: 3}")
    spec = chainspec.loads(text)
    grower = Grower(spec, chains=spec.build_all(stage=0))  # no schedule given: the spec's, in steps
    assert (grower.schedule.unit, grower.schedule.total) == ("steps", 2 + 3 * (4 + 2) + 1)
    assert grower.step() == [] and [e.kind for e in grower.step()] == ["fade"]
    grower.step()
    assert (grower.stage, grower.alpha, grower.steps, grower.images) == (1, 0.25, 3, 0)


def test_images_unit_needs_the_batch_size(tiny: chainspec.Spec) -> None:
    _, _, grower = make(tiny)
    with pytest.raises(ValueError, match="pass the batch size"):
        grower.step()


def test_one_step_may_cross_several_phases(tiny: chainspec.Spec) -> None:
    chains, _, grower = make(tiny, Schedule.lengths(4, stabilize=2, fade=2))
    events = grower.step(100)
    assert [(e.kind, e.stage) for e in events] == [("fade", 1), ("stabilize", 1), ("fade", 2), ("stabilize", 2),
                                                   ("fade", 3), ("stabilize", 3), ("done", 3)]
    assert chains["generator"].ids() == ["b4", "b8", "b16", "b32", "to_rgb_32"]


def test_whole_pggan_schedule_on_the_meta_device() -> None:
    spec = chainspec.load(PGGAN)
    chains = spec.build_all(stage=0, device="meta")
    opts = {n: torch.optim.Adam(c.parameters()) for n, c in chains.items()}
    grower = Grower(spec, chains=chains, optimizers=opts, schedule=Schedule.lengths(9, stabilize=1, fade=2))
    z = torch.empty(4, 512, device="meta")
    visited = []
    while not grower.done:
        grower.step(1)
        res = 4 * 2**grower.stage
        image = chains["generator"](z)
        assert tuple(image.shape) == (4, 3, res, res)
        assert tuple(chains["discriminator"](image).shape) == (4, 1)
        for name, chain in chains.items():
            assert optimizer_params(opts[name]) == {id(p) for p in chain.parameters()}
            if not grower.fading:
                assert chain.ids() == [n.id for n in spec.resolved(name).at(grower.stage)]
        visited.append((grower.stage, grower.phase.kind))
    assert visited[-1] == (8, "done")
    assert {s for s, kind in visited if kind == "fade"} == set(range(1, 9))
    assert sum(p.numel() for p in chains["generator"].parameters()) == 23_071_507
    assert sum(p.numel() for p in chains["discriminator"].parameters()) == 23_077_137


def test_a_fade_the_grower_starts_is_the_old_path_at_alpha_0(tiny: chainspec.Spec) -> None:
    import torch.nn.functional as F

    chains, _, grower = make(tiny, Schedule.lengths(4, stabilize=4, fade=8))
    g, d = chains["generator"], chains["discriminator"]
    z, x = torch.randn(4, LATENT), torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        image, score = g(z), d(F.avg_pool2d(x, 2))
        assert [e.kind for e in grower.step(4)] == ["fade"] and grower.alpha == 0.0
        assert torch.equal(g(z), F.interpolate(image, scale_factor=2, mode="nearest"))  # upsample after G's old path
        assert torch.equal(d(x), score)  # 2x2 average pool before D's old path


def test_transition_plans_and_regions(tiny: chainspec.Spec) -> None:
    _, _, grower = make(tiny)
    g = grower.transition("generator", 2)
    assert [(op.kind, op.node_id) for op in g.plan.ops] == [("remove", "to_rgb_8"), ("insert", "b16"),
                                                            ("insert", "to_rgb_16")]
    assert (g.region.after, g.region.old_ids, g.region.new_ids) == ("b8", ("to_rgb_8",), ("b16", "to_rgb_16"))
    pre, post = g.adapters()
    assert pre is None and isinstance(post, torch.nn.Upsample)
    d = grower.transition("discriminator", 2)
    assert (d.region.after, d.region.old_ids, d.region.new_ids) == (None, ("from_rgb_8",), ("from_rgb_16", "b16"))
    pre, post = d.adapters()
    assert isinstance(pre, torch.nn.AvgPool2d) and post is None


# -- optimizer bookkeeping --------------------------------------------------------------------------

def test_training_through_a_fade_keeps_parameters_and_moments(tiny: chainspec.Spec) -> None:
    chains, opts, grower = make(tiny, Schedule.lengths(4, stabilize=8, fade=8))
    g, g_opt = chains["generator"], opts["generator"]
    train_step(chains, opts, grower, 0)  # 4 images
    b4 = dict(g.named_parameters())["b4.dense.weight"]
    old = dict(g.named_parameters())["to_rgb_4.conv.weight"]
    b4_moment, old_moment = g_opt.state[b4]["exp_avg"].clone(), g_opt.state[old]["exp_avg"].clone()
    train_step(chains, opts, grower, 1)  # 8 images: the fade into stage 1 begins
    assert grower.fading
    moved = {id(p) for p in g.parameters()}
    assert id(b4) in moved and id(old) in moved  # the very same Parameter objects
    assert not torch.equal(g_opt.state[b4]["exp_avg"], b4_moment)  # trained on, moments kept
    assert g_opt.state[old]["step"].item() == 2  # the old path kept its state and trained once more
    assert not torch.equal(g_opt.state[old]["exp_avg"], old_moment)
    assert optimizer_params(g_opt) == {id(p) for p in g.parameters()}
    new = dict(g.named_parameters())["b8.conv0.conv.weight"]
    train_step(chains, opts, grower, 2)
    assert g_opt.state[new]["step"].item() == 1  # the new layers joined the optimizer and trained
    train_step(chains, opts, grower, 3)  # 16 images: the fade ends
    assert not grower.fading
    assert old not in g_opt.state and id(old) not in optimizer_params(g_opt)  # no leak
    assert optimizer_params(g_opt) == {id(p) for p in g.parameters()}
    g_opt.state_dict()  # still consistent


def test_reset_policy_drops_moments_at_growth(tiny: chainspec.Spec) -> None:
    chains, opts, grower = make(tiny, Schedule.lengths(4, stabilize=4, fade=8), policy="reset")
    train_step(chains, opts, grower, 0)  # 4 images: the fade begins
    assert grower.fading
    assert len(opts["generator"].state) == 0 and len(opts["discriminator"].state) == 0


def test_reset_policy_also_drops_moments_when_the_fade_ends(tiny: chainspec.Spec) -> None:
    """The official reset_opt_for_new_lod: at the start of every fade and of every stabilise phase."""
    chains, opts, grower = make(tiny, Schedule.lengths(4, stabilize=4, fade=8), policy="reset")
    train_step(chains, opts, grower, 0)  # 4 images: the fade begins, state reset
    train_step(chains, opts, grower, 1)  # trained during the fade: the moments are back
    assert grower.fading and len(opts["generator"].state) > 0 and len(opts["discriminator"].state) > 0
    train_step(chains, opts, grower, 2)  # 12 images: the fade ends, the stage stabilises
    assert not grower.fading and grower.phase.kind == "stabilize"
    assert len(opts["generator"].state) == 0 and len(opts["discriminator"].state) == 0
    _, keep_opts, keeping = make(tiny, Schedule.lengths(4, stabilize=4, fade=8), policy="keep")
    for step in range(3):
        train_step(keeping.chains, keep_opts, keeping, step)
    assert len(keep_opts["generator"].state) > 0  # "keep" keeps them


def test_growth_without_optimizers(tiny: chainspec.Spec) -> None:
    chains = tiny.build_all(stage=0)
    grower = Grower(tiny, chains=chains, schedule=Schedule.lengths(4, stabilize=1, fade=1))
    grower.step(7)
    assert grower.done and chains["discriminator"].ids()[0] == "from_rgb_32"


def test_grower_starts_from_the_chains_stage(tiny: chainspec.Spec) -> None:
    _, _, grower = make(tiny, Schedule.lengths(4, stabilize=10, fade=10), stage=2)
    assert (grower.stage, grower.phase.kind, grower.position) == (2, "stabilize", 40)
    grower.step(10)
    assert (grower.stage, grower.fading) == (3, True)


def test_chains_at_different_stages_are_refused(tiny: chainspec.Spec) -> None:
    chains = {"generator": tiny.build("generator", stage=0), "discriminator": tiny.build("discriminator", stage=1)}
    with pytest.raises(chainspec.PlanError, match="different stages"):
        Grower(tiny, chains=chains)


def test_a_transition_that_cannot_fade_says_how_to_grow_abruptly() -> None:
    spec = chainspec.load(ROOT / "specs" / "blog.yaml")  # b3 changes the width: no blend can bridge it
    with pytest.raises(chainspec.PlanError, match=r"cannot fade chain 'net', stage 0 -> 1: cannot adapt shape "
                       r"\[32, 32, 32\] to \[64, 32, 32\].*set growth.per_stage: \[\{stage: 1, fade: 0\}\]"):
        Grower(spec, chains={"net": spec.build(stage=0)})
    abrupt = Schedule.lengths(3, stabilize=1, fade=0)
    net = spec.build(stage=0)
    grower = Grower(spec, chains={"net": net}, schedule=abrupt)
    assert [e.kind for e in grower.step(1)] == ["grow"]
    assert net.ids() == ["b1", "b2"]


# -- resuming mid-fade ----------------------------------------------------------------------------------

SCHED = Schedule.lengths(4, stabilize=8, fade=16)


def run(tiny: chainspec.Spec, steps: range, chains: dict[str, chainspec.Chain],
        opts: dict[str, torch.optim.Optimizer], grower: Grower) -> None:
    for step in steps:
        train_step(chains, opts, grower, step)


def outputs(chains: dict[str, chainspec.Chain]) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.randn(8, LATENT, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        image = chains["generator"](z)
        return image, chains["discriminator"](image)


def test_resume_mid_fade_from_state_dicts(tiny: chainspec.Spec) -> None:
    chains, opts, grower = make(tiny, SCHED)
    run(tiny, range(4), chains, opts, grower)  # 16 images: halfway through the fade into stage 1
    assert grower.fading and grower.alpha == 0.5
    saved = copy.deepcopy({"grower": grower.state_dict(), "chains": {n: c.state_dict() for n, c in chains.items()},
                           "opts": {n: o.state_dict() for n, o in opts.items()}, "rng": torch.get_rng_state()})
    # A fresh process: build at stage 0, let the grower restore the structure, then load the state.
    chains2, opts2, grower2 = make(tiny, SCHED, seed=123)
    grower2.load_state_dict(saved["grower"])
    for name in chains2:
        chains2[name].load_state_dict(saved["chains"][name])
        opts2[name].load_state_dict(saved["opts"][name])
    assert (grower2.stage, grower2.fading, grower2.alpha) == (1, True, 0.5)
    assert [c.ids() for c in chains2.values()] == [c.ids() for c in chains.values()]
    for a, b in zip(outputs(chains), outputs(chains2), strict=True):
        assert torch.equal(a, b)
    # Training on gives bit-identical weights to the run that never stopped, through the collapse and the
    # next growth (whose new layers draw from torch's RNG: both runs continue from the saved RNG state).
    torch.set_rng_state(saved["rng"])
    run(tiny, range(4, 9), chains, opts, grower)
    torch.set_rng_state(saved["rng"])
    run(tiny, range(4, 9), chains2, opts2, grower2)
    assert grower2.stage == 2 and grower2.fading
    for name in chains:
        for (k, p), (k2, p2) in zip(chains[name].state_dict().items(), chains2[name].state_dict().items(),
                                    strict=True):
            assert k == k2 and torch.equal(p, p2), k


def test_resume_mid_fade_from_a_checkpoint(tiny: chainspec.Spec, tmp_path: Path) -> None:
    chains, opts, grower = make(tiny, SCHED)
    run(tiny, range(3), chains, opts, grower)  # 12 images: alpha 0.25
    path = tmp_path / "mid_fade.pt"
    grower.save(path, extra={"note": "mid-fade"})
    assert grower.fading and grower.blends  # saving left the live run untouched
    assert optimizer_params(opts["generator"]) == {id(p) for p in chains["generator"].parameters()}
    ckpt = chainspec.load_checkpoint(path)
    assert (ckpt.stage, ckpt.alpha, ckpt.extra["note"]) == (1, 0.25, "mid-fade")
    grower2 = Grower.from_checkpoint(ckpt, schedule=SCHED)
    chains2 = grower2.chains
    opts2 = {name: grower2.optimizers[name] for name in chains2}
    assert (grower2.stage, grower2.fading, grower2.alpha, grower2.images) == (1, True, 0.25, 12)
    assert [c.ids() for c in chains2.values()] == [c.ids() for c in chains.values()]
    for a, b in zip(outputs(chains), outputs(chains2), strict=True):
        assert torch.equal(a, b)
    old = dict(chains2["generator"].named_parameters())["to_rgb_4.conv.weight"]
    assert opts2["generator"].state[old]["step"].item() == 3  # the old path's moments came back too
    ckpt.restore_rng()  # the uninterrupted run goes on from the RNG state it saved ...
    run(tiny, range(3, 8), chains, opts, grower)
    ckpt.restore_rng()  # ... and so does the resumed one
    run(tiny, range(3, 8), chains2, opts2, grower2)
    for name in chains:
        mine, theirs = chains[name].state_dict(), chains2[name].state_dict()
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert torch.equal(mine[key], theirs[key]), key


def test_load_state_dict_refuses_a_schedule_that_moved(tiny: chainspec.Spec) -> None:
    chains, opts, grower = make(tiny, SCHED)
    run(tiny, range(3), chains, opts, grower)
    state = grower.state_dict()
    _, _, other = make(tiny, Schedule.lengths(4, stabilize=100, fade=16))
    with pytest.raises(chainspec.PlanError, match="this schedule puts that position in the stabilize phase"):
        other.load_state_dict(state)
    with pytest.raises(chainspec.PlanError, match="a fade is in progress"):
        grower.load_state_dict(state)


def test_state_dict_is_checkpoint_friendly(tiny: chainspec.Spec) -> None:
    chains, opts, grower = make(tiny, SCHED)
    run(tiny, range(3), chains, opts, grower)
    state = grower.state_dict()
    assert set(state["fade"]) == {"generator", "discriminator"}
    assert set(state["fade"]["generator"]["weights"]) == {"to_rgb_4.conv.weight", "to_rgb_4.conv.bias"}
    assert (state["stage"], state["phase"], state["alpha"], state["images"]) == (1, "fade", 0.25, 12)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(unit="days"), r"schedule\.unit: should be one of images, steps, got 'days'"),
    (lambda d: d.update(policy=None), r"schedule\.policy: should be one of keep, reset, got NoneType"),
    (lambda d: d.update(phases="x"), r"schedule\.phases: should be a list, got str"),
    (lambda d: d["phases"].__setitem__(0, 1), r"schedule\.phases\[0\]: should be a dict, got int"),
    (lambda d: d["phases"][1].update(kind="grow"), r"schedule\.phases\[1\]\.kind: should be one of"),
    (lambda d: d["phases"][1].update(stage=-1), r"schedule\.phases\[1\]\.stage: should be in \[0, 2\*\*63 - 1\]"),
    (lambda d: d["phases"][1].update(start=True), r"schedule\.phases\[1\]\.start: should be an int, got bool"),
    (lambda d: d["phases"][1].update(end=10**400), r"schedule\.phases\[1\]\.end: should be in .*got more"),
    (lambda d: d["phases"][1].update(end=0), r"schedule\.phases\[1\]\.end: 0 is before its start 5"),
    (lambda d: d["phases"][2].update(start=8), r"schedule\.phases\[2\]\.start: 8 is not where the phase before"),
    (lambda d: d["phases"][1].update(stage=2), r"schedule\.phases\[1\]: a fade phase of stage 2 cannot follow"),
    (lambda d: d["phases"].pop(), r"must end with exactly one open-ended 'done' phase"),
    (lambda d: d["phases"].insert(0, {"kind": "fade", "stage": 0, "start": 0, "end": 0}),
     r"schedule\.phases\[0\]: a schedule starts with stage 0 stabilizing at 0"),
    (lambda d: d["phases"].extend([{"kind": "done", "stage": 2, "start": 17, "end": None}] * 5000),
     r"has 5,006 phases; at most 4,096"),
])
def test_schedule_from_dict_checks_every_field(change: Any, message: str) -> None:
    data = Schedule.lengths(3, stabilize=5, fade=2, unit="steps").to_dict()
    change(data)
    with pytest.raises(ValueError, match=message):
        Schedule.from_dict(data)
