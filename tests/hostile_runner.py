"""Run the hostile corpus through chainspec's entry points, in worker processes that cannot hurt the machine.

Each entry point (``load``, ``check``, ``watch``, ``checkpoint``, and the command line in process) takes
one case and returns an :class:`Outcome`: ``ok`` (accepted), ``refused`` (the documented exception,
located and printable) or ``bad`` (anything else, with what went wrong). :func:`run_batch` runs many
cases through one entry point in a worker process with a memory limit, streaming one JSON line per
case; a case that runs past its deadline or takes the worker down is recorded as ``bad`` (``hang``,
``crashed``) and the worker is restarted for the rest. So a batch of a hundred cases costs one torch
import, and a hang costs only its own deadline.

Usage (the worker side; the parent is :func:`run_batch`):
    python tests/hostile_runner.py DIR JOBS.json

Example:
    >>> results = run_batch("load", [c for c in corpus() if c.cls == "exponent"])  # doctest: +SKIP
    >>> {outcome.status for outcome in results.values()}  # doctest: +SKIP
    {'refused'}
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from hostile_corpus import BASE, Case, corpus, write  # noqa: E402

#: Address-space limit of a worker: torch itself maps about 0.7 GB.
MEMORY_LIMIT = 1536 << 20
#: Seconds one case may take before it counts as a hang. Generous: speed is measured in benchmarks/.
HANG_AFTER = 20.0
#: Command-line runs, each a fresh process as a user or a hook starts it.
CLI = {
    "cli-validate": ["validate"],
    "cli-deep": ["validate", "--deep"],
    "cli-build": ["build"],
    "cli-save": ["build", "--save", "{save}"],
    "cli-diff": ["diff", "{old}"],
}
#: Exit codes each command may return on any input (diff exits 1 for "different", 2 on an invalid spec).
EXIT_CODES = {"cli-validate": {0, 1}, "cli-deep": {0, 1}, "cli-build": {0, 1}, "cli-save": {0, 1},
              "cli-diff": {0, 1, 2}}


@dataclass
class Outcome:
    """What one entry point made of one case."""

    status: str  # ok | refused | bad
    detail: str = ""
    seconds: float = 0.0

    @property
    def bad(self) -> bool:
        return self.status == "bad"


def raw_controls(text: str) -> list[str]:
    """The characters of ``text`` that would reach a terminal raw (anything not printable but a newline).

    Example:
        >>> raw_controls("ok\\n"), raw_controls("\\x1b[2J")
        ([], ['\\x1b'])
    """
    return sorted({c for c in text if not c.isprintable() and c != "\n"})


#: Words of an allocation that failed: the memory guard must refuse a spec before allocating, not after.
ALLOCATION_FAILED = ("can't allocate memory", "DefaultCPUAllocator", "out of memory", "MemoryError")


def allocated(text: str) -> bool:
    """Whether a refusal reads as an allocation that was tried and failed (under the worker's memory limit)."""
    return any(words in text for words in ALLOCATION_FAILED)


def _spec_error(exc: Exception, *, located: bool = True) -> Outcome:
    from chainspec import SpecError

    if not isinstance(exc, SpecError):
        return Outcome("bad", f"{type(exc).__name__}: {_short(exc)}")
    text = str(exc)
    if allocated(text):
        return Outcome("bad", f"refused only after trying to allocate: {_short(text)}")
    if not exc.problems:
        return Outcome("bad", "SpecError without problems")
    if located and any(p.line is None for p in exc.problems):
        return Outcome("bad", f"unlocated problem: {_short(exc.problems[0].format())}")
    if raw_controls(text):
        return Outcome("bad", f"raw control characters {raw_controls(text)} in {_short(text)}")
    return Outcome("refused", _short(text.splitlines()[0]))


def _short(value: object, limit: int = 300) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text):,} chars)"


# -- entry points ----------------------------------------------------------------------------------------------------

def entry_load(case: Case, path: Path, work: Path) -> Outcome:
    """``chainspec.load``: a spec, or a located, printable SpecError."""
    import chainspec

    try:
        chainspec.load(path, allow_imports=case.allow_imports)
    except Exception as exc:
        return _spec_error(exc)
    if case.must_refuse:
        return Outcome("bad", "accepted, but it must be refused")
    return Outcome("ok")


def entry_check(case: Case, path: Path, work: Path) -> Outcome:
    """``Spec.check()`` (``validate --deep``) on what loads."""
    import chainspec

    try:
        spec = chainspec.load(path, allow_imports=case.allow_imports)
    except Exception as exc:
        return _spec_error(exc)
    try:
        spec.check()
    except Exception as exc:
        return _spec_error(exc)
    return Outcome("ok")


def entry_watch(case: Case, path: Path, work: Path) -> Outcome:
    """A watcher on a valid spec, the file replaced by the case: ``poll`` returns; a rejection changes nothing."""
    import torch

    import chainspec
    from chainspec import ChainspecError

    watched = work / "watched.yaml"
    watched.write_text(BASE, encoding="utf-8")
    net = chainspec.load(watched).build()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    errors: list[Exception] = []
    watcher = chainspec.SpecWatcher(watched, net, optimizer=opt, on_error=errors.append,
                                    allow_imports=case.allow_imports, settle=0)
    watched.write_bytes(case.text)
    stamp = time.time_ns() + 2_000_000_000
    os.utime(watched, ns=(stamp, stamp))
    try:
        plan = watcher.poll()
    except Exception as exc:
        return Outcome("bad", f"poll raised {type(exc).__name__}: {_short(exc)}")
    if plan is not None:
        return Outcome("ok", "applied")
    if not errors:
        return Outcome("bad", "poll returned None without reporting an error")
    err = errors[-1]
    if not isinstance(err, (ChainspecError, ValueError)) or type(err) in (UnicodeError, UnicodeDecodeError):
        return Outcome("bad", f"rejected with {type(err).__name__}: {_short(err)}")
    if raw_controls(str(err)):
        return Outcome("bad", f"raw control characters in {_short(err)}")
    if allocated(str(err)):
        return Outcome("bad", f"refused only after trying to allocate: {_short(err)}")
    after = net.state_dict()
    if [n.id for n in net] != ["fc"] or set(after) != set(before) or not all(
            torch.equal(after[k], v) for k, v in before.items()):
        return Outcome("bad", "a rejected revision changed the model")
    return Outcome("refused", f"{type(err).__name__}: {_short(str(err).splitlines()[0] if str(err) else '')}")


_CHECKPOINT: dict[str, Any] = {}


def _checkpoint_payload(work: Path) -> dict[str, Any]:
    """The payload of a checkpoint of :data:`BASE`, saved once per process."""
    if not _CHECKPOINT:
        import torch

        import chainspec

        spec = chainspec.loads(BASE, source="net.yaml")
        net = spec.build()
        opt = torch.optim.Adam(net.parameters())
        net(torch.randn(2, 4)).sum().backward()
        opt.step()
        good = work / "good.pt"
        chainspec.save_checkpoint(good, spec=spec, chains={"net": net}, stage=0, optimizers={"net": opt})
        _CHECKPOINT.update(torch.load(good, weights_only=True))
    return _CHECKPOINT


def entry_checkpoint(case: Case, path: Path, work: Path) -> Outcome:
    """``load_checkpoint`` of a checkpoint whose spec text is the case: a Checkpoint, or a printable CheckpointError."""
    import torch

    import chainspec
    from chainspec import CheckpointError

    payload = dict(_checkpoint_payload(work))
    payload["spec"] = {"text": case.text.decode("utf-8", "surrogateescape"),
                       "source": case.source if case.source is not None else path.name}
    target = work / "case.pt"
    torch.save(payload, target)
    try:
        chainspec.load_checkpoint(target, allow_imports=case.allow_imports)
    except CheckpointError as exc:
        if raw_controls(str(exc)):
            return Outcome("bad", f"raw control characters {raw_controls(str(exc))} in {_short(exc)}")
        if allocated(str(exc)):
            return Outcome("bad", f"refused only after trying to allocate: {_short(exc)}")
        return Outcome("refused", _short(str(exc).splitlines()[0]))
    except Exception as exc:
        return Outcome("bad", f"{type(exc).__name__}: {_short(exc)}")
    finally:
        target.unlink(missing_ok=True)
    return Outcome("ok")


def cli_argv(entry: str, case: Case, path: Path, work: Path) -> list[str]:
    """The command line of a CLI entry point for one case."""
    old = work / "old.yaml"
    old.write_bytes(case.old if case.old is not None else BASE.encode())
    argv = [a.format(save=work / "saved.pt", old=old) for a in CLI[entry]] + [str(path)]
    if entry == "cli-diff":
        argv = [argv[0], str(old), str(path)]
    for module in case.allow_imports:
        argv += ["--allow-import", module]
    return argv


def check_cli_output(entry: str, code: int | None, out: str) -> Outcome:
    """Exit code among the command's, no traceback, no internal error, nothing raw for the terminal."""
    if code not in EXIT_CODES[entry]:
        return Outcome("bad", f"exit {code}: {_short(out[-600:])}")
    if "Traceback" in out or "internal error" in out:
        return Outcome("bad", f"exit {code} with {_short(out[-600:])}")
    if raw_controls(out):
        return Outcome("bad", f"raw control characters {raw_controls(out)} in the output: {_short(out[-600:])}")
    if allocated(out):
        return Outcome("bad", f"refused only after trying to allocate: {_short(out[-600:])}")
    return Outcome("ok" if code == 0 else "refused", f"exit {code}")


def entry_cli(entry: str) -> Callable[[Case, Path, Path], Outcome]:
    """A command run in process by ``chainspec.cli.main``, its output captured."""
    def run(case: Case, path: Path, work: Path) -> Outcome:
        from chainspec.cli import main

        argv = cli_argv(entry, case, path, work)
        formats = [[], ["--format", "json"]] if entry == "cli-diff" and case.old is not None else [[]]
        outcome = Outcome("bad", "not run")
        for extra in formats:  # a diff case: the text plan and the JSON one
            out, err = io.StringIO(), io.StringIO()
            env = os.environ.pop("CHAINSPEC_DEBUG", None)
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    code = main([*argv, *extra])
            except BaseException as exc:  # what would have been a traceback
                return Outcome("bad", f"Traceback: {type(exc).__name__}: {_short(exc)}")
            finally:
                if env is not None:
                    os.environ["CHAINSPEC_DEBUG"] = env
                (work / "saved.pt").unlink(missing_ok=True)
            outcome = check_cli_output(entry, code, out.getvalue() + err.getvalue())
            if outcome.bad:
                return outcome
        return outcome

    return run


ENTRY_POINTS: dict[str, Callable[[Case, Path, Path], Outcome]] = {
    "load": entry_load,
    "check": entry_check,
    "watch": entry_watch,
    "checkpoint": entry_checkpoint,
    **{name: entry_cli(name) for name in CLI},
}


# -- the worker ------------------------------------------------------------------------------------------------------

Job = tuple[str, str]  # (entry point, case name)


def limit_memory(limit: int = MEMORY_LIMIT) -> None:
    """Cap this process's address space, so that a runaway allocation fails instead of swapping the machine."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def warm_up(work: Path) -> None:
    """Every import and lazy initialisation an entry point needs (torch's first meta operation imports
    torch._dynamo: seconds), done before the first job so that its deadline is its own."""
    valid = Case("warm-up", "valid", BASE.encode(), "a valid spec")
    path = work / "warm-up.yaml"
    path.write_bytes(valid.text)
    for entry in ("check", "watch", "checkpoint", "cli-build", "cli-diff"):
        with contextlib.suppress(Exception):
            ENTRY_POINTS[entry](valid, path, work)


def worker(directory: Path, jobs: list[Job]) -> None:
    """Run each (entry point, case), one JSON line per job on stdout (a ``start`` line before each)."""
    limit_memory()
    cases = {c.name: c for c in corpus()}
    # Reports go to a private copy of stdout; anything else written to file descriptor 1 (a library's print,
    # C code) lands with stderr, where it cannot be mistaken for a report.
    report = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        warm_up(work)
        for entry, name in jobs:
            print(json.dumps({"start": [entry, name]}), file=report, flush=True)
            started = time.perf_counter()
            try:
                outcome = ENTRY_POINTS[entry](cases[name], directory / f"{name}.yaml", work)
            except BaseException as exc:
                outcome = Outcome("bad", f"{type(exc).__name__} in the harness: {_short(exc)}")
            outcome.seconds = time.perf_counter() - started
            print(json.dumps({"job": [entry, name], **asdict(outcome)}), file=report, flush=True)
            if outcome.seconds > 0.5:  # a big case leaves cycles behind; a full collection costs 0.2 s with torch
                gc.collect()


def run_batch(entries: str | Iterable[str], cases: Iterable[Case], *, hang_after: float = HANG_AFTER,
              env: dict[str, str] | None = None) -> dict[Job, Outcome]:
    """Run every case through every entry point in worker processes; return the outcomes by (entry, name)."""
    cases = list(cases)
    entries = [entries] if isinstance(entries, str) else list(entries)
    return run_jobs([(entry, case) for case in cases for entry in entries], hang_after=hang_after, env=env)


def run_jobs(jobs: Iterable[tuple[str, Case]], *, hang_after: float = HANG_AFTER,
             env: dict[str, str] | None = None) -> dict[Job, Outcome]:
    """Run each (entry point, case) in worker processes; return the outcomes by (entry, name)."""
    jobs = list(jobs)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write(directory, {case.name: case for _, case in jobs}.values())
        names = [(entry, case.name) for entry, case in jobs]
        # One stream of workers per core: the cases are independent, and pytest itself leaves the other core idle.
        streams = [names[i::WORKERS] for i in range(WORKERS) if names[i::WORKERS]]
        with ThreadPoolExecutor(max_workers=max(1, len(streams))) as pool:
            parts = list(pool.map(lambda n: _stream(directory, n[0], n[1], hang_after, env), enumerate(streams)))
    return {job: outcome for part in parts for job, outcome in part.items()}


#: Worker processes run side by side.
WORKERS = max(1, min(2, os.cpu_count() or 1))


def _stream(directory: Path, number: int, todo: list[Job], hang_after: float,
            env: dict[str, str] | None) -> dict[Job, Outcome]:
    """Run ``todo`` in one worker after another (a new one after a hang or a crash); the outcomes by job."""
    results: dict[Job, Outcome] = {}
    while todo:
        results.update(_one_worker(directory, todo, hang_after, env, number))
        todo = [job for job in todo if job not in results]
    return results


def _one_worker(directory: Path, jobs: list[Job], hang_after: float,
                env: dict[str, str] | None, number: int = 0) -> dict[Job, Outcome]:
    """Run a worker until it finishes its jobs or fails on one; the failed job is recorded as ``bad``."""
    listing = directory / f"jobs-{number}.json"
    listing.write_text(json.dumps(jobs), encoding="utf-8")
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - not a pipe: a chatty worker must not block on a full one
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(directory), str(listing)],
                            stdout=subprocess.PIPE, stderr=errors, start_new_session=True,
                            env=env if env is not None else os.environ.copy())
    assert proc.stdout is not None
    results: dict[Job, Outcome] = {}
    current: Job | None = None
    # A torch import and the first meta operation come before the first job: allow for them.
    deadline = time.monotonic() + hang_after + 60
    buffer = b""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                results[current or jobs[0]] = Outcome("bad", f"hang: no answer within {hang_after:g} s", hang_after)
                return results
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:  # the worker ended
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if "start" in message:
                    current = (message["start"][0], message["start"][1])
                    deadline = time.monotonic() + hang_after
                else:
                    job = (message["job"][0], message["job"][1])
                    results[job] = Outcome(message["status"], message["detail"], message["seconds"])
                    current = None
        proc.wait(timeout=30)
        if current is not None or proc.returncode != 0:
            errors.seek(0)
            tail = errors.read().decode("utf-8", "replace")[-800:]
            culprit = current or next((job for job in jobs if job not in results), jobs[-1])
            results.setdefault(culprit, Outcome("bad", f"crashed (exit {proc.returncode}): {tail}"))
        return results
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        errors.close()


if __name__ == "__main__":
    worker(Path(sys.argv[1]), [(e, n) for e, n in json.loads(Path(sys.argv[2]).read_text(encoding="utf-8"))])
