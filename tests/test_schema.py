"""The published JSON Schema: in sync with the models, valid under the meta-schema, and in agreement with them.

"Agreement" is checked three ways on the same files: the pydantic models (via
``validate_structure`` and the full ``loads``), the ``jsonschema`` library, and
the real ``check-jsonschema`` command line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import chainspec
from chainspec.cli import main
from chainspec.read.schema import SCHEMA_PATH, TYPE_NAME_PATTERN, build_schema, render_schema
from chainspec.read.spec import validate_structure
from chainspec.types.registry import builtin_type_names, register_type, unregister_type

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / SCHEMA_PATH
FIXTURES = Path(__file__).parent / "fixtures"
VALID = sorted((FIXTURES / "valid").glob("*.yaml"))
INVALID = sorted((FIXTURES / "invalid").glob("*.yaml"))
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
#: Module prefixes the valid fixtures name node types under (``module:attr``).
ALLOW = ["chainspec"]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


def schema_errors(validator: jsonschema.Draft202012Validator, text: str) -> list[str]:
    return [e.message for e in validator.iter_errors(yaml.safe_load(text))]


def spec_text(nodes: str, extra: str = "") -> str:
    """A one-chain spec around a flow-style node list."""
    return f"chainspec: 1\n{extra}chains:\n  net:\n    input_shape: [3, 8, 8]\n    nodes: {nodes}\n"


# -- the committed file ----------------------------------------------------------


def test_committed_schema_is_up_to_date() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render_schema(), (
        f"{SCHEMA_PATH} is stale; regenerate it with: chainspec schema --output {SCHEMA_PATH}")


def test_schema_passes_the_meta_schema(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_is_deterministic_and_newline_terminated() -> None:
    first, second = render_schema(), render_schema(build_schema())
    assert first == second
    assert first.endswith("}\n") and not first.endswith("\n\n")
    keys = list(json.loads(first))
    assert keys == sorted(keys)


def test_schema_has_titles_descriptions_and_examples(schema: dict[str, Any]) -> None:
    assert schema["title"] and schema["description"] and schema["examples"]
    for name, model in schema["$defs"].items():
        assert model.get("description"), f"$defs.{name} has no description"
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{name} has no description"
    assert schema["properties"]["chains"]["description"]
    # The schema's own example is a valid spec.
    example = schema["examples"][0]
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(example))
    chainspec.loads(json.dumps(example))


def known_types(schema: dict[str, Any]) -> list[str]:
    """The type names the schema lists, one ``const`` alternative each."""
    return [branch["const"] for branch in schema["$defs"]["NodeTypeName"]["anyOf"] if "const" in branch]


def test_builtin_types_are_listed_one_by_one_with_arg_schemas(schema: dict[str, Any]) -> None:
    *listed, pattern_branch = schema["$defs"]["NodeTypeName"]["anyOf"]
    assert [branch["const"] for branch in listed] == builtin_type_names()
    assert all(branch["description"] for branch in listed)  # an editor's hover shows this one type's words
    assert pattern_branch["pattern"] == TYPE_NAME_PATTERN
    assert pattern_branch["not"] == {"enum": builtin_type_names()}  # so a listed name matches one branch only
    for name in builtin_type_names():
        args = schema["$defs"][f"args_{name}"]
        assert args["type"] == "object" and "required" not in args
    conv = schema["$defs"]["args_conv2d"]["properties"]
    assert {"in_channels", "out_channels", "kernel_size", "padding"} <= set(conv)
    assert schema["properties"]["defaults"]["properties"]["conv2d"] == {"$ref": "#/$defs/args_conv2d"}


def test_runtime_registered_types_are_not_published() -> None:
    @register_type("schema_test_only_type", replace=True)
    def schema_test_only_type(width: int = 1) -> Any:
        """Only for this test."""
        raise NotImplementedError

    try:
        assert "schema_test_only_type" not in render_schema()
    finally:
        unregister_type("schema_test_only_type")


# -- agreement: files the models accept, the schema accepts ------------------------


@pytest.mark.parametrize("path", VALID + SPECS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_valid_files_pass_models_and_schema(path: Path, validator: jsonschema.Draft202012Validator) -> None:
    text = path.read_text(encoding="utf-8")
    model, _doc, problems = validate_structure(text, str(path))
    assert model is not None and not problems, [p.format() for p in problems]
    chainspec.loads(text, source=str(path), allow_imports=ALLOW)  # the whole-document checks too
    assert schema_errors(validator, text) == []


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_structurally_invalid_files_fail_models_and_schema(path: Path,
                                                           validator: jsonschema.Draft202012Validator) -> None:
    text = path.read_text(encoding="utf-8")
    model, _doc, problems = validate_structure(text, str(path))
    assert model is None and problems
    assert schema_errors(validator, text), f"the schema accepts {path.name}, which the models reject"


def test_fixture_sets_are_not_empty() -> None:
    assert len(VALID) >= 5 and len(INVALID) >= 20


def _check_jsonschema(files: list[Path]) -> dict[str, bool]:
    """Run the real check-jsonschema once on ``files``; return each file's verdict (True = valid)."""
    exe = shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is not installed; pip install -e '.[dev]'"
    proc = subprocess.run([exe, "--schemafile", str(SCHEMA_FILE), "--output-format", "json", *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    report = json.loads(proc.stdout)
    bad = {e["filename"] for e in report.get("errors", [])} | {e["filename"] for e in report.get("parse_errors", [])}
    assert proc.returncode == (1 if bad else 0), proc.stdout + proc.stderr
    return {str(f): str(f) not in bad for f in files}


def test_check_jsonschema_cli_gives_the_same_verdicts() -> None:
    verdicts = _check_jsonschema(VALID + SPECS + INVALID)
    wrong = [f for f in VALID + SPECS if not verdicts[str(f)]] + [f for f in INVALID if verdicts[str(f)]]
    assert wrong == [], f"check-jsonschema disagrees on {[f.name for f in wrong]}"


def test_check_jsonschema_accepts_the_schema_itself() -> None:
    exe = shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is not installed; pip install -e '.[dev]'"
    proc = subprocess.run([exe, "--check-metaschema", str(SCHEMA_FILE)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- what the schema checks beyond structure -----------------------------------------


ARG_ERRORS = {
    "unknown arg": "[{id: c, type: conv2d, args: {in_channels: 3, out_channels: 4, kernal_size: 3}}]",
    "wrong arg type": "[{id: c, type: conv2d, args: {in_channels: 3, out_channels: 4, bias: 'no'}}]",
    "arg out of range": "[{id: d, type: dropout, args: {p: 1.5}}]",
    "tuple too long": "[{id: c, type: conv2d, args: {in_channels: 3, out_channels: 4, kernel_size: [3, 3, 3]}}]",
    "not an allowed value": "[{id: u, type: upsample, args: {mode: cubic}}]",
    "args of an argless type": "[{id: r, type: relu, args: {inplace: true}}]",
    "type name with a space": "[{id: c, type: 'conv 2d'}]",
}


@pytest.mark.parametrize("nodes", ARG_ERRORS.values(), ids=ARG_ERRORS.keys())
def test_schema_checks_builtin_args_like_the_registry(nodes: str, validator: jsonschema.Draft202012Validator) -> None:
    text = spec_text(nodes)
    assert schema_errors(validator, text)
    with pytest.raises(chainspec.SpecError):
        chainspec.loads(text)


def test_schema_checks_args_inside_composites_and_defaults(validator: jsonschema.Draft202012Validator) -> None:
    in_part = spec_text("[{id: b, type: blk}]", "types:\n  blk:\n    nodes: [{id: d, type: dropout, args: {q: 1}}]\n")
    in_defaults = spec_text("[{id: d, type: dropout}]", "defaults:\n  dropout: {p: 'high'}\n")
    for text in (in_part, in_defaults):
        assert schema_errors(validator, text)
        with pytest.raises(chainspec.SpecError):
            chainspec.loads(text)


EXPRESSIONS = {
    "whole value": "[{id: c, type: conv2d, args: {in_channels: 3, out_channels: '${ch * 2}'}}]",
    "list element": "[{id: c, type: conv2d, args: {in_channels: 3, out_channels: 4, kernel_size: ['${k}', 1]}}]",
    "whole list": "[{id: c, type: conv2d, args: {in_channels: 3, out_channels: 4, kernel_size: '${[k, k]}'}}]",
    "literal arg": "[{id: u, type: upsample, args: {mode: '${mode}'}}]",
    "bool arg": "[{id: c, type: conv2d, args: {in_channels: 3, out_channels: 4, bias: '${k > 1}'}}]",
}


@pytest.mark.parametrize("nodes", EXPRESSIONS.values(), ids=EXPRESSIONS.keys())
def test_expressions_are_accepted_wherever_a_value_goes(nodes: str,
                                                         validator: jsonschema.Draft202012Validator) -> None:
    text = spec_text(nodes, "vars: {ch: 4, k: 3, mode: nearest}\n")
    assert schema_errors(validator, text) == []
    chainspec.loads(text)


def test_registered_and_plugin_style_types_validate(validator: jsonschema.Draft202012Validator) -> None:
    @register_type("schema_test_block", replace=True)
    def schema_test_block(width: int = 4, Scale: float = 1.0) -> Any:
        """Stands in for a user's or a plugin's type."""
        raise NotImplementedError

    try:
        text = spec_text("[{id: u, type: schema_test_block, args: {width: 8, Scale: 2.0}}, {id: act, type: relu}]")
        assert schema_errors(validator, text) == []
        chainspec.loads(text)
    finally:
        unregister_type("schema_test_block")
    for name in ("mypkg.layers:Block", "pkg:Outer.Inner", "Some_Type2"):
        assert schema_errors(validator, spec_text(f"[{{id: a, type: '{name}'}}]")) == [], name
    for name in ("a:b:c", "1abc", "mod:", "conv-2d", ""):
        assert schema_errors(validator, spec_text(f"[{{id: a, type: '{name}'}}]")), name


# -- the command --------------------------------------------------------------------


def test_schema_command_prints_the_schema(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["schema"]) == 0
    assert capfdbinary.readouterr().out.decode("utf-8") == render_schema()


def test_schema_command_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.json"
    assert main(["schema", "--output", str(path)]) == 0
    assert main(["schema", "--check", str(path)]) == 0
    stale = json.loads(path.read_text(encoding="utf-8"))
    stale["$defs"].pop("args_conv2d")
    path.write_text(json.dumps(stale, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["schema", "--check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path} is stale" in err and f"chainspec schema --output {path}" in err
    assert main(["schema", "--check", str(tmp_path / "missing.json")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_schema_check_defaults_to_the_committed_path() -> None:
    proc = subprocess.run([sys.executable, "-m", "chainspec", "schema", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert SCHEMA_PATH in proc.stderr


# -- editors --------------------------------------------------------------------------


MODELINE = "# yaml-language-server: $schema=../schemas/chainspec.schema.json"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_spec_names_the_schema_on_its_first_line(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == MODELINE, f"{path.name} must start with {MODELINE!r} for editor completion"
    assert (path.parent / "../schemas/chainspec.schema.json").resolve() == SCHEMA_FILE


def test_installed_schema_lists_registered_types_with_their_args() -> None:
    """The published schema knows chainspec's own types only; ``--installed`` adds the process's own.

    A built-in replaced with ``register_type(..., replace=True)`` takes other args,
    which the published schema rejects (a documented difference) and the
    installed schema accepts and checks.
    """
    from chainspec.types.registry import get_type

    original = get_type("dropout")

    @register_type("schema_test_widget", replace=True)
    def schema_test_widget(width: int = 4) -> Any:
        """A user's type."""
        raise NotImplementedError

    @register_type("dropout", replace=True)
    def dropout(rate: float = 0.5) -> Any:
        """A user's own dropout."""
        raise NotImplementedError

    try:
        installed = jsonschema.Draft202012Validator(build_schema(installed=True))
        jsonschema.Draft202012Validator.check_schema(installed.schema)
        published = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
        assert "schema_test_widget" in known_types(installed.schema)
        replaced = spec_text("[{id: d, type: dropout, args: {rate: 0.3}}, {id: w, type: schema_test_widget}]")
        chainspec.loads(replaced)
        assert schema_errors(installed, replaced) == []
        assert schema_errors(published, replaced)  # the published file cannot know of the replacement
        for bad in ("[{id: w, type: schema_test_widget, args: {width: 'wide'}}]",
                    "[{id: d, type: dropout, args: {p: 0.3}}]"):
            assert schema_errors(installed, spec_text(bad)), bad
            with pytest.raises(chainspec.SpecError):
                chainspec.loads(spec_text(bad))
    finally:
        unregister_type("schema_test_widget")
        chainspec.types.registry._REGISTRY["dropout"] = original
    assert render_schema() == SCHEMA_FILE.read_text(encoding="utf-8")  # the built-in dropout is back


def test_schema_command_installed_flag(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["schema", "--installed"]) == 0
    schema = json.loads(capfdbinary.readouterr().out.decode("utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(builtin_type_names()) <= set(known_types(schema))


def test_a_project_schema_lists_the_specs_composites_even_half_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "net.yaml"
    valid = ("chainspec: 1\ntypes:\n  block:\n    description: conv and relu.\n    params: {width: null}\n"
             "    nodes:\n      - {id: c, type: conv2d, args: {in_channels: 3, out_channels: '${width}'}}\n"
             "chains:\n  net:\n    input_shape: [3, 8, 8]\n    nodes:\n"
             "      - {id: b, type: block, args: {width: 4}}\n")
    spec.write_text(valid, encoding="utf-8")
    out = tmp_path / "project.schema.json"
    assert main(["schema", "--for", str(spec), "-o", str(out)]) == 0
    assert capsys.readouterr().err == ""  # a valid spec: nothing to say
    project = json.loads(out.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(project)
    assert "block" in known_types(project)
    assert project["$defs"]["args_block"]["properties"] == {"width": {"description": "required"}}
    validator = jsonschema.Draft202012Validator(project)
    assert not schema_errors(validator, valid)
    assert schema_errors(validator, valid.replace("width: 4", "depth: 4"))  # the composite's params are its args
    # Being edited: a broken composite and a node without a type. The valid composite is still listed.
    spec.write_text(valid.replace("chains:", "  broken:\n    nodes: 7\nchains:") + "      - {id: half}\n",
                    encoding="utf-8")
    assert main(["schema", "--for", str(spec), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "problem(s) ('chainspec validate' lists them)" in err and "1 composite type(s)" in err
    assert "(1 left out)" in err
    project = json.loads(out.read_text(encoding="utf-8"))
    assert "block" in known_types(project) and "broken" not in known_types(project)
