"""One writer per run directory; a SIGKILLed holder leaves nothing stuck."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from blazefl.stages.run_lock import LOCK_NAME, RunLock, RunLockedError

_HOLDER = """
import sys, time
from pathlib import Path
from blazefl.stages.run_lock import RunLock
with RunLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


@contextmanager
def _holder(root: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the lock on `root` (killed on exit)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked", "the holder did not start"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_second_process_is_refused_and_sigkill_frees_the_lock(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with _holder(root) as proc:
        with pytest.raises(RunLockedError) as info:
            RunLock(root).acquire()
        message = str(info.value)
        assert message == (
            f"another blazefl process (pid {proc.pid}) is writing {root}: wait for it to "
            "finish or use another --out"
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (root / LOCK_NAME).exists()  # left behind, and it does not matter
    with RunLock(root) as lock:
        assert lock.held
        assert (root / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_lock_is_released_on_exit_of_the_block(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"  # created with parents
    with RunLock(root), pytest.raises(RunLockedError):  # not reentrant, even in one process
        RunLock(root).acquire()
    with RunLock(root):
        pass


def test_lock_released_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(KeyError), RunLock(tmp_path):
        raise KeyError("boom")
    assert RunLock(tmp_path).acquire().held


def test_lock_descriptor_is_not_inherited(tmp_path: Path) -> None:
    lock = RunLock(tmp_path).acquire()
    try:
        assert lock._fd is not None and not os.get_inheritable(lock._fd)
    finally:
        lock.release()
    assert not lock.held


def test_unusable_roots_are_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="use a writable folder as --out") as info:
        RunLock(a_file).acquire()
    assert "\n" not in str(info.value)
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / LOCK_NAME).symlink_to(tmp_path / "victim")
    with pytest.raises(ValueError, match="it is a symlink"):
        RunLock(planted).acquire()
    assert not (tmp_path / "victim").exists()
