"""Train the tiny PG-GAN (specs/pggan_tiny.yaml) with WGAN-GP, growing 4x4 -> 32x32 with fade-ins, on a CPU.

The training images are drawn on the fly (no download): a soft two-colour
gradient with one disc or square on it. Otherwise it follows Karras et al.
2018: WGAN-GP (lambda 10) with the drift term (0.001), Adam (lr 0.001, betas
0, 0.99), real images faded between resolutions exactly as the generator's
output is, samples drawn from a moving average of the generator, and the
schedule in the spec (stabilise, then fade in each new resolution). It takes
two critic steps per generator step (the paper: one), which trains these tiny
networks faster; the schedule counts the real images the critic sees.

    python examples/train_pggan.py                        # a few minutes on 2 CPU cores
    python examples/train_pggan.py --stop-at 9000         # stop mid-fade (a checkpoint is written) ...
    python examples/train_pggan.py --resume               # ... and carry on from it

Writes into --out (default runs/pggan_tiny): samples_stage{k}.png when stage k
is done (a grid from fixed latents, upscaled for viewing), reals.png, and
checkpoint.pt (chains, optimizers, grower state, RNG; written at --save-every
images, at each stage's end and at the end).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import chainspec
from chainspec import Grower, Schedule

ROOT = Path(__file__).resolve().parents[1]
FINAL_RES = 32


# -- data: procedural images ----------------------------------------------------------------------

def make_images(n: int, seed: int, res: int = FINAL_RES) -> torch.Tensor:
    """``n`` RGB images in [-1, 1]: a two-colour gradient background with one disc or square, seeded by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    coords = (torch.arange(res, dtype=torch.float32) + 0.5) / res
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # (res, res) in (0, 1)
    c0, c1, fg = (torch.rand(n, 3, 1, 1, generator=gen) for _ in range(3))
    angle = torch.rand(n, 1, 1, generator=gen) * 2 * math.pi
    t = (0.5 + (x - 0.5) * torch.cos(angle) + (y - 0.5) * torch.sin(angle)).clamp(0, 1)  # (n, res, res)
    image = c0 + (c1 - c0) * t[:, None]
    cx, cy = (0.25 + 0.5 * torch.rand(n, 1, 1, generator=gen) for _ in range(2))
    radius = 0.12 + 0.16 * torch.rand(n, 1, 1, generator=gen)
    square = torch.rand(n, 1, 1, generator=gen) < 0.5
    dist = torch.where(square, torch.maximum((x - cx).abs(), (y - cy).abs()), ((x - cx) ** 2 + (y - cy) ** 2).sqrt())
    mask = torch.sigmoid((radius - dist) * res * 2)[:, None]  # soft, anti-aliased edge
    image = image * (1 - mask) + fg * mask
    return image * 2 - 1


def reals_at(images: torch.Tensor, res: int, alpha: float) -> torch.Tensor:
    """Real images at the current resolution, faded like the generator's output while a stage fades in."""
    x = F.avg_pool2d(images, images.shape[-1] // res) if images.shape[-1] != res else images
    if alpha < 1.0:
        low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
        x = (1 - alpha) * low + alpha * x
    return x


# -- loss -----------------------------------------------------------------------------------------

def critic_loss(d: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, gp_weight: float = 10.0,
                drift: float = 0.001) -> tuple[torch.Tensor, float]:
    """WGAN-GP critic loss with PG-GAN's drift term; returns the loss and the Wasserstein estimate."""
    d_real, d_fake = d(real), d(fake)
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(mixed).sum(), mixed, create_graph=True)
    penalty = (grad.flatten(1).norm(dim=1) - 1).square().mean()
    loss = d_fake.mean() - d_real.mean() + gp_weight * penalty + drift * d_real.square().mean()
    return loss, float(d_real.detach().mean() - d_fake.detach().mean())


# -- PNG output (Pillow) ------------------------------------------------------------------------------

def write_png(path: Path, pixels: torch.Tensor) -> None:
    """Write a (H, W, 3) uint8 tensor as an RGB PNG, atomically (a reader never sees half a file)."""
    from PIL import Image

    tmp = path.with_suffix(".tmp")
    Image.fromarray(pixels.numpy()).save(tmp, format="PNG")
    os.replace(tmp, path)


def save_grid(path: Path, images: torch.Tensor, cell: int = 64, pad: int = 2) -> None:
    """Tile images in [-1, 1] into a square grid, each upscaled (nearest) to ``cell`` pixels."""
    n = images.shape[0]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    big = F.interpolate(images.detach().float().cpu().clamp(-1, 1), size=(cell, cell), mode="nearest")
    grid = torch.ones(3, rows * (cell + pad) + pad, cols * (cell + pad) + pad)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = pad + r * (cell + pad), pad + c * (cell + pad)
        grid[:, top:top + cell, left:left + cell] = big[i]
    write_png(path, ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous())


# -- the growth timeline (matplotlib) ---------------------------------------------------------------------

def stage_costs(spec: chainspec.Spec) -> list[tuple[int, int]]:
    """``(parameters, multiply-adds per sample)`` of the generator and discriminator together, per stage,
    by shape inference (``chainspec.build.costs``: nothing is built)."""
    from chainspec.build.costs import CostCounter, chain_costs

    counter, out = CostCounter(), []
    for stage in range(spec.stages):
        params = macs = 0
        for name in spec.chain_names:
            summary = spec.summary(name, stage=stage)
            params += summary.params
            macs += sum(c.multiply_adds or 0 for c in chain_costs(spec, name, summary, counter=counter))
        out.append((params, macs))
    return out


def plot_timeline(path: Path, spec: chainspec.Spec, timeline: dict[str, Any]) -> bool:
    """Parameters and multiply-adds per stage against images seen, the losses overlaid, the fades and
    stabilise phases marked; False without matplotlib (``pip install -e ".[examples]"``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    costs = stage_costs(spec)
    starts = [(0, 0)] + [(images, stage) for images, kind, stage in timeline["events"] if kind in ("fade", "grow")]
    end = max([timeline["images"][-1] if timeline["images"] else 0, *(i for i, _ in starts)])
    xs = [*[x for images, _ in starts for x in (images, images)][1:], end]  # a step line: one level a stage
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for axis, index, label, colour in ((top, 0, "parameters (G + D)", "tab:blue"),
                                       (top.twinx(), 1, "multiply-adds per sample (G + D)", "tab:orange")):
        ys = [y for _, stage in starts for y in (costs[stage][index], costs[stage][index])]
        axis.plot(xs, ys, color=colour, label=label)
        axis.set_ylabel(label, color=colour)
        axis.set_yscale("log")
    bottom.plot(timeline["images"], timeline["loss_d"], label="critic loss", linewidth=0.8)
    bottom.plot(timeline["images"], timeline["loss_g"], label="generator loss", linewidth=0.8)
    bottom.set_ylabel("loss")
    bottom.set_xlabel("real images seen")
    for images, kind, stage in timeline["events"]:
        for axis in (top, bottom):
            axis.axvline(images, color="grey", linestyle="--" if kind == "fade" else ":", linewidth=0.8)
        top.annotate(f"{'fade' if kind == 'fade' else kind} {4 * 2**stage}px", (images, 1), xycoords=("data",
                     "axes fraction"), rotation=90, fontsize=7, va="top")
    bottom.legend(loc="upper right", fontsize=8)
    top.set_title(f"{Path(spec.source).name}: growth timeline")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# -- progress (tqdm) -------------------------------------------------------------------------------------

class Progress:
    """Images shown so far as a tqdm bar on stderr (80 columns), with the phase and losses as its postfix."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="img", unit_scale=True, dynamic_ncols=False, ncols=80,
                        mininterval=0.1 if sys.stderr.isatty() else 5.0, file=sys.stderr)

    def update(self, done: int, text: str, force: bool = False) -> None:
        self.bar.n = min(done, self.bar.total)
        self.bar.set_postfix_str(text, refresh=False)
        if force:
            self.bar.refresh()
        else:
            self.bar.update(0)

    def message(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


# -- training -----------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default=str(ROOT / "specs" / "pggan_tiny.yaml"), help="the PG-GAN spec")
    p.add_argument("--out", default="runs/pggan_tiny", help="output directory (samples, checkpoint)")
    p.add_argument("--batch", type=int, default=16, help="minibatch size (a multiple of 4, for minibatch stddev)")
    p.add_argument("--stabilize", type=int, help="images per stabilise phase (default: the spec's)")
    p.add_argument("--fade", type=int, help="images per fade-in (default: the spec's)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (PG-GAN: 0.001)")
    p.add_argument("--n-critic", type=int, default=2,
                   help="critic steps per generator step (PG-GAN: 1; 2 trains these tiny networks faster)")
    p.add_argument("--ema-halflife", type=int, default=2000,
                   help="half-life in images of the generator average used for the samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the latents")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: layers this small run fastest on one; 0: torch's default)")
    p.add_argument("--save-every", type=int, default=4000, help="checkpoint every this many images")
    p.add_argument("--stop-at", type=int, help="stop (with a checkpoint) once this many images are seen")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    args = p.parse_args(argv)
    if args.batch < 4 or args.batch % 4:
        p.error(f"--batch must be a positive multiple of 4 (minibatch stddev groups of 4), got {args.batch}")
    return args


def schedule_for(spec: chainspec.Spec, args: argparse.Namespace) -> Schedule:
    """The spec's schedule, or its stage count with the phase lengths given on the command line."""
    if args.stabilize is None and args.fade is None:
        return Schedule.from_model(spec.model.growth, spec.stages)
    base = Schedule.from_model(spec.model.growth, spec.stages)
    stabilize = args.stabilize if args.stabilize is not None else 6000
    fade = args.fade if args.fade is not None else 6000
    return Schedule.lengths(spec.stages, stabilize=stabilize, fade=fade, unit="images", policy=base.policy)


class Ema:
    """An exponential moving average of the generator (PG-GAN's ``Gs``), grown in lockstep with it.

    It is a chain of its own with its own :class:`Grower` (no optimizer), so it fades exactly like
    the generator; new layers start as copies of the generator's. Parameters are matched by name:
    the blend keeps state_dict keys stable, so both chains always have the same names.
    """

    def __init__(self, spec: chainspec.Spec, g: chainspec.Chain, schedule: Schedule, halflife: int,
                 state: dict | None = None) -> None:
        with torch.random.fork_rng(devices=[]):  # its own initial weights are overwritten: draw no random numbers
            self.chain = spec.build("generator", stage=0, device=next(g.parameters()).device)
            self.grower = Grower(spec, chains={"generator": self.chain}, schedule=schedule)
            if state is not None:
                self.grower.load_state_dict(state["grower"])
        self.chain.load_state_dict(state["weights"] if state is not None else g.state_dict())
        self.chain.eval()
        self.g, self.spec, self.halflife = g, spec, halflife

    def step(self, images: int, events: list[chainspec.GrowthEvent]) -> None:
        """Follow the generator's growth (new layers copied from it), then average its weights in."""
        with torch.random.fork_rng(devices=[]):
            self.grower.step(images)
        for event in events:
            if event.kind in ("fade", "grow"):
                plan = self.grower.transition("generator", event.stage).plan
                for op in plan.ops:
                    if op.kind in ("insert", "replace") and op.node_id in self.chain and op.node_id in self.g:
                        self.chain[op.node_id].module.load_state_dict(self.g[op.node_id].module.state_dict())
        beta = 0.5 ** (images / self.halflife)
        mine = dict(self.chain.named_parameters())
        with torch.no_grad():
            for name, param in self.g.named_parameters():
                mine[name].lerp_(param, 1 - beta)

    def state_dict(self) -> dict:
        return {"grower": self.grower.state_dict(), "weights": self.chain.state_dict()}


def train_step(g: chainspec.Chain, d: chainspec.Chain, g_opt: torch.optim.Optimizer, d_opt: torch.optim.Optimizer,
               grower: Grower, args: argparse.Namespace, latent: int) -> tuple[float, float, float]:
    """``n_critic`` critic steps on fresh batches, then one generator step; returns the losses and W estimate."""
    res = 4 * 2**grower.stage
    first = grower.images // args.batch  # batches are numbered by images seen, so a resumed run draws the same
    device = args.device
    loss_d = wdist = 0.0
    for i in range(args.n_critic):
        real = reals_at(make_images(args.batch, seed=first + i).to(device), res, grower.alpha)
        z = torch.randn(args.batch, latent, generator=torch.Generator().manual_seed(10**9 + first + i)).to(device)
        d_opt.zero_grad(set_to_none=True)
        loss, wdist = critic_loss(d, real, g(z).detach())
        loss.backward()
        d_opt.step()
        loss_d = loss.item()
    z = torch.randn(args.batch, latent, generator=torch.Generator().manual_seed(2 * 10**9 + first)).to(device)
    g_opt.zero_grad(set_to_none=True)
    loss = -d(g(z)).mean()
    loss.backward()
    g_opt.step()
    return loss_d, loss.item(), wdist


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    spec = chainspec.load(args.spec)
    schedule = schedule_for(spec, args)
    latent = spec.summary("generator").input_shape[0]

    if args.resume:
        ckpt = chainspec.load_checkpoint(ckpt_path, device=args.device)
        grower = Grower.from_checkpoint(ckpt, schedule=schedule)
        ema = Ema(spec, grower.chains["generator"], schedule, args.ema_halflife, state=ckpt.extra["ema"])
        ckpt.restore_rng()
        fixed_z = ckpt.extra["fixed_z"].to(args.device)
        timeline = ckpt.extra.get("timeline") or {"images": [], "loss_d": [], "loss_g": [], "events": []}
        print(f"resumed {ckpt_path} at {grower.images:,} images: stage {grower.stage} ({grower.phase.kind}), "
              f"alpha {grower.alpha:.4f}", file=sys.stderr)
    else:
        torch.manual_seed(args.seed)
        chains = spec.build_all(stage=0, device=args.device)
        opts = {name: torch.optim.Adam(chain.parameters(), lr=args.lr, betas=(0.0, 0.99), eps=1e-8)
                for name, chain in chains.items()}
        grower = Grower(spec, chains=chains, optimizers=opts, schedule=schedule)
        ema = Ema(spec, chains["generator"], schedule, args.ema_halflife)
        fixed_z = torch.randn(16, latent, generator=torch.Generator().manual_seed(args.seed)).to(args.device)
        save_grid(out / "reals.png", make_images(16, seed=-1))
        timeline = {"images": [], "loss_d": [], "loss_g": [], "events": []}
    g, d = grower.chains["generator"], grower.chains["discriminator"]
    g_opt, d_opt = grower.optimizers["generator"], grower.optimizers["discriminator"]
    assert g_opt is not None and d_opt is not None
    total = min(schedule.total, args.stop_at or schedule.total)
    progress = Progress(total)

    def save(note: str) -> None:
        grower.save(ckpt_path, extra={"fixed_z": fixed_z.cpu(), "ema": ema.state_dict(), "timeline": timeline})
        progress.message(f"checkpoint {ckpt_path} ({note}): stage {grower.stage} {grower.phase.kind}, "
                         f"alpha {grower.alpha:.4f}, {grower.images:,} images")

    def samples(stage: int) -> None:
        with torch.no_grad():
            save_grid(out / f"samples_stage{stage}.png", ema.chain(fixed_z))
        progress.message(f"stage {stage} ({4 * 2**stage}x{4 * 2**stage}) done: {out}/samples_stage{stage}.png")

    per_step = args.batch * args.n_critic  # real images shown to the critic per training step
    next_save = (grower.images // args.save_every + 1) * args.save_every
    loss_d = loss_g = wdist = 0.0
    while not grower.done and (args.stop_at is None or grower.images < args.stop_at):
        loss_d, loss_g, wdist = train_step(g, d, g_opt, d_opt, grower, args, latent)
        phase = grower.phase
        # A stage other than the last is complete (the last one's samples and checkpoint follow the loop).
        ending = (phase.kind == "stabilize" and phase.stage < schedule.stages - 1 and phase.end is not None
                  and grower.images + per_step >= phase.end)
        if ending:
            samples(grower.stage)  # the stage is complete: its samples, before the next one grows in
        events = grower.step(per_step)
        ema.step(per_step, events)
        timeline["images"].append(grower.images)
        timeline["loss_d"].append(loss_d)
        timeline["loss_g"].append(loss_g)
        for event in events:
            timeline["events"].append((grower.images, event.kind, event.stage))
        for event in events:
            if event.kind in ("fade", "grow"):
                plans = "; ".join(f"{n}: {grower.transition(n, event.stage).plan.summary()}" for n in grower.chains)
                progress.message(f"stage {event.stage}: {'fading in' if event.kind == 'fade' else 'growing to'} "
                                 f"{4 * 2**event.stage}x{4 * 2**event.stage} ({plans})")
            elif event.kind == "stabilize":
                progress.message(f"stage {event.stage}: fade-in complete, alpha = 1")
        stopping = grower.done or (args.stop_at is not None and grower.images >= args.stop_at)
        if not stopping and (ending or grower.images >= next_save):  # the final checkpoint follows the loop
            save(f"end of stage {phase.stage}" if ending else "periodic")
            next_save = (grower.images // args.save_every + 1) * args.save_every
        progress.update(grower.images, f"{4 * 2**grower.stage}px {grower.phase.kind} a={grower.alpha:.2f} "
                        f"D{loss_d:+.2f} G{loss_g:+.2f} W{wdist:+.2f}")
    progress.update(grower.images, f"{4 * 2**grower.stage}px a={grower.alpha:.2f} D{loss_d:+.2f} G{loss_g:+.2f} "
                    f"W{wdist:+.2f}", force=True)
    progress.close()
    if grower.done:
        samples(grower.stage)
    save("end of training" if grower.done else f"stopped at {grower.images:,} images")
    if plot_timeline(out / "timeline.png", spec, timeline):
        progress.message(f"growth timeline: {out}/timeline.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
