"""``[tool.chainspec]`` in a project's pyproject.toml: the types a project registers, seen by ``chainspec.load``, every
command and a fresh process, without flags; and what a spec cannot do with it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import chainspec
from chainspec.cli import main
from chainspec.read import project as project_module
from chainspec.read.project import Project, find_project, find_pyproject, import_modules, importable, read_project
from chainspec.types.registry import unregister_type

ROOT = Path(__file__).resolve().parents[1]

#: The module a project lists under ``imports``: a function type that imports torch only when it builds, so that the
#: torch-free pre-commit environment can import it too.
LAYERS = '''\
"""The project's own node types."""
import chainspec


@chainspec.register_type("{name}")
def gate(features: int, init: float = 1.0):
    """A learned per-feature gate.

    Args:
        features: how many features.
        init: the gate's initial value.
    """
    import torch
    from torch import nn

    layer = nn.Linear(features, features, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(features) * init)
    return layer
'''
SPEC = """\
chainspec: 1
chains:
  net:
    input_shape: [3]
    nodes:
      - {{id: g, type: {name}, args: {{features: 3, init: 2.0}}}}
      - {{id: act, type: relu}}
"""


class Proj:
    """A throwaway project: ``root/pyproject.toml``, a layers module, and ``root/specs/net.yaml`` using its type."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name, self.module = root, name, f"{name}_layers"
        self.spec = root / "specs" / "net.yaml"

    def write(self, table: str | None = None, layers: str | None = None, spec: str | None = None) -> Proj:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "specs").mkdir(exist_ok=True)
        (self.root / ".git").mkdir(exist_ok=True)  # the walk up stops here, as in a real repository
        table = f'[tool.chainspec]\nimports = ["{self.module}"]\n' if table is None else table
        (self.root / "pyproject.toml").write_text(f'[project]\nname = "{self.name}"\n\n{table}', encoding="utf-8")
        (self.root / f"{self.module}.py").write_text(LAYERS.format(name=self.name) if layers is None else layers,
                                                     encoding="utf-8")
        self.spec.write_text(SPEC.format(name=self.name) if spec is None else spec, encoding="utf-8")
        return self


@pytest.fixture
def proj(tmp_path: Path) -> Iterator[Proj]:
    """A project named after the test (so its module and its type are new to this process); cleaned up after."""
    made = Proj(tmp_path / "proj", f"p{abs(hash(str(tmp_path))) % 10**8}")
    yield made
    unregister_type(made.name)
    for name in [m for m in sys.modules if m.startswith(made.name)]:
        sys.modules.pop(name, None)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


# -- finding the project ---------------------------------------------------------------------------------------------

def test_the_nearest_pyproject_above_the_spec_is_its_project(tmp_path: Path) -> None:
    (tmp_path / "repo" / "sub" / "specs").mkdir(parents=True)
    (tmp_path / "repo" / "pyproject.toml").write_text("[tool.chainspec]\n")
    assert find_pyproject(tmp_path / "repo" / "sub" / "specs" / "x.yaml") == str(tmp_path / "repo" / "pyproject.toml")
    assert find_pyproject(tmp_path / "repo" / "sub") == str(tmp_path / "repo" / "pyproject.toml")  # a directory too
    (tmp_path / "repo" / "sub" / "pyproject.toml").write_text("[project]\nname = 'sub'\n")
    spec = tmp_path / "repo" / "sub" / "specs" / "x.yaml"
    assert find_pyproject(spec) == str(tmp_path / "repo" / "sub" / "pyproject.toml")
    assert find_project(spec) is None  # the nearest one is the project, with or without the table


def test_the_walk_stops_at_the_repository_root(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.chainspec]\nimports = ["outside"]\n')
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    (tmp_path / "repo" / "specs").mkdir()
    assert find_pyproject(tmp_path / "repo" / "specs" / "x.yaml") is None
    assert find_pyproject(tmp_path / "elsewhere.yaml") == str(tmp_path / "pyproject.toml")


def test_reading_the_table(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(textwrap.dedent("""\
        [project]
        name = "demo"

        [tool.chainspec]
        imports = ["demo.layers", "demo.extra"]
        allow-imports = ["demo"]
        pythonpath = ["src", "../shared"]
        """))
    project = read_project(path)
    assert project == Project(str(path), ("demo.layers", "demo.extra"), ("demo",),
                              (str(tmp_path / "src"), str(tmp_path.parent / "shared")))
    assert project.root == str(tmp_path) and project.paths == (str(tmp_path), *project.pythonpath)
    path.write_text("[project]\nname = 'demo'\n")
    assert read_project(path) is None
    path.write_text("[tool.chainspec]\n")
    assert read_project(path) == Project(str(path))


@pytest.mark.parametrize(("text", "expected"), [
    ('[tool.chainspec]\nimport = ["a"]\n',
     ":2:1: tool.chainspec.import: unknown key 'import'; did you mean 'imports'?"),
    ('[tool.chainspec]\nallow_imports = ["a"]\n',
     ":2:1: tool.chainspec.allow_imports: unknown key 'allow_imports'; did you mean 'allow-imports'?"),
    ('[tool.chainspec]\nimports = "a.layers"\n',
     ':2:1: tool.chainspec.imports: must be a list of strings, got a string; write imports = ["mypkg.layers"]'),
    ('[tool.chainspec]\nimports = [\n  "ok",\n  "my-layers",\n]\n',
     ":4:3: tool.chainspec.imports[1]: 'my-layers' is not a module name"),
    ('[tool.chainspec]\nallow-imports = ["a:B"]  # not an import path\n',
     ":2:18: tool.chainspec.allow-imports[0]: 'a:B' is not a module name"),
    ('[tool]\nchainspec = 3\n', ": tool.chainspec: must be a table, got a number"),
    ('[tool.chainspec]\nimports = ["a" "b"]\n', ":2:16: not valid TOML: Unclosed array"),
    ('[tool.chainspec]\nimports = ["a"\n', ": not valid TOML: Unclosed array at the end of the file"),
])
def test_a_bad_table_is_a_located_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(text)
    with pytest.raises(chainspec.SpecError) as caught:
        read_project(path)
    assert f"{path}{expected}" in str(caught.value)


def test_without_a_toml_parser_a_table_asks_for_tomli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.10 without tomli: a pyproject.toml without the table is no project; one with it says what to install."""
    monkeypatch.setattr(project_module, "_toml_parser", lambda: None)
    path = tmp_path / "pyproject.toml"
    for text in ('[project]\nname = "chainspec"\n', '[tool.ruff]\nline-length = 120\n'):
        path.write_text(text)
        assert read_project(path) is None
    for text in ('[tool.chainspec]\nimports = ["a"]\n', 'tool.chainspec.imports = ["a"]\n',
                 '[tool]\nchainspec.imports = ["a"]\n', '[ tool . "chainspec" ]\n'):
        path.write_text(text)
        with pytest.raises(chainspec.SpecError, match=r"reading \[tool.chainspec\] needs Python 3.11 or the tomli "
                                                      r"package; pip install tomli"):
            read_project(path)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_project_anyone_can_write_to_is_refused(proj: Proj) -> None:
    proj.write()
    os.chmod(proj.root, 0o777)
    try:
        with pytest.raises(chainspec.SpecError, match=r"not used: .*proj is writable by every user"):
            chainspec.load(proj.spec)
        os.chmod(proj.root, 0o755)
        os.chmod(proj.root / "pyproject.toml", 0o666)
        with pytest.raises(chainspec.SpecError, match=r"pyproject.toml is writable by every user"):
            chainspec.load(proj.spec)
    finally:
        os.chmod(proj.root, 0o755)
        os.chmod(proj.root / "pyproject.toml", 0o644)
    assert not stat.S_IMODE(os.stat(proj.root).st_mode) & stat.S_IWOTH
    assert chainspec.load(proj.spec).chain_names == ["net"]


# -- chainspec.load --------------------------------------------------------------------------------------------------

def test_load_imports_what_the_project_declares(proj: Proj) -> None:
    proj.write()
    assert proj.module not in sys.modules and not chainspec.is_registered(proj.name)
    path_before = list(sys.path)
    spec = chainspec.load(proj.spec)
    assert sys.path == path_before  # the project root was importable while it was needed, and only then
    assert chainspec.get_type(proj.name).origin == f"{proj.module}.gate"
    import torch

    net = spec.build()
    assert torch.equal(net.g.weight, 2 * torch.eye(3))
    with pytest.raises(chainspec.SpecError, match=r"args.featurs \(g\): unknown argument 'featurs'; "
                                                  r"did you mean 'features'\?"):
        chainspec.load(_rewrite(proj.spec, "features:", "featurs:"))


def _rewrite(path: Path, old: str, new: str) -> Path:
    path.write_text(path.read_text().replace(old, new))
    return path


def test_loads_and_project_false_look_for_no_project(proj: Proj) -> None:
    proj.write()
    with pytest.raises(chainspec.SpecError, match=f"unknown node type '{proj.name}'"):
        chainspec.load(proj.spec, project=False)
    with pytest.raises(chainspec.SpecError, match=f"unknown node type '{proj.name}'"):
        chainspec.loads(proj.spec.read_text(), source=str(proj.spec))
    assert proj.module not in sys.modules


def test_allow_imports_resolve_from_the_project_root(proj: Proj) -> None:
    """An import path the project allows resolves with no PYTHONPATH and no allow_imports from the caller."""
    layers = textwrap.dedent("""\
        from torch import nn


        class Doubler(nn.Module):
            def __init__(self, times: int = 2) -> None:
                super().__init__()
                self.times = times

            def forward(self, x):
                return x * self.times
        """)
    spec = SPEC.format(name=f"{proj.module}:Doubler").replace("features: 3, init: 2.0", "times: 3")
    proj.write(table=f'[tool.chainspec]\nallow-imports = ["{proj.module}"]\n', layers=layers, spec=spec)
    loaded = chainspec.load(proj.spec)
    assert proj.module in loaded.allow_imports
    import torch

    assert torch.equal(loaded.build()(torch.ones(1, 3)), torch.full((1, 3), 3.0))
    with pytest.raises(chainspec.SpecError, match="is not allowed"):
        chainspec.load(proj.spec, project=False)


def test_a_spec_cannot_choose_its_project(proj: Proj, tmp_path: Path) -> None:
    """No key of a spec names a pyproject.toml; a project elsewhere on disk is never used."""
    proj.write()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".git").mkdir()
    spec = elsewhere / "net.yaml"
    spec.write_text(SPEC.format(name=proj.name))
    with pytest.raises(chainspec.SpecError, match=f"unknown node type '{proj.name}'"):
        chainspec.load(spec)
    smuggled = f"pyproject: {proj.root / 'pyproject.toml'}\n" + SPEC.format(name="relu")
    spec.write_text(smuggled.replace("args: {features: 3, init: 2.0}", "args: {}"))
    with pytest.raises(chainspec.SpecError, match=r"unknown key 'pyproject'"):
        chainspec.load(spec)
    assert proj.module not in sys.modules


def test_a_module_that_fails_to_import_is_reported_in_the_pyproject(proj: Proj) -> None:
    proj.write(table=f'[tool.chainspec]\nimports = [\n  "{proj.module}",\n  "{proj.name}_missing",\n]\n',
               layers="import chainspec\nx = 1\ny = x / 0\n")
    with pytest.raises(chainspec.SpecError) as caught:
        chainspec.load(proj.spec)
    pyproject = proj.root / "pyproject.toml"
    assert str(caught.value).splitlines() == [
        f"{pyproject}:6:3: tool.chainspec.imports[0]: cannot import '{proj.module}': ZeroDivisionError: division by "
        f"zero (at {proj.root / (proj.module + '.py')}:3)",
        f"{pyproject}:7:3: tool.chainspec.imports[1]: cannot import '{proj.name}_missing': no module named "
        f"'{proj.name}_missing'; is it in {proj.root}, or installed?",
    ]


def test_a_missing_dependency_of_the_module_is_named(proj: Proj) -> None:
    proj.write(layers=f"import {proj.name}_dependency\n")
    with pytest.raises(chainspec.SpecError, match=rf"cannot import '{proj.module}': ModuleNotFoundError: No module "
                                                  rf"named '{proj.name}_dependency' \(at .*{proj.module}.py:1\)$"):
        chainspec.load(proj.spec)


def test_importable_puts_paths_first_and_takes_off_only_its_own(tmp_path: Path) -> None:
    before = list(sys.path)
    with importable([str(tmp_path), sys.path[0]]):
        assert sys.path[0] == str(tmp_path) and sys.path[1:] == before
    assert sys.path == before


# -- the command line ------------------------------------------------------------------------------------------------

def test_every_command_sees_the_projects_types(proj: Proj, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    proj.write()
    code, _, err = run(capsys, "validate", str(proj.spec))
    assert code == 0 and "ok: 1 file valid" in err
    code, out, _ = run(capsys, "build", str(proj.spec), "--stage", "0")
    assert code == 0 and f"g      {proj.name}" in out
    code, out, _ = run(capsys, "diff", str(proj.spec), str(proj.spec))
    assert code == 0 and "No changes: the chain matches the revision." in out
    monkeypatch.chdir(proj.root / "specs")  # types: the project of the current directory
    code, out, _ = run(capsys, "types", "--filter", proj.name)
    assert code == 0 and f"{proj.name}(features: int, init: float = 1.0)" in out
    code, out, _ = run(capsys, "schema", "--installed")
    assert code == 0 and f'"const": "{proj.name}"' in out


def test_no_project_ignores_it(proj: Proj, capsys: pytest.CaptureFixture[str]) -> None:
    proj.write()
    code, out, _ = run(capsys, "validate", "--no-project", str(proj.spec))
    assert code == 1 and f"unknown node type '{proj.name}'" in out
    assert proj.module not in sys.modules


def test_stdin_uses_the_project_of_the_current_directory(proj: Proj, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    proj.write()
    monkeypatch.chdir(proj.root)
    for expected in (1, 0):  # without the project first: registered types stay registered
        read, write = os.pipe()
        os.write(write, proj.spec.read_bytes())
        os.close(write)
        with os.fdopen(read) as stdin:
            monkeypatch.setattr(sys, "stdin", stdin)
            code, out, err = run(capsys, "validate", "-", *(["--no-project"] if expected else []))
        assert code == expected, out + err
        if expected:
            assert f"<stdin>:6:17: chains.net.nodes[0].type: unknown node type '{proj.name}'" in out


def test_a_failing_project_is_reported_once_per_command(proj: Proj, capsys: pytest.CaptureFixture[str]) -> None:
    counter = proj.root / "runs.txt"
    proj.write(layers=f"with open({str(counter)!r}, 'a') as f:\n    f.write('x')\nraise RuntimeError('broken')\n")
    other = proj.root / "specs" / "other.yaml"
    other.write_text(proj.spec.read_text())
    code, out, err = run(capsys, "validate", str(proj.spec), str(other))
    assert code == 1
    assert out.splitlines() == [f"{proj.root / 'pyproject.toml'}:5:12: tool.chainspec.imports[0]: cannot import "
                                f"'{proj.module}': RuntimeError: broken (at {proj.root / (proj.module + '.py')}:3)"]
    assert "2 problems in 2 of 2 files" in err
    assert counter.read_text() == "x"  # imported once for both specs
    code, _, err = run(capsys, "build", str(proj.spec))
    assert code == 1 and "RuntimeError: broken" in err
    assert run(capsys, "diff", str(proj.spec), str(other))[0] == 2


def test_the_import_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``--import MODULE`` imports from the current directory (no PYTHONPATH), for every command."""
    name = f"flag{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}_layers.py").write_text(LAYERS.format(name=name))
    spec = tmp_path / "net.yaml"
    spec.write_text(SPEC.format(name=name))
    monkeypatch.chdir(tmp_path)
    try:
        code, out, _ = run(capsys, "validate", str(spec))
        assert code == 1 and f"unknown node type '{name}'" in out
        for argv in (["validate", str(spec)], ["build", str(spec)], ["diff", str(spec), str(spec)],
                     ["types", "--filter", name], ["schema", "--installed"]):
            code, out, err = run(capsys, *argv, "--import", f"{name}_layers")
            assert code == 0, (argv, out, err)
    finally:
        unregister_type(name)
        sys.modules.pop(f"{name}_layers", None)
    for argv, status in ((["validate", str(spec)], 1), (["build", str(spec)], 1), (["diff", str(spec), str(spec)], 2),
                         (["types"], 1), (["schema"], 1)):
        code, out, err = run(capsys, *argv, "--import", f"{name}_nowhere")
        assert code == status
        assert (f"--import {name}_nowhere: cannot import '{name}_nowhere': no module named '{name}_nowhere'; "
                f"is it in {tmp_path}, or installed?") in err


def test_import_modules_refuses_what_is_not_a_module_name() -> None:
    with pytest.raises(chainspec.SpecError, match=r"--import os:system: 'os:system' is not a module name"):
        import_modules(["os:system"])


def test_a_fresh_process_without_torch_sees_the_projects_types(proj: Proj) -> None:
    """The pre-commit hook's case: the console script, run in the project, no PYTHONPATH, no torch installed."""
    proj.write()
    bad = proj.root / "specs" / "bad.yaml"
    bad.write_text(SPEC.format(name=proj.name).replace("features: 3", "features: 3, nit: 2"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import sys\nsys.modules['torch'] = None\nfrom chainspec.cli import main\n"
            "sys.exit(main(['validate', 'specs/net.yaml', 'specs/bad.yaml']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=proj.root, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    col = bad.read_text().splitlines()[5].index("nit: 2") + 1  # the project's (random) name is on that line
    assert result.stdout.splitlines() == [
        f"specs/bad.yaml:6:{col}: chains.net.nodes[0].args.nit (g): unknown argument 'nit'; did you mean 'init'?"]
    assert "1 problem in 1 of 2 files" in result.stderr and "Traceback" not in result.stderr
