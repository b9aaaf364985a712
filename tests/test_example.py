"""examples/train_pggan.py runs one very short schedule end to end, and resumes mid-fade exactly."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import chainspec

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_pggan.py"
#: 16 images per phase, 4 per step: 112 images, 28 steps over the 4 stages.
SHORT = ["--stabilize", "16", "--fade", "16", "--batch", "4", "--n-critic", "1", "--ema-halflife", "50"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, str(SCRIPT), *SHORT, *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def read_png(path: Path) -> torch.Tensor:
    """Decode an 8-bit RGB PNG (with Pillow, checking every chunk's CRC as it reads) into (H, W, 3) uint8."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        image.load()
        return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(image.height, image.width, 3)


def example_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_pggan", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("full")
    return out, run("--out", str(out)).stderr


def test_the_short_schedule_runs_through_every_stage(full_run: tuple[Path, str]) -> None:
    _, log = full_run
    for stage in range(4):
        assert f"stage {stage} ({4 * 2**stage}x{4 * 2**stage}) done" in log
    assert "stage 1: fading in 8x8 (generator: 2 to insert, 1 to remove" in log
    assert "stage 3: fade-in complete, alpha = 1" in log
    # The progress bar (tqdm, 80 columns) shows images seen, the resolution, alpha and the losses.
    bar = [line for line in re.split(r"[\r\n]", log) if "img/s" in line]
    assert bar and "112/112" in bar[-1] and "32px" in bar[-1] and "a=1.00" in bar[-1], bar[-1:]
    assert " D" in bar[-1] and " G" in bar[-1] and " W" in bar[-1], bar[-1]
    assert max(len(line) for line in bar) <= 80, max(bar, key=len)


def test_each_stage_is_sampled_once_and_the_end_saved_once(full_run: tuple[Path, str]) -> None:
    _, log = full_run
    for stage in range(4):
        assert log.count(f"stage {stage} ({4 * 2**stage}x{4 * 2**stage}) done") == 1, stage
    saves = [line for line in log.splitlines() if line.startswith("checkpoint ")]
    assert saves[-1].endswith("stage 3 done, alpha 1.0000, 112 images") and "(end of training)" in saves[-1]
    assert not any("112 images" in line for line in saves[:-1])  # no second save of the same state


def test_a_sample_grid_per_stage(full_run: tuple[Path, str]) -> None:
    out, _ = full_run
    for name in ["reals.png", *(f"samples_stage{k}.png" for k in range(4))]:
        image = read_png(out / name)
        assert image.shape == (4 * 66 + 2, 4 * 66 + 2, 3), name  # 16 cells of 64 px with 2 px gaps
        assert image.float().std() > 5, name  # not a blank image
    # Stage 0 samples are 4x4 images shown at 64 px: blocks of 16 identical pixels.
    cell = read_png(out / "samples_stage0.png")[2:66, 2:66]
    assert torch.equal(cell[::16, ::16].repeat_interleave(16, 0).repeat_interleave(16, 1), cell)


def test_the_growth_timeline_is_drawn_and_survives_a_resume(full_run: tuple[Path, str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out, log = full_run
    assert f"growth timeline: {out}/timeline.png" in log
    from PIL import Image, ImageStat

    with Image.open(out / "timeline.png") as image:
        assert image.width >= 700 and image.height >= 500
        assert max(ImageStat.Stat(image.convert("L")).stddev) > 5  # drawn on, not blank
    timeline = chainspec.load_checkpoint(out / "checkpoint.pt").extra["timeline"]
    assert timeline["images"][-1] == 112 and len(timeline["loss_d"]) == len(timeline["images"])
    fades = [(images, stage) for images, kind, stage in timeline["events"] if kind == "fade"]
    assert fades == [(16, 1), (48, 2), (80, 3)]  # each fade-in starts where the schedule says
    costs = example_module().stage_costs(chainspec.load(ROOT / "specs" / "pggan_tiny.yaml"))
    assert [params for params, _ in costs] == sorted(params for params, _ in costs)  # growing, stage by stage
    assert costs[-1][1] > 4 * costs[0][1]  # and costing more multiply-adds a sample
    run("--out", str(tmp_path), "--stop-at", "24")
    run("--out", str(tmp_path), "--resume")
    resumed = chainspec.load_checkpoint(tmp_path / "checkpoint.pt").extra["timeline"]
    assert resumed["images"] == timeline["images"] and resumed["events"] == timeline["events"]


def test_the_checkpoint_is_a_chainspec_checkpoint(full_run: tuple[Path, str]) -> None:
    out, _ = full_run
    ckpt = chainspec.load_checkpoint(out / "checkpoint.pt")
    assert ckpt.stage == 3 and ckpt.extra["grower"]["phase"] == "done"
    grower = chainspec.Grower.from_checkpoint(ckpt)
    image = grower.chains["generator"](ckpt.extra["fixed_z"])
    assert image.shape == (16, 3, 32, 32)


def test_stop_mid_fade_and_resume_gives_the_same_run(full_run: tuple[Path, str], tmp_path: Path) -> None:
    first = run("--out", str(tmp_path), "--stop-at", "24")  # 16 images of stage 0, 8 into the fade to 8x8
    assert "stopped at 24 images" in first.stderr
    ckpt = chainspec.load_checkpoint(tmp_path / "checkpoint.pt")
    assert (ckpt.stage, ckpt.alpha, ckpt.extra["grower"]["phase"]) == (1, 0.5, "fade")
    second = run("--out", str(tmp_path), "--resume")
    assert "resumed" in second.stderr and "stage 1 (fade), alpha 0.5000" in second.stderr
    resumed = chainspec.load_checkpoint(tmp_path / "checkpoint.pt")
    straight = chainspec.load_checkpoint(full_run[0] / "checkpoint.pt")
    for name in ("generator", "discriminator"):
        mine, theirs = resumed.chains[name].state_dict(), straight.chains[name].state_dict()
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert torch.equal(mine[key], theirs[key]), f"{name}.{key}"
    for key, value in straight.extra["ema"]["weights"].items():
        assert torch.equal(resumed.extra["ema"]["weights"][key], value), key


def test_png_writer_round_trips(tmp_path: Path) -> None:
    pixels = torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8)
    example_module().write_png(tmp_path / "x.png", pixels)
    assert torch.equal(read_png(tmp_path / "x.png"), pixels)


def test_procedural_images_and_faded_reals() -> None:
    module = example_module()
    images = module.make_images(8, seed=3)
    assert images.shape == (8, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, module.make_images(8, seed=3))
    low = module.reals_at(images, 8, 1.0)
    assert low.shape == (8, 3, 8, 8)
    faded = module.reals_at(images, 8, 0.0)  # alpha 0: the 4x4 image, upsampled, like G's blended output
    torch.testing.assert_close(faded, torch.nn.functional.interpolate(module.reals_at(images, 4, 1.0), scale_factor=2))


def test_batch_must_suit_minibatch_stddev() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--batch", "6"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "multiple of 4" in done.stderr
