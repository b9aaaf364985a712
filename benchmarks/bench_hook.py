"""The pre-commit hook's first run: how long it takes and how big its environment is, torch-free.

A throwaway hook repository holds this checkout's package; a throwaway user repository holds
``specs/blog.yaml`` and the README's ``.pre-commit-config.yaml`` snippet pointing at the hook
repository. ``pre-commit run`` then runs the ``chainspec-validate`` hook on a clean cache, as a
user's first ``git commit`` does: pre-commit creates a virtualenv and pip-installs chainspec with
its dependencies from the package index (pydantic, PyYAML, jsonschema; never torch). The baseline
is a second run, with the environment in place, so the ratio is what the first run's install costs
on top of validating.

Usage:
    python benchmarks/bench_hook.py

Example:
    >>> rows = run()  # doctest: +SKIP
    >>> rows[0]["case"]  # doctest: +SKIP
    'pre-commit hook, first run on a clean cache'
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import Row, row

ROOT = Path(__file__).resolve().parents[1]
HOOK_ID = "chainspec-validate"
PACKAGE_FILES = ["pyproject.toml", "README.md", "LICENSE", ".pre-commit-hooks.yaml", "src/chainspec"]
#: The issue's targets: the first run within a minute, the environment within 100 MB.
FIRST_RUN_TARGET_S = 60.0
SIZE_TARGET_B = 100 * 2**20


def _git(cwd: Path, *args: str, env: dict[str, str]) -> None:
    subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=cwd, env=env, check=True,
                   capture_output=True, timeout=60)


def readme_snippet() -> str:
    """The README's ``.pre-commit-config.yaml`` block for the hook, with ``<chainspec-repo-url>`` and ``<rev>``."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return next(b for b in re.findall(r"```yaml\n(.*?)```", readme, flags=re.DOTALL) if f"id: {HOOK_ID}" in b)


def _repos(tmp: Path, env: dict[str, str]) -> tuple[Path, Path]:
    hook, user = tmp / "hook", tmp / "user"
    for name in PACKAGE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, hook / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            (hook / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, hook / name)
    _git(hook, "init", "-q", env=env)
    _git(hook, "add", ".", env=env)
    _git(hook, "commit", "-q", "-m", "hook", env=env)
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=hook, env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    (user / "specs").mkdir(parents=True)
    shutil.copy2(ROOT / "specs" / "blog.yaml", user / "specs" / "blog.yaml")
    (user / ".pre-commit-config.yaml").write_text(
        readme_snippet().replace("<chainspec-repo-url>", str(hook)).replace("<rev>", rev), encoding="utf-8")
    _git(user, "init", "-q", env=env)
    _git(user, "add", ".", env=env)
    return hook, user


def _run_hook(user: Path, env: dict[str, str]) -> float:
    exe = shutil.which("pre-commit") or sys.exit("pre-commit is not installed: pip install -e '.[dev]'")
    start = time.perf_counter()
    proc = subprocess.run([exe, "run", HOOK_ID, "--files", "specs/blog.yaml"], cwd=user,
                          env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the hook failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return seconds


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def run() -> list[Row]:
    """Time the hook's first run on a clean pre-commit cache and a second run; measure its environment."""
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUALENV_", "PIP_CONSTRAINT"))}
        env.update(HOME=str(tmp / "home"), PRE_COMMIT_HOME=str(tmp / "cache"), PRE_COMMIT_COLOR="never",
                   GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@chainspec.invalid",
                   GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@chainspec.invalid")
        env.pop("PYTHONPATH", None)
        _hook, user = _repos(tmp, env)
        first = _run_hook(user, env)
        again = _run_hook(user, env)
        venvs = list((tmp / "cache").glob("repo*/py_env-*"))
        size = sum(_size(v) for v in venvs)
        torch_there = any(list(v.glob("lib/python*/site-packages/torch")) for v in venvs)
    note = "torch installed in the hook's environment!" if torch_there else "no torch in the environment"
    return [
        row("hook", "pre-commit hook, first run on a clean cache", "the same hook, environment in place",
            base=again, value=first, ratio=first / again, target=f"< {FIRST_RUN_TARGET_S:.0f} s",
            ok=first < FIRST_RUN_TARGET_S, note="pre-commit run on specs/blog.yaml, the README's config"),
        row("hook", "pre-commit hook environment size", "the 100 MB target", base=float(SIZE_TARGET_B),
            value=float(size), ratio=size / SIZE_TARGET_B, unit="B", target="< 100 MB",
            ok=size < SIZE_TARGET_B and not torch_there, note=note),
    ]


def main() -> int:
    """Print the rows as a small table."""
    for r in run():
        value = f"{r['value']:.1f} s" if r["unit"] == "s" else f"{r['value'] / 2**20:.1f} MiB"
        print(f"{r['case']:<50} {value:>10}  ({r['note']}; ok: {r['ok']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
