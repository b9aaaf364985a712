"""Without PyTorch: reading and validating work; building, diffing and --deep say how to install it.

torch is blocked in a fresh interpreter (``sys.modules["torch"] = None`` makes ``import torch`` fail
as if it were not installed), as in the pre-commit hook's torch-free environment.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = "import sys\nsys.modules['torch'] = None\n"


def without_torch(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKED + code], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def cli_without_torch(*argv: str) -> subprocess.CompletedProcess[str]:
    return without_torch(f"from chainspec.cli import main\nsys.exit(main({list(argv)!r}))")


def test_validate_and_load_work_without_torch() -> None:
    out = cli_without_torch("validate", "specs/blog.yaml", "specs/pggan.yaml")
    assert out.returncode == 0 and "ok: 2 files valid" in out.stdout + out.stderr, out.stdout + out.stderr
    out = without_torch("import chainspec\nspec = chainspec.load('specs/blog.yaml')\nprint(spec.chain_names)")
    assert out.returncode == 0 and out.stdout.strip() == "['net']", out.stderr


@pytest.mark.parametrize(("argv", "code"), [
    (["build", "specs/blog.yaml"], 1),
    (["validate", "--deep", "specs/blog.yaml"], 1),
    (["diff", "specs/blog.yaml", "specs/blog.yaml"], 2),
])
def test_commands_that_need_torch_say_how_to_install_it(argv: list[str], code: int) -> None:
    out = cli_without_torch(*argv)
    text = out.stdout + out.stderr
    assert out.returncode == code, text
    assert f"chainspec {argv[0]}" in text and "needs PyTorch, which is not installed" in text, text
    assert "pip install torch" in text and "Traceback" not in text, text


def test_the_library_raises_torch_missing_error() -> None:
    out = without_torch(
        "import chainspec\nspec = chainspec.load('specs/blog.yaml')\n"
        "for call in (spec.build, spec.check, lambda: spec.summary(), lambda: chainspec.Chain):\n"
        "    try:\n        call()\n    except chainspec.TorchMissingError as exc:\n"
        "        print(isinstance(exc, ImportError), str(exc).split(' needs')[0])\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == ["True Spec.build", "True Spec.check", "True Spec.summary",
                                          "True chainspec.Chain"]
