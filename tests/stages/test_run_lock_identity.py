"""A run directory (or its lock file) removed and made again under a live holder is noticed
before any commit into it: `flock` follows the inode, so the path alone is not protected."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from blazefl.stages.artifacts import atomic_dir, atomic_write
from blazefl.stages.run_lock import (
    LOCK_NAME,
    RunLock,
    RunReplacedError,
    check_writer,
)


def test_intact_lock_lets_commits_through(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with RunLock(root) as lock:
        lock.check()
        check_writer(root / "round-0001")
        atomic_write(root / "metrics" / "round-0001.json", b"{}\n", root)
        with atomic_dir(root / "round-0001", root) as tmp:
            (tmp / "manifest.json").write_bytes(b"{}\n")
    assert (root / "round-0001" / "manifest.json").is_file()


@pytest.mark.parametrize("what", ["folder", "lock file", "folder removed"])
def test_replaced_run_directory_stops_every_commit(tmp_path: Path, what: str) -> None:
    root = tmp_path / "run"
    outside = tmp_path / "elsewhere"
    with RunLock(root) as lock:
        if what == "folder":
            shutil.rmtree(root)
            root.mkdir()
        elif what == "lock file":
            (root / LOCK_NAME).unlink()
            (root / LOCK_NAME).touch()  # what a second writer's RunLock would create
        else:
            shutil.rmtree(root)
        assert not lock.intact()
        before = sorted(p.name for p in root.iterdir()) if root.exists() else None
        with pytest.raises(RunReplacedError) as info:
            lock.check()
        message = str(info.value)
        assert "\n" not in message and str(root) in message and "removed or replaced" in message
        with pytest.raises(RunReplacedError):
            atomic_write(root / "summary.json", b"{}\n", root)
        with pytest.raises(RunReplacedError), atomic_dir(root / "round-0002", root) as tmp:
            (tmp / "x").write_bytes(b"x")
        # nothing was written into the new folder, and removal was not undone
        after = sorted(p.name for p in root.iterdir()) if root.exists() else None
        assert after == before
        check_writer(outside / "file")  # paths of no held run are not this lock's business
    assert not lock.held


def test_replaced_while_a_round_is_being_written(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with RunLock(root):
        with pytest.raises(RunReplacedError), atomic_dir(root / "round-0001", root) as tmp:
            (tmp / "a").write_bytes(b"a")
            shutil.rmtree(root)
            root.mkdir()
            (tmp / "b").write_bytes(b"b")  # the temporary folder was removed with the run
        assert list(root.iterdir()) == []


def test_release_forgets_the_run(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with RunLock(root):
        pass
    shutil.rmtree(root)
    root.mkdir()
    check_writer(root / "round-0000")  # no live lock: nothing to compare
    with RunLock(root) as lock:  # a new holder of the new folder
        assert lock.intact()
        assert os.path.exists(root / LOCK_NAME)
