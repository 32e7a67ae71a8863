"""A live `blazefl run` whose run directory is removed and made again stops with one line
(exit 2) and writes nothing into the new folder: a second writer may own it now."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.pipeline.conftest import TINY_SETS


def _rmtree_retrying(path: Path) -> None:
    """Remove a folder another process is still writing into (it may add entries while
    `rmtree` walks it)."""
    for _ in range(50):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)
    shutil.rmtree(path)


def test_replaced_run_directory_stops_the_live_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = [*TINY_SETS[:-3], "fl.rounds=400", *TINY_SETS[-2:]]  # long enough to catch mid-run
    args = [arg for item in sets for arg in ("--set", item)]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from blazefl.pipeline.cli import main; main()",
            "run",
            "--out",
            str(out),
            "--mode",
            "sequential",
            "--quiet",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "round-0001" / "manifest.json").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "round 1 never appeared"
            time.sleep(0.02)
        _rmtree_retrying(out)
        out.mkdir()  # a new, empty run folder (a second writer could lock it now)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = stderr.splitlines()
    assert proc.returncode == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "removed or replaced" in lines[0] and str(out) in lines[0], stderr
    assert list(out.iterdir()) == []  # nothing written into the new folder
