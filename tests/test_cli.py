"""``chainspec build`` and ``chainspec types``: output, JSON shape, exit codes, and no tracebacks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import chainspec
from chainspec.cli import main
from chainspec.types.registry import builtin_type_names

# specs/blog.yaml's conv_block: a 3x3 conv without bias, batch norm and ReLU, at 32x32. Worked out by hand:
# mult-adds = out * in * 9 * 32 * 32; weights 4 bytes a parameter; buffers: running mean and var (4 bytes
# a channel each) and the int64 batch count; activations: the output, 4 bytes an element.
BLOCKS = [  # (id, in, out, params)
    ("b1", 3, 32, 928), ("b2", 32, 64, 18_560), ("b3", 64, 128, 73_984)]


def _blog_node(node_id: str, c_in: int, c_out: int, params: int) -> dict:
    return {"id": node_id, "type": "conv_block", "output_shape": [c_out, 32, 32], "params": params,
            "param_bytes": 4 * params, "buffer_bytes": 8 * c_out + 8, "multiply_adds": c_out * c_in * 9 * 1024,
            "activation_bytes": 4 * c_out * 1024, "frozen_params": 0}


def _blog_stage(stage: int) -> dict:
    nodes = [_blog_node(*block) for block in BLOCKS[:stage + 1]]
    params = sum(n["params"] for n in nodes)
    return {"chains": {"net": {
        "stage": stage, "params": params, "nodes": nodes, "param_bytes": 4 * params,
        "buffer_bytes": sum(n["buffer_bytes"] for n in nodes), "trainable_params": params, "frozen_params": 0,
        "multiply_adds": sum(n["multiply_adds"] for n in nodes),
        "activation_bytes": sum(n["activation_bytes"] for n in nodes)}}}


BLOG_STAGES = [_blog_stage(stage) for stage in range(3)]
assert BLOG_STAGES[2]["chains"]["net"]["multiply_adds"] == 95_256_576


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize(("stage", "index"), [("0", 0), ("1", 1), ("2", 2), ("final", 2)])
def test_build_json_per_stage(capsys, blog_path: Path, stage: str, index: int) -> None:
    code, out, err = run(capsys, "build", str(blog_path), "--stage", stage, "--format", "json")
    assert code == 0 and err == ""
    assert json.loads(out) == BLOG_STAGES[index]


def test_build_json_all_stages(capsys, blog_path: Path) -> None:
    code, out, _ = run(capsys, "build", str(blog_path), "--stage", "all", "--format", "json")
    assert code == 0
    assert json.loads(out) == {"stages": BLOG_STAGES}
    totals = [stage["chains"]["net"]["params"] for stage in json.loads(out)["stages"]]
    assert totals == [928, 19_488, 93_472]


def test_build_table(capsys, blog_path: Path) -> None:
    code, out, _ = run(capsys, "build", str(blog_path), "--stage", "final")
    assert code == 0
    assert out == (
        f"{blog_path}: chain 'net', stage 2 of 2, input [3, 32, 32]\n"
        "  node   type        output shape   params   weights  mult-adds  act mem\n"
        "  b1     conv_block  [32, 32, 32]      928  3.62 KiB       885K  128 KiB\n"
        "  b2     conv_block  [64, 32, 32]   18,560  72.5 KiB      18.9M  256 KiB\n"
        "  b3     conv_block  [128, 32, 32]  73,984   289 KiB      75.5M  512 KiB\n"
        "  total              [128, 32, 32]  93,472   365 KiB      95.3M  896 KiB\n"
        "  trainable 93,472, frozen 0; weights 365 KiB, buffers 1.77 KiB\n"
        "  (mult-adds and act mem: per sample)\n")


def test_build_table_shows_every_stage_by_default_and_one_stage_on_request(capsys, blog_path: Path) -> None:
    for extra in ([], ["--stage", "all"]):
        _, out, _ = run(capsys, "build", str(blog_path), *extra)
        assert [line.split(", ")[1] for line in out.splitlines() if line.startswith(str(blog_path))] == [
            "stage 0 of 2", "stage 1 of 2", "stage 2 of 2"]
    _, out, _ = run(capsys, "build", str(blog_path), "--stage", "0")
    assert "stage 0 of 2" in out and "stage 1" not in out and "total              [32, 32, 32]     928" in out


def test_build_save_without_a_stage_saves_stage_0(capsys, blog_path: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, "build", str(blog_path), "--save", str(tmp_path / "c.pt"))
    assert code == 0 and "saved net at stage 0" in err
    assert "stage 0 of 2" in out and "stage 1" not in out


GAN = """\
chainspec: 1
chains:
  gen:
    input_shape: [2]
    nodes: [{id: fc, type: linear, args: {in_features: 2, out_features: 6}}]
  disc:
    input_shape: [6]
    nodes:
      - {id: fc, type: linear, args: {in_features: 6, out_features: 1}}
      - {id: act, type: sigmoid, stage: 1}
"""


def test_build_several_chains_and_one_chain(capsys, write_spec) -> None:
    path = write_spec(GAN, "gan.yaml")
    _, out, _ = run(capsys, "build", str(path), "--format", "json", "--stage", "final")
    shown = json.loads(out)

    def core(chain: dict) -> dict:  # the shapes and counts; the costs are checked below
        return {"stage": chain["stage"], "params": chain["params"],
                "nodes": [{k: n[k] for k in ("id", "type", "output_shape", "params")} for n in chain["nodes"]]}

    assert {name: core(chain) for name, chain in shown["chains"].items()} == {
        "gen": {"stage": 1, "params": 18, "nodes": [{"id": "fc", "type": "linear", "output_shape": [6], "params": 18}]},
        "disc": {"stage": 1, "params": 7, "nodes": [
            {"id": "fc", "type": "linear", "output_shape": [1], "params": 7},
            {"id": "act", "type": "sigmoid", "output_shape": [1], "params": 0}]}}
    gen, disc = shown["chains"]["gen"], shown["chains"]["disc"]
    assert (gen["multiply_adds"], disc["multiply_adds"]) == (2 * 6, 6 * 1)  # linear 2 -> 6 and 6 -> 1
    assert (gen["activation_bytes"], disc["activation_bytes"]) == (4 * 6, 4 * 1 + 4 * 1)
    assert [n["multiply_adds"] for n in disc["nodes"]] == [6, 0]
    _, out, _ = run(capsys, "build", str(path), "--format", "json", "--chain", "disc")
    assert [list(stage["chains"]) for stage in json.loads(out)["stages"]] == [["disc"], ["disc"]]


def test_build_save_writes_a_checkpoint(capsys, blog_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "blog.pt"
    code, _, err = run(capsys, "build", str(blog_path), "--stage", "1", "--save", str(target))
    assert code == 0 and target.stat().st_size > 0
    assert f"saved net at stage 1 to {target}" in err


BAD = """\
chainspec: 1
chains:
  net:
    input_shape: [3, 8, 8]
    nodes:
      - {id: b1, type: conv3d}
      - {id: b1, type: relu}
"""

MISMATCH = """\
chainspec: 1
chains:
  net:
    input_shape: [3, 8, 8]
    nodes:
      - {id: b1, type: conv2d, args: {in_channels: 3, out_channels: 64}}
      - {id: b2, type: conv2d, args: {in_channels: 32, out_channels: 64}}
"""


@pytest.mark.parametrize(("argv", "code", "fragment"), [
    # 1: the input is invalid (messages on stderr)
    (["build", "{bad}"], 1, ":6:18: chains.net.nodes[0].type: unknown node type 'conv3d'; did you mean 'conv2d'?"),
    (["build", "{bad}"], 1, ":7:10: chains.net.nodes[1].id: duplicate id 'b1'"),
    (["build", "{mismatch}"], 1, ":7:9: chains.net.nodes[1] (b2): expects 32 input channels, but b1 produces 64 "
                                 "(shape [64, 6, 6])"),
    (["build", "{missing}"], 1, "missing.yaml: cannot read spec: No such file or directory"),
    (["build", "{blog}", "--stage", "7"], 1, "stage 7 is out of range"),
    (["build", "{blog}", "--chain", "nett"], 1, "has no chain 'nett'; did you mean 'net'?"),
    (["build", "{blog}", "--stage", "3", "--save", "x.pt"], 1, "stage 3 is out of range"),
    (["types", "--filter", "nothing_like_this"], 1, "no node type matches 'nothing_like_this'"),
    # 2: the command line is wrong
    (["build"], 2, "the following arguments are required: SPEC"),
    (["build", "{blog}", "--stage", "last"], 2, "expected a stage number, 'final' or 'all', got 'last'"),
    (["build", "{blog}", "--format", "xml"], 2, "invalid choice: 'xml'"),
    (["build", "{blog}", "--stage", "all", "--save", "x.pt"], 2, "--save needs one stage, not 'all'"),
    (["build", "{blog}", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    ([], 2, "the following arguments are required: COMMAND"),
])
def test_exit_codes_and_messages(capsys, write_spec, blog_path: Path, tmp_path: Path, argv: list[str], code: int,
                                 fragment: str) -> None:
    paths = {"{bad}": str(write_spec(BAD, "bad.yaml")), "{mismatch}": str(write_spec(MISMATCH, "mm.yaml")),
             "{missing}": str(tmp_path / "missing.yaml"), "{blog}": str(blog_path)}
    status, out, err = run(capsys, *[paths.get(a, a) for a in argv])
    assert status == code
    assert fragment in err
    assert out == ""


def test_every_problem_goes_to_stderr_one_per_line(capsys, write_spec) -> None:
    code, out, err = run(capsys, "build", str(write_spec(BAD, "bad.yaml")))
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 2


def test_help_and_version_exit_0(capsys) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"chainspec {chainspec.__version__}"
    code, out, _ = run(capsys, "build", "--help")
    assert code == 0 and "--stage N|final|all" in out and "--format {table,json}" in out


def test_types_lists_every_builtin_with_its_args(capsys) -> None:
    code, out, _ = run(capsys, "types")
    assert code == 0
    listed = [line.split("(")[0] for line in out.splitlines() if not line.startswith(" ")]
    assert set(builtin_type_names()) <= set(listed)
    assert "conv2d(in_channels: int >= 1, out_channels: int >= 1, kernel_size: int >= 1 | tuple[int >= 1, int >= 1]" \
           " = 3," in out
    assert "pixel_norm(eps: float >= 0.0 = 1e-08)" in out
    assert "minibatch_stddev(group_size: int >= 1 = 4)" in out
    assert "    Appends the minibatch standard deviation as one extra channel" in out


def test_types_filter_and_json(capsys) -> None:
    code, out, _ = run(capsys, "types", "--filter", "pool")
    assert code == 0
    assert [line.split("(")[0] for line in out.splitlines() if not line.startswith(" ")] == [
        "adaptive_avgpool2d", "avgpool2d", "maxpool2d"]
    code, out, _ = run(capsys, "types", "--format", "json", "--filter", "eq_linear")
    data = json.loads(out)
    assert data == {"eq_linear": {
        "description": "Fully connected layer with equalized learning rate (Karras et al. 2018, section 4.1).",
        "origin": "builtin",
        "args": {"in_features": {"type": "int >= 1"}, "out_features": {"type": "int >= 1"},
                 "bias": {"type": "bool", "default": True}, "gain": {"type": "float", "default": 2 ** 0.5}}}}


def test_the_installed_console_script(blog_path: Path, tmp_path: Path) -> None:
    """The real entry point, in a fresh process: exit codes, and a bad spec never shows a traceback."""
    ok = subprocess.run(["chainspec", "build", str(blog_path), "--stage", "all", "--format", "json"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and [s["chains"]["net"]["params"] for s in json.loads(ok.stdout)["stages"]] == [
        928, 19_488, 93_472]
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    failed = subprocess.run(["chainspec", "build", str(bad)], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and "unknown node type 'conv3d'" in failed.stderr
    assert "Traceback" not in failed.stderr
    usage = subprocess.run([sys.executable, "-m", "chainspec", "build", "--stage"], capture_output=True, text=True,
                           timeout=120)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


def test_a_closed_pipe_stops_quietly(blog_path: Path) -> None:
    """``chainspec build ... | head``: the reader goes away; no traceback, no 'Broken pipe' message."""
    proc = subprocess.Popen(["chainspec", "build", str(blog_path), "--stage", "all", "--format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before it has written anything: it is still importing
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert err == ""


def test_a_closed_pipe_in_process(capsys, blog_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Closed:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["build", str(blog_path), "--format", "json"]) == 1
    assert capsys.readouterr().err == ""



# -- nothing printed can drive a terminal; nothing reaches the user as a traceback ----------------------------------

#: Characters a terminal obeys, or that reorder what it shows: C0 (ESC, BEL, CR), DEL, C1 (CSI), bidi overrides.
CONTROLS = "\x1b\x07\r\x7f\x9b\u202e\u2066"


def assert_inert(text: str) -> None:
    assert not any(c in text for c in CONTROLS), repr(text)
    assert all(c.isprintable() or c == "\n" for c in text), repr(text)


def test_build_table_escapes_the_file_name(capsys, blog_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "net\x1b[2J\u202e\nPlan: ok.yaml"
    path.write_text(blog_path.read_text())
    code, out, err = run(capsys, "build", str(path), "--stage", "0")
    assert code == 0
    assert_inert(out + err)
    assert out.startswith(f"{tmp_path}/net\\x1b[2J\\u202e\\nPlan: ok.yaml: chain 'net', stage 0 of 2")
    assert len(out.splitlines()) == 6  # title, header, row, total, two summary lines: the newline in the name
    # did not add one


@pytest.mark.parametrize("argv", [
    ["build", "missing\x1b[2J\x9b31m.yaml"],
    ["validate", "missing\x1b]0;title\x07.yaml", "--format", "text"],
    ["build", "{blog}", "extra\x1b[2J"],  # argparse's own message
    ["build", "{blog}", "--chain", "net\x1b[2J\u202e"],
    ["types", "--filter", "\x1b[2J\x7f"],
    ["diff", "{blog}", "{blog}", "--chain", "\x1b[2J"],
])
def test_messages_escape_control_characters(capsys, blog_path: Path, argv: list[str]) -> None:
    code, out, err = run(capsys, *[str(blog_path) if a == "{blog}" else a for a in argv])
    assert code in (1, 2)
    assert_inert(out + err)
    assert "\\x1b" in out + err


def test_types_escape_what_a_plugin_describes(capsys, fresh_types: list[str]) -> None:
    from torch import nn

    from chainspec import register_type

    def noisy(width: int = 4) -> nn.Module:
        """Clears the screen\x1b[2J and rings\x07, \u202ereversed."""
        return nn.Identity()

    register_type("noisy_demo_type")(noisy)
    fresh_types.append("noisy_demo_type")
    code, out, _ = run(capsys, "types", "--filter", "noisy_demo")
    assert code == 0 and "noisy_demo_type(width: int = 4)" in out and "\\x1b[2J" in out
    assert_inert(out)
    code, out, _ = run(capsys, "types", "--filter", "noisy_demo", "--format", "json")
    assert_inert(out)
    assert "\x1b[2J" in json.loads(out)["noisy_demo_type"]["description"]


def test_an_unexpected_error_is_one_line_without_a_traceback(capsys, blog_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from chainspec.cli import build

    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("even printing me fails")

    def broken(args: object) -> int:
        raise Weird

    monkeypatch.delenv("CHAINSPEC_DEBUG", raising=False)
    monkeypatch.setattr(build, "run", broken)
    code, out, err = run(capsys, "build", str(blog_path))
    assert code == 1 and out == ""
    assert err.startswith("chainspec: internal error: Weird: Weird\nTIP: rerun with CHAINSPEC_DEBUG=1")


def test_an_error_while_parsing_arguments_is_no_traceback(capsys, blog_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from chainspec.cli import build

    def stage(text: str) -> str:
        raise RuntimeError("\x1b[2Jboom")  # argparse passes on anything but ValueError and TypeError

    monkeypatch.delenv("CHAINSPEC_DEBUG", raising=False)
    monkeypatch.setattr(build, "stage_arg", stage)
    code, _, err = run(capsys, "build", str(blog_path), "--stage", "1")
    assert code == 1 and "chainspec: internal error: RuntimeError: \\x1b[2Jboom" in err
    assert_inert(err)


def test_a_terminal_that_cannot_show_unicode_gets_escapes(capsys, blog_path: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    new = tmp_path / "caf\u00e9.yaml"
    new.write_text(blog_path.read_text().replace("out_ch: 128}", "out_ch: 96}"))
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii", errors="strict"))
    assert main(["diff", str(blog_path), str(new)]) == 1  # prints '→' and 'é', which ASCII cannot hold
    sys.stdout.flush()
    text = raw.getvalue().decode("ascii")
    assert "out_ch 128 \\u2192 96" in text and "caf\\xe9.yaml" in text
    assert "internal error" not in capsys.readouterr().err


def test_schema_check_never_blocks_nor_reads_without_end(capsys, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import time

    from chainspec.cli import _io

    monkeypatch.setattr(_io, "LIMITS", chainspec.Limits(read_timeout=0.2))
    if os.path.exists("/dev/zero"):
        code, _, err = run(capsys, "schema", "--check", "/dev/zero")
        assert code == 1 and "cannot read /dev/zero: it is a character device" in err
    fifo = tmp_path / "schema.json"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # a writer that stays open and idle
    try:
        started = time.perf_counter()
        code, _, err = run(capsys, "schema", "--check", str(fifo))
    finally:
        os.close(writer)
    assert code == 1 and "did not finish within 0.2 seconds" in err and time.perf_counter() - started < 2
    big = tmp_path / "big.json"
    with big.open("wb") as fh:
        fh.truncate(50 * 1024 * 1024)
    code, _, err = run(capsys, "schema", "--check", str(big))
    assert code == 1 and "is stale" in err


def test_streams_are_restored_after_a_command(capsys, blog_path: Path) -> None:
    before = sys.stdout, sys.stderr
    run(capsys, "validate", str(blog_path))
    assert (sys.stdout, sys.stderr) == before


# -- what the README and docs/revisions.md show is what the commands print -------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("doc", ["README.md", "docs/revisions.md"])
def test_the_documented_diff_of_blog_wide_is_what_diff_prints(capsys, monkeypatch: pytest.MonkeyPatch,
                                                              doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```console\n(.*?)```", text, flags=re.DOTALL)
                 if b.startswith("$ chainspec diff specs/blog.yaml specs/blog_wide.yaml"))
    command, _, shown = block.partition("\n")
    monkeypatch.chdir(ROOT)
    code, out, err = run(capsys, *command.split("#")[0].split()[2:])  # after "$ chainspec"
    assert code == 1 and err == ""
    assert out == shown


def test_blog_wide_is_blog_with_b2_widened(blog_path: Path) -> None:
    wide = chainspec.load(ROOT / "specs" / "blog_wide.yaml")
    blog = chainspec.load(blog_path)
    assert wide.chain_names == blog.chain_names and wide.stages == blog.stages
    assert [n.id for n in wide.resolved().nodes] == [n.id for n in blog.resolved().nodes]


# -- --import, --no-project and [tool.chainspec] on every command ------------------------------------------------------

@pytest.mark.parametrize("command", ["build", "validate", "diff", "types", "schema"])
def test_every_command_takes_import_and_no_project(capsys, command: str) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert "--import MODULE" in out and "--no-project" in out
    assert ("--allow-import MODULE" in out) == (command in ("build", "validate", "diff"))


def test_the_hint_for_an_import_path_speaks_the_command_lines_language(capsys, write_spec) -> None:
    path = write_spec("""\
        chainspec: 1
        chains:
          net:
            input_shape: [2]
            nodes: [{id: n, type: "mypkg.layers:Block"}]
        """, "imports.yaml")
    hint = ("import path 'mypkg.layers:Block' is not allowed; pass --allow-import mypkg.layers, or list it in "
            "allow-imports under [tool.chainspec] in your pyproject.toml")
    code, out, _ = run(capsys, "validate", str(path))
    assert code == 1 and hint in out and "allow_imports=[...]" not in out
    for argv in (["build", str(path)], ["diff", str(path), str(path)]):
        code, _, err = run(capsys, *argv)
        assert code in (1, 2) and hint in err
    with pytest.raises(chainspec.SpecError, match=r"the calling code must pass allow_imports=\[\.\.\.\]"):
        chainspec.load(path)  # the library keeps the library's wording


def test_the_readme_table_gives_the_exit_codes_build_returns() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `chainspec build SPEC"))
    assert "1 invalid spec, or a `--chain` or `--stage` it does not have" in row and "2 usage" in row
    assert "`--import MODULE`" in readme and "`--no-project`" in readme
