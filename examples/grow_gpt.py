"""Grow a character-level GPT (specs/gpt_tiny.yaml) mid-training, and measure what it saves.

The text is one every machine with Python has: the standard library's own ``.py`` sources, found
through ``sysconfig``, read in sorted order up to ``--text-bytes``. Every tenth file (by sorted
index) is validation, the rest training. Characters are mapped to the model's 65 tokens: the 64
most frequent in the training text, and one token for every other character.

Two runs, with the same seed and the same token budget (``--steps`` steps of ``--batch`` x 64
tokens):

- ``scratch``: the final model (stage 1: four blocks) from the start;
- ``grown``: two blocks (stage 0) for ``--grow-at`` of the steps, then the spec's growth to four
  blocks as a live revision: the new blocks start as copies of the ones below them, with their
  Adam moments (``init: {copy: ...}``, as G_stack stacks layers), or as identities
  (``--operator preserve``), checked by a growth certificate; the optimizer state of everything
  else carries on. With ``--operator widen`` it grows in width instead: four blocks with half the
  heads (2 of width 32) and half the MLP (256 units), widened to the final model's 4 heads and 512
  units by ``init: preserve`` (new heads and units copy old ones; the Adam moments follow them).
  ``--operator widen-model`` also starts at half the model width (64) and widens the residual
  stream to 128: the embeddings tile their columns, each norm splits its output among the copies,
  and the LM head stays tied to the token embedding. ``--operator widen-deep`` starts at half the
  width and half the depth (two blocks, 64 wide), and grows both in one revision: the old blocks
  widened, the two new ones identities.

Both runs train with AdamW at the same learning rate, step for step: ``--lr`` (5e-3, the largest
rate in a sweep at which every operator's small model trains; docs/growing.md has the sweep), after
an optional linear warm-up (``--warmup``), held (``--schedule constant``) or decayed (``cosine``).

Training FLOPs are counted as ``6 N + 12 T sum(a)`` per token (N non-embedding parameters, T
context, ``a`` each block's attention width, heads x head width: the forward and backward of the
weights and of attention, as in Kaplan et al. 2020). The validation loss is measured every
``--eval-every`` steps on fixed batches. It prints the headline figure: the FLOPs the grown run
needed to reach the scratch run's final validation loss, as a fraction of the scratch run's FLOPs
(and the other way round: the grown run's FLOPs, as a fraction of what the scratch run needed to reach
the grown run's final loss); and writes ``loss_vs_flops.png`` (matplotlib:
``pip install -e ".[examples]"``), with the growth step marked.

    python examples/grow_gpt.py                           # both runs, about 4 minutes on 2 cores
    python examples/grow_gpt.py --stop-at 300             # stop (a checkpoint is written) ...
    python examples/grow_gpt.py --resume                  # ... and carry on from it

Writes into --out (default runs/grow_gpt): ``{run}.pt`` checkpoints (chains, optimizer, RNG and
the loss history), ``history.json`` and ``loss_vs_flops.png``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import sysconfig
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import chainspec

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "gpt_tiny.yaml"
VOCAB = 65


# -- data -------------------------------------------------------------------------------------------

def stdlib_text(max_bytes: int) -> tuple[str, str]:
    """Training and validation text from the standard library's sources: every tenth file is validation."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    train: list[str] = []
    valid: list[str] = []
    used = 0
    for i, path in enumerate(files):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        (valid if i % 10 == 0 else train).append(text)
        used += len(text)
        if used >= max_bytes:
            break
    return "".join(train), "".join(valid)


def tokenizer(train: str) -> dict[str, int]:
    """The 64 most frequent training characters get tokens 0..63; any other character is token 64."""
    common = [ch for ch, _ in Counter(train).most_common(VOCAB - 1)]
    return {ch: i for i, ch in enumerate(sorted(common))}


def encode(text: str, table: dict[str, int]) -> torch.Tensor:
    return torch.tensor([table.get(ch, VOCAB - 1) for ch in text], dtype=torch.long)


def batch(data: torch.Tensor, size: int, context: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(data) - context - 1, (size,), generator=gen)
    x = torch.stack([data[s:s + context] for s in starts.tolist()])
    y = torch.stack([data[s + 1:s + 1 + context] for s in starts.tolist()])
    return x, y


# -- the model and its cost ---------------------------------------------------------------------------

def flops_per_token(chain: chainspec.Chain, context: int) -> float:
    """``6 N + 12 T sum(a)``: N weights outside the embeddings, T context, ``a`` each attention's width."""
    from chainspec.types.layers import CausalSelfAttention

    n = sum(p.numel() for name, p in chain.named_parameters() if not name.startswith(("wte.", "wpe.")))
    attention = sum(m.heads * m.head_dim for m in chain.modules() if isinstance(m, CausalSelfAttention))
    return 6 * n + 12 * context * attention


def loss_of(chain: chainspec.Chain, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = chain(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def validation_loss(chain: chainspec.Chain, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    training = chain.training
    chain.eval()
    total = sum(float(loss_of(chain, x, y)) for x, y in batches) / len(batches)
    chain.train(training)
    return total


def grown_spec(operator: str) -> chainspec.Spec:
    """gpt_tiny.yaml with the new blocks' ``init``: copies of their neighbours, or identities."""
    text = SPEC.read_text(encoding="utf-8")
    inits = {"copy": ("init: {copy: h0}", "init: {copy: h3}"), "preserve": ("init: preserve", "init: preserve"),
             "fresh": ("init: fresh", "init: fresh")}[operator]
    text = text.replace("{id: h1, type: block, stage: 1}", f"{{id: h1, type: block, stage: 1, {inits[0]}}}")
    text = text.replace("{id: h2, type: block, stage: 1}", f"{{id: h2, type: block, stage: 1, {inits[1]}}}")
    return chainspec.loads(text, source=f"gpt_tiny.yaml ({operator})")


def width_spec(heads: int, hidden: int, init: str = "", dim: int = 128) -> chainspec.Spec:
    """gpt_tiny.yaml at model width ``dim``, with ``heads`` heads of width 32 and ``hidden`` MLP units,
    every node with weights given ``init`` (a change of ``dim`` widens all of them: the residual
    stream runs through every one)."""
    text = SPEC.read_text(encoding="utf-8")
    text = text.replace("vars: {dim: 128, heads: 4,", f"vars: {{dim: {dim}, heads: {heads}, hidden: {hidden},")
    text = text.replace('heads: "${heads}", dropout', 'heads: "${heads}", head_dim: 32, dropout')
    text = text.replace('"${4 * dim}"', '"${hidden}"')
    for node in ("wte", "wpe", "h0", "h1", "h2", "h3", "ln_f", "lm_head") if init else ():
        text = text.replace(f"{{id: {node}, type:", f"{{id: {node}, {init}, type:")
    return chainspec.loads(text, source=f"gpt_tiny.yaml (width {dim}, {heads} heads, {hidden} MLP units)")


def growth(operator: str) -> tuple[chainspec.Spec, int | str, chainspec.Spec, int | str]:
    """``(spec, stage)`` the grown run starts from and ``(spec, stage)`` it grows to (the scratch run's)."""
    if operator == "widen":
        return width_spec(2, 256), "final", width_spec(4, 512, "init: preserve"), "final"
    if operator == "widen-model":
        return width_spec(2, 256, dim=64), "final", width_spec(4, 512, "init: preserve"), "final"
    if operator == "widen-deep":
        return width_spec(2, 256, dim=64), 0, width_spec(4, 512, "init: preserve"), 1
    spec = grown_spec(operator)
    return spec, 0, spec, 1


def describe(operator: str) -> str:
    """The grown run, in words for the plot."""
    if operator == "widen":
        return "widened 2 -> 4 heads, 256 -> 512 MLP"
    if operator == "widen-model":
        return "widened 64 -> 128 wide, 2 -> 4 heads, 256 -> 512 MLP"
    if operator == "widen-deep":
        return "widened 64 -> 128 wide, 2 -> 4 heads, 256 -> 512 MLP, and 2 -> 4 blocks"
    return f"grown 2 -> 4 blocks ({operator})"


# -- one run --------------------------------------------------------------------------------------------

def train(run: str, args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """Train one run (``scratch`` or ``grown``), resuming from its checkpoint if asked; return its history."""
    start, start_stage, end, end_stage = growth(args.operator)
    out = Path(args.out)
    checkpoint = out / f"{run}.pt"
    context = end.resolved("gpt").input_shape[0]
    grow_step = int(args.steps * args.grow_at) if run == "grown" else None
    if args.resume and checkpoint.exists():
        saved = chainspec.load_checkpoint(checkpoint, optimizer_factory=lambda params: torch.optim.AdamW(
            params, lr=args.lr))
        chain, optimizer = saved.chains["gpt"], saved.optimizers["opt"]
        state = saved.extra
        torch.set_rng_state(state["rng"])
        history, step, flops, gen_state = state["history"], state["step"], state["flops"], state["gen"]
        grown = run == "scratch" or history["grew_at_flops"] is not None
    else:
        torch.manual_seed(args.seed)
        grown = run == "scratch"
        chain = (end if grown else start).build(stage=end_stage if grown else start_stage)
        optimizer = torch.optim.AdamW(chain.parameters(), lr=args.lr)
        history = {"step": [], "flops": [], "val": [], "grew_at_flops": None, "certificate": None}
        step, flops, gen_state = 0, 0.0, torch.Generator().manual_seed(args.seed).get_state()
    gen = torch.Generator()
    gen.set_state(gen_state)
    per_token = flops_per_token(chain, context)
    progress = _progress(args.steps, step, run)
    while step < args.steps:
        if grow_step is not None and step == grow_step and not grown:
            probe, targets = data["valid_batches"][0]
            grown = True
            found = chainspec.diff(start, end, stage=(start_stage, end_stage)).apply(
                chain, optimizer, probe=probe,
                loss=lambda logits, y=targets: F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)))
            history["grew_at_flops"], history["certificate"] = flops, found.output_change
            history["loss_change"] = found.loss_change
            per_token = flops_per_token(chain, context)
        x, y = batch(data["train"], args.batch, context, gen)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args, grow_step)
        optimizer.zero_grad(set_to_none=True)
        loss_of(chain, x, y).backward()
        optimizer.step()
        step += 1
        flops += per_token * x.numel()
        if step % args.eval_every == 0 or step == args.steps:
            history["step"].append(step)
            history["flops"].append(flops)
            history["val"].append(validation_loss(chain, data["valid_batches"]))
            progress.set_postfix(val=f"{history['val'][-1]:.3f}")
        progress.update(1)
        if (args.stop_at is not None and step >= args.stop_at) or step == args.steps:
            out.mkdir(parents=True, exist_ok=True)
            chainspec.save_checkpoint(checkpoint, spec=end if grown else start, chains={"gpt": chain},
                                      stage=chain.stage, optimizers={"opt": optimizer},
                                      extra={"history": history, "step": step, "flops": flops,
                                             "rng": torch.get_rng_state(), "gen": gen.get_state()})
            if args.stop_at is not None and step >= args.stop_at and step < args.steps:
                break
    progress.close()
    history["done"] = step >= args.steps
    return history


def learning_rate(step: int, args: argparse.Namespace, grow_step: int | None = None) -> float:
    """The learning rate of ``step`` (from 0): a linear warm-up to ``--lr`` over ``--warmup`` steps, then
    ``--lr`` (``--schedule constant``) or a cosine decay to ``--min-lr`` at the last step (``cosine``).
    Both runs follow it step for step. With ``--rewarm`` N, a run grown at ``grow_step`` warms up again
    from there: its rate is scaled by ``(k + 1) / N`` for the N steps ``k`` after the growth."""
    if step < args.warmup:
        rate = float(args.lr) * (step + 1) / args.warmup
    elif args.schedule == "constant":
        rate = float(args.lr)
    else:
        progress = (step - args.warmup) / max(1, args.steps - 1 - args.warmup)
        rate = float(args.min_lr + (args.lr - args.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
    if grow_step is not None and args.rewarm and 0 <= step - grow_step < args.rewarm:
        rate *= (step - grow_step + 1) / args.rewarm
    return rate


def _progress(total: int, done: int, run: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # the examples extra is optional: a silent stand-in
        class _Quiet:
            def update(self, n: int) -> None: ...
            def set_postfix(self, **kw: Any) -> None: ...
            def close(self) -> None: ...
        return _Quiet()
    return tqdm(total=total, initial=done, desc=run, unit="step", file=sys.stderr, leave=True)


# -- the figure ----------------------------------------------------------------------------------------

def reached(history: dict[str, Any], target: float) -> float | None:
    """The FLOPs at which a run's validation loss first reached ``target`` (interpolated), or None."""
    previous = (0.0, math.inf)
    for flops, val in zip(history["flops"], history["val"], strict=True):
        if val <= target:
            f0, v0 = previous
            if not math.isfinite(v0) or v0 == val:
                return flops
            return f0 + (flops - f0) * (v0 - target) / (v0 - val)
        previous = (flops, val)
    return None


def loss_at(history: dict[str, Any], flops: float) -> float | None:
    """A run's validation loss at ``flops`` (linear between measurements), or None past its last one."""
    points = list(zip(history["flops"], history["val"], strict=True))
    for (f0, v0), (f1, v1) in itertools.pairwise(points):
        if f0 <= flops <= f1:
            return v0 + (v1 - v0) * (flops - f0) / (f1 - f0)
    return points[-1][1] if points and abs(points[-1][0] - flops) < 1e-9 * flops else None


def summary(scratch: dict[str, Any], grown: dict[str, Any]) -> dict[str, Any]:
    """The headline figures: FLOPs fraction to reach scratch's final loss, the losses at grown's FLOPs, and the
    FLOPs fraction the other way round (scratch's FLOPs to reach the grown run's final loss)."""
    target, total = scratch["val"][-1], scratch["flops"][-1]
    needed = reached(grown, target)
    matched = reached(scratch, grown["val"][-1])  # the other way round: scratch's FLOPs to the grown run's loss
    return {"scratch_final_val": target, "scratch_flops": total, "grown_final_val": grown["val"][-1],
            "grown_flops": grown["flops"][-1], "grown_flops_to_scratch_loss": needed,
            "fraction": needed / total if needed is not None else None,
            "scratch_val_at_grown_flops": loss_at(scratch, grown["flops"][-1]),
            "scratch_flops_to_grown_loss": matched,
            "fraction_at_grown_loss": grown["flops"][-1] / matched if matched is not None else None,
            "certificate": grown["certificate"]}


def plot(scratch: dict[str, Any], grown: dict[str, Any], path: Path, operator: str) -> bool:
    """Validation loss against training FLOPs for both runs, the growth step marked; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(scratch["flops"], scratch["val"], label="from scratch (4 blocks)")
    ax.plot(grown["flops"], grown["val"], label=describe(operator))
    if grown["grew_at_flops"] is not None:
        ax.axvline(grown["grew_at_flops"], color="grey", linestyle="--", label="growth step")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation loss (nats per character)")
    ax.set_title("gpt_tiny on the standard library's sources")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200, help="training steps of each run (default 1200)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate of AdamW (default 5e-3)")
    parser.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                        help="learning rate schedule of both runs (default constant)")
    parser.add_argument("--warmup", type=int, default=0, help="linear warm-up steps (default 0)")
    parser.add_argument("--rewarm", type=int, default=0, help="the grown run warms up again over this many steps")
    parser.add_argument("--min-lr", type=float, default=1e-4, help="where --schedule cosine ends")
    parser.add_argument("--grow-at", type=float, default=0.4, help="fraction of the steps before growing")
    parser.add_argument("--operator", default="copy",
                        choices=["copy", "preserve", "fresh", "widen", "widen-model", "widen-deep"])
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--text-bytes", type=int, default=4_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default 0: torch's default; losses differ slightly with the count)")
    parser.add_argument("--out", default="runs/grow_gpt")
    parser.add_argument("--stop-at", type=int, default=None, help="stop each run at this step, checkpointed")
    parser.add_argument("--resume", action="store_true", help="carry on from the runs' checkpoints")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_text, valid_text = stdlib_text(args.text_bytes)
    table = tokenizer(train_text)
    valid = encode(valid_text, table)
    gen = torch.Generator().manual_seed(1234)
    data = {"train": encode(train_text, table),
            "valid_batches": [batch(valid, args.batch, 64, gen) for _ in range(args.eval_batches)]}
    histories = {run: train(run, args, data) for run in ("scratch", "grown")}
    out = Path(args.out)
    result: dict[str, Any] = {"histories": histories}
    if all(h["done"] for h in histories.values()):
        result["summary"] = summary(histories["scratch"], histories["grown"])
        result["plot"] = plot(histories["scratch"], histories["grown"], out / "loss_vs_flops.png", args.operator)
        s = result["summary"]
        fraction = f"{s['fraction']:.2f}" if s["fraction"] is not None else "not reached"
        print(f"scratch: final validation loss {s['scratch_final_val']:.4f} after {s['scratch_flops']:.3g} FLOPs")
        print(f"grown ({args.operator}): final validation loss {s['grown_final_val']:.4f} after "
              f"{s['grown_flops']:.3g} FLOPs; the growth step moved the logits by up to {s['certificate']:.2g} "
              f"and the probe loss by {histories['grown']['loss_change']:+.3g}")
        print(f"FLOPs the grown run needed to reach scratch's final loss, as a fraction of scratch's: {fraction}")
        if s["fraction_at_grown_loss"] is not None:
            print(f"the other way round: the grown run spent {s['fraction_at_grown_loss']:.2f} of the FLOPs scratch "
                  f"needed to reach the grown run's final loss ({s['scratch_flops_to_grown_loss']:.3g})")
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps({k: v for k, v in result.items() if k != "plot"}, indent=1))
    return result


if __name__ == "__main__":
    main()
