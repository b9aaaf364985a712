"""``chainspec diff``: plans as text or JSON, and diff(1) exit codes (0 same, 1 different, 2 error)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chainspec.cli import main

BLOG = Path(__file__).resolve().parent.parent / "specs" / "blog.yaml"


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def revised(tmp_path: Path) -> str:
    text = BLOG.read_text().replace("args: {in_ch: 64, out_ch: 128}, stage: 2",
                                    "args: {in_ch: 64, out_ch: 96}, stage: 2, init: keep")
    return write(tmp_path, "new.yaml", text)


def test_identical_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", str(BLOG), str(BLOG)]) == 0
    out = capsys.readouterr().out
    assert "No changes" in out


def test_different_exits_1_with_a_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = revised(tmp_path)
    assert main(["diff", str(BLOG), new]) == 1
    out = capsys.readouterr().out
    assert f"chain 'net', stage 2 ({BLOG} → {new})" in out
    assert re.search(r"^  ! b3 \(conv_block\): out_ch 128 → 96 \(overlapping weights kept\)\s+-18,496 params$",
                     out, re.M)
    assert out.rstrip().endswith("Plan: 1 to replace; parameters -18,496.")


def test_json_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", str(BLOG), revised(tmp_path), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["empty"] is False
    plan = data["chains"]["net"]
    assert plan["counts"]["replace"] == 1 and plan["param_delta"] == -18_496
    assert plan["ops"][0]["changes"] == [{"field": "out_ch", "old": 128, "new": 96}]
    assert plan["ops"][0]["init"] == "keep"


def test_stage_pair_shows_a_growth_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", str(BLOG), str(BLOG), "--stage", "0:2", "--chain", "net"]) == 1
    out = capsys.readouterr().out
    assert "+ b2 (conv_block) after b1" in out and "+ b3 (conv_block) after b2" in out
    assert main(["diff", str(BLOG), str(BLOG), "--stage", "1"]) == 0


@pytest.mark.parametrize(("new_text", "message"), [
    ("chainspec: 1\nchains: [\n", r"new\.yaml:\d+:\d+: invalid YAML"),
    (BLOG.read_text().replace("type: conv_block, args: {in_ch: 3", "type: conv_blok, args: {in_ch: 3"),
     r"new\.yaml:\d+:\d+: .*unknown node type 'conv_blok'"),
    (BLOG.read_text().replace("{in_ch: 32, out_ch: 64}", "{in_ch: 32, out_ch: 60}"),
     r"new\.yaml:\d+:\d+: .*expects 64 input channels, but b2 produces 60"),
])
def test_invalid_spec_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], new_text: str,
                              message: str) -> None:
    assert main(["diff", str(BLOG), write(tmp_path, "new.yaml", new_text)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.search(message, captured.err)
    assert "Traceback" not in captured.err


def test_other_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", str(BLOG), str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read spec" in capsys.readouterr().err
    assert main(["diff", str(BLOG), str(BLOG), "--chain", "nett"]) == 2
    assert "did you mean 'net'" in capsys.readouterr().err
    assert main(["diff", str(BLOG), str(BLOG), "--stage", "9"]) == 2
    assert "out of range" in capsys.readouterr().err
    renamed = write(tmp_path, "renamed.yaml", BLOG.read_text().replace("  net:", "  cnn:"))
    assert main(["diff", str(BLOG), renamed]) == 2
    assert "chain 'net' is only in" in capsys.readouterr().err
    assert main(["diff", str(BLOG)]) == 2  # usage


def test_several_chains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    two = BLOG.read_text() + "  head:\n    input_shape: [4]\n    nodes:\n      - {id: h_act, type: relu}\n"
    old = write(tmp_path, "old.yaml", two)
    new = write(tmp_path, "new.yaml", two.replace("{id: h_act, type: relu}", "{id: h_act, type: tanh}"))
    assert main(["diff", old, new]) == 1
    out = capsys.readouterr().out
    assert "chain 'net'" in out and "No changes" in out and "! h_act (tanh): type relu → tanh\n" in out
    assert main(["diff", old, new, "--chain", "net"]) == 0


def test_console_entry_point(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "chainspec", "diff", str(BLOG), revised(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stderr
    assert "! b3 (conv_block)" in result.stdout


ESCAPES = """\
chainspec: 1
types:
  blk:
    params: {n: 4, tag: "a"}
    nodes:
      - {id: fc, type: linear, args: {in_features: 4, out_features: "${n}"}}
chains:
  net:
    input_shape: [4]
    nodes:
      - {id: b, type: blk, args: {n: 4, tag: "a", more: ["x"]}}
"""
#: Clears the screen, homes the cursor, prints a fake verdict; then C1 CSI, DEL, a bidi override, a new line.
HOSTILE = "\\e[2J\\e[HNo changes: the chain matches the revision.\\x9b31m\\x7f\\u202e\\nPlan: no changes."


def test_values_in_a_plan_cannot_drive_the_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = write(tmp_path, "old.yaml", ESCAPES.replace("params: {n: 4, tag: ", "params: {n: 4, more: [], tag: "))
    new = write(tmp_path, "new.yaml", ESCAPES.replace("params: {n: 4, tag: ", "params: {n: 4, more: [], tag: ")
                .replace('{n: 4, tag: "a", more: ["x"]}', f'{{n: 5, tag: "{HOSTILE}", more: ["{HOSTILE}"]}}'))
    assert main(["diff", old, new]) == 1
    out = capsys.readouterr().out
    assert all(c.isprintable() or c == "\n" for c in out), repr(out)
    assert "tag a → \\x1b[2J\\x1b[HNo changes: the chain matches the revision.\\x9b31m\\x7f\\u202e\\nPlan: no " \
           "changes." in out
    assert [line for line in out.splitlines() if line.startswith("Plan:")] == ["Plan: 1 to replace; parameters +5."]
    assert main(["diff", old, new, "--format", "json"]) == 1
    text = capsys.readouterr().out
    assert all(c.isprintable() or c == "\n" for c in text), repr(text)
    changes = json.loads(text)["chains"]["net"]["ops"][0]["changes"]
    expected = "\x1b[2J\x1b[HNo changes: the chain matches the revision.\x9b31m\x7f\u202e\nPlan: no changes."
    assert {"field": "tag", "old": "a", "new": expected} in changes
    assert {"field": "more", "old": ["x"], "new": [expected]} in changes
