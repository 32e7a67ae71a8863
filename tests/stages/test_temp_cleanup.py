"""Temp folders of a SIGKILLed run are removed by the next one; nobody else's are touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from blazefl.stages.temp_cleanup import (
    OWNED_PREFIX,
    OWNER_FILE,
    clean_stale_pymp_dirs,
    owner_tag,
    process_start_time,
)

_CHILD = """
import sys, time
from blazefl.stages.temp_cleanup import claim_pymp_dir, owned_temp_dir
pymp = claim_pymp_dir()
with owned_temp_dir() as own:
    (own / "uplink-0.bin").write_bytes(b"x" * 1000)
    print(pymp, own, flush=True)
    if sys.argv[1] == "wait":
        time.sleep(120)
"""


def _child(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path, Path]:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, mode], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    pymp, own = proc.stdout.readline().split()
    return proc, Path(pymp), Path(own)


def test_killed_run_is_cleaned_and_live_run_is_not(tmp_path: Path) -> None:
    proc, pymp, own = _child(tmp_path, "wait")
    try:
        assert pymp.parent == tmp_path and pymp.name.startswith("pymp-")
        assert own.parent == tmp_path and own.name.startswith(OWNED_PREFIX)
        assert (pymp / OWNER_FILE).read_text().strip() == owner_tag(proc.pid)
        assert clean_stale_pymp_dirs(tmp_path) == []  # the owner is alive
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert pymp.is_dir() and own.is_dir()  # what a SIGKILL leaves
        assert clean_stale_pymp_dirs(tmp_path) == sorted([pymp, own])
        assert not pymp.exists() and not own.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_normal_exit_leaves_nothing(tmp_path: Path) -> None:
    proc, pymp, own = _child(tmp_path, "exit")
    assert proc.wait() == 0
    assert not pymp.exists() and not own.exists()


def test_folders_of_unknown_owners_are_kept(tmp_path: Path) -> None:
    unclaimed = tmp_path / "pymp-unclaimed"
    unclaimed.mkdir()
    garbage = tmp_path / "pymp-garbage"
    garbage.mkdir()
    (garbage / OWNER_FILE).write_text("not a tag")
    alive = tmp_path / "pymp-alive"
    alive.mkdir()
    (alive / OWNER_FILE).write_text(owner_tag() + "\n")
    link = tmp_path / "pymp-link"
    link.symlink_to(alive, target_is_directory=True)
    fifo_owner = tmp_path / "pymp-fifo"
    fifo_owner.mkdir()
    os.mkfifo(fifo_owner / OWNER_FILE)  # must not hang the reader
    other = tmp_path / "unrelated-123-456-x"
    other.mkdir()
    assert clean_stale_pymp_dirs(tmp_path) == []
    for path in (unclaimed, garbage, alive, link, fifo_owner, other):
        assert path.exists()


def test_reused_pid_counts_as_gone(tmp_path: Path) -> None:
    # our own pid, but a start time that is not ours: the pid was reused by another process
    reused = tmp_path / "pymp-reused"
    reused.mkdir()
    (reused / OWNER_FILE).write_text(f"{os.getpid()}-1\n")
    named = tmp_path / f"{OWNED_PREFIX}{os.getpid()}-1-abc"
    named.mkdir()
    assert clean_stale_pymp_dirs(tmp_path) == sorted([reused, named])


def test_process_start_time() -> None:
    assert process_start_time(os.getpid()) not in (None, "")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert process_start_time(proc.pid) is None
    assert clean_stale_pymp_dirs(Path("/nonexistent-folder")) == []
