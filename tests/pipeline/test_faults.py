"""Issue 8 section 4: concurrent writers and leftovers of killed runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from blazefl.stages.run_lock import RunLock
from blazefl.stages.temp_cleanup import OWNER_FILE, clean_stale_pymp_dirs
from tests.pipeline.integrity_helpers import cli, one_line_error, sets


def test_second_writer_on_the_same_out_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with RunLock(out):  # another process's lock (flock locks are per open file)
        for args in (
            ("run", "--out", str(out), *sets()),
            ("stage", "prepare", "--out", str(out), *sets()),
        ):
            assert "another blazefl process" in one_line_error(cli(*args))
    assert cli("stage", "prepare", "--out", str(out), *sets()).exit_code == 0


def test_a_killed_holder_leaves_no_stuck_lock(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = (
        "import os, sys; from pathlib import Path; from blazefl.stages.run_lock import RunLock; "
        f"RunLock(Path({str(out)!r})).acquire(); os.kill(os.getpid(), 9)"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    assert cli("stage", "prepare", "--out", str(out), *sets()).exit_code == 0


def test_next_run_removes_the_temp_folder_of_a_killed_run(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / "pymp-killed"
    left.mkdir()
    start = Path(f"/proc/{os.getpid()}/stat").exists()
    (left / OWNER_FILE).write_text(f"{dead.pid}-{'1' if start else '?'}\n")
    unclaimed = tmp_path / "pymp-someone-else"
    unclaimed.mkdir()
    removed = clean_stale_pymp_dirs(tmp_path)
    assert left in removed and not left.exists() and unclaimed.exists()
