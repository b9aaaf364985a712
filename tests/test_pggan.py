"""specs/pggan.yaml against Karras et al. 2018, Table 2, and the tiny spec's structure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import chainspec

ROOT = Path(__file__).resolve().parents[1]
PGGAN = ROOT / "specs" / "pggan.yaml"
TINY = ROOT / "specs" / "pggan_tiny.yaml"


def table(n: int) -> str:
    """Round a parameter count the way Table 2 prints it: 4.2M, 590k, 74k, 9.2k, 513."""
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{round(n / 1e3)}k"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def layer_counts(chain: chainspec.Chain) -> list[tuple[str, int]]:
    """(dotted name, parameter count) of every layer with parameters, head to tail."""
    return [(name, sum(p.numel() for p in m.parameters(recurse=False)))
            for name, m in chain.named_modules() if any(True for _ in m.parameters(recurse=False))]


@pytest.fixture(scope="module")
def spec() -> chainspec.Spec:
    return chainspec.load(PGGAN)


@pytest.fixture(scope="module")
def final(spec: chainspec.Spec) -> dict[str, chainspec.Chain]:
    # The meta device: the full 1024x1024 networks without allocating a weight.
    return spec.build_all(stage="final", device="meta")


def test_table_rounding() -> None:
    assert [table(n) for n in (4_202_496, 589_824, 73_728, 9_248, 513)] == ["4.2M", "590k", "74k", "9.2k", "513"]


def test_nine_stages_from_4x4_to_1024(spec: chainspec.Spec) -> None:
    assert spec.stages == 9
    for k in range(9):
        res = 4 * 2**k
        assert spec.summary("generator", stage=k).output_shape == (3, res, res)
        d = spec.summary("discriminator", stage=k)
        assert d.input_shape == (3, res, res)
        assert d.output_shape == (1,)


def test_generator_per_layer_counts_match_table_2(final: dict[str, chainspec.Chain]) -> None:
    counts = layer_counts(final["generator"])
    # Table 2's "Conv 4x4" is the dense layer and its per-channel bias after the reshape, as in the official code.
    assert counts[:2] == [("b4.dense", 512 * 512 * 16), ("b4.bias", 512)]
    counts[:2] = [("b4.dense", 512 * 512 * 16 + 512)]
    expected = [("b4.dense", "4.2M"), ("b4.conv.conv", "2.4M")]
    per_res = {8: ("2.4M", "2.4M"), 16: ("2.4M", "2.4M"), 32: ("2.4M", "2.4M"), 64: ("1.2M", "590k"),
               128: ("295k", "148k"), 256: ("74k", "37k"), 512: ("18k", "9.2k"), 1024: ("4.6k", "2.3k")}
    for res, (first, second) in per_res.items():
        expected += [(f"b{res}.conv0.conv", first), (f"b{res}.conv1.conv", second)]
    expected.append(("to_rgb_1024.conv", "51"))
    assert [(name, table(n)) for name, n in counts] == expected


def test_discriminator_per_layer_counts_match_table_2(final: dict[str, chainspec.Chain]) -> None:
    counts = layer_counts(final["discriminator"])
    expected = [("from_rgb_1024.conv.conv", "64")]
    per_res = {1024: ("2.3k", "4.6k"), 512: ("9.2k", "18k"), 256: ("37k", "74k"), 128: ("148k", "295k"),
               64: ("590k", "1.2M"), 32: ("2.4M", "2.4M"), 16: ("2.4M", "2.4M"), 8: ("2.4M", "2.4M")}
    for res, (first, second) in per_res.items():
        expected += [(f"b{res}.conv0.conv", first), (f"b{res}.conv1.conv", second)]
    expected += [("b4.conv.conv", "2.4M"), ("b4.conv4.conv", "4.2M"), ("b4.fc", "513")]
    assert [(name, table(n)) for name, n in counts] == expected


def test_totals_about_23_1m(final: dict[str, chainspec.Chain]) -> None:
    g = sum(p.numel() for p in final["generator"].parameters())
    d = sum(p.numel() for p in final["discriminator"].parameters())
    assert (g, d) == (23_071_507, 23_077_137)  # the official code's counts
    assert table(g) == table(d) == "23.1M"


def test_minibatch_stddev_gives_513_channels(spec: chainspec.Spec) -> None:
    chain = spec.build("discriminator", stage=0, device="meta")
    _, feats = chain.capture(torch.empty(4, 3, 4, 4, device="meta"), ["from_rgb_4"])
    stddev = chain["b4"].module.stddev
    assert tuple(stddev(feats["from_rgb_4"]).shape) == (4, 513, 4, 4)


def test_equalized_lr_and_gains(final: dict[str, chainspec.Chain]) -> None:
    from chainspec.types.layers import EqualizedConv2d, EqualizedLinear

    for chain in final.values():
        for name, module in chain.named_modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                pytest.fail(f"{name} is a plain {type(module).__name__}, not equalized")
    g, d = final["generator"], final["discriminator"]
    assert isinstance(g["b4"].module.dense, EqualizedLinear)
    assert g["b4"].module.dense.gain == pytest.approx(2**0.5 / 4)
    assert g["to_rgb_1024"].module.conv.gain == 1.0  # linear output
    assert isinstance(d["b4"].module.fc, EqualizedLinear) and d["b4"].module.fc.gain == 1.0
    assert isinstance(d["b4"].module.conv4.conv, EqualizedConv2d) and d["b4"].module.conv4.conv.padding == 0


def test_generator_blocks_have_leaky_relu_and_pixel_norm_after_every_conv(final: dict[str, chainspec.Chain]) -> None:
    kinds = [type(m).__name__ for m in final["generator"]["b64"].module.modules()]
    assert kinds == ["Composite", "Upsample", "Composite", "EqualizedConv2d", "LeakyReLU", "PixelNorm",
                     "Composite", "EqualizedConv2d", "LeakyReLU", "PixelNorm"]
    slopes = {m.negative_slope for c in final.values() for m in c.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.2}


def test_to_rgb_and_from_rgb_live_one_stage(spec: chainspec.Spec) -> None:
    for k in range(9):
        g_ids = [n.id for n in spec.resolved("generator").at(k)]
        d_ids = [n.id for n in spec.resolved("discriminator").at(k)]
        assert [i for i in g_ids if i.startswith("to_rgb")] == [f"to_rgb_{4 * 2**k}"]
        assert [i for i in d_ids if i.startswith("from_rgb")] == [f"from_rgb_{4 * 2**k}"]
        assert g_ids[-1] == f"to_rgb_{4 * 2**k}" and d_ids[0] == f"from_rgb_{4 * 2**k}"


def test_growth_schedule_defaults_to_the_papers_800k_images(spec: chainspec.Spec) -> None:
    growth = spec.model.growth
    assert growth is not None
    assert (growth.unit, growth.stabilize, growth.fade) == ("images", 800_000, 800_000)


def test_cli_builds_every_stage_by_shape_inference() -> None:
    out = subprocess.run([sys.executable, "-m", "chainspec", "build", str(PGGAN), "--stage", "all",
                          "--format", "json"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    stages = json.loads(out.stdout)["stages"]
    assert len(stages) == 9
    assert stages[8]["chains"]["generator"]["params"] == 23_071_507
    assert stages[8]["chains"]["discriminator"]["params"] == 23_077_137
    assert stages[8]["chains"]["generator"]["nodes"][-1]["output_shape"] == [3, 1024, 1024]


class _Allocations(TorchDispatchMode):
    """Records the size of every tensor that an aten op returns off the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.largest = max(self.largest, t.numel())
        return out


def test_cli_build_of_every_stage_allocates_no_weight_or_activation(capsys: pytest.CaptureFixture[str]) -> None:
    from chainspec.cli import main

    with _Allocations() as seen:
        assert main(["build", str(PGGAN), "--stage", "all"]) == 0
    out = capsys.readouterr().out
    assert out.count("stage 8 of 8") == 2 and "[16, 1024, 1024]" in out
    # A real build would allocate the 4.2M-weight dense layer, a forward a 16x1024x1024 activation.
    assert seen.largest < 1_000, seen.largest


def test_tiny_spec_has_the_same_structure() -> None:
    big, tiny = chainspec.load(PGGAN), chainspec.load(TINY)
    assert tiny.stages == 4
    for name in ("generator", "discriminator"):
        for k in range(4):
            assert [(n.id, n.type) for n in tiny.resolved(name).at(k)] == \
                   [(n.id, n.type) for n in big.resolved(name).at(k)]
    assert tiny.summary("generator", stage="final").output_shape == (3, 32, 32)
    assert tiny.summary("discriminator", stage="final").params < 100_000


# -- stage-dependent input shapes (the discriminator's) ----------------------------------------

GROWING = """\
chainspec: 1
vars: {base: 4}
chains:
  d:
    input_shape: [3, "${base * 2**stage}", "${base * 2**stage}"]
    nodes:
      - {id: a, type: relu}
      - {id: b, type: avgpool2d, stage: 1}
"""


def test_input_shape_expressions_are_evaluated_per_stage() -> None:
    spec = chainspec.loads(GROWING)
    assert [spec.summary("d", stage=k).input_shape for k in range(2)] == [(3, 4, 4), (3, 8, 8)]
    assert spec.summary("d", stage=1).output_shape == (3, 4, 4)
    assert spec.build("d", stage=1)(torch.zeros(2, 3, 8, 8)).shape == (2, 3, 4, 4)


def test_bad_input_shape_expressions_are_located() -> None:
    text = GROWING.replace('"${base * 2**stage}", "${base * 2**stage}"', '"${4 - 4 * stage}", "${bsae}"')
    with pytest.raises(chainspec.SpecError) as info:
        chainspec.loads(text, source="d.yaml")
    messages = [p.format() for p in info.value.problems]
    assert messages == [  # in file order
        "d.yaml:5:22: chains.d.input_shape[1]: '${4 - 4 * stage}' gives 0 at stage 1, not a positive integer; "
        "an input dimension must be an integer >= 1 at every stage",
        "d.yaml:5:42: chains.d.input_shape[2]: unknown name 'bsae'; did you mean 'base'? (at stage 0)",
    ]


def test_growth_section_is_validated_with_positions() -> None:
    text = TINY.read_text().replace("- {stage: 3, stabilize: 12000}",
                                    "- {stage: 7, stabilize: 12000}\n    - {stage: 0, fade: 3}")
    with pytest.raises(chainspec.SpecError) as info:
        chainspec.loads(text, source="tiny.yaml")
    messages = [p.format() for p in info.value.problems]
    assert any(m.startswith("tiny.yaml:22:8: growth.per_stage[0].stage: stage 7 is out of range") for m in messages)
    assert any(m.startswith("tiny.yaml:23:18: growth.per_stage[1].fade: nothing fades into stage 0")
               for m in messages)


def test_the_spec_states_the_papers_minibatch_per_resolution(spec: chainspec.Spec) -> None:
    schedule = chainspec.Schedule.from_model(spec.model.growth, spec.stages)
    assert [schedule.minibatch(k) for k in range(spec.stages)] == [16] * 6 + [14, 6, 3]  # 4x4 ... 1024x1024
    assert chainspec.Schedule.from_dict(schedule.to_dict()) == schedule  # checkpoints keep them
    grower = chainspec.Grower(spec, spec.build_all(stage=0, device="meta"))
    assert grower.minibatch == 16
    # minibatch stddev takes min(group size, minibatch) as its group, as the official code does: with the
    # paper's group of 16, every one of those minibatches is one group.
    net = spec.build("discriminator", stage=0, device="meta")
    stddev = next(m for m in net.modules() if type(m).__name__ == "MinibatchStddev")
    assert stddev.group_size == 16
    for batch in (16, 14, 6, 3):
        assert stddev(torch.randn(batch, 512, 4, 4)).shape == (batch, 513, 4, 4)
    with pytest.raises(ValueError, match=r"schedule\.minibatches"):
        chainspec.Schedule.from_dict({**schedule.to_dict(), "minibatches": [16, 0]})
