"""Pictures: ``chainspec graph`` and ``chainspec diff --format mermaid|dot|svg``.

Mermaid and dot are checked as text; SVG is drawn by the real Graphviz ``dot`` (skipped, with the
reason, where it is not installed), parsed, and the same picture rendered to PNG, decoded with
Pillow and checked to hold a drawing.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import chainspec
from chainspec.cli import main
from chainspec.draw import chain_graph, plan_graph, to_dot

SPECS = Path(__file__).resolve().parents[1] / "specs"
NEEDS_DOT = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed "
                               "(apt-get install graphviz)")

SKIPS = """\
chainspec: 1
chains:
  net:
    input_shape: [4, 8, 8]
    nodes:
      - {id: enc1, type: conv2d, args: {in_channels: 4, out_channels: 8, padding: 1}}
      - {id: enc2, type: conv2d, args: {in_channels: 8, out_channels: 8, padding: 1}}
      - {id: mid, type: relu}
      - {id: dec, type: conv2d, args: {in_channels: 16, out_channels: 4, padding: 1}, from: [enc1, prev],
         merge: concat}
"""


def test_a_chain_is_drawn_with_shapes_params_and_skip_edges(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    path = tmp_path / "skips.yaml"
    path.write_text(SKIPS)
    assert main(["graph", str(path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith('---\ntitle: "') and "flowchart TD" in text
    assert 'n_enc1["enc1 (conv2d)<br/>[8, 8, 8]<br/>296 params"]' in text
    assert "n_enc1 -. concat .-> n_dec" in text and "n_mid --> n_dec" in text  # prev: the spine
    assert "n_enc2 --> n_mid" in text


def test_residual_blocks_say_so_and_every_resnet_node_is_drawn(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", str(SPECS / "resnet20.yaml"), "--format", "dot"]) == 0
    text = capsys.readouterr().out
    spec = chainspec.load(SPECS / "resnet20.yaml")
    for node in spec.summary("net", stage="final").nodes:
        assert f"{node.id} ({node.type})" in text and f"{node.params:,} params" in text
    assert text.count("+ input (residual)") == 9  # nine basic blocks


def test_every_stage_puts_each_node_in_the_stage_it_joins() -> None:
    spec = chainspec.load(SPECS / "blog.yaml")
    text = to_dot(chain_graph(spec, "net", None))
    for stage, node_id in enumerate(["b1", "b2", "b3"]):
        cluster = re.search(rf"subgraph cluster_stage_{stage} \{{[^}}]*\}}", text)
        assert cluster is not None and f"n_{node_id} [" in cluster.group(0)


def test_a_plan_is_coloured_by_what_happens_to_each_node(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text("chainspec: 1\nchains:\n  n:\n    input_shape: [4]\n    nodes:\n"
                   "      - {id: a, type: linear, args: {in_features: 4, out_features: 4}}\n"
                   "      - {id: b, type: relu}\n      - {id: c, type: tanh}\n"
                   "      - {id: d, type: linear, args: {in_features: 4, out_features: 2}}\n")
    new.write_text("chainspec: 1\nchains:\n  n:\n    input_shape: [4]\n    nodes:\n"
                   "      - {id: c, type: tanh}\n"
                   "      - {id: a, type: linear, args: {in_features: 4, out_features: 4}}\n"
                   "      - {id: e, type: sigmoid}\n"
                   "      - {id: d, type: linear, args: {in_features: 4, out_features: 3}}\n")
    assert main(["diff", str(old), str(new), "--format", "mermaid"]) == 1  # 1: different, as diff(1)
    text = capsys.readouterr().out
    assert re.search(r"classDef insert fill:#c8f7c5.*\n  class n_e insert", text)
    assert re.search(r"classDef remove fill:#f7c5c5.*\n  class n_b remove", text)
    assert re.search(r"classDef replace fill:#ffe2a8.*\n  class n_d replace", text)
    assert "out_features 2 → 3" in text
    moved = [e for e in plan_graph(chainspec.diff(chainspec.load(old), chainspec.load(new))).edges
             if e.kind == "moved"]
    assert [(e.source, e.target) for e in moved] == [("b", "c")]  # c used to follow b


@NEEDS_DOT
def test_svg_is_drawn_by_graphviz_with_every_label_and_renders_to_a_picture(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from PIL import Image  # the examples extra: in the README's test command

    out = tmp_path / "resnet.svg"
    assert main(["graph", str(SPECS / "resnet20.yaml"), "--format", "svg", "-o", str(out)]) == 0
    root = ET.fromstring(out.read_text())
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for node in chainspec.load(SPECS / "resnet20.yaml").summary("net", stage="final").nodes:
        assert f"{node.id} ({node.type})" in texts
    graph = chain_graph(chainspec.load(SPECS / "resnet20.yaml"), "net")
    png = subprocess.run(["dot", "-Tpng"], input=to_dot(graph).encode(), capture_output=True, check=True).stdout
    picture = Image.open(io.BytesIO(png)).convert("L")
    assert picture.width > 100 and picture.height > 1000  # a tall column of 16 boxes
    low, high = picture.getextrema()
    assert low < 100 and high > 200  # dark text and lines on a light ground, not a blank page


def test_svg_without_graphviz_is_a_clear_error(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    assert main(["graph", str(SPECS / "blog.yaml"), "--format", "svg"]) == 2
    err = capsys.readouterr().err
    assert "needs Graphviz's 'dot' program" in err and "--format mermaid needs nothing" in err
    assert "Traceback" not in err
