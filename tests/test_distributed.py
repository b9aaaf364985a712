"""Growing and revising under DistributedDataParallel: gloo, two CPU processes, against a one-process run.

One spawn of two ranks (``torch.multiprocessing``, a free port on 127.0.0.1)
runs every scenario, so torch is imported twice, not per test:

* ``plan``: a tiny MLP grows twice through :func:`chainspec.distributed.grow`
  and takes one live revision (update, two widenings, an insert) read by a
  :class:`DistributedSpecWatcher` on rank 0 only (rank 1's path does not
  exist), after an invalid save that both ranks skip;
* ``grower``: the generator of ``specs/pggan_tiny.yaml`` through two fade-ins
  and their collapses with a :class:`DistributedGrower`;
* ``failures``: ranks holding different revisions, an invalid revision and a
  rank that never reaches the barrier all raise, quickly, on every rank;
* ``ops``: residual blocks join by ``init: {copy: b0}`` (weights and Adam state) and by
  ``init: preserve`` (an identity), through :func:`chainspec.distributed.grow`, then every
  block's MLP widens with ``init: preserve`` (random copies on each rank; rank 0's weights and
  carried Adam moments win) and the model width (the residual stream) doubles, through
  :func:`chainspec.distributed.apply_plan`;
* ``fsdp``: the ``ops`` growth with every node sharded by FSDP2's ``fully_shard``
  (``shard=fully_shard``), a removal, and a widening that is refused because it must read
  sharded weights whole;
* ``settle``: saves written in two ``write()`` calls are taken only once
  complete (rank 0 decides), and a node a half save removed comes back
  trained, on every rank.

Each rank seeds torch with its own seed, so every new weight is different on
the two ranks until it is broadcast from rank 0: rank 0 uses the seed of the
single-process reference, which trains on the whole global batch with a mean
loss (DDP averages the ranks' gradients, each of a mean over half the batch).
The ranks compare their parameters with ``all_gather`` after every step.
"""

from __future__ import annotations

import os
import socket
import textwrap
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import chainspec
import chainspec.distributed as csd
import chainspec.grow.grower
import chainspec.revise.apply
import chainspec.revise.watch

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORLD = 2
#: The whole run (spawn, two imports of torch, every scenario) must end within this; else it hung.
HARNESS_TIMEOUT = 180.0
#: Every collective's limit (the process group's timeout).
PG_TIMEOUT = timedelta(seconds=30)
GLOBAL_BATCH = 8
ROOT = Path(__file__).resolve().parents[1]

SPEC = textwrap.dedent("""\
    chainspec: 1
    chains:
      net:
        input_shape: [6]
        nodes:
          - {id: fc0, type: linear, args: {in_features: 6, out_features: 12}}
          - {id: act0, type: leaky_relu, args: {negative_slope: 0.2}}
          - {id: fc1, type: linear, args: {in_features: 12, out_features: 12}, stage: 1}
          - {id: act1, type: leaky_relu, args: {negative_slope: 0.2}, stage: 1}
          - {id: fc2, type: linear, args: {in_features: 12, out_features: 12}, stage: 2}
          - {id: act2, type: leaky_relu, args: {negative_slope: 0.2}, stage: 2}
          - {id: out, type: linear, args: {in_features: 12, out_features: 3}}
    """)
#: The live revision at stage 2: a slope update, fc1 widened (Net2WiderNet: random unit copies), fc2
#: following it, and a fresh layer inserted.
REVISION = (SPEC
            .replace("act1, type: leaky_relu, args: {negative_slope: 0.2}",
                     "act1, type: leaky_relu, args: {negative_slope: 0.1}")
            .replace("{id: fc1, type: linear, args: {in_features: 12, out_features: 12}, stage: 1}",
                     "{id: fc1, type: linear, args: {in_features: 12, out_features: 16}, stage: 1, init: preserve}")
            .replace("{id: fc2, type: linear, args: {in_features: 12, out_features: 12}, stage: 2}",
                     "{id: fc2, type: linear, args: {in_features: 16, out_features: 12}, stage: 2, init: preserve}")
            .replace("      - {id: out,",
                     "      - {id: fc3, type: linear, args: {in_features: 12, out_features: 12}, stage: 2}\n"
                     "      - {id: out,"))
#: A save with a typo in a type name: rejected on rank 0, skipped by every rank.
BROKEN = REVISION.replace("type: linear, args: {in_features: 12, out_features: 12}, stage: 2}\n",
                          "type: linaer, args: {in_features: 12, out_features: 12}, stage: 2}\n")
#: Residual blocks growing by the new operators: a copy of a trained block (with its Adam state) and a
#: block that starts as the identity (its body's last weighted layer zeroed, a norm layer inside).
GROWTH_OPS = textwrap.dedent("""\
    chainspec: 1
    vars: {hidden: 8, dim: 12}
    types:
      res:
        residual: true
        nodes:
          - {id: norm, type: layernorm, args: {normalized_shape: "${dim}"}}
          - {id: fc, type: linear, args: {in_features: "${dim}", out_features: "${hidden}"}}
          - {id: act, type: gelu}
          - {id: proj, type: linear, args: {in_features: "${hidden}", out_features: "${dim}"}}
    chains:
      net:
        input_shape: [6]
        nodes:
          - {id: inp, type: linear, args: {in_features: 6, out_features: "${dim}"}}
          - {id: b0, type: res, init: preserve}
          - {id: b1, type: res, stage: 1, init: {copy: b0}}
          - {id: b2, type: res, stage: 2, init: preserve}
          - {id: out, type: linear, args: {in_features: "${dim}", out_features: 3}}
    """)
#: Steps of the ops scenario; the two growth steps; the step that widens every block's MLP 8 -> 13
#: and the stream 12 -> 24.
OPS_STEPS, OPS_GROW_AT, OPS_WIDEN_AT = 8, (2, 4), 6
PLAN_STEPS, GROW_AT, BROKEN_AT, REVISE_AT = 16, (4, 8), 10, 12
GROWER_STEPS = 9  # 16-image phases at 8 images a step: fade 1, stabilize 1, fade 2, stabilize 2


# -- the scenarios (run by each rank, and by the reference with world = 1) ------------------------------

def _sync_check(chain: nn.Module) -> float:
    """Largest difference of any parameter between this rank and the others (0.0 without a process group)."""
    worst = 0.0
    if not dist.is_initialized():
        return worst
    for _, p in chain.named_parameters():
        gathered = [torch.empty_like(p) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, p.detach().contiguous())
        worst = max(worst, *((g - gathered[0]).abs().max().item() for g in gathered))
    return worst


def _snapshot(chain: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in chain.state_dict().items()}


def _local(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    per = batch.shape[0] // world
    return batch[rank * per:(rank + 1) * per]


def scenario_plan(rank: int, world: int, watch_path: Path) -> dict[str, Any]:
    """A tiny MLP: two growth steps by grow(), an invalid save, one live revision by the watcher."""
    torch.manual_seed(1000 + rank)
    spec = chainspec.loads(SPEC, source="tiny.yaml")
    chain = spec.build(stage=0)
    model: nn.Module = csd.wrap(chain) if world > 1 else chain
    opt = torch.optim.Adam(chain.parameters(), lr=1e-2)
    # Each save here is written whole, and polled at once: settle=0 (scenario_settle covers the wait).
    watcher = csd.DistributedSpecWatcher(watch_path, model, opt, spec=spec, settle=0)
    first = model
    data = torch.Generator().manual_seed(7)
    teacher = torch.randn(6, 3, generator=data)
    out: dict[str, Any] = {"snapshots": [], "rank_diff": [], "plans": [], "errors": [], "broadcast": [],
                           "ids": [], "adam_steps": []}
    for step in range(PLAN_STEPS):
        if step in GROW_AT:
            result = csd.grow(spec, model, opt)
            assert isinstance(result.model, nn.Module)
            spec, model = result.spec, result.model
            out["plans"].append(str(result.plan))
            out["broadcast"].append(result.broadcast.get("net", []))
        if watch_path.parent.exists() and rank == 0 and step in (BROKEN_AT, REVISE_AT):
            watch_path.write_text(BROKEN if step == BROKEN_AT else REVISION, encoding="utf-8")
        plan = watcher.poll()
        if watcher.error is not None and step == BROKEN_AT:
            out["errors"].append(str(watcher.error))
        if plan is not None:
            assert isinstance(watcher.model, nn.Module)
            model, spec = watcher.model, watcher.spec
            out["plans"].append(str(plan))
        x = torch.randn(GLOBAL_BATCH, 6, generator=data)
        y = torch.tanh(x @ teacher)
        xl, yl = _local(x, rank, world), _local(y, rank, world)
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(xl), yl).backward()
        opt.step()
        out["snapshots"].append(_snapshot(chain))
        out["rank_diff"].append(_sync_check(chain))
        out["ids"].append(chain.ids())
        weight = chain["fc0"].module.weight
        assert isinstance(weight, torch.Tensor)
        out["adam_steps"].append(float(opt.state[weight]["step"]))
    out["ddp_type"] = type(model).__name__
    if world > 1:  # the DDP from before the first growth step is disabled, and leads to the live one
        out["stale"] = _timed(lambda: first(torch.zeros(1, 6)))
        out["current"] = csd.current(first) is model
    return out


def _wider_ops() -> str:
    """GROWTH_OPS with every block's MLP 8 -> 13 and the stream 12 -> 24, every node ``init: preserve``
    (copy is for joining nodes: b1 now widens as the others do)."""
    inp = 'in_features: 6, out_features: "${dim}"}'
    return (GROWTH_OPS.replace("hidden: 8, dim: 12", "hidden: 13, dim: 24")
            .replace("init: {copy: b0}", "init: preserve")
            .replace(inp + "}", inp + ", init: preserve}")
            .replace("out_features: 3}}", "out_features: 3}, init: preserve}"))


def scenario_growth_ops(rank: int, world: int) -> dict[str, Any]:
    """Residual blocks joining by copy (weights and Adam state) and as identities, in lockstep."""
    torch.manual_seed(1000 + rank)
    spec = chainspec.loads(GROWTH_OPS, source="ops.yaml")
    chain = spec.build(stage=0)
    model: nn.Module = csd.wrap(chain) if world > 1 else chain
    opt = torch.optim.Adam(chain.parameters(), lr=1e-2)
    data = torch.Generator().manual_seed(11)
    out: dict[str, Any] = {"snapshots": [], "rank_diff": [], "copied": [], "identity": [], "widened": []}
    for step in range(OPS_STEPS):
        if step == OPS_WIDEN_AT:  # widened with init: preserve: new units copy random ones, moments follow;
            # the stream (every block's input and output) doubles: the old channels tiled, norms split
            probe = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
            before = chain(probe).detach()
            wider = _wider_ops() if rank == 0 else None
            result = csd.apply_plan(spec, wider, model, opt)
            spec, model = result.spec, result.model
            out["widened"] = [float((chain(probe).detach() - before).abs().max()), chain.b0.body.fc.out_features,
                              chain.inp.out_features, bool(opt.state[chain.b1.body.proj.weight])]
        if step in OPS_GROW_AT:
            probe = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
            before = chain(probe).detach()
            result = csd.grow(spec, model, opt)
            spec, model = result.spec, result.model
            if chain.stage == 1:  # b1 is b0: weights and moments, as new tensors
                out["copied"] = [torch.equal(a, b) and a is not b and torch.equal(opt.state[a]["exp_avg"],
                                                                                   opt.state[b]["exp_avg"])
                                 for a, b in zip(chain.b1.parameters(), chain.b0.parameters(), strict=True)]
            else:  # b2 starts as the identity
                out["identity"] = float((chain(probe).detach() - before).abs().max())
        x = torch.randn(GLOBAL_BATCH, 6, generator=data)
        xl = _local(x, rank, world)
        opt.zero_grad(set_to_none=True)
        model(xl).square().mean().backward()
        opt.step()
        out["snapshots"].append(_snapshot(chain))
        out["rank_diff"].append(_sync_check(chain))
    return out


def _full_snapshot(chain: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each sharded (FSDP2) tensor gathered whole."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in chain.state_dict().items()}


def scenario_fsdp(rank: int, world: int) -> dict[str, Any]:
    """The ops scenario's growth under FSDP2: every node with parameters sharded with ``fully_shard``.

    Blocks join by copy (weights and Adam moments, read from the sharded source) and as identities,
    each broadcast whole and then sharded by ``shard=fully_shard``; then a block is removed; then a
    widening with ``init: preserve``, which must read sharded weights whole, is refused on every rank.
    The reference (``world == 1``) trains the same chain unsharded.
    """
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(1000 + rank)
    spec = chainspec.loads(GROWTH_OPS, source="ops.yaml")
    chain = spec.build(stage=0)
    shard = fully_shard if world > 1 else None
    if shard is not None:
        csd.broadcast_module(chain)  # the same weights on every rank before they are sharded
        for node_id in chain.ids():
            if any(True for _ in chain[node_id].module.parameters()):
                shard(chain[node_id].module)
    opt = torch.optim.Adam(chain.parameters(), lr=1e-2)
    data = torch.Generator().manual_seed(11)
    out: dict[str, Any] = {"snapshots": [], "ids": [], "sharded": [], "refused": ""}
    for step in range(OPS_STEPS):
        if step in OPS_GROW_AT:
            spec = csd.grow(spec, chain, opt, shard=shard).spec
        if step == OPS_WIDEN_AT:
            removed = GROWTH_OPS.replace("      - {id: b1, type: res, stage: 1, init: {copy: b0}}\n", "")
            spec = csd.apply_plan(spec, removed if rank == 0 else None, chain, opt, shard=shard).spec
            if shard is not None:  # unsharded (the reference), the widening would apply
                wider = removed.replace("hidden: 8", "hidden: 13")
                before = _full_snapshot(chain)
                try:
                    csd.apply_plan(spec, wider if rank == 0 else None, chain, opt, shard=shard)
                except chainspec.SpecError as exc:
                    out["refused"] = str(exc)
                out["untouched"] = all(torch.equal(v, before[k]) for k, v in _full_snapshot(chain).items())
        x = torch.randn(GLOBAL_BATCH, 6, generator=data)
        opt.zero_grad(set_to_none=True)
        chain(_local(x, rank, world)).square().mean().backward()  # FSDP averages the ranks' gradients
        opt.step()
        out["snapshots"].append(_full_snapshot(chain))
        out["ids"].append(chain.ids())
        out["sharded"].append(sorted(n for n, p in chain.named_parameters() if hasattr(p, "full_tensor")))
    return out


def scenario_plain(rank: int, world: int) -> dict[str, Any]:
    """No DDP: broadcast_module and assert_in_sync are what keep plain chains equal on every rank."""
    torch.manual_seed(3000 + rank)
    spec = chainspec.loads(SPEC, source="tiny.yaml")
    chain = spec.build(stage=0)  # different weights on each rank
    out: dict[str, Any] = {"at_start": _timed(lambda: csd.assert_in_sync(chain))}
    out["synced"] = csd.broadcast_module(chain)
    csd.assert_in_sync(chain)
    spec = csd.grow(spec, chain, broadcast="none").spec  # fc1 differs between the ranks now
    out["no_broadcast"] = _timed(lambda: csd.assert_in_sync(chain))
    result = csd.grow(spec, chain)  # fc2 is broadcast
    out["grown"] = result.broadcast["net"]
    out["still_fc1"] = _timed(lambda: csd.assert_in_sync(chain))
    out["fixed"] = csd.broadcast_module(chain, names=["fc1.weight", "fc1.bias"])
    csd.assert_in_sync(chain)
    out["model_is_chain"] = result.model is chain
    return out


def scenario_grower(rank: int, world: int) -> dict[str, Any]:
    """The tiny PG-GAN generator through two fade-ins and collapses, regressing onto fixed images."""
    torch.manual_seed(2000 + rank)
    spec = chainspec.load(ROOT / "specs" / "pggan_tiny.yaml")
    g = spec.build("generator", stage=0)
    opt = torch.optim.Adam(g.parameters(), lr=1e-3, betas=(0.0, 0.99))
    schedule = chainspec.Schedule.lengths(spec.stages, stabilize=16, fade=16)
    model: nn.Module = csd.wrap(g) if world > 1 else g
    grower = csd.DistributedGrower(chainspec.Grower(spec, {"generator": g}, {"generator": opt}, schedule=schedule),
                                   {"generator": model})
    data = torch.Generator().manual_seed(11)
    targets = torch.rand(GLOBAL_BATCH, 3, 32, 32, generator=data) * 2 - 1
    out: dict[str, Any] = {"snapshots": [], "rank_diff": [], "events": [], "alphas": [], "ids": []}
    for _ in range(GROWER_STEPS):
        model = grower.models["generator"]
        z = torch.randn(GLOBAL_BATCH, 32, generator=data)
        images = model(_local(z, rank, world))
        size = images.shape[-1]
        goal = nn.functional.adaptive_avg_pool2d(_local(targets, rank, world), size)
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(images, goal).backward()
        opt.step()
        out["alphas"].append(grower.alpha)
        out["events"].append([(e.kind, e.stage) for e in grower.step(GLOBAL_BATCH)])
        out["snapshots"].append(_snapshot(g))
        out["rank_diff"].append(_sync_check(g))
        out["ids"].append(g.ids())
    return out


#: The watched-save scenario's settle time (seconds) and the pause that outlasts it.
SETTLE_S, PAUSE_S = 0.2, 0.3


def scenario_settle(rank: int, world: int, tmp: Path) -> dict[str, Any]:
    """Saves written in two ``write()`` calls, their first half a valid spec, under a DistributedSpecWatcher.

    First the writer finishes within ``settle``: the half is never applied, on any rank. Then it pauses
    longer than ``settle``: the half (without ``out``) is applied, and the rest brings ``out`` back with
    its trained weights and Adam state, on every rank.
    """
    torch.manual_seed(4000)  # the same weights on both ranks, and no DDP: they stay equal
    spec = chainspec.loads(SPEC, source="settle.yaml")
    chain = spec.build(stage=0)
    opt = torch.optim.Adam(chain.parameters(), lr=1e-2)
    data = torch.Generator().manual_seed(8)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        chain(torch.randn(4, 6, generator=data)).square().mean().backward()
        opt.step()

    train()
    path = tmp / "settle.yaml" if rank == 0 else tmp / "absent" / "settle.yaml"
    if rank == 0:
        path.write_text(SPEC, encoding="utf-8")
    watcher = csd.DistributedSpecWatcher(path, chain, opt, spec=spec, settle=SETTLE_S)
    out: dict[str, Any] = {"noted": [], "ids": [], "plans": []}

    def save_in_two_writes(text: str, pause: float) -> None:
        half = text[:text.index("      - {id: out")]
        handle = open(path, "w", encoding="utf-8") if rank == 0 else None  # noqa: SIM115
        if handle is not None:
            handle.write(half)
            handle.flush()
        out["noted"].append(watcher.poll() is None)  # the first half has landed
        out["ids"].append(chain.ids())
        time.sleep(pause)
        if pause > SETTLE_S:  # the writer paused too long: the half is complete as far as anyone can tell
            plan = watcher.poll()
            out["plans"].append(str(plan))
            out["ids"].append(chain.ids())
            train()
        if handle is not None:
            handle.write(text[len(half):])
            handle.close()
        out["noted"].append(watcher.poll() is None)  # the rest has landed: noted, not taken at once
        time.sleep(PAUSE_S)
        out["plans"].append(str(watcher.poll()))
        out["ids"].append(chain.ids())

    weight = chain["out"].module.weight
    save_in_two_writes(SPEC.replace("act0, type: leaky_relu, args: {negative_slope: 0.2}",
                                    "act0, type: leaky_relu, args: {negative_slope: 0.1}"), pause=0.0)
    train()
    kept = (weight.detach().clone(), opt.state[weight]["exp_avg"].clone(), float(opt.state[weight]["step"]))
    save_in_two_writes(SPEC, pause=PAUSE_S)
    out["restored"] = (chain["out"].module.weight is weight and torch.equal(weight, kept[0])
                       and torch.equal(opt.state[weight]["exp_avg"], kept[1])
                       and float(opt.state[weight]["step"]) == kept[2])
    out["diff"] = _sync_check(chain)
    return out


def _timed(fn: Any) -> tuple[str, str, float]:
    """``(exception type, message, seconds)`` of calling ``fn``, which must raise."""
    start = time.monotonic()
    try:
        fn()
    except Exception as exc:
        return type(exc).__name__, str(exc), time.monotonic() - start
    return "none", "did not raise", time.monotonic() - start


def scenario_failures(rank: int, world: int, tmp: Path) -> dict[str, Any]:
    """Disagreements and a missing rank raise on every rank, fast, leaving the models untouched."""
    out: dict[str, Any] = {}
    # Rank 1 runs another revision (a different slope): the plans differ, nobody applies.
    other = SPEC.replace("act0, type: leaky_relu, args: {negative_slope: 0.2}",
                         "act0, type: leaky_relu, args: {negative_slope: 0.3}")
    assert other != SPEC
    mine = SPEC if rank == 0 else other
    spec = chainspec.loads(mine, source="mine.yaml")
    chain = spec.build(stage=0)
    before = _snapshot(chain)
    revised = SPEC.replace("out_features: 3", "out_features: 4")
    out["mismatch"] = _timed(lambda: csd.apply_plan(spec, revised if rank == 0 else None, chain))
    out["mismatch_untouched"] = (chain.ids() == ["fc0", "act0", "out"] and
                                 all(torch.equal(v, before[k]) for k, v in chain.state_dict().items()))
    # Rank 0 sends an invalid revision: every rank raises the same SpecError.
    out["invalid"] = _timed(lambda: csd.apply_plan(spec, BROKEN if rank == 0 else None, chain, stage=2))
    # Rank 0 forgets the revision: every rank is told, none waits for it.
    out["no_revision"] = _timed(lambda: csd.apply_plan(spec, None, chain))
    # The ranks count different batch sizes across a phase boundary: caught before anyone grows.
    pggan = chainspec.load(ROOT / "specs" / "pggan_tiny.yaml")
    g = pggan.build("generator", stage=0)
    grower = csd.DistributedGrower(chainspec.Grower(pggan, {"generator": g},
                                                    schedule=chainspec.Schedule.lengths(pggan.stages, stabilize=8,
                                                                                        fade=8)))
    out["batch_sizes"] = _timed(lambda: grower.step(8 + rank))
    out["batch_sizes_untouched"] = g.ids() == ["b4", "to_rgb_4"] and grower.stage == 0
    # Different structures cannot be synchronised: named, not a crash inside gloo.
    other_chain = chainspec.loads(SPEC).build(stage=rank)
    out["layout"] = _timed(lambda: csd.broadcast_module(other_chain))
    # The apply fails on rank 1 only, after its splice (an out-of-memory error on one GPU, a Ctrl-C):
    # rank 0 had applied too, and rolls back, so both ranks still run the same model.
    out.update(_fail_on_one_rank(rank))
    out.update(_grower_fails_on_one_rank(rank))
    # Rank 1 never reaches the barrier: rank 0's monitored barrier names it within the timeout.
    flag = tmp / "barrier_seen"
    if rank == 0:
        out["barrier"] = _timed(lambda: csd.barrier(timeout=2.0, where="the missing-rank check"))
        flag.write_text("done")
    else:
        deadline = time.monotonic() + 60
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return out


def _fail_on_one_rank(rank: int) -> dict[str, Any]:

    spec = chainspec.loads(SPEC, source="mine.yaml")
    torch.manual_seed(5)  # the same weights on both ranks
    chain = spec.build(stage=0)
    opt = torch.optim.Adam(chain.parameters(), lr=1e-2)
    chain(torch.randn(4, 6)).sum().backward()
    opt.step()
    before, adam = _snapshot(chain), [s["exp_avg"].clone() for s in opt.state.values()]
    out: dict[str, Any] = {}
    real = chainspec.revise.apply._Job.update_optimizer
    for key, error in (("one_rank_fails", RuntimeError("CUDA out of memory (injected)")),
                       ("one_rank_interrupted", KeyboardInterrupt())):
        def update_optimizer(job: Any, error: BaseException = error) -> None:
            real(job)
            if rank == 1:
                raise error

        chainspec.revise.apply._Job.update_optimizer = update_optimizer  # type: ignore[method-assign]
        start = time.monotonic()
        try:
            csd.grow(spec, chain, opt)
            out[key] = ("none", "did not raise", time.monotonic() - start)
        except BaseException as exc:  # KeyboardInterrupt too: it is what rank 1 must raise
            out[key] = (type(exc).__name__, str(exc), time.monotonic() - start)
        finally:
            chainspec.revise.apply._Job.update_optimizer = real  # type: ignore[method-assign]
        out[key + "_untouched"] = (chain.ids() == ["fc0", "act0", "out"] and chain.stage == 0
                                   and all(torch.equal(v, before[k]) for k, v in chain.state_dict().items())
                                   and len(opt.state) == len(adam) and all(
                                       torch.equal(s["exp_avg"], a) for s, a in zip(opt.state.values(), adam,
                                                                                    strict=True)))
    csd.grow(spec, chain, opt)  # the same growth step then succeeds on both ranks
    out["grown_after_failures"] = chain.ids()
    out["grown_after_failures_diff"] = _sync_check(chain)
    return out


def _grower_fails_on_one_rank(rank: int) -> dict[str, Any]:
    """A DistributedGrower's fade-in fails on rank 1 only, after its splice: both ranks roll back."""

    pggan = chainspec.load(ROOT / "specs" / "pggan_tiny.yaml")
    torch.manual_seed(5)
    g = pggan.build("generator", stage=0)
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    g(torch.randn(2, 32)).mean().backward()
    opt.step()
    grower = csd.DistributedGrower(chainspec.Grower(pggan, {"generator": g}, {"generator": opt},
                                                    schedule=chainspec.Schedule.lengths(pggan.stages, stabilize=8,
                                                                                        fade=8)),
                                   {"generator": csd.wrap(g)})
    before, params = _snapshot(g), [id(p) for p in opt.param_groups[0]["params"]]
    out: dict[str, Any] = {}
    real = chainspec.grow.grower.Grower._wrap
    for key, error in (("grower_fails", RuntimeError("CUDA out of memory (injected)")),
                       ("grower_interrupted", KeyboardInterrupt())):
        def failing_wrap(self: Any, *args: Any, error: BaseException = error, **kwargs: Any) -> None:
            real(self, *args, **kwargs)
            if rank == 1:
                raise error

        chainspec.grow.grower.Grower._wrap = failing_wrap  # type: ignore[method-assign]
        start = time.monotonic()
        try:
            grower.step(8)
            out[key] = ("none", "did not raise", time.monotonic() - start)
        except BaseException as exc:
            out[key] = (type(exc).__name__, str(exc), time.monotonic() - start)
        finally:
            chainspec.grow.grower.Grower._wrap = real  # type: ignore[method-assign]
        out[key + "_untouched"] = (g.ids() == ["b4", "to_rgb_4"] and grower.stage == 0 and grower.alpha == 1.0
                                   and grower.grower.images == 0 and not grower.grower.blends
                                   and [id(p) for p in opt.param_groups[0]["params"]] == params
                                   and all(torch.equal(v, before[k]) for k, v in g.state_dict().items()))
    out["grower_after_failures"] = [(e.kind, e.stage) for e in grower.step(8)]
    out["grower_after_failures_diff"] = _sync_check(g)
    return out


# -- the two processes ----------------------------------------------------------------------------------

def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    if any(name == "lo" for _, name in socket.if_nameindex()):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's own connections stay on loopback too
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=PG_TIMEOUT)
    base = Path(tmp)
    try:
        # Only rank 0's watcher path exists: the revision can only reach rank 1 by broadcast.
        watch = base / "watched.yaml" if rank == 0 else base / "absent" / "watched.yaml"
        if rank == 0:
            watch.write_text(SPEC, encoding="utf-8")
        results = {"plan": scenario_plan(rank, world, watch), "grower": scenario_grower(rank, world),
                   "plain": scenario_plain(rank, world), "settle": scenario_settle(rank, world, base),
                   "ops": scenario_growth_ops(rank, world), "fsdp": scenario_fsdp(rank, world)}
        dist.barrier()
        results["failures"] = scenario_failures(rank, world, base)
        torch.save(results, base / f"rank{rank}.pt")
    except BaseException:
        (base / f"rank{rank}.error").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Both ranks' results; fails (never hangs) if a rank raises, dies or runs past HARNESS_TIMEOUT."""
    tmp = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(_worker, args=(WORLD, _free_port(), str(tmp)), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + HARNESS_TIMEOUT
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                errors = "".join(p.read_text() for p in sorted(tmp.glob("rank*.error")))
                pytest.fail(f"the 2-rank run did not finish within {HARNESS_TIMEOUT:.0f} s: a rank hangs; "
                            f"errors so far:\n{errors or '(none)'}")
    except mp.ProcessRaisedException as exc:
        pytest.fail(f"a rank raised:\n{exc}")
    except mp.ProcessExitedException as exc:
        errors = "".join(p.read_text() for p in sorted(tmp.glob("rank*.error")))
        pytest.fail(f"a rank died: {exc}\n{errors}")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join(5)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same scenarios in this process, without a process group, on the whole global batch."""
    tmp = tmp_path_factory.mktemp("ref")
    watch = tmp / "watched.yaml"
    watch.write_text(SPEC, encoding="utf-8")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each rank: tiny tensors, and the CPU is shared with the two ranks
    try:
        with torch.random.fork_rng(devices=[]):
            return {"plan": scenario_plan(0, 1, watch), "grower": scenario_grower(0, 1),
                    "ops": scenario_growth_ops(0, 1), "fsdp": scenario_fsdp(0, 1)}
    finally:
        torch.set_num_threads(threads)


def _assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], where: str) -> None:
    assert sorted(got) == sorted(want), f"{where}: different tensors {sorted(set(got) ^ set(want))}"
    for key in want:
        def message(detail: str, key: str = key) -> str:
            return f"{where} {key}: {detail}"

        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=message)


# -- the tests -------------------------------------------------------------------------------------------

def test_plan_ranks_equal_after_every_step(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert r["plan"]["rank_diff"] == [0.0] * PLAN_STEPS
    for step, (a, b) in enumerate(zip(ranks[0]["plan"]["snapshots"], ranks[1]["plan"]["snapshots"], strict=True)):
        assert sorted(a) == sorted(b)
        for key in a:
            assert torch.equal(a[key], b[key]), f"step {step}: {key} differs between the ranks"


def test_plan_matches_single_process(ranks: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    ref = reference["plan"]
    assert ranks[0]["plan"]["ids"] == ref["ids"]
    for step, (got, want) in enumerate(zip(ranks[0]["plan"]["snapshots"], ref["snapshots"], strict=True)):
        _assert_close(got, want, f"step {step}")


def test_growth_operators_in_lockstep(ranks: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    for r in ranks:
        assert r["ops"]["rank_diff"] == [0.0] * OPS_STEPS
        assert r["ops"]["copied"] and all(r["ops"]["copied"])  # a copy: equal weights and moments, new tensors
        assert r["ops"]["identity"] <= 1e-5
        change, width, stream, has_moments = r["ops"]["widened"]
        assert change <= 1e-5 and width == 13 and stream == 24 and has_moments  # preserved, moments broadcast
    for step, (got, want) in enumerate(zip(ranks[0]["ops"]["snapshots"], reference["ops"]["snapshots"],
                                           strict=True)):
        _assert_close(got, want, f"step {step}")


def test_growth_under_fsdp2_matches_single_process(ranks: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    """FSDP2 (fully_shard per node, gloo, 2 CPU processes): growth by copy and identity, a removal, and a
    refused widening, each rank's gathered parameters equal to the other's and to a one-process run."""
    got, want = ranks[0]["fsdp"], reference["fsdp"]
    assert got["ids"] == want["ids"] == ranks[1]["fsdp"]["ids"]
    assert got["ids"][OPS_GROW_AT[1]] == ["inp", "b0", "b1", "b2", "out"]
    assert got["ids"][-1] == ["inp", "b0", "b2", "out"]
    assert "b2.body.fc.weight" in got["sharded"][OPS_GROW_AT[1]]  # the inserted block is sharded too
    assert not want["sharded"][0]
    for r in ranks:
        assert "init: preserve reads the old weights of node 'b0' whole, but they are sharded (FSDP2)" in \
            r["fsdp"]["refused"] and r["fsdp"]["untouched"]
    for step, (a, b, ref) in enumerate(zip(got["snapshots"], ranks[1]["fsdp"]["snapshots"], want["snapshots"],
                                           strict=True)):
        for key in a:
            assert torch.equal(a[key], b[key]), f"step {step}: {key} differs between the ranks"
        _assert_close(a, ref, f"step {step}")


def test_plan_grows_twice_and_takes_the_revision(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        ids = r["plan"]["ids"]
        assert ids[GROW_AT[0] - 1] == ["fc0", "act0", "out"]
        assert ids[GROW_AT[0]] == ["fc0", "act0", "fc1", "act1", "out"]
        assert ids[GROW_AT[1]] == ["fc0", "act0", "fc1", "act1", "fc2", "act2", "out"]
        assert ids[REVISE_AT] == ["fc0", "act0", "fc1", "act1", "fc2", "act2", "fc3", "out"]
        assert ids[-1] == ids[REVISE_AT]
        assert r["plan"]["snapshots"][REVISE_AT]["fc1.weight"].shape == (16, 12)
        plans = r["plan"]["plans"]
        assert len(plans) == 3  # two growth steps and one revision; the invalid save applied nothing
        assert "+ fc1 (linear)" in plans[0] and "+ fc2 (linear)" in plans[1]
        assert "negative_slope 0.2 → 0.1" in plans[2] and "+ fc3 (linear)" in plans[2]
        assert r["plan"]["ddp_type"] == "DistributedDataParallel"


def test_plan_broadcasts_only_new_tensors(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["plan"]["broadcast"] == [["fc1.weight", "fc1.bias"], ["fc2.weight", "fc2.bias"]]


def test_plan_keeps_optimizer_state(ranks: list[dict[str, Any]]) -> None:
    # fc0 survives both growth steps and the revision: Adam's step count never restarts.
    for r in ranks:
        assert r["plan"]["adam_steps"] == [float(i + 1) for i in range(PLAN_STEPS)]


def test_replaced_ddp_is_disabled_and_leads_to_the_live_one(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        kind, message, _ = r["plan"]["stale"]
        assert kind == "DistributedError" and "replaced" in message
        assert r["plan"]["current"]


def test_plain_chains_are_kept_equal_by_broadcast(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        plain = r["plain"]
        assert plain["at_start"][0] == "DistributedError"  # each rank seeded differently
        assert plain["synced"] == ["fc0.weight", "fc0.bias", "out.weight", "out.bias"]
        kind, message, _ = plain["no_broadcast"]
        assert kind == "DistributedError" and "fc1.weight" in message
        assert plain["grown"] == ["fc2.weight", "fc2.bias"]
        kind, message, _ = plain["still_fc1"]
        assert kind == "DistributedError" and "fc1" in message and "fc2" not in message
        assert plain["fixed"] == ["fc1.weight", "fc1.bias"]
        assert plain["model_is_chain"]


def test_invalid_save_is_reported_and_skipped_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    (message,) = ranks[0]["plan"]["errors"]
    assert "watched.yaml:" in message and "linaer" in message
    (other,) = ranks[1]["plan"]["errors"]
    assert "linaer" in other  # rank 1 never read the file: it learnt of the rejection by broadcast
    for r in ranks:
        assert r["plan"]["ids"][BROKEN_AT] == r["plan"]["ids"][BROKEN_AT - 1]


def test_grower_ranks_equal_and_match_single_process(ranks: list[dict[str, Any]],
                                                     reference: dict[str, Any]) -> None:
    for r in ranks:
        assert r["grower"]["rank_diff"] == [0.0] * GROWER_STEPS
    ref = reference["grower"]
    assert ranks[0]["grower"]["events"] == ranks[1]["grower"]["events"] == ref["events"]
    assert [e for step in ref["events"] for e in step] == [("fade", 1), ("stabilize", 1), ("fade", 2),
                                                          ("stabilize", 2)]
    assert ranks[0]["grower"]["alphas"] == ref["alphas"]
    for step, (got, want) in enumerate(zip(ranks[0]["grower"]["snapshots"], ref["snapshots"], strict=True)):
        _assert_close(got, want, f"grower step {step}")
    for step, (a, b) in enumerate(zip(ranks[0]["grower"]["snapshots"], ranks[1]["grower"]["snapshots"],
                                      strict=True)):
        assert all(torch.equal(a[k], b[k]) for k in a), f"grower step {step}: ranks differ"


def test_grower_fades_in(ranks: list[dict[str, Any]]) -> None:
    ids = ranks[1]["grower"]["ids"]
    assert "blend_merge" in ids[1] and "to_rgb_4" in ids[1]  # fading into stage 1: both paths
    assert ids[3] == ["b4", "b8", "to_rgb_8"]  # collapsed: exactly stage 1
    assert ids[-1] == ["b4", "b8", "b16", "to_rgb_16"]
    assert 0.0 < ranks[1]["grower"]["alphas"][3] < 1.0


def test_disagreeing_ranks_raise_everywhere_without_changes(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        kind, message, seconds = r["failures"]["mismatch"]
        assert kind == "DistributedError", message
        assert "different plans" in message
        assert seconds < 10
        assert r["failures"]["mismatch_untouched"]


def test_invalid_revision_raises_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        kind, message, seconds = r["failures"]["invalid"]
        assert kind == "SpecError" and "linaer" in message
        assert seconds < 10


def test_different_structures_are_named_not_crashed(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        kind, message, _ = r["failures"]["layout"]
        assert kind == "DistributedError" and "different tensors" in message


def test_missing_revision_and_different_batch_sizes_raise_everywhere(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        kind, message, seconds = r["failures"]["no_revision"]
        assert kind == "ValueError" and "rank 0 must pass the new revision" in message and seconds < 10
        kind, message, seconds = r["failures"]["batch_sizes"]
        assert kind == "DistributedError" and "different points of the schedule" in message and seconds < 10
        assert r["failures"]["batch_sizes_untouched"]


def test_an_apply_failing_on_one_rank_is_rolled_back_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    for rank, r in enumerate(ranks):
        failures = r["failures"]
        for key, own in (("one_rank_fails", "RuntimeError"), ("one_rank_interrupted", "KeyboardInterrupt")):
            kind, message, seconds = failures[key]
            if rank == 1:
                assert kind == own, message
            else:
                assert kind == "DistributedError", message
                assert "failed on other ranks" in message and "rank 1" in message and "rolled back" in message
            assert seconds < 10, f"{key} took {seconds:.1f}s on rank {rank}"
            assert failures[key + "_untouched"], f"{key}: rank {rank} changed its model or optimizer"
        assert failures["grown_after_failures"] == ["fc0", "act0", "fc1", "act1", "out"]
        assert failures["grown_after_failures_diff"] == 0.0


def test_a_growth_step_failing_on_one_rank_is_rolled_back_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    for rank, r in enumerate(ranks):
        failures = r["failures"]
        for key, own in (("grower_fails", "RuntimeError"), ("grower_interrupted", "KeyboardInterrupt")):
            kind, message, seconds = failures[key]
            if rank == 1:
                assert kind == own, message
            else:
                assert kind == "DistributedError", message
                assert "failed on other ranks" in message and "rank 1" in message, message
            assert seconds < 10, f"{key} took {seconds:.1f}s on rank {rank}"
            assert failures[key + "_untouched"], f"{key}: rank {rank} changed its model, optimizer or schedule"
        assert failures["grower_after_failures"] == [("fade", 1)]
        assert failures["grower_after_failures_diff"] == 0.0


def test_missing_rank_times_out_instead_of_hanging(ranks: list[dict[str, Any]]) -> None:
    kind, message, seconds = ranks[0]["failures"]["barrier"]
    assert kind == "DistributedError"
    assert "missing-rank check" in message and "Ranks 1 failed" in message
    assert 1.5 < seconds < 15


def test_self_check_without_a_process_group(capsys: pytest.CaptureFixture[str]) -> None:
    with torch.random.fork_rng(devices=[]):
        code = csd.main([str(ROOT / "specs" / "pggan_tiny.yaml"), "--steps-per-phase", "1", "--batch", "4"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("in sync on every rank") == 7  # 3 fades, 3 collapses, done
    assert "generator, discriminator on 1 rank(s), gloo, cpu" in out


@pytest.mark.slow
def test_self_check_under_torchrun(tmp_path: Path) -> None:
    """The README's torchrun command, on two CPU processes with gloo."""
    import shutil
    import subprocess
    import sys

    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if any(name == "lo" for _, name in socket.if_nameindex()):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "chainspec.distributed", str(ROOT / "specs" / "pggan_tiny.yaml"), "--steps-per-phase", "1",
           "--batch", "4", "--timeout", "30"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=HARNESS_TIMEOUT, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on 2 rank(s), gloo, cpu" in done.stdout
    assert "every growth step kept the ranks equal" in done.stdout


def test_watcher_refuses_a_revision_mid_fade(tmp_path: Path, clock: _Clock) -> None:
    """In one process (the same code path, no collectives): the chain holds blend nodes, so nothing applies."""
    spec = chainspec.load(ROOT / "specs" / "pggan_tiny.yaml")
    g = spec.build("generator", stage=0)
    opt = torch.optim.Adam(g.parameters())
    grower = csd.DistributedGrower(chainspec.Grower(spec, {"generator": g}, {"generator": opt},
                                                    schedule=chainspec.Schedule.lengths(spec.stages, stabilize=4,
                                                                                        fade=4)))
    path = tmp_path / "g.yaml"
    path.write_text(spec.text, encoding="utf-8")
    errors: list[Exception] = []
    watcher = csd.DistributedSpecWatcher(path, {"generator": g}, {"generator": opt}, spec=spec,
                                         on_error=errors.append)
    assert [(e.kind, e.stage) for e in grower.step(4)] == [("fade", 1)]
    ids = g.ids()
    path.write_text(spec.text.replace("slope: 0.2 ", "slope: 0.1 "), encoding="utf-8")
    assert _settled(watcher, clock) is None
    assert g.ids() == ids and len(errors) == 1 and isinstance(errors[0], chainspec.PlanError)


def test_watcher_keeps_moments_on_a_comment_only_save_even_with_reset(tmp_path: Path, clock: _Clock) -> None:
    """As SpecWatcher: a save that changes no chain is no growth step, so policy='reset' does not apply."""
    spec = chainspec.load(ROOT / "specs" / "pggan_tiny.yaml")
    g = spec.build("generator", stage=0)
    opt = torch.optim.Adam(g.parameters())
    g(torch.randn(2, *spec.resolved("generator").input_shape_at(0))).pow(2).mean().backward()
    opt.step()
    moments = {id(p): s["exp_avg"].clone() for p, s in opt.state.items()}
    assert len(moments) == len(list(g.parameters()))
    path = tmp_path / "g.yaml"
    path.write_text(spec.text, encoding="utf-8")
    watcher = csd.DistributedSpecWatcher(path, g, opt, spec=spec, stage=0, policy="reset")
    path.write_text("# tuned\n" + spec.text, encoding="utf-8")
    os.utime(path, ns=(time.time_ns() + 10**9,) * 2)
    assert _settled(watcher, clock) is not None and watcher.error is None
    assert all(torch.equal(opt.state[p]["exp_avg"], moments[id(p)]) for p in g.parameters())
    path.write_text("# tuned\n" + spec.text.replace("slope: 0.2 ", "slope: 0.1 "), encoding="utf-8")
    os.utime(path, ns=(time.time_ns() + 2 * 10**9,) * 2)
    assert _settled(watcher, clock) is not None and watcher.error is None
    assert len(opt.state) == 0  # a real revision resets


def test_watched_saves_are_taken_only_when_complete_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    full, half = ["fc0", "act0", "out"], ["fc0", "act0"]
    for r in ranks:
        settle = r["settle"]
        assert settle["noted"] == [True] * 4  # no poll takes a change it has just seen
        # A writer that finishes within settle: its first half is never applied.
        assert settle["ids"][:2] == [full, full]
        assert "negative_slope 0.2 → 0.1" in settle["plans"][0] and "out" not in settle["plans"][0]
        # A writer that pauses longer: the half is applied, and the rest brings `out` back, trained.
        assert settle["ids"][2:] == [full, half, full]
        assert "- out (linear)" in settle["plans"][1]
        assert "+ out (linear) after act0 (restored)" in settle["plans"][2]
        assert settle["restored"]  # the same Parameter, its weights and Adam state as before the half save
        assert settle["diff"] == 0.0
    assert ranks[0]["settle"]["plans"] == ranks[1]["settle"]["plans"]


class _Clock:
    """The watchers' monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _settled(watcher: csd.DistributedSpecWatcher, clock: _Clock) -> Any:
    """Poll across a save: the first poll notes it, the first poll ``settle`` later takes it."""
    assert watcher.poll() is None
    clock.now += watcher.settle * 1.1
    return watcher.poll()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    from chainspec.revise import watch as _watch

    fake = _Clock()
    monkeypatch.setattr(_watch, "monotonic", fake)
    return fake


def test_watcher_settles_and_limits_as_spec_watcher_does(tmp_path: Path, clock: _Clock) -> None:
    """Without a process group (the same code path as rank src): the default settle, the spec's limits."""

    path = tmp_path / "net.yaml"
    path.write_text(SPEC, encoding="utf-8")
    small = chainspec.Limits(max_bytes=2000)
    spec = chainspec.load(path, limits=small)
    chain = spec.build(stage=0)
    errors: list[Exception] = []
    watcher = csd.DistributedSpecWatcher(path, chain, spec=spec, on_error=errors.append)
    assert watcher.settle == chainspec.revise.watch.SETTLE > 0 and watcher.limits is small
    path.write_text(SPEC.replace("out_features: 3", "out_features: 4"), encoding="utf-8")
    assert watcher.poll() is None and chain["out"].module.out_features == 3  # noted, not taken
    clock.now += watcher.settle * 0.9
    assert watcher.poll() is None and chain["out"].module.out_features == 3  # not settled yet
    clock.now += watcher.settle * 0.2
    assert watcher.poll() is not None and chain["out"].module.out_features == 4
    path.write_text(SPEC + "# " + "x" * 2000 + "\n", encoding="utf-8")
    assert _settled(watcher, clock) is None
    assert "specs are limited to 2,000 bytes" in str(errors[-1]) and chain["out"].module.out_features == 4
    with pytest.raises(ValueError, match="settle"):
        csd.DistributedSpecWatcher(path, chain, spec=spec, settle=-0.5)
