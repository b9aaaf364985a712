"""Reading a spec never blocks: regular files and pipes only, bounded in size and in time.

A spec path can name anything: a FIFO whose writer stays open, ``/dev/stdin``,
a character device such as ``/dev/kmsg`` (directly or through a symlink a
watched spec was swapped for). Each is either read within ``Limits.read_timeout``
and ``Limits.max_bytes`` or refused with a located ``cannot read spec`` problem,
quickly. ``-`` on the command line reads stdin under the same bounds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import chainspec
from chainspec import Limits, SpecError
from chainspec.cli import _io, main
from chainspec.read import document as _yaml
from chainspec.read.document import read_head

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")

SPEC = b"chainspec: 1\nchains:\n  net:\n    input_shape: [4]\n    nodes:\n      - {id: a, type: relu}\n"
#: A short read timeout, so that every test here finishes in well under a second or two.
QUICK = 0.2
DEVICES = ["/dev/zero", "/dev/null", "/dev/kmsg", "/dev/urandom", "/dev/tty", "/dev/full"]


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> Limits:
    """Limits with a short read timeout, also made the default of every reader (the watcher's too)."""
    monkeypatch.setattr(_yaml, "READ_TIMEOUT", QUICK)
    limits = Limits(read_timeout=QUICK)
    monkeypatch.setattr(_io, "LIMITS", limits)
    return limits


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return path


@pytest.fixture
def idle_writer(fifo: Path) -> Iterator[int]:
    """A writer that holds the FIFO open and writes nothing (unless the test does)."""
    fd = os.open(fifo, os.O_RDWR)  # Linux: a FIFO opened read-write is open for writing without waiting
    yield fd
    os.close(fd)


def timed(fn: object) -> tuple[object, float]:
    started = time.perf_counter()
    try:
        result = fn()  # type: ignore[operator]
    except Exception as exc:
        result = exc
    return result, time.perf_counter() - started


def present(path: str) -> str:
    if not os.path.exists(path):
        pytest.skip(f"no {path} here")
    return path


# -- named pipes -----------------------------------------------------------------------------------------------------

def test_a_fifo_without_a_writer_reads_as_empty_at_once(fifo: Path) -> None:
    (raw, size), elapsed = timed(lambda: read_head(fifo, 1000, QUICK))  # type: ignore[misc]
    assert (raw, size) == (b"", None) and elapsed < QUICK


def test_an_idle_writer_times_out(fifo: Path, idle_writer: int) -> None:
    err, elapsed = timed(lambda: read_head(fifo, 1000, QUICK))
    assert isinstance(err, TimeoutError) and isinstance(err, OSError)
    assert "did not finish within 0.2 seconds" in str(err) and "read_timeout" in str(err)
    assert QUICK <= elapsed < QUICK + 1.5


def test_a_writer_that_sends_part_of_a_spec_then_stalls_times_out(fifo: Path, idle_writer: int) -> None:
    os.write(idle_writer, SPEC[:20])
    err, elapsed = timed(lambda: read_head(fifo, 1000, QUICK))
    assert isinstance(err, TimeoutError) and "(20 bytes read)" in str(err)
    assert elapsed < QUICK + 1.5


def test_a_writer_that_trickles_forever_is_cut_off_at_the_deadline(fifo: Path, idle_writer: int) -> None:
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            os.write(idle_writer, b"#")
            time.sleep(0.01)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        err, elapsed = timed(lambda: read_head(fifo, 100_000, QUICK))
    finally:
        stop.set()
        thread.join()
    assert isinstance(err, TimeoutError) and elapsed < QUICK + 1.5


def test_a_flooding_writer_is_read_to_one_byte_past_the_limit(fifo: Path, idle_writer: int) -> None:
    os.write(idle_writer, b"#" * 5000)  # and stays open
    (raw, size), elapsed = timed(lambda: read_head(fifo, 1000, QUICK))  # type: ignore[misc]
    assert len(raw) == 1001 and size is None and elapsed < QUICK
    with pytest.raises(SpecError, match=r"pipe.yaml:1:1: file is too large; specs are limited to 1,000 bytes"):
        chainspec.load(fifo, limits=Limits(max_bytes=1000, read_timeout=QUICK))


def test_a_writer_that_finishes_is_read_to_its_end(fifo: Path, quick: Limits) -> None:
    writer = os.open(fifo, os.O_RDWR)
    os.write(writer, SPEC)
    closer = threading.Timer(0.1, os.close, [writer])  # the last writer goes away: end of file
    closer.start()
    spec, elapsed = timed(lambda: chainspec.load(fifo, limits=quick))
    closer.join()
    assert isinstance(spec, chainspec.Spec), spec
    assert spec.chain_names == ["net"] and elapsed < 2


def test_load_reports_an_idle_writer_as_a_located_problem(fifo: Path, idle_writer: int, quick: Limits) -> None:
    err, elapsed = timed(lambda: chainspec.load(fifo, limits=quick))
    assert isinstance(err, SpecError), err
    assert str(err).startswith(f"{fifo}: cannot read spec: the pipe did not finish within 0.2 seconds")
    assert elapsed < QUICK + 1.5


def test_the_cli_reports_an_idle_writer(capsys: pytest.CaptureFixture[str], fifo: Path, idle_writer: int,
                                        quick: Limits) -> None:
    for argv in (["validate", str(fifo)], ["build", str(fifo)]):
        code, elapsed = timed(lambda: main(argv))  # noqa: B023
        out, err = capsys.readouterr()
        assert code == 1 and elapsed < QUICK + 1.5
        assert f"{fifo}: cannot read spec: the pipe did not finish within" in out + err
        assert "Traceback" not in out + err


# -- character devices, directories, sockets --------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_character_devices_are_refused_without_being_opened(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    present(device)
    opened: list[object] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    err, elapsed = timed(lambda: read_head(device, 1000, QUICK))
    assert isinstance(err, OSError) and not isinstance(err, TimeoutError), err
    assert err.strerror == "it is a character device; specs are limited to regular files and pipes"
    assert opened == [] and elapsed < QUICK
    with pytest.raises(SpecError, match=rf"^{device}: cannot read spec: it is a character device"):
        chainspec.load(device)


@pytest.mark.parametrize("device", ["/dev/kmsg", "/dev/zero", "/dev/stdin"])
def test_a_symlink_to_a_device_is_refused(tmp_path: Path, device: str) -> None:
    present(device)
    link = tmp_path / "net.yaml"
    link.symlink_to(device)
    if not stat.S_ISCHR(os.stat(link).st_mode):
        pytest.skip(f"{device} is not a character device here")
    err, elapsed = timed(lambda: chainspec.load(link))
    assert isinstance(err, SpecError) and elapsed < 1
    assert str(err) == f"{link}: cannot read spec: it is a character device; specs are limited to regular files " \
                       "and pipes"


def test_the_kind_is_checked_again_on_the_open_descriptor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A path swapped for a device between the check and the open is still refused (fstat, not stat)."""
    present("/dev/zero")
    link = tmp_path / "net.yaml"
    link.symlink_to("/dev/zero")
    regular = os.stat(__file__)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: regular if str(p) == str(link) else real_stat(p, *a, **k))
    with pytest.raises(OSError, match="character device"):
        read_head(link, 1000, QUICK)


def test_directories_and_sockets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"cannot read spec: it is a directory; specs are limited to regular files"):
        chainspec.load(tmp_path)
    path = tmp_path / "s.yaml"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        server.listen(1)
        err, elapsed = timed(lambda: chainspec.load(path))
    finally:
        server.close()
    assert isinstance(err, SpecError) and "it is a socket" in str(err) and elapsed < 1


def test_regular_files_report_their_size_when_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * 5000)
    raw, size = read_head(path, 1000)
    assert len(raw) == 1001 and size == 5000
    assert read_head(path, 5000) == (b"#" * 5000, None)


def test_a_huge_byte_limit_reads_the_file_without_allocating_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "net.yaml"
    path.write_bytes(SPEC)
    assert read_head(path, 2**62) == (SPEC, None)
    assert chainspec.load(path, limits=Limits(max_bytes=2**62)).chain_names == ["net"]


def test_load_passes_its_read_timeout_to_the_read(fifo: Path, idle_writer: int) -> None:
    # Not the module default: the Limits given to load bound the read of a pipe.
    err, elapsed = timed(lambda: chainspec.load(fifo, limits=Limits(read_timeout=0.1)))
    assert isinstance(err, SpecError), err
    assert "within 0.1 seconds" in str(err) and elapsed < 1.5


# -- a watched spec swapped for something that would block -------------------------------------------------------

@pytest.mark.parametrize("target", ["fifo-with-idle-writer", "/dev/kmsg", "/dev/zero"])
def test_a_watched_spec_swapped_for_a_blocking_file_changes_nothing(tmp_path: Path, quick: Limits,
                                                                    target: str) -> None:
    path = tmp_path / "net.yaml"
    path.write_bytes(SPEC)
    net = chainspec.load(path).build()
    errors: list[Exception] = []
    watcher = chainspec.SpecWatcher(path, net, on_error=errors.append, settle=0, limits=quick)
    path.unlink()
    writer = None
    if target.startswith("/"):
        present(target)
        path.symlink_to(target)
    else:
        os.mkfifo(path)
        writer = os.open(path, os.O_RDWR)
    try:
        result, elapsed = timed(watcher.poll)
    finally:
        if writer is not None:
            os.close(writer)
    assert result is None and elapsed < QUICK + 1.5
    assert len(errors) == 1 and isinstance(errors[0], OSError | SpecError), errors
    assert [n.id for n in net] == ["a"]


def test_a_poll_waits_on_a_pipe_no_longer_than_its_own_bound(tmp_path: Path) -> None:
    """A training loop's poll: a FIFO with an idle writer costs at most POLL_READ_TIMEOUT, not Limits.read_timeout."""
    from chainspec.revise.watch import POLL_READ_TIMEOUT, SettledReader

    path = tmp_path / "net.yaml"
    path.write_bytes(SPEC)
    reader = SettledReader(path, settle=0, limits=Limits(read_timeout=30.0), seen=SPEC)
    assert reader.read_timeout == POLL_READ_TIMEOUT
    path.unlink()
    os.mkfifo(path)
    writer = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(TimeoutError):
            reader.poll()
    finally:
        os.close(writer)


# -- '-': stdin --------------------------------------------------------------------------------------------------

def cli(*argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``chainspec ARGV`` in a fresh process (``validate``: no torch import, so it starts fast)."""
    return subprocess.run([sys.executable, "-m", "chainspec", *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CHAINSPEC_DEBUG": ""}, **kwargs)  # type: ignore[call-overload]


def test_dash_reads_a_piped_spec() -> None:
    assert cli("validate", "-", input=SPEC.decode()).returncode == 0
    bad = cli("validate", "-", input=SPEC.decode().replace("relu", "relux"))
    assert bad.returncode == 1 and "<stdin>:6:" in bad.stdout and "unknown node type 'relux'" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr


def test_dash_reads_a_redirected_file_and_refuses_a_device(tmp_path: Path) -> None:
    path = tmp_path / "net.yaml"
    path.write_bytes(SPEC)
    with path.open("rb") as fh:
        assert cli("validate", "-", stdin=fh).returncode == 0
    with open(os.devnull, "rb") as fh:
        result = cli("validate", "-", stdin=fh)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert result.stdout.startswith("<stdin>: cannot read spec: it is a character device")


def test_dash_refuses_stdin_past_the_size_limit() -> None:
    result = cli("validate", "-", input="#" * 300_000)
    assert result.returncode == 1
    assert "<stdin>:1:1: file is too large; specs are limited to 262,144 bytes" in result.stdout


@pytest.fixture
def stdin_pipe(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Replace stdin by a pipe whose writer the test holds; yields the writer's descriptor."""
    read, write = os.pipe()
    handle = os.fdopen(read, "r")
    monkeypatch.setattr(sys, "stdin", handle)
    yield write
    handle.close()
    with contextlib.suppress(OSError):
        os.close(write)


def test_dash_in_build_and_diff(capsys: pytest.CaptureFixture[str], tmp_path: Path, stdin_pipe: int) -> None:
    os.write(stdin_pipe, SPEC)
    os.close(stdin_pipe)  # the writer is done: end of file after the spec
    new = tmp_path / "new.yaml"
    new.write_bytes(SPEC.replace(b"relu", b"tanh"))
    assert main(["diff", "-", str(new)]) == 1
    out = capsys.readouterr().out
    assert f"(<stdin> → {new})" in out and "! a (tanh): type relu → tanh" in out
    assert main(["build", "-"]) == 1  # stdin is used up: empty now
    assert "<stdin>:1:1: file is empty" in capsys.readouterr().err
    assert main(["diff", "-", "-"]) == 2
    assert "stdin ('-') can hold only one of OLD and NEW" in capsys.readouterr().err


def test_dash_in_build(capsys: pytest.CaptureFixture[str], stdin_pipe: int) -> None:
    os.write(stdin_pipe, SPEC)
    os.close(stdin_pipe)
    assert main(["build", "-", "--stage", "0"]) == 0
    assert capsys.readouterr().out.startswith("<stdin>: chain 'net', stage 0 of 0, input [4]\n")


def test_dash_with_an_idle_writer_times_out(capsys: pytest.CaptureFixture[str], stdin_pipe: int,
                                             quick: Limits) -> None:
    os.write(stdin_pipe, SPEC[:10])
    for argv in (["validate", "-"], ["build", "-"], ["diff", "-", "specs/blog.yaml"]):
        code, elapsed = timed(lambda: main(argv))  # noqa: B023
        out, err = capsys.readouterr()
        assert code == (2 if argv[0] == "diff" else 1) and elapsed < QUICK + 1.5
        assert "<stdin>: cannot read spec: the pipe did not finish within 0.2 seconds" in out + err, out + err
    assert os.get_blocking(sys.stdin.fileno())  # stdin is left as it was found


def test_dash_when_stdin_is_not_a_file(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", None)
    assert main(["validate", "-"]) == 1
    assert "<stdin>: cannot read spec: stdin is not open" in capsys.readouterr().out


def test_a_terminal_on_stdin_is_refused_with_a_hint(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import pty
        leader, follower = pty.openpty()
    except (ImportError, OSError):
        pytest.skip("no pseudo-terminals here")
    handle = os.fdopen(follower, "r")
    monkeypatch.setattr(sys, "stdin", handle)
    try:
        code, elapsed = timed(lambda: main(["build", "-"]))
    finally:
        handle.close()
        os.close(leader)
    err = capsys.readouterr().err
    assert code == 1 and elapsed < 1
    assert "<stdin>: cannot read spec: it is a terminal; pipe a spec in" in err
