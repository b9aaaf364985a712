"""The threat model of docs/security.md, claim by claim: no spec and no checkpoint can run code.

Each payload here is first shown to be live (the unsafe loader it targets does
run it), so that a test passing means chainspec refused it, not that the
payload was a dud.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import chainspec
from chainspec import CheckpointError, SpecError
from chainspec._errors import MAX_PART
from chainspec.read.document import MAX_BYTES, MAX_DEPTH, MAX_VALUES
from chainspec.read.expr import MAX_DEPTH as MAX_EXPR_DEPTH
from chainspec.read.expr import MAX_INT, MAX_LENGTH, ExpressionError, evaluate
from chainspec.read.model import MAX_DIM, MAX_STAGES
from chainspec.read.resolve import MAX_COMPOSITE_DEPTH

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "security.md"

SPEC = """\
chainspec: 1
chains:
  net:
    input_shape: [4]
    nodes:
      - {id: fc, type: linear, args: {in_features: 4, out_features: 3}}
"""


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A file that exists only if some payload ran."""
    return tmp_path / "pwned"


# -- YAML: safe_load level, our own walker ------------------------------------------------------------------------

def python_tag_payloads(marker: Path) -> dict[str, str]:
    """YAML documents that run code under yaml.unsafe_load, each creating ``marker``."""
    return {
        "apply-os-system": f"x: !!python/object/apply:os.system ['touch {marker}']\n",
        "apply-subprocess": f"x: !!python/object/apply:subprocess.check_call [[touch, '{marker}']]\n",
        "apply-exec": f"x: !!python/object/apply:builtins.exec [\"open('{marker}', 'w').close()\"]\n",
        "new-open": f"x: !!python/object/new:builtins.open ['{marker}', 'w']\n",
        "verbatim": f"x: !<tag:yaml.org,2002:python/object/apply:os.system> ['touch {marker}']\n",
        "as-key": f"? !!python/object/apply:os.system ['touch {marker}']\n: 1\n",
        "merged": f"base: &b {{x: !!python/object/apply:os.system ['touch {marker}']}}\nother: {{<<: *b}}\n",
    }


@pytest.mark.parametrize("name", sorted(python_tag_payloads(Path("m"))))
def test_python_tags_do_not_run(marker: Path, name: str, tmp_path: Path) -> None:
    payload = python_tag_payloads(marker)[name]
    # The payload is live: PyYAML's unsafe loader runs it.
    with contextlib.suppress(Exception):  # some payloads fail *after* running; running is what matters
        yaml.unsafe_load(payload)
    assert marker.exists(), f"payload {name!r} is a dud"
    marker.unlink()

    text = "chainspec: 1\n" + payload + SPEC.removeprefix("chainspec: 1\n")
    with pytest.raises(SpecError, match=r"unsupported tag|mapping keys must be plain strings"):
        chainspec.loads(text, source="evil.yaml")
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    with pytest.raises(SpecError):
        chainspec.load(path)
    result = subprocess.run([sys.executable, "-m", "chainspec", "validate", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert re.search(r"evil\.yaml:\d+:\d+: .*(unsupported tag|mapping keys must be plain)", result.stdout)
    assert not marker.exists()


def test_only_core_schema_values_come_out_of_the_walker() -> None:
    """Whatever the YAML, the loaded data holds only dicts, lists, str, int, float, bool and None."""
    from chainspec.read.document import parse_yaml

    doc = parse_yaml("a: [1, 2.5, true, null, x, '2001-12-14', 2001-12-14, {b: [~]}]\nc: &c {d: 1}\ne: *c\n")
    assert not doc.problems

    def kinds(value: Any) -> set[type]:
        if isinstance(value, dict):
            return {dict}.union(*(kinds(v) for v in value.values()), *(kinds(k) for k in value))
        if isinstance(value, list):
            return {list}.union(*(kinds(v) for v in value))
        return {type(value)}

    assert kinds(doc.data) <= {dict, list, str, int, float, bool, type(None)}


# -- node types: the registry, and imports only from the caller's allow-list --------------------------------------

@pytest.fixture
def evil_module(tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module on sys.path whose import creates ``marker``, with a layer class in it."""
    name = f"evil_mod_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).touch()
        import torch.nn as nn

        class Layer(nn.Linear):
            def __init__(self, n: int = 4) -> None:
                super().__init__(n, n)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def evil_spec(type_name: str) -> str:
    return SPEC.replace("{id: fc, type: linear, args: {in_features: 4, out_features: 3}}",
                        f"{{id: fc, type: '{type_name}'}}")


@pytest.mark.parametrize("allow", [(), ("evil",), ("evil_mod",), ("os", "torch")])
def test_import_paths_are_refused_outside_the_allow_list(evil_module: str, marker: Path,
                                                         allow: tuple[str, ...]) -> None:
    # "evil" and "evil_mod" are prefixes of the module's name, not the module or a package above it.
    with pytest.raises(SpecError, match=rf"import path '{evil_module}:Layer' is not allowed"):
        chainspec.loads(evil_spec(f"{evil_module}:Layer"), allow_imports=allow)
    assert not marker.exists() and evil_module not in sys.modules


def test_import_paths_in_defaults_are_not_imported_either(evil_module: str, marker: Path) -> None:
    text = SPEC.replace("chains:", f"defaults:\n  '{evil_module}:Layer': {{n: 4}}\nchains:", 1)
    with pytest.raises(SpecError, match="is not allowed"):
        chainspec.loads(text)
    assert not marker.exists() and evil_module not in sys.modules


def test_the_allow_list_is_the_gate(evil_module: str, marker: Path) -> None:
    # The same spec, with the module allowed by the calling code: it is imported and built.
    spec = chainspec.loads(evil_spec(f"{evil_module}:Layer"), allow_imports=[evil_module])
    assert marker.exists()
    assert type(spec.build()["fc"].module).__name__ == "Layer"


@pytest.mark.parametrize("type_name", ["os.system", "os:system", "builtins:eval", "subprocess:Popen",
                                       "torch.nn:Linear", "__import__", "eval"])
def test_unregistered_names_never_resolve(type_name: str) -> None:
    with pytest.raises(SpecError, match=r"unknown node type|is not allowed"):
        chainspec.loads(evil_spec(type_name))


def test_cli_has_no_implicit_allow_list(evil_module: str, marker: Path, tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text(evil_spec(f"{evil_module}:Layer"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    for command in ("validate", "build"):
        result = subprocess.run([sys.executable, "-m", "chainspec", command, str(path)], capture_output=True,
                                text=True, env=env, timeout=60)
        assert result.returncode == 1 and "is not allowed" in result.stdout + result.stderr
    assert not marker.exists()


# -- expressions: a restricted evaluator, never eval ---------------------------------------------------------------

@pytest.mark.parametrize("expr", [
    "x.__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "__builtins__",
    "__import__('os').system('true')",
    "open('/etc/passwd').read()",
    "getattr(x, 'real')",
    "eval('1')",
    "exec('1')",
    "globals()",
    "type(x)",
    "(lambda: 0)()",
    "[c for c in 'ab']",
    "{'a': 1}['a']",
    "x[0]",
    "f'{x}'",
    "(y := 1)",
    "max(*[1, 2])",
    "min([1], key=len)",
    "abs",
    "min.__self__",
    "int.__subclasses__()",
])
def test_expressions_cannot_reach_attributes_or_builtins(expr: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate(expr, {"x": 1})


def test_scope_objects_cannot_be_called_or_inspected() -> None:
    # Even a scope holding a dangerous object (specs only ever put plain data there) cannot use it.
    with pytest.raises(ExpressionError, match="attribute"):
        evaluate("m.sep", {"m": os})
    with pytest.raises(ExpressionError, match="calls are limited"):
        evaluate("m.system('true')", {"m": os})
    with pytest.raises(ExpressionError, match="calls are limited"):
        evaluate("f('true')", {"f": os.system})


def test_loading_a_spec_never_calls_eval_or_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "specs" / "pggan.yaml").read_text()
    chainspec.loads(text)  # registers the built-in types first (their annotations are evaluated once)
    calls: list[str] = []
    real_compile = builtins.compile

    def forbidden(name: str) -> Callable[..., Any]:
        def trap(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} called while loading a spec")
        return trap

    def ast_only(source: Any, filename: Any, mode: str, flags: int = 0, *args: Any, **kwargs: Any) -> Any:
        # ast.parse compiles to a syntax tree only; anything producing a code object is a failure.
        if not flags & ast.PyCF_ONLY_AST:
            calls.append(f"compile({mode})")
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "eval", forbidden("eval"))
    monkeypatch.setattr(builtins, "exec", forbidden("exec"))
    monkeypatch.setattr(builtins, "compile", ast_only)
    spec = chainspec.loads(text, source="again.yaml")
    monkeypatch.undo()
    assert calls == []
    assert spec.stages == 9


def test_expression_bounds() -> None:
    with pytest.raises(ExpressionError, match=f"longer than {MAX_LENGTH}"):
        evaluate("1+" * MAX_LENGTH + "1", {})
    with pytest.raises(ExpressionError, match=f"more than {MAX_EXPR_DEPTH} levels"):
        evaluate("-" * (MAX_EXPR_DEPTH + 1) + "1", {})
    with pytest.raises(ExpressionError, match="too large"):
        evaluate("2**63 * 2", {})
    with pytest.raises(ExpressionError, match="exponent"):
        evaluate("2**65", {})
    assert evaluate("2**62", {}) == 2**62 < MAX_INT


# -- checkpoints: weights_only=True --------------------------------------------------------------------------------

class Payload:
    """Pickles as ``open(marker, 'w')``: an unsafe load creates the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def saved(tmp_path: Path) -> Path:
    spec = chainspec.loads(SPEC, source="net.yaml")
    net = spec.build()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 4)).sum().backward()
    opt.step()  # so the optimizer has state to save
    path = tmp_path / "good.pt"
    chainspec.save_checkpoint(path, spec=spec, chains={"net": net}, stage=0, optimizers={"net": opt})
    return path


def test_checkpoints_load_with_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = saved(tmp_path)
    seen: list[Any] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    chainspec.load_checkpoint(path)
    assert seen == [True]


@pytest.mark.parametrize("where", ["top", "extra", "optimizer-state", "chain-state"])
def test_pickled_code_in_a_checkpoint_does_not_run(tmp_path: Path, marker: Path, where: str) -> None:
    path = saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    if where == "top":
        payload["x"] = Payload(marker)
    elif where == "extra":
        payload["extra"] = {"x": Payload(marker)}
    elif where == "optimizer-state":
        payload["optimizers"]["net"]["state"]["net.fc.weight"]["step"] = Payload(marker)
    else:
        payload["chains"]["net"]["state"]["fc.weight"] = Payload(marker)
    evil = tmp_path / "evil.pt"
    torch.save(payload, evil)
    torch.load(evil, weights_only=False)  # the payload is live
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        chainspec.load_checkpoint(evil)
    assert not marker.exists()


def test_a_checkpoints_spec_is_validated_like_any_spec(tmp_path: Path, marker: Path, evil_module: str) -> None:
    path = saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    for text in (f"x: !!python/object/apply:os.system ['touch {marker}']\n" + SPEC, evil_spec(f"{evil_module}:Layer")):
        payload["spec"]["text"] = text
        torch.save(payload, path)
        with pytest.raises(CheckpointError, match="its spec no longer loads"):
            chainspec.load_checkpoint(path)
    assert not marker.exists() and evil_module not in sys.modules


@pytest.mark.parametrize("field, value, message", [
    ("class", "os.system", "not a torch.optim class"),
    ("class", "torch.optim.__builtins__", "not a torch.optim class"),
    ("dtype", "load", "invalid dtype"),
    ("dtype", "nn", "invalid dtype"),
])
def test_names_in_a_checkpoint_are_looked_up_safely(tmp_path: Path, field: str, value: str, message: str) -> None:
    path = saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    if field == "class":
        payload["optimizers"]["net"]["class"] = value
    else:
        payload["chains"]["net"]["dtype"] = value
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message):
        chainspec.load_checkpoint(path)


# -- the threat model document states the bounds the code enforces ----------------------------------------------

def test_security_doc_states_the_bounds_in_force() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert MAX_INT == 2**63
    for value in (f"{MAX_BYTES:,}", f"{MAX_VALUES:,}", f"{MAX_DEPTH}", f"{MAX_COMPOSITE_DEPTH}", f"{MAX_STAGES:,}",
                  f"{MAX_DIM:,}", f"{MAX_LENGTH}", f"{MAX_EXPR_DEPTH}", "2**63", f"{MAX_PART}", "weights_only=True"):
        assert value in text, f"docs/security.md does not state {value}"


def test_readme_points_to_the_security_doc() -> None:
    assert "docs/security.md" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_test_the_security_doc_cites_exists() -> None:
    cited = set(re.findall(r"`(test_[a-z0-9_]+\*?)`", DOC.read_text(encoding="utf-8")))
    assert len(cited) > 20
    defined = set(re.findall(r"^def (test_\w+)", "\n".join(p.read_text(encoding="utf-8")
                                                         for p in (ROOT / "tests").glob("test_*.py")), re.M))
    missing = {name for name in cited if not any(d.startswith(name.rstrip("*")) if name.endswith("*") else d == name
                                                  for d in defined)}
    assert not missing, f"docs/security.md cites tests that do not exist: {sorted(missing)}"


# -- documented exceptions: what each public entry point raises on bad arguments ------------------------------------

def _documented(fn: Callable[..., Any]) -> tuple[type[BaseException], ...]:
    """The exception types the ``Raises:`` section of ``fn``'s docstring names."""
    import inspect

    import chainspec.build.chain

    doc = inspect.getdoc(fn) or ""
    if "Raises:" not in doc:
        return ()
    section = doc.split("Raises:", 1)[1]
    names = []
    for line in section.splitlines()[1:]:
        if line.strip() and not line.startswith(" "):
            break  # the next section
        match = re.match(r"\s{4}(\w+):", line)
        if match:
            names.append(match.group(1))
    scopes = [chainspec, builtins, chainspec.build.chain]
    return tuple(next(getattr(s, n) for s in scopes if isinstance(getattr(s, n, None), type)) for n in names)


def _bad_calls(tmp_path: Path) -> dict[str, tuple[Callable[..., Any], Callable[[], Any]]]:
    """Label -> (the public callable whose docstring counts, a call of it with bad arguments)."""
    spec = chainspec.loads(SPEC, source="net.yaml")
    net = spec.build()
    grow = chainspec.loads("chainspec: 1\nstages: 3\nchains:\n  net:\n    input_shape: ['${stage + 1}']\n"
                           "    nodes: [{id: a, type: relu}]\n", source="grow.yaml")
    path = tmp_path / "net.yaml"
    path.write_text(SPEC, encoding="utf-8")
    wider = chainspec.loads(SPEC.replace("out_features: 3", "out_features: 5"), source="wider.yaml")
    target = tmp_path / "x.pt"
    calls = {
        "loads(bytearray)": (chainspec.loads, lambda: chainspec.loads(bytearray(SPEC.encode()))),
        "loads(memoryview)": (chainspec.loads, lambda: chainspec.loads(memoryview(SPEC.encode()))),
        "load(limits=Limits(max_bytes=2**62))": (
            chainspec.load, lambda: chainspec.load(path, limits=chainspec.Limits(max_bytes=2**62))),
        "Spec.check([10**6])": (chainspec.Spec.check, lambda: grow.check([10**6])),
        "Spec.check([-1])": (chainspec.Spec.check, lambda: grow.check([-1])),
        "Spec.build(device='nope')": (chainspec.Spec.build, lambda: spec.build(device="nope")),
        "Spec.build_all(device='nope')": (chainspec.Spec.build, lambda: spec.build_all(device="nope")),
        "diff(spec, None)": (chainspec.diff, lambda: chainspec.diff(spec, None)),
        "Plan.apply(chain, optimizer='adam')": (
            chainspec.Plan.apply, lambda: chainspec.diff(spec, wider).apply(spec.build(), "adam")),
        "SpecWatcher(path, None)": (chainspec.SpecWatcher, lambda: chainspec.SpecWatcher(path, None)),
        "SpecWatcher(path, 'net')": (chainspec.SpecWatcher, lambda: chainspec.SpecWatcher(path, "net")),
        "SpecWatcher(missing file, chain)": (
            chainspec.SpecWatcher, lambda: chainspec.SpecWatcher(tmp_path / "missing.yaml", chainspec.Chain())),
        "save_checkpoint(chains={'net': 'x'})": (chainspec.save_checkpoint, lambda: chainspec.save_checkpoint(
            target, spec=spec, chains={"net": "x"}, stage=0)),
        "save_checkpoint(chains=None)": (chainspec.save_checkpoint, lambda: chainspec.save_checkpoint(
            target, spec=spec, chains=None, stage=0)),
        "save_checkpoint(spec=None)": (chainspec.save_checkpoint, lambda: chainspec.save_checkpoint(
            target, spec=None, chains={"net": net}, stage=0)),
        "save_checkpoint(optimizers={'o': 'x'})": (chainspec.save_checkpoint, lambda: chainspec.save_checkpoint(
            target, spec=spec, chains={"net": net}, stage=0, optimizers={"o": "x"})),
        "get_type(123)": (chainspec.get_type, lambda: chainspec.get_type(123)),
        "get_type('torch:relu', allow torch)": (
            chainspec.get_type, lambda: chainspec.get_type("torch:relu", allow_imports=["torch"])),
        "get_type('torch:nope', allow torch)": (
            chainspec.get_type, lambda: chainspec.get_type("torch:nope", allow_imports=["torch"])),
        "is_registered(123)": (chainspec.is_registered, lambda: chainspec.is_registered(123)),
        "list_types(123)": (chainspec.list_types, lambda: chainspec.list_types(123)),
    }
    if not torch.cuda.is_available():
        calls["Spec.build(device='cuda') without CUDA"] = (chainspec.Spec.build, lambda: spec.build(device="cuda"))
    return calls


#: Calls that must raise (a bad argument accepted silently is the bug): the rest may also succeed.
MUST_RAISE = {"Spec.check([10**6])", "Spec.check([-1])", "Spec.build(device='nope')", "Spec.build_all(device='nope')",
              "diff(spec, None)", "Plan.apply(chain, optimizer='adam')", "SpecWatcher(path, None)",
              "SpecWatcher(path, 'net')", "SpecWatcher(missing file, chain)", "save_checkpoint(chains={'net': 'x'})",
              "save_checkpoint(chains=None)", "save_checkpoint(spec=None)", "save_checkpoint(optimizers={'o': 'x'})",
              "get_type(123)", "get_type('torch:relu', allow torch)", "get_type('torch:nope', allow torch)",
              "is_registered(123)", "list_types(123)", "Spec.build(device='cuda') without CUDA"}


BAD_CALLS = [
    "loads(bytearray)", "loads(memoryview)", "load(limits=Limits(max_bytes=2**62))", "Spec.check([10**6])",
    "Spec.check([-1])", "Spec.build(device='nope')", "Spec.build_all(device='nope')", "diff(spec, None)",
    "Plan.apply(chain, optimizer='adam')", "SpecWatcher(path, None)", "SpecWatcher(path, 'net')",
    "SpecWatcher(missing file, chain)", "save_checkpoint(chains={'net': 'x'})", "save_checkpoint(chains=None)",
    "save_checkpoint(spec=None)", "save_checkpoint(optimizers={'o': 'x'})", "get_type(123)",
    "get_type('torch:relu', allow torch)", "get_type('torch:nope', allow torch)", "is_registered(123)",
    "list_types(123)", "Spec.build(device='cuda') without CUDA"]


@pytest.mark.parametrize("label", BAD_CALLS)
def test_bad_arguments_raise_what_the_docstring_documents(tmp_path: Path, label: str) -> None:
    """A wrong argument raises a type its docstring names, or TypeError / ValueError: never AttributeError,
    IndexError, RuntimeError, AssertionError, OSError or MemoryError from somewhere inside."""
    calls = _bad_calls(tmp_path)
    if label not in calls:
        pytest.skip("CUDA is available here")
    owner, call = calls[label]
    allowed = (*_documented(owner), TypeError, ValueError)
    try:
        call()
    except Exception as exc:
        assert isinstance(exc, allowed), (
            f"{label} raised {type(exc).__name__}: {exc}; {owner.__qualname__} documents "
            f"{[t.__name__ for t in _documented(owner)] or 'nothing'} (and TypeError/ValueError for bad arguments)")
        return
    assert label not in MUST_RAISE, f"{label} accepted a bad argument"


def test_the_documented_raises_are_read_from_the_docstrings(tmp_path: Path) -> None:
    assert set(_bad_calls(tmp_path)) <= set(BAD_CALLS) and set(BAD_CALLS) >= MUST_RAISE
    assert _documented(chainspec.load) == (SpecError,)
    assert CheckpointError in _documented(chainspec.load_checkpoint)
    assert KeyError in _documented(chainspec.get_type)


def test_a_full_disk_is_a_checkpoint_error(tmp_path: Path) -> None:
    """A write that fails part-way (here: the file-size limit, as a full disk, hit at many points of the write, in
    the middle of one write call or between two) raises CheckpointError naming the file, keeps the previous
    checkpoint and leaves no temporary file; ``build --save`` exits 1 without a traceback."""
    script = textwrap.dedent(f"""
        import os, resource, signal, sys
        import torch, chainspec
        spec = chainspec.loads({SPEC.replace('[4]', '[64]').replace('in_features: 4', 'in_features: 64')!r})
        net = spec.build()
        target = sys.argv[1]
        chainspec.save_checkpoint(target, spec=spec, chains={{"net": net}}, stage=0)
        before = open(target, "rb").read()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        outcomes = set()
        for limit in range(97, len(before), 89):
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            try:
                chainspec.save_checkpoint(target, spec=spec, chains={{"net": net}}, stage=0)
                outcomes.add("saved")
            except chainspec.CheckpointError as exc:
                outcomes.add(f"CheckpointError naming the file: {{target in str(exc)}}")
            except Exception as exc:
                outcomes.add(f"{{type(exc).__name__}}: {{exc}}")
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            outcomes.add(f"kept: {{open(target, 'rb').read() == before}}")
            outcomes.add(f"left: {{sorted(os.listdir(os.path.dirname(target)))}}")
        print(sorted(outcomes))
    """)
    target = tmp_path / "run" / "last.pt"
    target.parent.mkdir()
    out = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(sorted(["CheckpointError naming the file: True", "kept: True",
                                             "left: ['last.pt']"])), out.stdout


def test_cli_build_save_on_a_full_disk_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "net.yaml"
    path.write_text(SPEC, encoding="utf-8")
    script = ("import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))\n"
              "from chainspec.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    out = subprocess.run([sys.executable, "-c", script, "build", str(path), "--save", str(tmp_path / "c.pt")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "CHAINSPEC_DEBUG": ""})
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr, out.stderr
    assert "c.pt" in out.stderr


@pytest.mark.parametrize("argv, code", [
    (["build", "{spec}", "--chain", "nope"], 1),
    (["build", "{spec}", "--stage", "99"], 1),
    (["build", "{spec}", "--save", "{tmp}/no/such/dir/c.pt"], 1),
    (["diff", "{spec}", "{spec}", "--stage", "x"], 2),
    (["diff", "{spec}", "{spec}", "--stage", "0:9"], 2),
    (["diff", "{spec}", "{spec}", "--chain", "nope"], 2),
    (["diff", "{spec}", "{tmp}/missing.yaml"], 2),
    (["schema", "--output", "{tmp}/no/such/dir/s.json"], 1),
    (["schema", "--check", "{tmp}/missing.json"], 1),
    (["types", "--filter", "\x1b[2J"], 1),
    (["validate", "{tmp}/\x1b[2J.yaml"], 1),
    (["validate", "--deep", "{tmp}/missing.yaml"], 1),
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_cli_subcommands_on_bad_arguments(tmp_path: Path, argv: list[str], code: int) -> None:
    """Every subcommand: the documented exit code, a message, no traceback, nothing raw for the terminal."""
    path = tmp_path / "net.yaml"
    path.write_text(SPEC, encoding="utf-8")
    args = [a.format(spec=path, tmp=tmp_path) for a in argv]
    out = subprocess.run([sys.executable, "-m", "chainspec", *args], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CHAINSPEC_DEBUG": ""})
    text = out.stdout + out.stderr
    assert out.returncode == code, text
    assert text.strip() and "Traceback" not in text and "internal error" not in text, text
    assert not [c for c in text if not c.isprintable() and c != "\n"], repr(text)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
@pytest.mark.parametrize("command, code", [("build", 1), ("diff", 2), ("types", 1), ("schema", 1)])
def test_cli_output_to_a_full_device(tmp_path: Path, command: str, code: int) -> None:
    """stdout on a full disk: a message and the command's error code (diff: 2), not a traceback."""
    path = tmp_path / "net.yaml"
    path.write_text(SPEC, encoding="utf-8")
    other = tmp_path / "other.yaml"
    other.write_text(SPEC.replace("out_features: 3", "out_features: 5"), encoding="utf-8")
    argv = {"build": ["build", str(path), "--stage", "0"], "diff": ["diff", str(path), str(other)],
            "types": ["types"], "schema": ["schema"]}[command]
    with open("/dev/full", "w") as full:
        out = subprocess.run([sys.executable, "-m", "chainspec", *argv], stdout=full, stderr=subprocess.PIPE,
                             text=True, timeout=120, env={**os.environ, "CHAINSPEC_DEBUG": ""})
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr, out.stderr
