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

# torch's safe unpickler rebuilds bytes objects as _codecs.encode(text, "latin1"): with the codec imported
# here, reading a checkpoint that holds bytes imports nothing.
import encodings.latin_1  # noqa: F401
import inspect
import math
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

from .._errors import CheckpointError, SpecError, printable
from .._gc import gc_paused
from .._limits import Limits, limits_or_default
from ..build.chain import Chain
from ..build.compile import check_device, tie_nodes
from ..read.spec import Spec, loads

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
            outside the chains, ``extra`` holds something a safe load cannot read back, ``alpha`` is not
            a number in [0, 1], or the file cannot be written (a full disk: the previous checkpoint
            there, if any, is unchanged).
        TypeError: ``spec``, ``chains``, ``optimizers`` or ``extra`` is not what it should be.

    Example:
        >>> save_checkpoint("run/last.pt", spec=spec, chains={"net": net}, stage=2,  # doctest: +SKIP
        ...                 optimizers={"net": opt})
    """
    _check_save_arguments(spec, chains, optimizers, extra)
    try:
        stage = spec.stage_index(stage)
    except ValueError as exc:
        raise CheckpointError(f"cannot save checkpoint {os.fspath(path)}: {exc}") from None
    # What load_checkpoint would refuse is refused now: a checkpoint that cannot be loaded back is worse than none.
    if alpha is not None and not (_finite(alpha) and 0 <= alpha <= 1):
        raise CheckpointError(f"cannot save checkpoint {os.fspath(path)}: alpha is {alpha!r}; a fade-in weight is a "
                              "number in [0, 1]")
    if len(spec.source) > MAX_SOURCE:
        raise CheckpointError(f"cannot save checkpoint {os.fspath(path)}: the spec's source name has "
                              f"{len(spec.source):,} characters; at most {MAX_SOURCE:,}")
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


def _check_save_arguments(spec: Any, chains: Any, optimizers: Any, extra: Any) -> None:
    if not isinstance(spec, Spec):
        raise TypeError(f"spec must be a chainspec.Spec, got {type(spec).__name__}")
    if not isinstance(chains, Mapping) or not all(isinstance(c, Chain) for c in chains.values()):
        raise TypeError("chains must map chain names to Chains, e.g. {'net': spec.build('net')}, got "
                        f"{_kinds(chains)}")
    if optimizers is not None and (not isinstance(optimizers, Mapping)
                                   or not all(isinstance(o, Optimizer) for o in optimizers.values())):
        raise TypeError(f"optimizers must map names to torch.optim optimizers, got {_kinds(optimizers)}")
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")


def _kinds(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(value.items())[:4]) + "}"
    return type(value).__name__


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


class _Recording:
    """A file object that remembers the ``OSError`` a write raised.

    torch's zip writer reports a failed write of the file it is given as a ``RuntimeError`` of its
    own ("unexpected pos ..."); the recorded error says what really happened (a full disk, a quota,
    a file size limit).
    """

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def _write_failure(exc: BaseException, recorded: OSError | None) -> str | None:
    """What went wrong, when ``exc`` is a failed write (not a bug, not an interrupt): None otherwise."""
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    if not isinstance(exc, RuntimeError):
        return None
    if recorded is not None:
        return str(recorded.strerror or recorded)
    context = exc.__context__
    while context is not None:
        if isinstance(context, OSError):
            return str(context.strerror or context)
        context = context.__context__
    text = str(exc)
    if "PytorchStreamWriter" in text or "inline_container" in text:  # torch's zip writer, whatever the cause
        return _show(text.strip().splitlines()[0] if text.strip() else type(exc).__name__)
    return None


def _atomic_save(payload: dict[str, Any], path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from exc
    recording: _Recording | None = None
    try:
        with os.fdopen(fd, "wb") as handle:
            recording = _Recording(handle)
            torch.save(payload, recording)
            recording.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        # A full disk, a quota, a file size limit: say which file, and that nothing was lost. An
        # interrupt, or a bug in what is being saved, goes on as it is.
        reason = _write_failure(exc, recording.error if recording is not None else None)
        if reason is not None:
            raise CheckpointError(f"cannot write checkpoint {path}: {reason}; "
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

#: The dtypes a checkpoint may name for a chain, by the name :func:`save_checkpoint` writes (that of the
#: chain's first floating-point tensor). A name read from a file is only ever a key into this table, never
#: an attribute looked up on ``torch``: ``getattr(torch, "_inductor")`` would import ``torch._inductor``.
DTYPES: dict[str, torch.dtype] = {str(dtype).removeprefix("torch."): dtype
                                  for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}

#: The device types a checkpoint may name, alone or with an index (``cuda:1``).
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps", "meta", "xpu")
_DEVICE = re.compile(rf"(?:{'|'.join(DEVICE_TYPES)})(?::[0-9]{{1,4}})?")


def _torch_optimizers() -> dict[str, type[Optimizer]]:
    """``torch.optim``'s optimizer classes, from the names the package has already imported (no lookups)."""
    found: dict[str, type[Optimizer]] = {}
    for name, value in list(vars(torch.optim).items()):
        if (name.startswith("_") or not isinstance(value, type) or not issubclass(value, Optimizer)
                or value is Optimizer):
            continue
        found[f"torch.optim.{name}"] = value
        found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


#: The optimizer classes a checkpoint may name: those of ``torch.optim``, under the name
#: :func:`save_checkpoint` writes (``torch.optim.adam.Adam``) and the public one (``torch.optim.Adam``).
#: Any other class needs the caller's ``optimizer_factory``.
OPTIMIZER_CLASSES: dict[str, type[Optimizer]] = _torch_optimizers()
_TORCH_OPTIMIZERS = frozenset(OPTIMIZER_CLASSES.values())
_LBFGS = OPTIMIZER_CLASSES.get("torch.optim.LBFGS")
_ADAFACTOR = OPTIMIZER_CLASSES.get("torch.optim.Adafactor")

#: Largest integer (a count, a hyperparameter, a step) read from a checkpoint.
MAX_INT = 2**63 - 1
#: Longest ``spec.source`` a checkpoint may carry: every message about its spec quotes it.
MAX_SOURCE = 4096
#: Most items in a list of optimizer state or a tuple of hyperparameters.
MAX_ITEMS = 1_000_000

#: torch.optim state entries that always have their parameter's shape.
_PARAM_SHAPED = frozenset({"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "grad_avg",
                           "acc_delta", "sum", "ax", "prev", "step_size", "exp_inf"})
#: torch.optim state entries that are one number (a Python number, or a one-element tensor).
_SCALAR_STATE = frozenset({"step", "eta", "mu", "mu_product"})


def _classes(*names: str) -> tuple[type[Optimizer], ...]:
    return tuple(cls for name in names if (cls := OPTIMIZER_CLASSES.get(f"torch.optim.{name}")) is not None)


#: The state entries each torch.optim class reads, without a default, for every parameter whose state is
#: not empty (an empty state is initialised at the next step). Keys that depend on a hyperparameter
#: (Adam's amsgrad, RMSprop's momentum and centered) are added by :func:`_required_state`.
_REQUIRED_STATE: dict[type[Optimizer], tuple[str, ...]] = {
    **dict.fromkeys(_classes("Adam", "AdamW", "RAdam", "SparseAdam"), ("step", "exp_avg", "exp_avg_sq")),
    **dict.fromkeys(_classes("Adamax"), ("step", "exp_avg", "exp_inf")),
    **dict.fromkeys(_classes("NAdam"), ("step", "mu_product", "exp_avg", "exp_avg_sq")),
    **dict.fromkeys(_classes("Adadelta"), ("step", "square_avg", "acc_delta")),
    **dict.fromkeys(_classes("Adagrad"), ("step", "sum")),
    **dict.fromkeys(_classes("ASGD"), ("step", "eta", "mu", "ax")),
    **dict.fromkeys(_classes("Rprop"), ("step", "prev", "step_size")),
    **dict.fromkeys(_classes("RMSprop"), ("step", "square_avg")),
    **dict.fromkeys(_classes("Adafactor"), ("step",)),
}


@gc_paused()
def load_checkpoint(path: str | os.PathLike[str], *, device: torch.device | str | None = None,
                    optimizer_factory: OptimizerFactory | None = None, allow_imports: Iterable[str] = (),
                    limits: Limits | None = None) -> Checkpoint:
    """Rebuild the chains and optimizers saved by :func:`save_checkpoint`.

    Every field of the file is checked (types, nesting, ranges, names, tensor shapes) before any
    weight is loaded, and names are looked up in allow-lists only (:data:`DTYPES`, :data:`DEVICE_TYPES`,
    :data:`OPTIMIZER_CLASSES`): a file never chooses what gets imported, and a refused file leaves
    nothing behind (torch's RNG included).

    Args:
        path: the checkpoint file.
        device: where to put the chains and optimizer state (default: where they were).
        optimizer_factory: builds each saved optimizer: called as ``factory(name, params)`` (or
            ``factory(params)`` if it takes one argument) with the parameters it trained. Its groups and
            state are then restored from the checkpoint. By default the saved ``torch.optim`` class is used.
        allow_imports: module prefixes the spec's import-path node types may use (as in :func:`chainspec.load`).
        limits: the bounds the spec text stored in the checkpoint is loaded with (as in :func:`chainspec.loads`;
            default: :class:`chainspec.Limits`'s defaults).

    Raises:
        CheckpointError: for anything about the file: it is missing, unreadable, truncated or not a
            checkpoint; a field is missing, of the wrong type, out of range, or names a dtype, device or
            optimizer class outside the allow-lists; its spec no longer loads (the message quotes the
            ``SpecError``, which is also its ``__cause__``); its weights or optimizer state do not fit that
            spec; or ``optimizer_factory`` fails on the parameters it is given. Nothing else, whatever the
            file holds.
        TypeError: ``limits`` is not a :class:`chainspec.Limits`, or ``optimizer_factory`` is not callable.
        ValueError: ``device`` is not a torch device, or not one this machine has.

    Example:
        >>> ckpt = load_checkpoint("run/last.pt", optimizer_factory=lambda name, params: torch.optim.Adam(params))
        ... # doctest: +SKIP
        >>> load_checkpoint("missing.pt")
        Traceback (most recent call last):
        ...
        chainspec._errors.CheckpointError: no checkpoint at missing.pt
    """
    limits = limits_or_default(limits)
    device = check_device(device)
    if optimizer_factory is not None and not callable(optimizer_factory):
        raise TypeError(f"optimizer_factory must be callable, got {type(optimizer_factory).__name__}")
    real_path = os.fspath(path)
    where = printable(real_path)
    payload = _read(real_path, where, device)
    fields = _Fields(where)
    fields.check_layout(payload)
    if optimizer_factory is None:  # names first: a refused name costs no spec load and no build
        for key, saved in payload["optimizers"].items():
            _saved_class(fields, key, saved["class"])
    spec = _load_spec(where, payload["spec"], allow_imports, limits)
    stage = payload["stage"]
    if stage >= spec.stages:
        raise fields.invalid(("stage",), f"is {stage}, but its spec has stages 0..{spec.stages - 1}")
    # Build each chain and check every field against it, the optimizers' too, before loading anything.
    built = {name: _build_chain(fields, spec, name, stage, saved, device) for name, saved in payload["chains"].items()}
    shapes = {f"{name}.{pname}": p for name, chain in built.items() for pname, p in chain.named_parameters()}
    for key, saved in payload["optimizers"].items():
        _check_optimizer(fields, key, saved, shapes, optimizer_factory)
    chains = {name: _restore_chain(where, spec, name, stage, chain, payload["chains"][name])
              for name, chain in built.items()}
    params = {f"{name}.{pname}": p for name, chain in chains.items() for pname, p in chain.named_parameters()}
    optimizers = {key: _rebuild_optimizer(fields, key, saved, params, optimizer_factory)
                  for key, saved in payload["optimizers"].items()}
    alpha = payload.get("alpha")
    rng = payload.get("rng")
    return Checkpoint(spec, stage, None if alpha is None else float(alpha), chains, optimizers,
                      dict(payload["extra"]), None if rng is None else rng.detach().to("cpu", copy=True))


def _read(path: str, where: str, device: torch.device | str | None) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
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
        raise CheckpointError(f"cannot read checkpoint {where}: {_show(text)}; the file is truncated, corrupt, "
                              "or not a chainspec checkpoint") from None
    marker = payload.get("format") if isinstance(payload, dict) else None
    if not isinstance(marker, str) or marker != FORMAT:
        raise CheckpointError(f"{where} is not a chainspec checkpoint (no '{FORMAT}' marker); "
                              "save it with chainspec.save_checkpoint")
    version = payload.get("version")
    if type(version) is not int or version != VERSION:  # never == on a value of any type: a tensor compares
        raise CheckpointError(f"{where} has checkpoint version {_q(version)}; this release reads "
                              f"version {VERSION}")
    return payload


def _load_spec(where: str, saved: dict[str, Any], allow_imports: Iterable[str], limits: Limits) -> Spec:
    """The spec stored in a checkpoint, validated like any spec (same limits, the caller's allow-list)."""
    try:
        return loads(saved["text"], source=saved["source"], allow_imports=allow_imports, limits=limits)
    except SpecError as exc:
        raise CheckpointError(f"checkpoint {where}: its spec no longer loads:\n{exc}") from exc


def _show(text: str, limit: int = 300) -> str:
    """Untrusted text as a message may quote it: clipped, and with control characters escaped."""
    if len(text) > limit:
        text = f"{text[:limit - 60]} ... {text[-40:]} ({len(text):,} characters)"
    return printable(text)


def _q(value: object) -> str:
    """An untrusted value as a message quotes it: ``repr`` of a name or number, clipped and printable, and
    only the type of anything else (the ``repr`` of a tensor runs torch's printing, and may import modules)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of {value.bit_length()} bits"  # str() refuses integers of over 4,300 digits
    if value is None or isinstance(value, (str, int, float, bool)):
        return _show(repr(value))
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}"
    return f"a {type(value).__name__}"


def _path(parts: tuple[object, ...]) -> str:
    """``chains.net.state.fc.weight``, ``optimizers.net.param_groups[0]``: a field, as messages name it."""
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            text = part if isinstance(part, str) else _q(part)
            out += f".{text}" if out else text
    return _show(out)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _int_problem(value: object, low: int = 0, high: int = MAX_INT) -> str | None:
    """Why ``value`` is not an integer in ``[low, high]`` (None when it is)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"should be int, got {type(value).__name__}"
    if not low <= value <= high:
        return f"is {_q(value)}; it should be in [{low}, {high}]"
    return None


def _finite(value: object) -> bool:
    """Whether ``value`` is a finite int or float (not a bool) of at most ``MAX_INT`` in size."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) <= MAX_INT if isinstance(value, int) else math.isfinite(value)


def tensor_problem(value: object, *, meta: bool = False) -> str | None:
    """Why ``value`` is not a tensor a checkpoint may hold (None when it is).

    A checkpoint holds plain dense tensors (or parameters) on one of :data:`DEVICE_TYPES`; no sparse,
    quantized or nested tensors, no other subclasses, and meta tensors (which hold no data) only
    where ``meta`` allows them.

    Example:
        >>> tensor_problem(torch.zeros(2)) is None
        True
        >>> tensor_problem(torch.zeros(2).to_sparse())
        'is a sparse_coo tensor; a checkpoint holds dense (strided) tensors'
    """
    if not isinstance(value, Tensor):
        return f"should be Tensor, got {type(value).__name__}"
    if type(value) not in (Tensor, torch.nn.Parameter):
        return f"is a {type(value).__name__}; a checkpoint holds plain tensors"
    if value.layout != torch.strided:
        return f"is a {str(value.layout).removeprefix('torch.')} tensor; a checkpoint holds dense (strided) tensors"
    if value.is_quantized or value.is_nested:
        return "is a quantized or nested tensor; a checkpoint holds plain tensors"
    if value.device.type not in DEVICE_TYPES:
        return f"is on device {_q(str(value.device))}; a checkpoint's tensors are on {', '.join(DEVICE_TYPES)}"
    if value.device.type == "meta" and not meta:
        return "holds no data (a meta tensor)"
    return None


def _hyper_problem(value: object, nested: bool = False) -> str | None:
    """Why ``value`` cannot be an optimizer hyperparameter (None when it can).

    Hyperparameters are None, booleans, finite numbers, strings, one-element tensors, or a short tuple
    of those (``betas``).
    """
    if value is None or isinstance(value, bool) or _finite(value):
        return None
    if isinstance(value, (int, float)):
        return "is not a finite number of at most 2**63 in size"
    if isinstance(value, str):
        return None if len(value) <= MAX_SOURCE else f"is a string of {len(value):,} characters"
    if isinstance(value, Tensor):
        problem = tensor_problem(value)
        if problem is None and (value.numel() != 1 or value.is_complex() or value.dtype == torch.bool
                                or not bool(torch.isfinite(value).all())):
            problem = "is a tensor hyperparameter that is not one finite real number"
        return problem
    if isinstance(value, (tuple, list)) and not nested:
        if len(value) > 64:
            return f"has {len(value):,} items; a hyperparameter tuple holds a few numbers"
        return next((f"[{i}] {p}" for i, item in enumerate(value) if (p := _hyper_problem(item, True))), None)
    return f"is a {type(value).__name__}, which no hyperparameter is"


def _hyper_kind_problem(value: object, default: object) -> str | None:
    """Why ``value`` cannot replace an optimizer's default hyperparameter ``default`` (None when it can)."""
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"should be a bool (its default is {default!r})"
    if isinstance(default, (int, float, Tensor)):
        ok = isinstance(value, (int, float, Tensor)) and not isinstance(value, bool)
        return None if ok else f"should be a number (its default is {default!r})"
    if isinstance(default, tuple):
        if not isinstance(value, (tuple, list)) or len(value) != len(default):
            return f"should be {len(default)} values (its default is {default!r})"
        return next((f"[{i}] {p}" for i, (v, d) in enumerate(zip(value, default, strict=True))
                     if (p := _hyper_kind_problem(v, d))), None)
    if isinstance(default, str):
        return None if isinstance(value, str) else f"should be a string (its default is {default!r})"
    return None


def state_value_problem(key: str, value: object) -> str | None:
    """Why ``value`` cannot be entry ``key`` of one parameter's optimizer state (None when it can).

    Optimizer state holds tensors, numbers, booleans, None and short flat lists of those (``LBFGS``
    keeps its history in lists); a ``step`` is a finite count, as a number or a one-element tensor.

    Example:
        >>> state_value_problem("exp_avg", torch.zeros(3)) is None
        True
        >>> state_value_problem("step", -1.0)
        'should be a finite count >= 0, got -1.0'
    """
    if key == "step":
        if isinstance(value, Tensor):
            problem = tensor_problem(value)
            if problem is not None:
                return problem
            ok = value.numel() == 1 and not value.is_complex() and bool((torch.isfinite(value) & (value >= 0)).all())
            return None if ok else "should be one finite count >= 0"
        ok = _finite(value) and value >= 0  # type: ignore[operator]
        return None if ok else f"should be a finite count >= 0, got {_q(value)}"
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_ITEMS:
            return f"has {len(value):,} items"
        for i, item in enumerate(value):
            if isinstance(item, (list, tuple, dict)):
                return f"[{i}] is a nested {type(item).__name__}; optimizer state lists are flat"
            problem = state_value_problem(key, item)
            if problem is not None:
                return f"[{i}] {problem}"
        return None
    if isinstance(value, Tensor):
        return tensor_problem(value)
    if value is None or isinstance(value, (bool, float)) or (isinstance(value, int) and abs(value) <= MAX_INT):
        return None
    if isinstance(value, int):
        return "is an integer larger than 2**63"
    if isinstance(value, str):
        return None if len(value) <= MAX_SOURCE else f"is a string of {len(value):,} characters"
    return f"is a {type(value).__name__}, which optimizer state cannot hold"


def state_shape_problem(cls: type[Optimizer] | None, key: str, value: object, param: Tensor,
                        flat_numel: int | None = None) -> str | None:
    """Why state entry ``key`` does not fit ``param`` under optimizer class ``cls`` (None when it fits).

    For ``torch.optim`` classes every tensor has the parameter's shape, except for scalars (``step``),
    Adafactor's factored moments and LBFGS's flat buffers (``flat_numel`` elements); other classes
    (built by an ``optimizer_factory``) may keep any shape. A floating-point parameter's moments are
    floating-point.

    Example:
        >>> p = torch.zeros(3, 2)
        >>> state_shape_problem(torch.optim.Adam, "exp_avg", torch.zeros(2, 3), p)
        'has shape [2, 3], but its parameter has shape [3, 2]'
    """
    if isinstance(value, (list, tuple)):
        return next((p for item in value if (p := state_shape_problem(cls, key, item, param, flat_numel))), None)
    if not isinstance(value, Tensor):
        return None
    if value.is_complex() and not param.is_complex():
        return "is complex, but its parameter is not"
    shape, want = list(value.shape), list(param.shape)
    if shape == want:
        if key != "step" and param.is_floating_point() and not value.is_floating_point():
            return f"is a {str(value.dtype).removeprefix('torch.')} tensor; a floating-point parameter's state is " \
                   "floating-point"
        return None
    if cls is None or cls not in _TORCH_OPTIMIZERS:
        return None
    if cls is _LBFGS and value.dim() <= 1 and value.numel() in (1, flat_numel):
        return None
    if cls is _ADAFACTOR and len(shape) == len(want) and all(a in (1, b) for a, b in zip(shape, want, strict=True)):
        return None
    if value.dim() == 0 and key not in _PARAM_SHAPED:
        return None
    return f"has shape {shape}, but its parameter has shape {want}"


def _required_state(cls: type[Optimizer], group: Mapping[str, Any]) -> tuple[str, ...]:
    keys = _REQUIRED_STATE.get(cls, ())
    if cls in _classes("Adam", "AdamW") and group.get("amsgrad") is True:
        keys += ("max_exp_avg_sq",)
    if cls in _classes("RMSprop"):
        if _positive(group.get("momentum", 0)):
            keys += ("momentum_buffer",)
        if group.get("centered") is True:
            keys += ("grad_avg",)
    return keys


def _positive(value: object) -> bool:
    if isinstance(value, Tensor):
        return value.numel() == 1 and bool(value.detach().to("cpu").item() > 0)
    return isinstance(value, (int, float)) and value > 0


def _one_number(value: object) -> bool:
    if isinstance(value, Tensor):
        return value.numel() == 1
    return _finite(value)


def state_layout_problem(cls: type[Optimizer] | None, group: Mapping[str, Any], state: Mapping[str, Any],
                         param: Tensor, flat_numel: int | None = None) -> tuple[str, str] | None:
    """``(entry, why)`` when one parameter's optimizer state cannot be used by class ``cls`` (None when it can).

    ``group`` is the param group the parameter trains in (its hyperparameters decide some entries).
    For ``torch.optim`` classes, a state that is not empty has every entry the class reads (``step``,
    ``exp_avg``, ... and ``max_exp_avg_sq`` under ``amsgrad``), moments are tensors of the parameter's
    shape and counters are one number; for any class, tensors fit the parameter as
    :func:`state_shape_problem` says.

    Example:
        >>> p = torch.zeros(3)
        >>> state_layout_problem(torch.optim.Adam, {"amsgrad": False}, {"step": 1.0, "exp_avg": torch.zeros(3)}, p)
        ('exp_avg_sq', 'is missing; Adam keeps it for every parameter it has stepped')
        >>> state_layout_problem(torch.optim.Adam, {}, {"step": 1.0, "exp_avg": 0, "exp_avg_sq": torch.zeros(3)}, p)
        ('exp_avg', "should be a tensor of its parameter's shape, got int")
    """
    if cls is not None and cls in _TORCH_OPTIMIZERS:
        missing = [key for key in _required_state(cls, group) if key not in state] if state else []
        if missing:
            return missing[0], f"is missing; {cls.__name__} keeps it for every parameter it has stepped"
        for key, value in state.items():
            if key in _PARAM_SHAPED and not isinstance(value, Tensor) and not (key == "momentum_buffer"
                                                                                and value is None):
                return key, f"should be a tensor of its parameter's shape, got {type(value).__name__}"
            if key in _SCALAR_STATE and not _one_number(value):
                return key, f"should be one number, got {type(value).__name__}"
    for key, value in state.items():
        problem = state_shape_problem(cls, key, value, param, flat_numel)
        if problem is not None:
            return key, problem
    return None


class _Fields:
    """Checks of the fields of an untrusted payload; every failure is a CheckpointError naming the field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def invalid(self, path: tuple[object, ...], problem: str) -> CheckpointError:
        return CheckpointError(f"{self.where} is not a valid chainspec checkpoint: '{_path(path)}' {problem}; "
                               "the file is corrupt or was not written by chainspec.save_checkpoint")

    def need(self, value: Any, kind: type | tuple[type, ...], path: tuple[object, ...]) -> Any:
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            names = " or ".join(k.__name__ for k in _as_tuple(kind))
            raise self.invalid(path, f"should be {names}, got {type(value).__name__}")
        return value

    def check(self, problem: str | None, path: tuple[object, ...]) -> None:
        if problem is not None:
            raise self.invalid(path, problem)

    def keys(self, mapping: dict[Any, Any], path: tuple[object, ...]) -> None:
        for key in mapping:
            if not isinstance(key, str):
                raise self.invalid(path, f"has a key {_q(key)} of type {type(key).__name__}; its keys are strings")

    def names(self, value: Any, path: tuple[object, ...]) -> list[str]:
        self.need(value, list, path)
        for i, item in enumerate(value):
            self.need(item, str, (*path, i))
        return value

    # -- the layout, before the spec is loaded ----------------------------------------------------
    def check_layout(self, payload: dict[str, Any]) -> None:
        """Refuse a file that has the marker but not the layout ``save_checkpoint`` writes (corrupt or forged)."""
        spec = self.need(payload.get("spec"), dict, ("spec",))
        self.need(spec.get("text"), str, ("spec", "text"))
        source = self.need(spec.get("source"), str, ("spec", "source"))
        if len(source) > MAX_SOURCE:
            raise self.invalid(("spec", "source"), f"has {len(source):,} characters; at most {MAX_SOURCE:,}")
        self.check(_int_problem(payload.get("stage")), ("stage",))
        alpha = self.need(payload.get("alpha"), (float, int, type(None)), ("alpha",))
        if alpha is not None and not (_finite(alpha) and 0 <= alpha <= 1):
            raise self.invalid(("alpha",), f"is {_q(alpha)}; a fade-in weight is a number in [0, 1]")
        self.need(payload.get("extra"), dict, ("extra",))
        chains = self.need(payload.get("chains"), dict, ("chains",))
        self.keys(chains, ("chains",))
        for name, saved in chains.items():
            self.check_chain_layout(name, saved)
        optimizers = self.need(payload.get("optimizers"), dict, ("optimizers",))
        self.keys(optimizers, ("optimizers",))
        for key, saved in optimizers.items():
            self.check_optimizer_layout(key, saved)
        self.check_rng(payload.get("rng"))

    def check_chain_layout(self, name: str, saved: Any) -> None:
        path = ("chains", name)
        self.need(saved, dict, path)
        state = self.need(saved.get("state"), dict, (*path, "state"))
        self.keys(state, (*path, "state"))
        for key, value in state.items():
            self.check(tensor_problem(value, meta=True), (*path, "state", key))
        self.need(saved.get("training"), bool, (*path, "training"))
        for key in ("modes", "frozen"):
            self.names(saved.get(key, []), (*path, key))
        dtype = self.need(saved.get("dtype"), (str, type(None)), (*path, "dtype"))
        if dtype is not None and dtype not in DTYPES:
            raise self.invalid((*path, "dtype"), f"is an invalid dtype {_q(dtype)}; a checkpoint may name "
                                                 f"{', '.join(DTYPES)}")
        device = self.need(saved.get("device", "cpu"), str, (*path, "device"))
        if not _DEVICE.fullmatch(device):
            raise self.invalid((*path, "device"), f"is an invalid device {_q(device)}; a checkpoint may name "
                                                  f"{', '.join(DEVICE_TYPES)}, optionally with an index (cuda:1)")

    def check_optimizer_layout(self, key: str, saved: Any) -> None:
        path = ("optimizers", key)
        self.need(saved, dict, path)
        self.need(saved.get("class"), str, (*path, "class"))
        state = self.need(saved.get("state"), dict, (*path, "state"))
        groups = self.need(saved.get("param_groups"), list, (*path, "param_groups"))
        for i, group in enumerate(groups):
            self.check_group(group, (*path, "param_groups", i))
        self.keys(state, (*path, "state"))
        for name, entry in state.items():
            self.check_param_state(entry, (*path, "state", name))

    def check_group(self, group: Any, path: tuple[object, ...]) -> None:
        self.need(group, dict, path)
        self.keys(group, path)
        params = self.names(group.get("params"), (*path, "params"))
        for key, value in group.items():
            if key == "params":
                continue
            if key == "param_names":
                names = self.names(value, (*path, key))
                if len(names) != len(params):
                    raise self.invalid((*path, key), f"has {len(names)} names for {len(params)} parameters")
            else:
                self.check(_hyper_problem(value), (*path, key))

    def check_param_state(self, entry: Any, path: tuple[object, ...]) -> None:
        self.need(entry, dict, path)
        self.keys(entry, path)
        for key, value in entry.items():
            self.check(state_value_problem(key, value), (*path, key))

    def check_rng(self, rng: Any) -> None:
        if rng is None:
            return
        self.check(tensor_problem(rng), ("rng",))
        if rng.dtype != torch.uint8 or rng.dim() != 1:
            raise self.invalid(("rng",), f"is a {str(rng.dtype).removeprefix('torch.')} tensor of shape "
                                         f"{list(rng.shape)}, not an RNG state (a 1-d uint8 tensor)")
        try:
            torch.Generator().set_state(rng.detach().to("cpu"))
        except RuntimeError as exc:
            raise self.invalid(("rng",), f"is not a valid RNG state: {_show(str(exc).splitlines()[0])}") from None


# -- checks against the spec, on the meta device ----------------------------------------------------

def _available(device: torch.device) -> bool:
    """Whether this machine has ``device`` (probed without initialising anything it does not have)."""
    index = device.index or 0
    if device.type in ("cpu", "meta"):
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and index < torch.cuda.device_count()
    if device.type == "xpu":
        return torch.xpu.is_available() and index < torch.xpu.device_count()
    if device.type == "mps":
        return torch.backends.mps.is_available() and index == 0
    return False


def _build_chain(fields: _Fields, spec: Spec, name: str, stage: int, saved: dict[str, Any],
                 device: torch.device | str | None) -> Chain:
    """Build a saved chain from its spec and check the saved one against it; return the build (its own weights).

    The build is new: nothing the caller holds changes, whatever the check finds.
    """
    where, path = fields.where, ("chains", name)
    if name not in spec.chain_names:
        raise fields.invalid(path, f"is not a chain of its spec ({_show(spec.source)} has "
                                   f"{_show(', '.join(spec.chain_names))})")
    target = torch.device(device if device is not None else saved.get("device", "cpu"))
    if device is None and not _available(target):
        raise CheckpointError(f"checkpoint {where}: chain {_q(name)} was saved on {target}, which this machine "
                              "does not have; load it with device='cpu'")
    dtype = DTYPES[saved["dtype"]] if saved.get("dtype") is not None else None
    try:
        # Build without touching the global RNG: the weights are overwritten anyway, and a resumed run
        # must draw the same random numbers as one that never stopped.
        with torch.random.fork_rng(devices=[]):
            chain = spec.build(name, stage=stage, device=target, dtype=dtype)
    except (SpecError, *_TORCH_REFUSALS) as exc:
        raise CheckpointError(f"checkpoint {where}: cannot restore chain {_q(name)}: {_show(str(exc), 2000)}") \
            from None
    expected = chain.state_dict()
    mismatched = state_mismatch(saved["state"], expected)
    if mismatched:
        raise CheckpointError(f"checkpoint {where}: the weights of chain {_q(name)} do not fit its spec "
                              f"({_show(spec.source)}, stage {stage}): {_show('; '.join(mismatched), 4000)}")
    for key, value in saved["state"].items():
        want = expected[key]
        if value.is_floating_point() != want.is_floating_point() or (
                not want.is_floating_point() and value.dtype != want.dtype):
            raise fields.invalid((*path, "state", key), f"is a {str(value.dtype).removeprefix('torch.')} tensor "
                                                        f"where the spec has {str(want.dtype).removeprefix('torch.')}")
        if value.device.type == "meta" and target.type != "meta":
            raise fields.invalid((*path, "state", key), "holds no data (a meta tensor)")
    _known(fields, saved.get("modes", []), {n for n, _ in chain.named_modules() if n}, (*path, "modes"), "module")
    _known(fields, saved.get("frozen", []), {n for n, _ in chain.named_parameters()}, (*path, "frozen"),
           "parameter")
    return chain


def _known(fields: _Fields, names: list[str], known: set[str], path: tuple[object, ...], what: str) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise fields.invalid(path, f"names {_q(unknown[0])}, which is not a {what} of the chain")


def _signature_defaults(cls: type[Optimizer]) -> dict[str, Any]:
    """The hyperparameters an optimizer class takes, with their defaults (from its signature)."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return {}
    return {name: p.default for name, p in sig.parameters.items()
            if name != "params" and p.default is not inspect.Parameter.empty}


def _check_optimizer(fields: _Fields, key: str, saved: dict[str, Any], params: dict[str, Tensor],
                     factory: OptimizerFactory | None) -> None:
    """Check a saved optimizer's names (class, parameters) and, for a saved class, its values."""
    path = ("optimizers", key)
    trained: set[str] = set()
    for i, group in enumerate(saved["param_groups"]):
        for name in group["params"]:
            if name not in params:
                raise CheckpointError(f"checkpoint {fields.where}: optimizer {_q(key)} trains {_q(name)}, which "
                                      "the rebuilt chains do not have")
            if name in trained:
                raise fields.invalid((*path, "param_groups", i, "params"),
                                     f"lists {_q(name)} again; a parameter is in one group only")
            trained.add(name)
    for name in saved["state"]:
        if name not in trained:
            raise fields.invalid((*path, "state", name), "is the state of a parameter the optimizer does not train")
    if factory is None:
        cls = _saved_class(fields, key, saved["class"])
        _check_values(fields, key, saved, params, cls, _signature_defaults(cls))


def _saved_class(fields: _Fields, key: str, name: str) -> type[Optimizer]:
    """The optimizer class a checkpoint names, from :data:`OPTIMIZER_CLASSES` only."""
    cls = OPTIMIZER_CLASSES.get(name)
    if cls is None:
        raise CheckpointError(f"checkpoint {fields.where}: optimizer {_q(key)} is a {_show(name)}, not a "
                              "torch.optim class; pass optimizer_factory=lambda name, params: YourOptimizer(params)")
    return cls


def _check_ranges(fields: _Fields, key: str, saved: dict[str, Any], cls: type[Optimizer]) -> None:
    """Let a torch.optim class's own constructor check each group's values (``lr >= 0``, betas in [0, 1), ...).

    torch checks the values passed to the constructor, not those of param groups; here each group's
    hyperparameters are passed to the constructor of a throwaway optimizer of one small parameter.
    """
    if cls not in _TORCH_OPTIMIZERS:
        return
    # Implementation switches are left out: whether fused or capturable kernels exist depends on the device
    # of the real parameters, which the real constructor checks.
    accepted = set(_signature_defaults(cls)) - {"foreach", "fused", "capturable", "differentiable"}
    for i, group in enumerate(saved["param_groups"]):
        values = {k: v for k, v in group.items() if k in accepted}
        try:
            cls([torch.zeros(1, 1, requires_grad=True)], **values)
        except _TORCH_REFUSALS as exc:
            raise fields.invalid(("optimizers", key, "param_groups", i),
                                 f"is refused by {cls.__name__}: {_show(str(exc))}") from None


def _check_values(fields: _Fields, key: str, saved: dict[str, Any], params: dict[str, Tensor],
                  cls: type[Optimizer] | None, defaults: dict[str, Any]) -> None:
    """Check the hyperparameters against the class's defaults and each state tensor against its parameter."""
    path = ("optimizers", key)
    for i, group in enumerate(saved["param_groups"]):
        for name, value in group.items():
            if name in defaults:
                fields.check(_hyper_kind_problem(value, defaults[name]), (*path, "param_groups", i, name))
    if cls is not None:
        _check_ranges(fields, key, saved, cls)
    flat = sum(params[n].numel() for group in saved["param_groups"] for n in group["params"])
    for name, entry in saved["state"].items():
        for item, value in entry.items():
            fields.check(state_shape_problem(cls, item, value, params[name], flat), (*path, "state", name, item))


def _check_layouts(fields: _Fields, key: str, saved: dict[str, Any], params: dict[str, Tensor],
                   optimizer: Optimizer) -> None:
    """Check each parameter's saved state against what the built optimizer's class and groups read."""
    flat = sum(params[n].numel() for group in saved["param_groups"] for n in group["params"])
    for i, group in enumerate(saved["param_groups"]):
        for name in group["params"]:
            entry = saved["state"].get(name)
            found = state_layout_problem(type(optimizer), optimizer.param_groups[i], entry or {}, params[name], flat)
            if found is not None:
                raise fields.invalid(("optimizers", key, "state", name, found[0]), found[1])


# -- rebuilding, once everything is checked -----------------------------------------------------------

#: What torch raises on values it refuses while building an optimizer or loading state.
_TORCH_REFUSALS = (ValueError, TypeError, KeyError, IndexError, RuntimeError)


def _restore_chain(where: str, spec: Spec, name: str, stage: int, chain: Chain, saved: dict[str, Any]) -> Chain:
    """Give a chain built by :func:`_build_chain` its saved weights, modes and frozen parameters."""
    # A tensor whose elements overlap (stride 0) would be trained through several views of one number.
    state = {key: value if _dense(value) else value.contiguous() for key, value in saved["state"].items()}
    try:
        chain.load_state_dict(state, strict=True, assign=True)
    except _TORCH_REFUSALS as exc:
        raise CheckpointError(f"checkpoint {where}: cannot restore chain {_q(name)}: {_show(str(exc), 2000)}") \
            from None
    resolved = spec.resolved(name)
    if resolved.tied:  # one tensor per name was assigned: make the tied names one parameter again
        tie_nodes(chain, resolved.at(stage), spec._doc)
    chain.train(bool(saved["training"]))
    modules = dict(chain.named_modules())
    for module_name in saved.get("modes", []):
        modules[module_name].train(not chain.training)
    parameters = dict(chain.named_parameters())
    for param_name in saved.get("frozen", []):
        parameters[param_name].requires_grad_(False)
    chain.record_revision(spec, stage)
    return chain


def _dense(tensor: Tensor) -> bool:
    if tensor.is_contiguous():
        return True
    return tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)


def _rebuild_optimizer(fields: _Fields, key: str, saved: dict[str, Any], params: dict[str, Tensor],
                       factory: OptimizerFactory | None) -> Optimizer:
    where = fields.where
    groups = [[params[n] for n in g["params"]] for g in saved["param_groups"]]
    hypers = [{k: v for k, v in g.items() if k != "params"} for g in saved["param_groups"]]
    flat = [p for group in groups for p in group]
    if factory is None:
        cls = _saved_class(fields, key, saved["class"])
        try:
            optimizer = cls([{**h, "params": g} for h, g in zip(hypers, groups, strict=True)])
        except _TORCH_REFUSALS as exc:
            raise CheckpointError(f"checkpoint {where}: cannot restore optimizer {_q(key)}: "
                                  f"{_show(str(exc))}") from None
    else:
        optimizer = _from_factory(fields, key, factory, flat)
        _check_values(fields, key, saved, params, type(optimizer), dict(optimizer.defaults))
        try:
            optimizer.param_groups.clear()
            optimizer.state.clear()
            for h, g in zip(hypers, groups, strict=True):
                optimizer.add_param_group({**h, "params": g})
        except _TORCH_REFUSALS as exc:
            raise CheckpointError(f"checkpoint {where}: cannot restore optimizer {_q(key)}: "
                                  f"{_show(str(exc))}") from None
    _check_layouts(fields, key, saved, params, optimizer)
    # The positional form torch expects, numbered like the groups just built; a hyperparameter the file
    # lacks keeps the value the optimizer gave its group (its default), as add_param_group does.
    numbering = {id(p): i for i, p in enumerate(flat)}
    names = {n: numbering[id(params[n])] for g in saved["param_groups"] for n in g["params"]}
    packed = {"state": {names[n]: s for n, s in saved["state"].items()},
              "param_groups": [{**{k: v for k, v in built.items() if k != "params"}, **h,
                                "params": [names[n] for n in g["params"]]}
                               for built, h, g in zip(optimizer.param_groups, hypers, saved["param_groups"],
                                                      strict=True)]}
    try:
        optimizer.load_state_dict(packed)
    except _TORCH_REFUSALS as exc:
        raise CheckpointError(f"checkpoint {where}: cannot restore optimizer {_q(key)}: {_show(str(exc))}") from None
    return optimizer


def _from_factory(fields: _Fields, key: str, factory: OptimizerFactory, flat: list[Tensor]) -> Optimizer:
    """Call the caller's factory with the parameters the file says the optimizer trains."""
    try:
        optimizer = factory(key, flat) if _required_args(factory) >= 2 else factory(flat)
    except (ValueError, TypeError) as exc:  # e.g. "optimizer got an empty parameter list": the file's doing
        raise CheckpointError(f"checkpoint {fields.where}: optimizer_factory could not build optimizer {_q(key)} "
                              f"for its {len(flat)} parameters: {_show(str(exc))}") from exc
    if not isinstance(optimizer, Optimizer):
        raise CheckpointError(f"optimizer_factory returned {type(optimizer).__name__} for {_q(key)}, "
                              "not a torch.optim.Optimizer")
    return optimizer


def _required_args(factory: OptimizerFactory) -> int:
    """How many positional arguments without a default ``factory`` takes (an optimizer class takes one)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in sig.parameters.values() if p.kind in kinds and p.default is inspect.Parameter.empty)
