"""``chainspec validate``: many files, every problem, exit 0/1, torch-free unless ``--deep``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chainspec.cli import main
from chainspec.cli.validate import expand, validate_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
INVALID = sorted((FIXTURES / "invalid").glob("*.yaml"))
#: Valid fixtures that need no import permission.
PLAIN_VALID = sorted(p for p in (FIXTURES / "valid").glob("*.yaml") if p.name != "import_path.yaml")
LOCATED = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): ")

TWO_PROBLEMS = """\
chainspec: 1
chains:
  net:
    input_shape: [4]
    nodes:
      - {id: fc, type: linear, args: {in_features: 4, out_features: 2, bais: true}}
      - {id: act, type: relu3}
"""
SHAPE_MISMATCH = """\
chainspec: 1
chains:
  net:
    input_shape: [4]
    nodes:
      - {id: fc1, type: linear, args: {in_features: 4, out_features: 8}}
      - {id: fc2, type: linear, args: {in_features: 6, out_features: 2}, stage: 1}
"""


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["validate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_files_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(p) for p in [*sorted((ROOT / "specs").glob("*.yaml")), *PLAIN_VALID]]
    code, out, err = run_cli(files, capsys)
    assert code == 0, out
    assert out == ""
    assert err.strip() == f"ok: {len(files)} files valid"


def test_every_problem_of_every_file_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path, "a.yaml", TWO_PROBLEMS)
    good = write(tmp_path, "good.yaml", (FIXTURES / "valid" / "minimal.yaml").read_text(encoding="utf-8"))
    b = write(tmp_path, "b.yaml", "chainspec: 1\nchains:\n  net: {input_shape: [0], nodes: []}\n")
    code, out, err = run_cli([str(a), str(good), str(b)], capsys)
    assert code == 1
    lines = out.splitlines()
    assert f"{a}:6:72: chains.net.nodes[0].args.bais (fc): unknown argument 'bais'; did you mean 'bias'?" in lines
    assert f"{a}:7:19: chains.net.nodes[1].type: unknown node type 'relu3'; did you mean 'relu'?" in lines
    assert sum(line.startswith(f"{b}:") for line in lines) == 2  # the zero dimension and the empty node list
    assert not any(line.startswith(str(good)) for line in lines)
    assert err.strip() == "4 problems in 2 of 3 files"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_each_invalid_fixture_fails_with_located_problems(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_cli([str(path)], capsys)
    assert code == 1
    lines = out.splitlines()
    assert lines
    for line in lines:
        match = LOCATED.match(line)
        assert match and match["file"] == str(path), line
        assert int(match["line"]) >= 1 and int(match["col"]) >= 1


def test_directories_expand_to_their_specs_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sub").mkdir()
    first = write(tmp_path, "one.yaml", (FIXTURES / "valid" / "minimal.yaml").read_text(encoding="utf-8"))
    second = write(tmp_path / "sub", "two.yml", (FIXTURES / "valid" / "minimal.yaml").read_text(encoding="utf-8"))
    write(tmp_path, "notes.txt", "not a spec")
    assert expand([str(tmp_path), str(first)]) == [str(first), str(second)]
    code, _out, err = run_cli([str(tmp_path)], capsys)
    assert code == 0 and "2 files valid" in err


def test_unreadable_and_missing_files_are_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    code, out, _err = run_cli([str(missing)], capsys)
    assert code == 1
    assert out.strip() == f"{missing}: cannot read spec: No such file or directory"


def test_deep_adds_shape_inference_at_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "shapes.yaml", SHAPE_MISMATCH)
    code, out, _err = run_cli([str(path)], capsys)
    assert (code, out) == (0, "")
    code, out, _err = run_cli(["--deep", str(path)], capsys)
    assert code == 1
    assert LOCATED.match(out) and "chains.net.nodes[1]" in out and "6" in out, out


def test_deep_on_a_thousand_stages_of_a_growing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 stages x 3,000 nodes, the input growing at each stage: checked, building one module."""
    from chainspec.build import shapes as _compile

    nodes = ", ".join(f"{{id: n{i}, type: relu}}" for i in range(3000))
    path = write(tmp_path, "growing.yaml", f'chainspec: 1\nstages: 1000\nchains:\n  net:\n'
                                           f'    input_shape: ["${{stage + 1}}"]\n    nodes: [{nodes}]\n')
    built: list[object] = []
    real = _compile.build_module
    monkeypatch.setattr(_compile, "build_module", lambda tree: built.append(tree) or real(tree))
    assert run_cli(["--deep", str(path)], capsys)[:2] == (0, "")
    assert len(built) == 1


def test_deep_refuses_what_would_cost_too_much_with_a_located_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from chainspec.build import shapes as _compile

    monkeypatch.setattr(_compile, "MAX_CHECK_RUNS", 10)
    path = write(tmp_path, "wide.yaml", 'chainspec: 1\nstages: 20\nchains:\n  net:\n'
                                        '    input_shape: ["${stage + 1}", 4]\n'
                                        "    nodes: [{id: fc, type: linear, args: {in_features: 4, out_features: 4}}]"
                                        "\n")
    code, out, _err = run_cli(["--deep", str(path)], capsys)
    assert code == 1 and "Traceback" not in out
    assert out.startswith(f"{path}:4:3: chains.net: shape-checking 20 stage(s) of 1 nodes takes more than 10 module "
                          "runs on the meta device; it was stopped there"), out


def test_import_paths_need_permission(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "valid" / "import_path.yaml"
    code, out, _err = run_cli([str(path)], capsys)
    assert code == 1 and "is not allowed" in out
    code, out, _err = run_cli(["--allow-import", "chainspec", str(path)], capsys)
    assert (code, out) == (0, "")


def test_json_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.yaml", TWO_PROBLEMS)
    good = PLAIN_VALID[0]
    code, out, _err = run_cli(["--format", "json", str(good), str(bad)], capsys)
    assert code == 1
    report = json.loads(out)
    assert [r["ok"] for r in report] == [True, False]
    assert report[1]["file"] == str(bad)
    problem = report[1]["problems"][0]
    assert set(problem) == {"source", "line", "col", "path", "message", "hint"}
    assert (problem["line"], problem["col"]) == (6, 72)


def test_quiet_prints_problems_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.yaml", TWO_PROBLEMS)
    code, out, err = run_cli(["-q", str(bad)], capsys)
    assert code == 1 and len(out.splitlines()) == 2 and err == ""


def test_validate_file_returns_problems_instead_of_raising(tmp_path: Path) -> None:
    result = validate_file(str(write(tmp_path, "x.yaml", "chainspec: 1\nchains: {}\n")))
    assert not result.ok
    assert [p.format() for p in result.problems] == [f"{tmp_path / 'x.yaml'}:2:1: chains: must have at least 1 chain"]


def test_no_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 2
    assert "FILE" in capsys.readouterr().err


# -- torch stays out ------------------------------------------------------------------

PROBE = """\
import sys
from chainspec.cli import main
code = main(sys.argv[1:])
print("TORCH" if "torch" in sys.modules else "NO-TORCH", code)
"""


def probe(*args: str) -> str:
    """Run the command line in a fresh interpreter; report whether torch got imported, and the exit code."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc.stdout.strip().splitlines()[-1]


def test_validate_does_not_import_torch() -> None:
    files = [str(p) for p in [*sorted((ROOT / "specs").glob("*.yaml")), *PLAIN_VALID, *INVALID]]
    assert probe("validate", *files) == "NO-TORCH 1"
    assert probe("validate", *[str(p) for p in PLAIN_VALID]) == "NO-TORCH 0"


def test_import_chainspec_does_not_import_torch() -> None:
    code = "import sys, chainspec; chainspec.loads(open('specs/blog.yaml').read()); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_deep_does_import_torch() -> None:
    # The probe can tell: --deep needs torch for shape inference.
    assert probe("validate", "--deep", str(PLAIN_VALID[0])) == "TORCH 0"


def test_console_script_runs() -> None:
    proc = subprocess.run(["chainspec", "validate", "specs"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
