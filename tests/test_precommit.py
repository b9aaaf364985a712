"""The ``chainspec-validate`` pre-commit hook, run by the real ``pre-commit`` in throwaway git repositories.

pre-commit installs the hook the way it does for users, from a clean cache:
it creates a virtualenv and pip-installs this package into it, with its
dependencies from the package index. torch is not one of them (the hook never
imports it), so the hook's environment stays small: the tests check that torch
is not in it and measure its size. ``python benchmarks/bench_hook.py`` times
that first run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
HOOK_ID = "chainspec-validate"
#: What pip needs to install chainspec from a checkout.
PACKAGE_FILES = ["pyproject.toml", "README.md", "LICENSE", ".pre-commit-hooks.yaml", "src/chainspec"]
BAD_SPEC = """\
chainspec: 1
chains:
  net:
    input_shape: [4]
    nodes:
      - {id: fc, type: linear, args: {in_features: 4, out_features: 2}}
      - {id: act, type: relu3}
"""

pytestmark = pytest.mark.slow


def git(cwd: Path, *args: str, env: dict[str, str]) -> None:
    subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=cwd, env=env, check=True,
                   capture_output=True, text=True, timeout=60)


def pre_commit(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("pre-commit")
    assert exe, "pre-commit is not installed; pip install -e '.[dev]'"
    return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")
    out = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUALENV_", "PIP_CONSTRAINT"))}
    out.update({
        "HOME": str(home),
        "PRE_COMMIT_HOME": str(home / "pre-commit"),
        "GIT_AUTHOR_NAME": "chainspec test", "GIT_AUTHOR_EMAIL": "test@chainspec.invalid",
        "GIT_COMMITTER_NAME": "chainspec test", "GIT_COMMITTER_EMAIL": "test@chainspec.invalid",
        "PRE_COMMIT_COLOR": "never",
    })
    out.pop("PYTHONPATH", None)
    return out


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> tuple[Path, str]:
    """A git repository holding this checkout's package as it is on disk (committed or not)."""
    repo = tmp_path_factory.mktemp("hook-repo")
    for name in PACKAGE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, repo / name)
    git(repo, "init", "-q", env=env)
    git(repo, "add", ".", env=env)
    git(repo, "commit", "-q", "-m", "hook repo", env=env)
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    return repo, rev


@pytest.fixture()
def user_repo(tmp_path: Path, env: dict[str, str]) -> Path:
    """A user's project: a good spec, a bad spec, and a YAML file that is not a spec."""
    (tmp_path / "specs").mkdir()
    shutil.copy2(ROOT / "specs" / "blog.yaml", tmp_path / "specs" / "good.yaml")
    (tmp_path / "specs" / "bad.yaml").write_text(BAD_SPEC, encoding="utf-8")
    (tmp_path / "ci.yaml").write_text("jobs: {test: {run: pytest}}\n", encoding="utf-8")
    git(tmp_path, "init", "-q", env=env)
    git(tmp_path, "add", ".", env=env)
    return tmp_path


def readme_snippet() -> str:
    """The README's ``.pre-commit-config.yaml`` block for the hook, placeholders and all."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.DOTALL)
    return next(b for b in blocks if f"id: {HOOK_ID}" in b)


def test_readme_snippet_is_a_config_with_marked_placeholders() -> None:
    config = yaml.safe_load(readme_snippet())
    entry = config["repos"][0]
    assert (entry["repo"], entry["rev"]) == ("<chainspec-repo-url>", "<rev>")
    assert [h["id"] for h in entry["hooks"]] == [HOOK_ID]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "`<chainspec-repo-url>`" in readme and "`<rev>`" in readme  # the text says what to put there


def test_manifest_declares_the_hook() -> None:
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    hook = next(h for h in hooks if h["id"] == HOOK_ID)
    assert hook["entry"] == "chainspec validate"
    assert hook["language"] == "python"
    assert "yaml" in hook["types"]


def test_try_repo_passes_a_good_spec_and_fails_a_bad_one(hook_repo: tuple[Path, str], user_repo: Path,
                                                         env: dict[str, str]) -> None:
    repo, _rev = hook_repo
    proc = pre_commit(user_repo, "try-repo", str(repo), HOOK_ID, "--files", "specs/good.yaml", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Passed" in proc.stdout
    proc = pre_commit(user_repo, "try-repo", str(repo), HOOK_ID, "--files", "specs/good.yaml", "specs/bad.yaml",
                      env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Failed" in proc.stdout
    expected = "specs/bad.yaml:7:19: chains.net.nodes[1].type: unknown node type 'relu3'; did you mean 'relu'?"
    assert expected in proc.stdout
    assert "specs/good.yaml:" not in proc.stdout


def test_documented_config_blocks_a_bad_commit(hook_repo: tuple[Path, str], user_repo: Path,
                                               env: dict[str, str]) -> None:
    repo, rev = hook_repo
    # The snippet the README documents, with this checkout and its commit in place of the placeholders.
    (user_repo / ".pre-commit-config.yaml").write_text(
        readme_snippet().replace("<chainspec-repo-url>", str(repo)).replace("<rev>", rev), encoding="utf-8")
    git(user_repo, "add", ".pre-commit-config.yaml", env=env)
    proc = pre_commit(user_repo, "install", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    commit = subprocess.run(["git", "-c", "commit.gpgsign=false", "commit", "-m", "add specs"], cwd=user_repo,
                            env=env, capture_output=True, text=True, timeout=600)
    assert commit.returncode != 0, "the commit of a bad spec went through"
    # The hook ran from its own virtualenv, where pip installed chainspec from the hook repository.
    installed = list(Path(env["PRE_COMMIT_HOME"]).glob(
        "repo*/py_env-*/lib/python*/site-packages/chainspec/read/schema.py"))
    assert installed, "pre-commit did not install chainspec into the hook's virtualenv"
    assert "specs/bad.yaml:7:19:" in commit.stdout + commit.stderr
    assert "ci.yaml" not in commit.stdout + commit.stderr  # scoped to specs/ by 'files'
    (user_repo / "specs" / "bad.yaml").unlink()
    git(user_repo, "add", "-A", "specs", env=env)
    commit = subprocess.run(["git", "-c", "commit.gpgsign=false", "commit", "-m", "add specs"], cwd=user_repo,
                            env=env, capture_output=True, text=True, timeout=600)
    assert commit.returncode == 0, commit.stdout + commit.stderr


def test_the_hook_environment_holds_no_torch_and_stays_small(hook_repo: tuple[Path, str], user_repo: Path,
                                                            env: dict[str, str], tmp_path: Path) -> None:
    """The README's snippet, first run on a clean pre-commit cache: chainspec and its light dependencies only."""
    repo, rev = hook_repo
    clean = {**env, "PRE_COMMIT_HOME": str(tmp_path / "clean-cache")}
    (user_repo / ".pre-commit-config.yaml").write_text(
        readme_snippet().replace("<chainspec-repo-url>", str(repo)).replace("<rev>", rev), encoding="utf-8")
    proc = pre_commit(user_repo, "run", HOOK_ID, "--files", "specs/good.yaml", env=clean)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    envs = list((tmp_path / "clean-cache").glob("repo*/py_env-*"))
    assert len(envs) == 1, envs
    site = next(envs[0].glob("lib/python*/site-packages"))
    assert (site / "chainspec").is_dir()
    assert not list(site.glob("torch*")) and not list(site.glob("nvidia*")), "torch was installed for the hook"
    size = sum(f.stat().st_size for f in envs[0].rglob("*") if f.is_file() and not f.is_symlink())
    assert size < 100 * 2**20, f"the hook's environment is {size / 2**20:.0f} MiB"


#: A user's module of node types: a function that imports torch only when it builds, since the hook has no torch.
USER_LAYERS = '''\
import chainspec


@chainspec.register_type("user_gate")
def gate(features: int, init: float = 1.0):
    """A learned per-feature gate."""
    import torch
    from torch import nn

    layer = nn.Linear(features, features, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(features) * init)
    return layer
'''
USER_SPEC = """\
chainspec: 1
chains:
  net:
    input_shape: [4]
    nodes:
      - {id: gate, type: user_gate, args: {features: 4, init: 0.5}}
"""


def test_the_hook_sees_the_types_a_project_registers(hook_repo: tuple[Path, str], user_repo: Path,
                                                     env: dict[str, str]) -> None:
    """``[tool.chainspec]`` in the user's pyproject.toml: the hook imports the module from the repository itself."""
    repo, _rev = hook_repo
    (user_repo / "pyproject.toml").write_text(
        '[project]\nname = "userproject"\nversion = "0"\n\n[tool.chainspec]\nimports = ["userproject_layers"]\n',
        encoding="utf-8")
    (user_repo / "userproject_layers.py").write_text(USER_LAYERS, encoding="utf-8")
    (user_repo / "specs" / "gated.yaml").write_text(USER_SPEC, encoding="utf-8")
    (user_repo / "specs" / "typo.yaml").write_text(USER_SPEC.replace("init:", "nit:"), encoding="utf-8")
    git(user_repo, "add", ".", env=env)
    proc = pre_commit(user_repo, "try-repo", str(repo), HOOK_ID, "--files", "specs/gated.yaml", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Passed" in proc.stdout
    proc = pre_commit(user_repo, "try-repo", str(repo), HOOK_ID, "--files", "specs/gated.yaml", "specs/typo.yaml",
                      env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert ("specs/typo.yaml:6:57: chains.net.nodes[0].args.nit (gate): unknown argument 'nit'; "
            "did you mean 'init'?") in proc.stdout
    assert "specs/gated.yaml:" not in proc.stdout and "Traceback" not in proc.stdout
