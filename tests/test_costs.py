"""``chainspec build``'s cost columns: multiply-adds, parameter and activation memory, trainable and frozen.

The multiply-adds the closed-form rules count for every shipped spec equal what
``torch.utils.flop_counter.FlopCounterMode`` counts on a meta-device build of the same chain (half
its FLOPs); a registered type, which the rules do not cover, is counted on the meta device, and its
frozen parameters show as frozen. The table keeps to 80 columns for every shipped spec.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import chainspec
from chainspec.build.costs import chain_costs
from chainspec.cli import main
from chainspec.types.registry import unregister_type  # registrations are global: the test undoes its own

SPECS = Path(__file__).resolve().parents[1] / "specs"
SHIPPED = sorted(p.name for p in SPECS.glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_multiply_adds_match_a_flop_counter_on_the_meta_device(name: str) -> None:
    spec = chainspec.load(SPECS / name)
    stage = spec.stages - 1
    for chain_name in spec.chain_names:
        summary = spec.summary(chain_name, stage=stage)
        counted = sum(c.multiply_adds for c in chain_costs(spec, chain_name, summary))
        net = spec.build(chain_name, stage=stage, device="meta")
        resolved = spec.resolved(chain_name)
        dtype = getattr(torch, resolved.input_dtype) if resolved.input_dtype else torch.float32
        x = torch.zeros((1, *summary.input_shape), dtype=dtype, device="meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(x)
        assert counted == counter.get_total_flops() // 2, (name, chain_name)


def test_resnet20_costs_what_the_paper_says() -> None:
    spec = chainspec.load(SPECS / "resnet20.yaml")
    costs = chain_costs(spec, "net", spec.summary("net", stage="final"))
    assert sum(c.multiply_adds for c in costs) == 40_551_040  # about 41M (He et al. 2016, CIFAR-10 ResNet-20)
    assert costs[0].multiply_adds == 16 * 3 * 9 * 32 * 32 and costs[0].activation_bytes == 4 * 16 * 32 * 32


class Frozen(nn.Module):
    """A registered type the rules do not know: a frozen projection and a trained one."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fixed = nn.Linear(width, width)
        self.fixed.requires_grad_(False)
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fixed(x))


def test_a_registered_type_is_counted_on_the_meta_device_with_its_frozen_parameters(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    chainspec.register_type("frozen_pair_for_costs", replace=True)(Frozen)
    try:
        path = tmp_path / "net.yaml"
        path.write_text("chainspec: 1\nchains:\n  net:\n    input_shape: [5, 8]\n    nodes:\n"
                        "      - {id: pair, type: frozen_pair_for_costs, args: {width: 8}}\n"
                        "      - {id: out, type: linear, args: {in_features: 8, out_features: 2}}\n")
        assert main(["build", str(path), "--format", "json"]) == 0
        chain = json.loads(capsys.readouterr().out)["stages"][0]["chains"]["net"]
        assert [n["multiply_adds"] for n in chain["nodes"]] == [2 * 5 * 8 * 8, 5 * 8 * 2]
        assert chain["frozen_params"] == 72 and chain["trainable_params"] == 72 + 18
        assert main(["build", str(path)]) == 0
        assert "trainable 90, frozen 72;" in capsys.readouterr().out
    finally:
        unregister_type("frozen_pair_for_costs")


@pytest.mark.parametrize("name", SHIPPED)
def test_the_table_fits_80_columns_and_wide_shows_every_number(capsys: pytest.CaptureFixture[str],
                                                               name: str) -> None:
    assert main(["build", str(SPECS / name), "--stage", "final"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]  # the title names the file: not a table row
    assert rows and all(len(row) <= 80 for row in rows if not row.endswith(".yaml") and "chain '" not in row)
    assert main(["build", str(SPECS / name), "--stage", "final", "--wide"]) == 0
    wide = capsys.readouterr().out
    assert "weights" in wide and " B " in wide + " "
