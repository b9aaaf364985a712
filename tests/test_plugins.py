"""Plugin packages: node types found through the ``chainspec.types`` entry points of a real installed distribution."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import chainspec
from chainspec.cli import main
from chainspec.types import registry as _registry

PLUGIN_MODULE = '''\
"""A plugin package contributing two node types."""
import torch
from torch import nn


class Swish(nn.Module):
    """x * sigmoid(beta * x), with a fixed beta."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)


def make_gate(features: int, init: float = 1.0) -> nn.Module:
    """A learned per-feature gate.

    Args:
        features: how many features.
        init: the gate's initial value.
    """
    gate = nn.Linear(features, features, bias=False)
    with torch.no_grad():
        gate.weight.copy_(torch.eye(features) * init)
    return gate
'''

ENTRY_POINTS = """\
[chainspec.types]
demo_swish = chainspec_demo_plugin:Swish
demo_gate = chainspec_demo_plugin:make_gate
demo_broken = chainspec_demo_plugin_missing:Thing
relu = chainspec_demo_plugin:Swish
"""

SPEC = """\
chainspec: 1
chains:
  net:
    input_shape: [3]
    nodes:
      - {id: gate, type: demo_gate, args: {features: 3, init: 2.0}}
      - {id: act, type: demo_swish, args: {beta: 0.5}}
"""


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed distribution ``chainspec-demo-plugin`` on sys.path: a module and its dist-info."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "chainspec_demo_plugin.py").write_text(PLUGIN_MODULE)
    info = site / "chainspec_demo_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chainspec-demo-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (info / "RECORD").write_text("")
    monkeypatch.syspath_prepend(str(site))
    # Discovery runs once per process: make the registry look again, as a fresh process would.
    monkeypatch.setattr(_registry, "_PLUGINS_LOADED", False)
    yield site
    for name in ("demo_swish", "demo_gate"):
        _registry.unregister_type(name)
    sys.modules.pop("chainspec_demo_plugin", None)


def test_plugin_types_are_discovered_through_entry_points(plugin_site: Path) -> None:
    with pytest.warns(UserWarning) as warned:
        assert chainspec.is_registered("demo_swish")
    messages = [str(w.message) for w in warned]
    assert any("cannot load node type 'demo_broken' from plugin chainspec-demo-plugin "
               "(chainspec_demo_plugin_missing:Thing): ModuleNotFoundError" in m for m in messages)
    assert any("node type 'relu' of plugin chainspec-demo-plugin is ignored: the name is taken by builtin" in m
               for m in messages)
    swish, gate = chainspec.get_type("demo_swish"), chainspec.get_type("demo_gate")
    assert swish.origin == gate.origin == "plugin chainspec-demo-plugin"
    assert [(a.name, a.default) for a in swish.args] == [("beta", 1.0)]
    assert [a.name for a in gate.args] == ["features", "init"]
    assert gate.args[1].description == "the gate's initial value."
    assert type(chainspec.get_type("relu").factory()).__name__ == "ReLU"  # the built-in kept its name
    net = chainspec.loads(SPEC).build()
    x = torch.tensor([[1.0, -2.0, 3.0]])
    assert torch.allclose(net(x), 2 * x * torch.sigmoid(0.5 * 2 * x))
    with pytest.raises(chainspec.SpecError, match=r"args.beat \(act\): unknown argument 'beat'; did you mean 'beta'\?"):
        chainspec.loads(SPEC.replace("beta:", "beat:"))


def test_chainspec_types_lists_plugin_types(plugin_site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(UserWarning):
        assert main(["types", "--filter", "demo_"]) == 0
    out = capsys.readouterr().out
    assert "demo_gate(features: int, init: float = 1.0)" in out
    assert "demo_swish(beta: float = 1.0)" in out
    assert "[plugin chainspec-demo-plugin]" in out


def test_a_fresh_process_finds_the_plugin(plugin_site: Path, tmp_path: Path) -> None:
    spec = tmp_path / "net.yaml"
    spec.write_text(SPEC)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_site), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "chainspec", "build", str(spec), "--format", "json"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"type": "demo_gate"' in result.stdout and '"params": 9' in result.stdout
    assert "cannot load node type 'demo_broken'" in result.stderr  # a warning, not a failure
    assert "Traceback" not in result.stderr


def test_without_the_plugin_its_types_are_unknown() -> None:
    with pytest.raises(chainspec.SpecError, match=r"unknown node type 'demo_gate'"):
        chainspec.loads(SPEC)


PROJECT_LAYERS = '''\
import chainspec


@chainspec.register_type("demo_project_scale")
def scale(factor: float = 2.0):
    """Multiplies by a constant."""
    from torch import nn

    return nn.Identity() if factor == 1.0 else nn.Linear(1, 1)
'''


def test_plugin_and_project_types_together(plugin_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A project's [tool.chainspec] types join the plugins' in ``chainspec types``; a name a plugin or a built-in
    holds is a located error in the pyproject.toml, not a traceback."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / ".git").mkdir()
    (project / "pyproject.toml").write_text('[tool.chainspec]\nimports = ["demo_project_layers"]\n')
    (project / "demo_project_layers.py").write_text(PROJECT_LAYERS)
    monkeypatch.chdir(project)
    try:
        with pytest.warns(UserWarning):
            assert main(["types", "--filter", "demo_"]) == 0
        out = capsys.readouterr().out
        assert "demo_gate(features: int, init: float = 1.0)" in out and "[plugin chainspec-demo-plugin]" in out
        assert "demo_project_scale(factor: float = 2.0)" in out and "[demo_project_layers.scale]" in out
    finally:
        _registry.unregister_type("demo_project_scale")
        sys.modules.pop("demo_project_layers", None)
    (project / "demo_project_layers.py").write_text(PROJECT_LAYERS.replace("demo_project_scale", "demo_swish"))
    assert main(["types"]) == 1
    err = capsys.readouterr().err
    assert ("pyproject.toml:2:12: tool.chainspec.imports[0]: cannot import 'demo_project_layers': ChainspecError: "
            "node type 'demo_swish' is already registered by plugin chainspec-demo-plugin; pick another name or pass "
            f"replace=True (at {project / 'demo_project_layers.py'}:4)") in err
    assert "Traceback" not in err
    sys.modules.pop("demo_project_layers", None)
