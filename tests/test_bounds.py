"""Bounds on any input: every hostile document ends, through every entry point, in a documented outcome.

The corpus (``tests/hostile_corpus.py``) holds, for each class of hostile spec, several documents of
at most 256 KiB that push the class to its worst within the size limit. They go through
``chainspec.load``, ``Spec.check()``, a ``SpecWatcher`` whose file they replace, ``load_checkpoint`` of a
checkpoint whose spec text they are, and the commands ``validate``, ``validate --deep``, ``build``,
``build --save`` and ``diff`` (in process). Each must end in success or the documented exception (a
located, printable ``SpecError``; a ``CheckpointError``; exit code 0/1, or 2 for ``diff``, with no
traceback and no raw control character), never another exception, never a hang: the cases run in
worker processes with a 1.5 GB address-space limit and a 20 s deadline each
(``tests/hostile_runner.py``). The default run takes every case through ``load`` and the key cases of
each class through every entry point; the tests marked ``slow`` take the rest, and the commands as
real processes. How *fast* and how *small* is measured by ``python benchmarks/bench_hostile.py``, not
asserted here.

Special files (a FIFO with a writer that never writes, ``/dev/stdin`` on such a pipe, ``/dev/kmsg``,
symlinks to them) are read by the same entry points in a subprocess under the same deadline.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from hostile_corpus import BASE, CLASSES, MAX_BYTES, VALUES, Case, corpus  # noqa: E402
from hostile_runner import (  # noqa: E402
    CLI,
    HANG_AFTER,
    MEMORY_LIMIT,
    Outcome,
    check_cli_output,
    cli_argv,
    limit_memory,
    raw_controls,
    run_jobs,
)

CASES = corpus()
KEY = [case for case in CASES if case.key]
#: The library entry points, and the commands run in process (their output captured).
LIBRARY = ["load", "check", "watch", "checkpoint"]
COMMANDS = list(CLI)
ENTRIES = LIBRARY + COMMANDS
#: The default run: every case through ``load``; the key cases of each class through every other entry point
#: (``build --save``, which builds and saves real weights, for the classes about memory and errors only).
#: ``test_the_whole_corpus_through_every_entry_point`` (slow) runs the rest.
DEFAULT_JOBS = [("load", case) for case in CASES] + [
    (entry, case) for case in KEY for entry in ENTRIES[1:]
    if entry != "cli-save" or case.cls in ("memory", "internal", "control")]
ALL_JOBS = [(entry, case) for case in CASES for entry in ENTRIES]


def _failures(results: dict[tuple[str, str], Outcome], entry: str) -> list[str]:
    classes = {case.name: case.cls for case in CASES}
    return [f"{name} ({classes[name]}): {outcome.detail}"
            for (where, name), outcome in sorted(results.items()) if where == entry and outcome.bad]


@pytest.fixture(scope="module")
def outcomes() -> dict[tuple[str, str], Outcome]:
    """The default jobs, once for the module (one worker stream, restarted after a hang or a crash)."""
    return run_jobs(DEFAULT_JOBS)


def test_the_corpus_covers_every_class_within_the_size_limit() -> None:
    counts = Counter(case.cls for case in CASES)
    assert set(counts) == set(CLASSES), counts
    assert all(n >= 3 for n in counts.values()), counts  # several generated cases per class, not one example
    assert all(len(case.text) <= MAX_BYTES for case in CASES)
    assert len({case.name for case in CASES}) == len(CASES)
    # The worst of each size-driven class fills the size limit (within a few percent) or the value limit.
    for cls in ("expansion", "deep-check", "slow-refusal", "deep-values"):
        assert max(len(c.text) for c in CASES if c.cls == cls) > 0.95 * MAX_BYTES, cls


def test_corpus_documents_stay_under_the_value_limit() -> None:
    """A case refused for its number of YAML values alone would never reach the stage it attacks."""
    import yaml

    for case in CASES:
        if len(case.text) < 20_000:
            continue
        events = yaml.parse(case.text.decode("utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        count = sum(isinstance(e, (yaml.ScalarEvent, yaml.CollectionStartEvent)) for e in events)
        assert count <= VALUES + 100, (case.name, count)


@pytest.mark.parametrize("entry", LIBRARY)
def test_every_hostile_spec_ends_in_a_documented_outcome(outcomes: dict[tuple[str, str], Outcome],
                                                         entry: str) -> None:
    """load / check: a located, printable SpecError or a spec (load: a SpecError for the cases whose acceptance is
    itself the bug); watch: poll returns and a rejection changes nothing; checkpoint: a printable CheckpointError
    or a checkpoint. Never another exception, never a hang."""
    failures = _failures(outcomes, entry)
    assert not failures, f"{len(failures)} hostile specs escape {entry}:\n" + "\n".join(failures)


@pytest.mark.parametrize("entry", COMMANDS)
def test_every_command_exits_cleanly_on_every_hostile_spec(outcomes: dict[tuple[str, str], Outcome],
                                                           entry: str) -> None:
    """Exit 0 or 1 (diff: 0, 1 or 2), no traceback, no internal error, no raw control character."""
    failures = _failures(outcomes, entry)
    assert not failures, f"{len(failures)} hostile specs break `chainspec {' '.join(CLI[entry])}`:\n" \
        + "\n".join(failures)


@pytest.mark.slow
def test_the_whole_corpus_through_every_entry_point() -> None:
    """What the default run leaves out: every case through every entry point."""
    default = {(entry, case.name) for entry, case in DEFAULT_JOBS}
    results = run_jobs([(entry, case) for entry, case in ALL_JOBS if (entry, case.name) not in default])
    failures = [f"{entry}: {line}" for entry in ENTRIES for line in _failures(results, entry)]
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)


# -- the command line as real processes ----------------------------------------------------------------------------

def _cli(argv: list[str], *, stdin: int | None = None, timeout: float = HANG_AFTER + 40) -> tuple[int | None, str]:
    """``python -m chainspec ARGV`` as a user runs it, under the memory limit; (exit code or None on a hang, output)."""
    env = {k: v for k, v in os.environ.items() if k != "CHAINSPEC_DEBUG"}
    try:
        proc = subprocess.run([sys.executable, "-m", "chainspec", *argv], capture_output=True, timeout=timeout,
                              env=env, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                              preexec_fn=limit_memory)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        return None, out.decode("utf-8", "replace")[-600:]
    return proc.returncode, (proc.stdout + proc.stderr).decode("utf-8", "replace")


#: A case of each class for the commands that import torch (a fresh process costs seconds).
REPRESENTATIVES = list({c.name: c for c in [next(k for k in KEY if k.cls == cls) for cls in CLASSES]
                        + [k for k in KEY if k.old is not None]}.values())


@pytest.mark.slow
@pytest.mark.parametrize("form", [[], ["--format", "json"]], ids=["text", "json"])
def test_validate_as_a_process_on_every_hostile_spec(tmp_path: Path, form: list[str]) -> None:
    """`chainspec validate` on the whole corpus at once, as a pre-commit hook runs it on a pull request's files
    (imports allowed as the cases ask): exit 1, one verdict per file, no traceback, nothing raw for the terminal."""
    paths = []
    for case in CASES:
        path = tmp_path / f"{case.name}.yaml"
        path.write_bytes(case.text)
        paths.append(str(path))
    allowed = sorted({module for case in CASES for module in case.allow_imports})
    imports = [arg for module in allowed for arg in ("--allow-import", module)]
    code, out = _cli(["validate", *form, *paths, *imports], timeout=HANG_AFTER * 20)
    assert code is not None, f"hang: {out}"
    outcome = check_cli_output("cli-validate", code, out)
    assert not outcome.bad, outcome.detail
    assert code == 1, out[-2000:]
    refuse = {case.name for case in CASES if case.must_refuse}
    accepted = [Path(p).stem for p in paths if Path(p).stem in refuse and p not in out]
    assert not accepted, f"no problem reported for {accepted}, which must be refused"


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["cli-build", "cli-save", "cli-diff"])
@pytest.mark.parametrize("case", REPRESENTATIVES, ids=lambda c: c.name)
def test_commands_as_processes(tmp_path: Path, entry: str, case: Case) -> None:
    """``build`` (which checks every stage), ``build --save`` and ``diff`` as real processes, on a key case of each
    class: what the in-process run cannot see (an exception at exit, output the real streams cannot encode)."""
    path = tmp_path / f"{case.name}.yaml"
    path.write_bytes(case.text)
    code, out = _cli(cli_argv(entry, case, path, tmp_path))
    assert code is not None, f"hang: {out}"
    outcome = check_cli_output(entry, code, out)
    assert not outcome.bad, outcome.detail


# -- special files ---------------------------------------------------------------------------------------------------

#: Reads each path in argv[2:] with load (a short read timeout where chainspec has Limits) and, if argv[1] is
#: "cli", with the validate command too; prints what each did.
READER = textwrap.dedent("""
    import io, contextlib, sys
    import chainspec
    from chainspec.cli import main
    limits = {"limits": chainspec.Limits(read_timeout=1.0)} if hasattr(chainspec, "Limits") else {}
    for path in sys.argv[2:]:
        print(path, "reading", flush=True)
        try:
            chainspec.load(path, **limits)
            print(path, "load: ok")
        except chainspec.SpecError as exc:
            print(path, "load: SpecError")
        except Exception as exc:
            print(path, "load: BAD", type(exc).__name__, exc)
        if sys.argv[1] == "cli":
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = main(["validate", path])
            text = out.getvalue()
            print(path, "validate:", code, "BAD" if "internal error" in text or "Traceback" in text else "")
        sys.stdout.flush()
""")

#: For each pair (watched file, target) in argv[1:]: a watcher whose file is replaced by a symlink to the target;
#: poll must return, the chain untouched.
WATCHER = textwrap.dedent("""
    import os, sys
    import chainspec
    for watched, target in zip(sys.argv[1::2], sys.argv[2::2]):
        net = chainspec.load(watched).build()
        errors = []
        watcher = chainspec.SpecWatcher(watched, net, on_error=errors.append, settle=0)
        os.unlink(watched)
        os.symlink(target, watched)
        plan = watcher.poll()
        kinds = ["SpecError" if isinstance(e, chainspec.SpecError) else "OSError" if isinstance(e, OSError)
                 else type(e).__name__ for e in errors]
        print(target, "poll:", plan, kinds, [n.id for n in net], flush=True)
""")


def _run_script(script: str, *args: str, stdin: int | None = None,
                timeout: float = HANG_AFTER + 20) -> tuple[int | None, str]:
    try:
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                              timeout=timeout, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                              preexec_fn=limit_memory)
    except subprocess.TimeoutExpired as exc:
        def text(data: str | bytes | None) -> str:
            return data.decode("utf-8", "replace") if isinstance(data, bytes) else data or ""

        return None, text(exc.stdout) + text(exc.stderr)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture
def idle_fifo(tmp_path: Path):
    """A FIFO with a writer that never writes (held open here): a plain read of it blocks forever."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # on Linux, a writer that needs no reader to open
    yield fifo
    os.close(fd)


def _special_files(tmp_path: Path, fifo: Path) -> dict[str, Path]:
    link = tmp_path / "link.yaml"
    link.symlink_to(fifo)
    chained = tmp_path / "chained.yaml"
    chained.symlink_to(link)
    files = {"fifo-idle-writer": fifo, "symlink-to-fifo": link, "symlink-to-symlink-to-fifo": chained,
             "directory": tmp_path, "dev-zero": Path("/dev/zero"), "dev-urandom": Path("/dev/urandom"),
             "proc-self-stdin": Path("/proc/self/fd/0")}
    if os.access("/dev/kmsg", os.R_OK):
        files["dev-kmsg"] = Path("/dev/kmsg")
        kmsg = tmp_path / "kmsg.yaml"
        kmsg.symlink_to("/dev/kmsg")
        files["symlink-to-kmsg"] = kmsg
    sock = tmp_path / "sock.yaml"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock))
    files["unix-socket"] = sock
    return files


def _read_specials(paths: dict[str, Path], *, cli: bool) -> list[str]:
    """Run :data:`READER` on every path at once, stdin an idle pipe too; the failures, one line each."""
    read_end, write_end = os.pipe()  # stdin: a pipe whose writer stays idle
    try:
        args = [str(p) for p in paths.values()]
        code, out = _run_script(READER, "cli" if cli else "load", *args, stdin=read_end,
                                timeout=HANG_AFTER + 15 * len(args))
    finally:
        os.close(read_end)
        os.close(write_end)
    if code is None:
        reading = [line.split(" ", 1)[0] for line in out.splitlines() if line.endswith(" reading")]
        return [f"hang reading {reading[-1] if reading else 'the first file'}: {out[-600:]}"]
    failures = [line for line in out.splitlines() if "BAD" in line]
    answered = {line.split(" ", 1)[0] for line in out.splitlines() if not line.endswith(" reading")}
    failures += [f"{name}: no answer (exit {code}): {out[-300:]}" for name, p in paths.items()
                 if str(p) not in answered]
    return failures


@pytest.mark.skipif(sys.platform != "linux", reason="Linux special files")
def test_special_files_never_block(tmp_path: Path, idle_fifo: Path) -> None:
    """A FIFO whose writer never writes, /dev/stdin on such a pipe, /dev/kmsg, links to them, devices, a directory,
    a socket: load answers each within its read timeout (a SpecError, or a spec), never blocks."""
    paths = {**_special_files(tmp_path, idle_fifo), "dev-stdin": Path("/dev/stdin")}
    failures = _read_specials(paths, cli=False)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="Linux special files")
def test_validate_never_blocks_on_special_files(tmp_path: Path, idle_fifo: Path) -> None:
    """The same files through `chainspec validate`, with its default read timeout: exit 1, no traceback."""
    paths = {**_special_files(tmp_path, idle_fifo), "dev-stdin": Path("/dev/stdin")}
    failures = _read_specials(paths, cli=True)
    assert not failures, "\n".join(failures)


@pytest.mark.skipif(sys.platform != "linux", reason="Linux special files")
def test_a_watched_spec_replaced_by_a_link_to_a_special_file(tmp_path: Path, idle_fifo: Path) -> None:
    """A link to a FIFO whose writer never writes, to /dev/kmsg, to /dev/zero: poll returns, nothing changes."""
    targets = [str(idle_fifo), "/dev/zero"] + (["/dev/kmsg"] if os.access("/dev/kmsg", os.R_OK) else [])
    args = []
    for i, target in enumerate(targets):
        watched = tmp_path / f"net{i}.yaml"
        watched.write_text(BASE, encoding="utf-8")
        args += [str(watched), target]
    code, out = _run_script(WATCHER, *args, timeout=HANG_AFTER + 15 * len(targets))
    assert code == 0, f"{'hang' if code is None else f'exit {code}'}: {out[-600:]}"
    for target in targets:
        # Refused (a SpecError, or the OSError of a file that is not a regular file), the chain untouched.
        assert (f"{target} poll: None ['SpecError'] ['fc']" in out
                or f"{target} poll: None ['OSError'] ['fc']" in out), out


def test_the_harness_catches_a_hang_and_a_crash() -> None:
    """The hang guard and the memory limit themselves: a worker stuck in C code is killed, a huge allocation fails."""
    code, out = _run_script("import time; time.sleep(600)", timeout=2)
    assert code is None
    code, out = _run_script(f"x = bytearray({MEMORY_LIMIT})")
    assert code != 0 and "MemoryError" in out
    assert raw_controls("a\x1b[2Jb\n\u202e") == ["\x1b", "\u202e"]
