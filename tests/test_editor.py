"""Editors: what the real yaml-language-server offers with chainspec's JSON Schema.

Hover on a type name shows that one type; completion offers a node's keys without stray items and
the built-in type names after ``type:``; a per-project schema (``chainspec schema --for SPEC``)
adds the spec's own composite types, with their params as ``args``. Skipped, saying so, where the
server is not installed (``.ci/run`` installs it with npm where npm is present).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chainspec.cli import main
from lsp_client import LanguageServer, server_command

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "chainspec.schema.json"
COMMAND = server_command()
pytestmark = pytest.mark.skipif(COMMAND is None, reason="yaml-language-server is not installed "
                                                        "(npm install --prefix .ci yaml-language-server@1)")

SPEC = """\
# yaml-language-server: $schema={schema}
chainspec: 1
types:
  conv_block:
    description: 3x3 conv and ReLU.
    params: {{in_ch: null, out_ch: null}}
    nodes:
      - {{id: conv, type: conv2d, args: {{in_channels: "${{in_ch}}", out_channels: "${{out_ch}}"}}}}
      - {{id: act, type: relu}}
chains:
  net:
    input_shape: [3, 8, 8]
    nodes:
      - id: b1
        type: conv_block
        args:
          in_ch: 3
      - id: c
        type: conv2d
        args:
          {blank}
      - id: d
        {blank}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LanguageServer]:
    assert COMMAND is not None
    live = LanguageServer(COMMAND, tmp_path_factory.mktemp("editor"))
    yield live
    live.close()


def write(tmp_path: Path, schema: Path) -> Path:
    path = tmp_path / "net.yaml"
    path.write_text(SPEC.format(schema=schema, blank=""), encoding="utf-8")
    return path


def test_hover_on_a_type_name_shows_that_type_alone(server: LanguageServer, tmp_path: Path) -> None:
    uri = server.open(write(tmp_path, SCHEMA))
    text = server.hover(uri, 18, 16)  # on "conv2d" of node c
    assert "2-D convolution" in text and len(text) < 300
    assert "Batch normalisation" not in text  # not the list of every type


def test_completion_offers_keys_and_types_without_stray_items(server: LanguageServer, tmp_path: Path) -> None:
    uri = server.open(write(tmp_path, SCHEMA))
    keys = server.completions(uri, 22, 8)  # a new key of node d
    assert {"type", "args", "stage", "from", "init"} <= set(keys)
    assert "NodeSpec" not in keys and not any(" " in key for key in keys)
    top = server.completions(uri, 1, 0)
    assert "growth" in top and "chainspec spec, format version 1" not in top  # (keys present are not offered)
    args = server.completions(uri, 20, 10)  # the args of node c, a conv2d
    assert {"in_channels", "out_channels", "kernel_size"} <= set(args)
    types = server.completions(uri, 18, 14)
    assert {"conv2d", "linear", "causal_self_attention"} <= set(types)


def test_a_project_schema_offers_the_specs_own_composites(server: LanguageServer, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    schema = tmp_path / "project.schema.json"
    spec = write(tmp_path, schema)
    assert main(["schema", "--for", str(spec), "-o", str(schema)]) == 0  # half written: its composites still count
    assert "the schema lists the 1 composite type(s) whose definitions are valid" in capsys.readouterr().err
    uri = server.open(spec)
    assert "Composite type (this spec): 3x3 conv and ReLU." in server.hover(uri, 14, 16)
    assert "conv_block" in server.completions(uri, 14, 14)
    assert set(server.completions(uri, 16, 10)) >= {"in_ch", "out_ch"}  # the composite's params, as args
