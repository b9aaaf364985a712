"""The torchrun self-check: grow a spec's chains under DDP on random data and check the ranks stay equal.

``python -m chainspec.distributed SPEC`` runs :func:`main` (see ``__main__.py``).
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..read.spec import Spec, load
from .ddp import wrap
from .groups import DistributedError, _rank, _world
from .grower import DistributedGrower
from .tensors import assert_in_sync


def main(argv: list[str] | None = None) -> int:
    """Grow a spec's chains through their stages under DDP on random data, checking the ranks stay equal.

    Run it under torchrun, one process per GPU (nccl) or on CPUs (gloo); it exits 1 if the ranks ever
    hold different weights after a growth step::

        torchrun --standalone --nproc-per-node=2 -m chainspec.distributed specs/pggan_tiny.yaml

    Example:
        >>> main(["specs/pggan_tiny.yaml", "--steps-per-phase", "1"])  # without torchrun: one process  # doctest: +SKIP
        0
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m chainspec.distributed",
        description="Grow a spec's chains under DDP on random data and check that the ranks stay equal.")
    parser.add_argument("spec", help="the spec file (every chain is built and grown)")
    parser.add_argument("--batch", type=int, default=8, help="per-rank batch size (default 8)")
    parser.add_argument("--steps-per-phase", type=int, default=4, help="training steps per stabilise or fade phase")
    parser.add_argument("--fade", choices=("yes", "no"), default="yes", help="fade new stages in (default) or not")
    parser.add_argument("--backend", choices=("nccl", "gloo"), default=None,
                        help="default: nccl when CUDA is available, else gloo")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds every collective may take")
    args = parser.parse_args(argv)

    spec = load(args.spec)
    if spec.stages < 2:
        parser.error(f"{args.spec} has one stage: nothing to grow")
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before any object collective: they run on the current device
    if launched:
        dist.init_process_group(backend, timeout=timedelta(seconds=args.timeout))
    try:
        return _grow_and_check(spec, args, device, backend, launched=launched)
    except DistributedError as exc:
        print(f"rank {_rank()}: {exc}", flush=True)
        return 1
    finally:
        if launched:
            _shut_down()  # _grow_and_check has returned: its DDP wrappers are garbage now


def _grow_and_check(spec: Spec, args: Any, device: torch.device, backend: str, *, launched: bool) -> int:
    """The self-check's training loop (see :func:`main`); returns 0 when every growth step kept the ranks equal."""
    from ..grow.grower import Grower
    from ..read.schedule import Schedule

    rank, world = _rank(), _world()
    say = print if rank == 0 else (lambda *a, **k: None)
    chains = spec.build_all(stage=0, device=device)
    optimizers = {n: torch.optim.Adam(c.parameters(), lr=1e-3, betas=(0.0, 0.99)) for n, c in chains.items()}
    ddp = {"device_ids": [device.index]} if device.type == "cuda" else {}
    models = {n: wrap(c, **ddp) for n, c in chains.items()} if launched else dict(chains)
    images = args.steps_per_phase * args.batch * world
    schedule = Schedule.lengths(spec.stages, stabilize=images, fade=images if args.fade == "yes" else 0)
    grower = DistributedGrower(Grower(spec, chains, optimizers, schedule=schedule), models, timeout=args.timeout)
    say(f"{args.spec}: {', '.join(chains)} on {world} rank(s), {backend}, {device.type}; "
        f"{len(schedule.phases) - 1} phases of {args.steps_per_phase} steps")
    step, start = 0, time.perf_counter()
    while not grower.grower.done:
        for name, model in grower.models.items():
            shape = spec.resolved(name).input_shape_at(grower.stage)
            out = model(torch.randn(args.batch, *shape, device=device))
            out.float().pow(2).mean().backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
        tick = time.perf_counter()
        events = grower.step(args.batch * world)
        step += 1
        for event in events:
            for name, chain in chains.items():
                assert_in_sync(chain, what=f"chain {name!r}")
            params = sum(p.numel() for c in chains.values() for p in c.parameters())
            say(f"  step {step:4d}: {event.kind:9s} stage {event.stage}, alpha {grower.alpha:.2f}, "
                f"{params:,} parameters, in sync on every rank ({time.perf_counter() - tick:.3f} s)")
    say(f"done: {step} steps, {time.perf_counter() - start:.1f} s; every growth step kept the ranks equal")
    return 0


def _shut_down() -> None:
    """Leave the process group cleanly: DDP's reducers go first, then every rank waits for the others."""
    import gc

    gc.collect()  # DDP wrappers and their reducers go while the group they use still exists
    with contextlib.suppress(Exception):  # a rank that already failed: nobody to wait for
        dist.barrier()
    dist.destroy_process_group()
