"""The validators written out as plain data (``read/records.py``, ``types/argschemas.py``) are pydantic's own.

Reading a spec runs them straight on pydantic-core instead of building the pydantic models
(see ``chainspec.read.codegen``). These tests hold them to the models: the committed files are
what the models make now, they accept and refuse exactly what the models do with the same
errors, and where pydantic-core refuses a written schema chainspec makes it from the models instead.
"""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic_core import SchemaValidator, ValidationError

import chainspec
from chainspec._quickcheck import Unsure, validate_quickly
from chainspec.read import codegen, records
from chainspec.read.model import SpecModel
from chainspec.read.spec import structure_validator
from chainspec.types import argschemas
from chainspec.types.registry import NodeType, builtin_type_names, get_type

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
DOCUMENTS = sorted((FIXTURES / "valid").glob("*.yaml")) + sorted((FIXTURES / "invalid").glob("*.yaml")) \
    + sorted((ROOT / "specs").glob("*.yaml"))


def _errors(validate: Any, data: Any) -> list[dict[str, Any]] | None:
    """pydantic-core's errors for ``data``, without the union-tag parts of their locations (a record's class
    name where the model's is), or None when it is valid."""
    try:
        validate(data)
    except ValidationError as exc:
        tags = {name: cls.__name__ for cls, name in codegen.MODELS.items()}
        return [{**err, "loc": tuple(tags.get(part, part) for part in err["loc"])}
                for err in exc.errors(include_url=False)]
    return None


def _plain(value: Any) -> Any:
    """A record, a model or a container of them as plain dicts and lists, by attribute name."""
    if isinstance(value, records.Record):
        return {key: _plain(item) for key, item in vars(value).items()}
    if isinstance(value, argschemas.Args):
        return {"fields": _plain(vars(value)), "extra": _plain(value.__pydantic_extra__)}
    if hasattr(value, "model_dump"):
        return {key: _plain(getattr(value, key)) for key in type(value).model_fields}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


# -- the committed files are current ------------------------------------------------


def test_the_generated_files_are_what_the_models_make_now() -> None:
    assert codegen.stale() == [], "run: python -m chainspec.read.codegen"
    assert codegen.main(["--check"]) == 0


def test_check_names_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "chainspec" / "read" / "records.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("# an older revision\n", encoding="utf-8")
    current = tmp_path / "chainspec" / "types" / "argschemas.py"
    current.parent.mkdir(parents=True)
    current.write_text(codegen.argschemas_source(), encoding="utf-8")
    monkeypatch.setattr(codegen, "PACKAGE", tmp_path / "chainspec")
    monkeypatch.setattr(codegen, "RECORDS_PATH", stale)
    monkeypatch.setattr(codegen, "ARGSCHEMAS_PATH", current)
    assert codegen.main(["--check"]) == 1
    assert "chainspec/read/records.py is not current" in capsys.readouterr().out


def test_the_records_have_the_models_fields_and_keys() -> None:
    for model, name in codegen.MODELS.items():
        record = getattr(records, name)
        assert list(record.__annotations__) == list(model.model_fields), name
        keys = [info.validation_alias or field for field, info in model.model_fields.items()]
        assert list(record.KEYS) == keys, name
    assert "from" in records.NodeData.KEYS and "copy" in records.CopyData.KEYS


# -- the spec format: the same verdicts, values and errors as the models -------------


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_structure_validator_agrees_with_the_models(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    ours, theirs = _errors(structure_validator().validate_python, data), _errors(SpecModel.model_validate, data)
    assert ours == theirs
    if ours is None:
        assert _plain(structure_validator().validate_python(data)) == _plain(SpecModel.model_validate(data))


@pytest.mark.parametrize("data", [
    {"chainspec": 1, "chains": {"n": {"input_shape": ["x", 0], "nodes": [
        {"id": "1a", "type": "relu", "init": {"copy": "b", "x": 1}, "from": "a", "stage": True}]}}, "extra": 1},
    {"chainspec": 1, "chains": {"n": {"input_shape": [2], "nodes": [{"id": "a", "type": "", "tie": {"w": "x"}}]}},
     "growth": {"unit": "epochs", "per_stage": [{"stage": -1, "fade": 1.5}]}, "types": {"t": {"nodes": []}}},
    {"chainspec": 1, "vars": {"bad-name": 1, "ok": [1]}, "chains": {}, "stages": 1001, "defaults": {"linear": 3}},
], ids=["nodes", "growth-and-types", "top"])
def test_the_same_errors_as_the_models(data: dict[str, Any]) -> None:
    ours = _errors(structure_validator().validate_python, data)
    assert ours is not None and ours == _errors(SpecModel.model_validate, data)


def test_a_loaded_spec_holds_records_and_builds_its_model_on_demand() -> None:
    spec = chainspec.load(ROOT / "specs" / "pggan.yaml")
    assert isinstance(spec.data, records.SpecData)
    assert isinstance(spec.data.chains["generator"].nodes[0], records.NodeData)
    assert isinstance(spec.model, SpecModel)
    assert _plain(spec.model) == _plain(spec.data)


def test_records_are_read_only() -> None:
    node = chainspec.load(ROOT / "specs" / "blog.yaml").data.chains["net"].nodes[0]
    with pytest.raises(AttributeError, match="read-only"):
        node.id = "other"  # type: ignore[misc]
    assert repr(node).startswith("NodeData(id=")


def test_records_copy_and_pickle_as_values() -> None:
    data = chainspec.load(ROOT / "specs" / "pggan.yaml").data
    deep = copy.deepcopy(data)
    assert deep == data and deep is not data
    assert deep.chains["generator"].nodes[0].args is not data.chains["generator"].nodes[0].args
    assert pickle.loads(pickle.dumps(data)) == data and copy.copy(data) == data


def test_an_unknown_key_hint_names_the_keys_as_written() -> None:
    text = "chainspec: 1\nchains: {net: {input_shape: [2], nodes: [{id: a, type: relu, fron: [input]}]}}"
    with pytest.raises(chainspec.SpecError) as err:
        chainspec.loads(text)
    assert err.value.problems[0].hint == "did you mean 'from'?"


# -- the built-in types' arguments --------------------------------------------------

ARGS = [{}, {"in_features": 4, "out_features": 2}, {"in_features": "4", "out_features": 2.0},
        {"in_features": 0, "out_features": 2**40}, {"kernel_size": (3, 3), "in_channels": 1, "out_channels": 1},
        {"kernel_size": (3, "x"), "padding": "same"}, {"p": 1.5}, {"p": float("nan")}, {"eps": -1.0},
        {"scale_factor": 0.0}, {"shape": (-1, 4)}, {"shape": (-2,)}, {"negative_slope": True},
        {"mode": "nearest"}, {"num_features": 8, "affine": 1}]


@pytest.mark.parametrize("name", builtin_type_names())
def test_each_builtin_args_validator_agrees_with_its_model(name: str) -> None:
    node_type = get_type(name)
    generated = SchemaValidator(argschemas.ARG_SCHEMAS[name]).validate_python
    model = node_type.args_model.model_validate
    for args in ARGS:
        known = {key: value for key, value in args.items() if key in node_type._names or node_type.accepts_extra}
        assert _errors(generated, known) == _errors(model, known), (name, args)
        if _errors(model, known) is None:
            assert vars(generated(known)) == dict(model(known))


def test_a_builtin_type_validates_with_its_generated_validator() -> None:
    linear = get_type("linear")
    assert linear._validator.validate_python({"in_features": 1, "out_features": 1}).__class__ is argschemas.Args
    assert linear.validate({"in_features": 0, "out_features": 1})[1][0][:2] == (
        "in_features", "input should be greater than or equal to 1, got 0")


# -- the fast path: what it accepts, pydantic-core accepts the same way ---------------


def _quick(schema: dict[str, Any], data: Any) -> Any:
    try:
        return validate_quickly(schema, data)
    except Unsure:
        return Unsure


def _agrees(schema: dict[str, Any], data: Any) -> bool:
    """The fast path accepted ``data`` (True) or left it to pydantic-core (False); either way it did not differ."""
    quick = _quick(schema, data)
    if quick is Unsure:
        return False
    exact = SchemaValidator(schema).validate_python(data)  # raises if the fast path accepted an invalid document
    assert _plain(quick) == _plain(exact) and type(quick) is type(exact)
    assert [type(v) for v in _leaves(quick)] == [type(v) for v in _leaves(exact)]  # 3.0 where pydantic gives 3.0
    return True


def _leaves(value: Any) -> list[Any]:
    plain = _plain(value)
    if isinstance(plain, dict):
        return [leaf for item in plain.values() for leaf in _leaves(item)]
    if isinstance(plain, (list, tuple)):
        return [leaf for item in plain for leaf in _leaves(item)]
    return [plain]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_fast_path_takes_every_valid_document_and_no_invalid_one(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    valid = _errors(SpecModel.model_validate, data) is None
    assert _agrees(records.SPEC_SCHEMA, data) is valid


#: Values a YAML document can hold, the awkward ones included.
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.integers(), st.floats(), st.just(1.0),
                    st.text(max_size=6), st.sampled_from(["relu", "fresh", "prev", "${stage}", " ${a} ", "a\n",
                                                          "${a}\x1c", "copy", "h1", "float32", "images", "a.b"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["id", "type", "copy", "x", "from", "stage", "a"]),
                                                 inner, max_size=3)), max_leaves=6)
BASES = [yaml.safe_load(path.read_text(encoding="utf-8")) for path in DOCUMENTS
         if path.parent.name != "invalid" and path.name in ("pggan_tiny.yaml", "gpt_tiny.yaml", "composites.yaml",
                                                             "expressions.yaml", "two_chains.yaml")]


def _places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a document: where a mutation can land."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _places(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _places(item, (*path, i))
    return found


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(BASES))), st.data(), VALUES)
def test_the_fast_path_never_accepts_what_pydantic_core_refuses(base: int, data: st.DataObject, value: Any) -> None:
    document = copy.deepcopy(BASES[base])
    path = data.draw(st.sampled_from(_places(document)[1:]))
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    if isinstance(parent, dict) and data.draw(st.booleans()):
        parent[data.draw(st.sampled_from(["stage", "from", "init", "tie", "until", "merge", "zz", "copy"]))] = value
    else:
        parent[path[-1]] = value
    _agrees(records.SPEC_SCHEMA, document)


@pytest.mark.parametrize("name", builtin_type_names())
def test_the_fast_path_checks_builtin_args_as_pydantic_core_does(name: str) -> None:
    node_type = get_type(name)
    taken = 0
    for args in [*ARGS, {"in_features": 3, "out_features": 1, "bias": False}, {"p": 0}, {"negative_slope": 1},
                 {"shape": (2, -1, 3)}, {"kernel_size": 3, "in_channels": 2, "out_channels": 4, "padding": (1, 1)}]:
        sizes = {arg.name: 4 for arg in node_type.args if arg.required}  # every required argument is a size
        known = {key: value for key, value in {**sizes, **args}.items()
                 if key in node_type._names or node_type.accepts_extra}
        taken += _agrees(argschemas.ARG_SCHEMAS[name], known)
    assert taken, f"no argument set of {name} took the fast path"


def test_a_union_takes_the_exact_match() -> None:
    schema = {"type": "union", "choices": [{"type": "float"}, {"type": "int"}]}
    assert type(validate_quickly(schema, 3)) is int and type(SchemaValidator(schema).validate_python(3)) is int
    assert validate_quickly({"type": "float"}, 3) == 3.0 and type(validate_quickly({"type": "float"}, 3)) is float
    with pytest.raises(Unsure):  # past a float's range: pydantic-core decides
        validate_quickly({"type": "float"}, 10**400)
    with pytest.raises(Unsure):  # two exact matches: pydantic-core decides
        validate_quickly({"type": "union", "choices": [{"type": "int"}, {"type": "int", "ge": 0}]}, 1)


# -- a written schema pydantic-core refuses: from the models -----------------------


def test_a_refused_schema_is_made_from_the_models(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = {"type": "no-such-kind"}  # what a pydantic-core that no longer reads the written schema does
    monkeypatch.setattr(records, "SPEC_SCHEMA", refused)
    monkeypatch.setitem(argschemas.ARG_SCHEMAS, "linear", refused)
    structure_validator.cache_clear()
    try:
        spec = chainspec.load(ROOT / "specs" / "pggan.yaml")
        assert isinstance(spec.data, records.SpecData)
        with pytest.raises(chainspec.SpecError, match="unknown key 'nodez'"):
            chainspec.loads("chainspec: 1\nchains: {n: {input_shape: [2], nodez: []}}")
        linear = get_type("linear")
        fresh = NodeType(linear.name, linear.factory, linear.args, linear.description, "builtin")
        assert fresh._validator is fresh.args_model.__pydantic_validator__
        assert fresh.validate({"in_features": 0, "out_features": 1}) == linear.validate(
            {"in_features": 0, "out_features": 1})
    finally:
        structure_validator.cache_clear()


# -- what reading a spec imports ---------------------------------------------------


@pytest.mark.parametrize(("spec", "imported"), [
    ("specs/pggan.yaml", []),
    ("tests/fixtures/invalid/node_unknown_key.yaml", ["pydantic_core"]),
])
def test_validate_imports_what_the_verdict_needs(spec: str, imported: list[str]) -> None:
    """A valid spec is validated without pydantic-core; an invalid one takes pydantic-core for its errors. Neither
    builds a pydantic model (nor imports torch)."""
    watched = ("pydantic_core", "pydantic.main", "pydantic.fields", "torch")
    code = ("import sys\nfrom chainspec.cli import main\n"
            f"main(['validate', '-q', {spec!r}])\n"
            f"print(sorted(m for m in sys.modules if m in {watched!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == repr(imported), out.stdout + out.stderr
