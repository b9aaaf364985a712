"""Checkpoints that rebuild exactly the chain in force, however many live revisions it went through.

A checkpoint stores the *spec text* of the revision in force and the stage,
not pickled modules: loading re-validates the text, rebuilds each chain at
that stage and loads its state, so a checkpoint never runs code from the file
(``torch.load(weights_only=True)``). Optimizer state is stored by parameter
*name* (``chain.node.weight``), not by position, because live revisions
reorder and regroup parameters. Writes go to a temporary file in the same
directory, are flushed to disk, then renamed over the target: a crash leaves
either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._chain import Chain
from ._errors import CheckpointError, SpecError
from ._spec import Spec, loads

#: Marks a file as a chainspec checkpoint, and its layout version.
FORMAT = "chainspec-checkpoint"
VERSION = 1

OptimizerFactory = Callable[..., Optimizer]


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns: the revision in force and everything trained under it.

    Attributes:
        spec: the spec of the revision in force when the checkpoint was saved.
        stage: the growth stage.
        alpha: the fade-in weight, if one was saved.
        chains: the rebuilt chains, by name, with their weights, buffers and train/eval modes.
        optimizers: the rebuilt optimizers, by the names they were saved under.
        extra: whatever the caller saved alongside (tensors, numbers, strings, lists, dicts).
        rng_state: torch's CPU RNG state at save time; :meth:`restore_rng` puts it back.

    Example:
        >>> ckpt = load_checkpoint("run/last.pt")  # doctest: +SKIP
        >>> ckpt.restore_rng()  # doctest: +SKIP
        >>> net, opt = ckpt.chains["net"], ckpt.optimizers["net"]  # doctest: +SKIP
    """

    spec: Spec
    stage: int
    alpha: float | None
    chains: dict[str, Chain]
    optimizers: dict[str, Optimizer] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    rng_state: Tensor | None = None

    def restore_rng(self) -> None:
        """Set torch's CPU RNG to its state at save time (needed for a bit-exact resume with dropout)."""
        if self.rng_state is not None:
            torch.set_rng_state(self.rng_state)


# -- save -------------------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike[str], *, spec: Spec, chains: Mapping[str, Chain], stage: int,
                    optimizers: Mapping[str, Optimizer] | None = None, alpha: float | None = None,
                    extra: Mapping[str, Any] | None = None) -> None:
    """Write a checkpoint atomically (a temporary file in the same directory, then a rename).

    Args:
        path: where to write.
        spec: the spec of the revision in force (after live revisions: the last one applied).
        chains: the chains, by their names in the spec.
        stage: the growth stage they are at.
        optimizers: optimizers to save, by any name; each may train parameters of any of the chains.
        alpha: the fade-in weight of a growing model.
        extra: anything else to keep (dicts, lists, tuples, strings, numbers, booleans, None, tensors).

    Raises:
        CheckpointError: a chain does not match the spec at ``stage``, an optimizer trains a parameter
            outside the chains, or ``extra`` holds something a safe load cannot read back.

    Example:
        >>> save_checkpoint("run/last.pt", spec=spec, chains={"net": net}, stage=2,  # doctest: +SKIP
        ...                 optimizers={"net": opt})
    """
    try:
        stage = spec.stage_index(stage)
    except ValueError as exc:
        raise CheckpointError(f"cannot save checkpoint {os.fspath(path)}: {exc}") from None
    names: dict[int, str] = {}
    payload_chains = {}
    for name, chain in chains.items():
        _check_matches(spec, name, chain, stage)
        payload_chains[name] = _chain_payload(chain)
        for param_name, param in chain.named_parameters():
            names.setdefault(id(param), f"{name}.{param_name}")
    payload_optimizers = {key: _optimizer_payload(key, opt, names) for key, opt in (optimizers or {}).items()}
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    payload = {"format": FORMAT, "version": VERSION, "spec": {"text": spec.text, "source": spec.source},
               "stage": stage, "alpha": None if alpha is None else float(alpha), "chains": payload_chains,
               "optimizers": payload_optimizers, "extra": extra, "rng": torch.get_rng_state()}
    _atomic_save(payload, os.fspath(path))


def _check_matches(spec: Spec, name: str, chain: Chain, stage: int) -> None:
    try:
        expected = [node.id for node in spec.resolved(name).at(stage)]
    except ValueError as exc:
        raise CheckpointError(f"cannot save chain {name!r}: {exc}") from None
    actual = [node.id for node in chain]
    advice = "pass the spec and stage of the revision in force (chain.spec, chain.stage)"
    if actual != expected:
        raise CheckpointError(
            f"cannot save chain {name!r}: it has nodes {_ids(actual)} but {spec.source} at stage {stage} has "
            f"{_ids(expected)} ({_id_differences(actual, expected)}); {advice}")
    # Same ids, but do the weights have the spec's shapes? A checkpoint that cannot be loaded back is
    # worse than none, so refuse it now (on the meta device: nothing is allocated).
    try:
        reference = spec.build(name, stage=stage, device="meta").state_dict()
    except SpecError as exc:
        raise CheckpointError(f"cannot save chain {name!r}: {spec.source} does not build at stage {stage}:\n"
                              f"{exc}") from None
    mismatched = state_mismatch(chain.state_dict(), reference)
    if mismatched:
        raise CheckpointError(f"cannot save chain {name!r}: its weights do not fit {spec.source} at stage {stage}: "
                              f"{'; '.join(mismatched)}; {advice}")


def _id_differences(actual: list[str], expected: list[str]) -> str:
    """Which ids one list has and the other lacks, or that only their order differs."""
    actual_ids, expected_ids = set(actual), set(expected)  # once: the lists can have thousands of ids
    extra = [i for i in actual if i not in expected_ids]
    missing = [i for i in expected if i not in actual_ids]
    parts = []
    if extra:
        parts.append(f"not in the spec: {', '.join(extra)}")
    if missing:
        parts.append(f"missing from the chain: {', '.join(missing)}")
    if not parts:
        first = next(i for i, (a, b) in enumerate(zip(actual, expected, strict=True)) if a != b)
        parts.append(f"same nodes in another order, from position {first}: {actual[first]} where the spec has "
                     f"{expected[first]}")
    return "; ".join(parts)


def state_mismatch(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """The nodes whose state entries differ in name or shape, one readable item per node.

    Keys are ``node.rest`` (a chain's state_dict); ``actual`` is what is there, ``expected`` what the
    spec builds.

    Example:
        >>> here = {"a.w": torch.zeros(2), "b.w": torch.zeros(1)}
        >>> state_mismatch(here, {"a.w": torch.zeros(3), "c.w": torch.zeros(1)})
        ['a (a.w: [2], the spec has [3])', 'c (missing)', 'b (not in the spec)']
    """
    def by_node(state: Mapping[str, Any]) -> dict[str, dict[str, list[int]]]:
        out: dict[str, dict[str, list[int]]] = {}
        for key, value in state.items():
            out.setdefault(key.partition(".")[0], {})[key] = list(getattr(value, "shape", []))
        return out

    have, want = by_node(actual), by_node(expected)
    items = []
    for node in [*want, *(n for n in have if n not in want)]:
        if node not in have:
            items.append(f"{node} (missing)")
        elif node not in want:
            items.append(f"{node} (not in the spec)")
        elif have[node] != want[node]:
            diffs = [f"{k}: {have[node][k]}, the spec has {want[node][k]}" for k in want[node]
                     if k in have[node] and have[node][k] != want[node][k]]
            diffs += [f"{k} missing" for k in want[node] if k not in have[node]]
            diffs += [f"{k} not in the spec" for k in have[node] if k not in want[node]]
            items.append(f"{node} ({', '.join(diffs)})")
    return items


def _ids(ids: list[str]) -> str:
    return "[" + ", ".join(ids[:8]) + (f", ... ({len(ids)} in all)" if len(ids) > 8 else "") + "]"


def _chain_payload(chain: Chain) -> dict[str, Any]:
    first = next((t for t in (*chain.parameters(), *chain.buffers()) if t.is_floating_point()), None)
    return {"state": chain.state_dict(), "training": chain.training,
            "modes": [name for name, m in chain.named_modules() if name and m.training != chain.training],
            "frozen": [name for name, p in chain.named_parameters() if not p.requires_grad],
            "dtype": str(first.dtype).removeprefix("torch.") if first is not None else None,
            "device": str(first.device) if first is not None else "cpu"}


def _optimizer_payload(key: str, optimizer: Optimizer, names: dict[int, str]) -> dict[str, Any]:
    packed = optimizer.state_dict()
    # state_dict() numbers parameters in group order; map those numbers to names.
    index_to_name: dict[int, str] = {}
    index = 0
    seen: set[int] = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in seen:
                continue
            seen.add(id(p))
            if id(p) not in names:
                raise CheckpointError(f"cannot save optimizer {key!r}: it trains a parameter of shape "
                                      f"{list(p.shape)} that is in none of the chains saved; save every chain "
                                      "it trains, or leave it out")
            index_to_name[index] = names[id(p)]
            index += 1
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index_to_name[i] for i in g["params"]]}
              for g in packed["param_groups"]]
    payload = {"class": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}", "param_groups": groups,
               "state": {index_to_name[i]: s for i, s in packed["state"].items()}}
    _check_plain(payload, f"optimizers[{key!r}]")
    return payload


_PLAIN = (str, int, float, bool, type(None), Tensor, torch.Size)


def _check_plain(value: Any, where: str) -> None:
    """Refuse what ``torch.load(weights_only=True)`` could not read back, naming where it is."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"{where} has a key {key!r} of type {type(key).__name__}; use strings")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise CheckpointError(f"{where} is a {type(value).__name__}, which a checkpoint cannot hold; store "
                              "dicts, lists, tuples, strings, numbers, booleans, None and tensors "
                              "(checkpoints load with torch.load(weights_only=True))")


def _atomic_save(payload: dict[str, Any], path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # a full disk, a quota: say which file, and that nothing was lost
            raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}; "
                                  "the previous checkpoint there, if any, is unchanged") from exc
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the platform allows it
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    remove_stale_temporaries(path)


#: A temporary file left by a dead writer is removed once it has not been written to for this long.
STALE_AFTER_S = 60.0


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[str]:
    """Delete the temporary files that writes of checkpoint ``path`` killed mid-way left behind.

    :func:`save_checkpoint` writes to ``.NAME.PID-XXXX.tmp`` beside ``path`` and renames it over ``path``;
    a writer killed with SIGKILL (or a power cut) leaves that file behind. It is never read, and each
    successful save calls this to delete those of writers that are no longer running on this machine
    and have not written for ``STALE_AFTER_S`` seconds (the age spares a writer on another machine
    sharing the directory). Without ``os.kill`` probing (Windows) nothing is deleted.

    Returns:
        The paths deleted.

    Example:
        >>> remove_stale_temporaries("run/last.pt")  # doctest: +SKIP
        ['run/.last.pt.4242-k3j2_x.tmp']
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(rf"\.{re.escape(os.path.basename(path))}\.(\d+)-[^/]*\.tmp")
    removed: list[str] = []
    if os.name != "posix":
        return removed
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        match = pattern.fullmatch(name)
        if match is None or int(match.group(1)) == os.getpid() or _running(int(match.group(1))):
            continue
        stale = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            if now - os.lstat(stale).st_mtime >= STALE_AFTER_S:
                os.unlink(stale)
                removed.append(stale)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process (EPERM), or not a pid at all: leave it be
        return True
    return True


# -- load -------------------------------------------------------------------------------------------

def load_checkpoint(path: str | os.PathLike[str], *, device: torch.device | str | None = None,
                    optimizer_factory: OptimizerFactory | None = None,
                    allow_imports: Iterable[str] = ()) -> Checkpoint:
    """Rebuild the chains and optimizers saved by :func:`save_checkpoint`.

    Args:
        path: the checkpoint file.
        device: where to put the chains and optimizer state (default: where they were).
        optimizer_factory: builds each saved optimizer: called as ``factory(name, params)`` (or
            ``factory(params)`` if it takes one argument) with the parameters it trained. Its groups and
            state are then restored from the checkpoint. By default the saved ``torch.optim`` class is used.
        allow_imports: module prefixes the spec's import-path node types may use (as in :func:`chainspec.load`).

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint, or no longer matches its spec.

    Example:
        >>> ckpt = load_checkpoint("run/last.pt", optimizer_factory=lambda name, params: torch.optim.Adam(params))
        ... # doctest: +SKIP
    """
    where = os.fspath(path)
    payload = _read(where, device)
    _check_layout(where, payload)
    try:
        spec = loads(payload["spec"]["text"], source=payload["spec"]["source"], allow_imports=allow_imports)
    except SpecError as exc:
        raise CheckpointError(f"checkpoint {where}: its spec no longer loads:\n{exc}") from None
    stage = int(payload["stage"])
    chains = {name: _rebuild_chain(where, spec, name, stage, saved, device)
              for name, saved in payload["chains"].items()}
    params = {f"{name}.{pname}": p for name, chain in chains.items() for pname, p in chain.named_parameters()}
    optimizers = {key: _rebuild_optimizer(where, key, saved, params, optimizer_factory)
                  for key, saved in payload["optimizers"].items()}
    return Checkpoint(spec, stage, payload["alpha"], chains, optimizers, dict(payload["extra"]), payload.get("rng"))


def _read(where: str, device: torch.device | str | None) -> dict[str, Any]:
    try:
        payload = torch.load(where, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {where}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{where} is a directory, not a checkpoint") from None
    except Exception as exc:
        # Any failure to parse a foreign file is the same answer, whatever the unpickler raised on
        # arbitrary bytes (KeyError, IndexError, struct.error, ... as well as UnpicklingError).
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        if "deserialize object on a CUDA device" in text:
            raise CheckpointError(f"cannot read checkpoint {where}: it was saved on a GPU and this machine has "
                                  "none; load it with device='cpu'") from None
        raise CheckpointError(f"cannot read checkpoint {where}: {text}; the file is truncated, corrupt, "
                              "or not a chainspec checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a chainspec checkpoint (no '{FORMAT}' marker); "
                              "save it with chainspec.save_checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{where} has checkpoint version {payload.get('version')!r}; this release reads "
                              f"version {VERSION}")
    return payload


def _check_layout(where: str, payload: dict[str, Any]) -> None:
    """Refuse a file that has the marker but not the layout ``save_checkpoint`` writes (corrupt or forged)."""
    def need(value: Any, kind: type | tuple[type, ...], what: str) -> None:
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            names = " or ".join(k.__name__ for k in _as_tuple(kind))
            raise CheckpointError(f"{where} is not a valid chainspec checkpoint: {what} should be {names}, "
                                  f"got {type(value).__name__}; the file is corrupt or was not written by "
                                  "chainspec.save_checkpoint")

    need(payload.get("spec"), dict, "'spec'")
    need(payload["spec"].get("text"), str, "'spec.text'")
    need(payload["spec"].get("source"), str, "'spec.source'")
    need(payload.get("stage"), int, "'stage'")
    need(payload.get("alpha"), (float, int, type(None)), "'alpha'")
    need(payload.get("extra"), dict, "'extra'")
    need(payload.get("chains"), dict, "'chains'")
    for name, saved in payload["chains"].items():
        need(saved, dict, f"'chains.{name}'")
        need(saved.get("state"), dict, f"'chains.{name}.state'")
        need(saved.get("training"), bool, f"'chains.{name}.training'")
        for key in ("modes", "frozen"):
            need(saved.get(key, []), list, f"'chains.{name}.{key}'")
        need(saved.get("dtype"), (str, type(None)), f"'chains.{name}.dtype'")
        need(saved.get("device", "cpu"), str, f"'chains.{name}.device'")
    need(payload.get("optimizers"), dict, "'optimizers'")
    for key, saved in payload["optimizers"].items():
        need(saved, dict, f"'optimizers.{key}'")
        need(saved.get("class"), str, f"'optimizers.{key}.class'")
        need(saved.get("state"), dict, f"'optimizers.{key}.state'")
        need(saved.get("param_groups"), list, f"'optimizers.{key}.param_groups'")
        for i, group in enumerate(saved["param_groups"]):
            need(group, dict, f"'optimizers.{key}.param_groups[{i}]'")
            need(group.get("params"), list, f"'optimizers.{key}.param_groups[{i}].params'")
    need(payload.get("rng"), (Tensor, type(None)), "'rng'")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _rebuild_chain(where: str, spec: Spec, name: str, stage: int, saved: dict[str, Any],
                   device: torch.device | str | None) -> Chain:
    dtype = getattr(torch, saved["dtype"]) if saved.get("dtype") else None
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise CheckpointError(f"checkpoint {where}: chain {name!r} has an invalid dtype {saved['dtype']!r}")
    try:
        # Build without touching the global RNG: the weights are overwritten anyway, and a resumed run
        # must draw the same random numbers as one that never stopped.
        with torch.random.fork_rng(devices=[]):
            chain = spec.build(name, stage=stage, device=device or saved.get("device"), dtype=dtype)
        mismatched = state_mismatch(saved["state"], chain.state_dict())
        if mismatched:
            raise CheckpointError(f"checkpoint {where}: the weights of chain {name!r} do not fit its spec "
                                  f"({spec.source}, stage {stage}): {'; '.join(mismatched)}")
        chain.load_state_dict(saved["state"], strict=True, assign=True)
    except (SpecError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {where}: cannot restore chain {name!r}: {exc}") from None
    chain.train(bool(saved["training"]))
    modules = dict(chain.named_modules())
    for module_name in saved.get("modes", []):
        if module_name in modules:
            modules[module_name].train(not chain.training)
    parameters = dict(chain.named_parameters())
    for param_name in saved.get("frozen", []):
        if param_name in parameters:
            parameters[param_name].requires_grad_(False)
    chain.stage = stage
    chain.spec = spec
    return chain


def _rebuild_optimizer(where: str, key: str, saved: dict[str, Any], params: dict[str, Tensor],
                       factory: OptimizerFactory | None) -> Optimizer:
    try:
        groups = [[params[n] for n in g["params"]] for g in saved["param_groups"]]
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {where}: optimizer {key!r} trains {exc.args[0]!r}, which the "
                              "rebuilt chains do not have") from None
    hypers = [{k: v for k, v in g.items() if k != "params"} for g in saved["param_groups"]]
    flat = [p for group in groups for p in group]
    if factory is None:
        optimizer = _saved_class(where, key, saved["class"])([{**h, "params": g} for h, g in zip(hypers, groups,
                                                                                                strict=True)])
    else:
        optimizer = factory(key, flat) if _required_args(factory) >= 2 else factory(flat)
        if not isinstance(optimizer, Optimizer):
            raise CheckpointError(f"optimizer_factory returned {type(optimizer).__name__} for {key!r}, "
                                  "not a torch.optim.Optimizer")
        optimizer.param_groups.clear()
        optimizer.state.clear()
        for h, g in zip(hypers, groups, strict=True):
            optimizer.add_param_group({**h, "params": g})
    # The positional form torch expects, numbered like the groups just built.
    numbering = {id(p): i for i, p in enumerate(flat)}
    names = {n: numbering[id(params[n])] for g in saved["param_groups"] for n in g["params"]}
    packed = {"state": {names[n]: s for n, s in saved["state"].items()},
              "param_groups": [{**h, "params": [names[n] for n in g["params"]]}
                               for h, g in zip(hypers, saved["param_groups"], strict=True)]}
    try:
        optimizer.load_state_dict(packed)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {where}: cannot restore optimizer {key!r}: {exc}") from None
    return optimizer


def _required_args(factory: OptimizerFactory) -> int:
    """How many positional arguments without a default ``factory`` takes (an optimizer class takes one)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in sig.parameters.values() if p.kind in kinds and p.default is inspect.Parameter.empty)


def _saved_class(where: str, key: str, qualified: str) -> type[Optimizer]:
    module, _, name = qualified.rpartition(".")
    cls = getattr(torch.optim, name, None) if module.startswith("torch.optim") else None
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise CheckpointError(f"checkpoint {where}: optimizer {key!r} is a {qualified}, not a torch.optim class; "
                              "pass optimizer_factory=lambda name, params: YourOptimizer(params)")
    return cls
