"""Committed files are read-only (0o444; folders stay writable): a round's unchanged files are
hard links shared with earlier rounds, so one in-place write would change every round's
committed bytes. The denial is checked in a child that drops to uid 65534 when the tests run
as root (root ignores permission bits)."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

from blazefl.stages.artifacts import atomic_dir, atomic_write

NOBODY = 65534

#: Run in a child whose working directory is the folder to test: imports first (as root),
#: then drop to `nobody`, then try each action; prints one word per action.
_CHILD = """
import os, sys
from pathlib import Path
from blazefl.stages.artifacts import atomic_dir, atomic_write
if os.getuid() == 0:
    os.setgroups([]); os.setgid(NOBODY); os.setuid(NOBODY)
def attempt(action):
    try:
        action()
    except PermissionError:
        return "denied"
    return "ok"
def rewrite_round():
    with atomic_dir(Path("run/round-0001"), Path("run")) as tmp:
        (tmp / "global.safetensors").write_bytes(b"new")
for arg in sys.argv[1:]:
    if arg == "rewrite-round":
        print(attempt(rewrite_round))
    elif arg == "rewrite-file":
        print(attempt(lambda: atomic_write(Path("run/summary.json"), b"{}", Path("run"))))
    else:
        print(attempt(lambda: open(arg, "r+b").close()))
""".replace("NOBODY", str(NOBODY))


def _as_nobody(folder: Path, *actions: str) -> list[str]:
    """Run `actions` in a child as uid 65534 (or as this user when not root) in `folder`,
    which it enters before dropping privileges (so parents it cannot search do not matter)."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, *actions],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_atomic_commits_are_read_only_and_can_be_replaced(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with atomic_dir(root / "round-0001", root) as tmp:
        (tmp / "index").mkdir()
        (tmp / "index" / "chunk-0000.safetensors").write_bytes(b"a")
        (tmp / "global.safetensors").write_bytes(b"b")
    atomic_write(root / "summary.json", b"{}\n", root)
    round_dir = root / "round-0001"
    assert _mode(round_dir / "global.safetensors") == 0o444
    assert _mode(round_dir / "index" / "chunk-0000.safetensors") == 0o444
    assert _mode(root / "summary.json") == 0o444
    assert _mode(round_dir) & 0o200 and _mode(round_dir / "index") & 0o200  # folders writable
    # a stage re-run over its old output replaces read-only files (root ignores the bits:
    # the same in a child as nobody below)
    with atomic_dir(round_dir, root) as tmp:
        (tmp / "global.safetensors").write_bytes(b"c")
    atomic_write(root / "summary.json", b"[]\n", root)
    assert (round_dir / "global.safetensors").read_bytes() == b"c"
    shutil.rmtree(root)


def test_nobody_cannot_write_in_place_but_can_rerun_a_stage(tmp_path: Path) -> None:
    work = tmp_path / "work"
    root = work / "run"
    with atomic_dir(root / "round-0001", root) as tmp:
        (tmp / "global.safetensors").write_bytes(b"a")
    atomic_write(root / "summary.json", b"{}\n", root)
    writable = root / "scratch.bin"  # the control: same folder, same owner, mode 0o666
    writable.write_bytes(b"x")
    writable.chmod(0o666)
    for folder in (work, root, root / "round-0001"):
        folder.chmod(0o777)  # nobody must be able to replace entries, as the owner can
    answers = _as_nobody(
        work,
        "run/round-0001/global.safetensors",
        "run/summary.json",
        "run/scratch.bin",
        "rewrite-round",
        "rewrite-file",
    )
    assert answers == ["denied", "denied", "ok", "ok", "ok"]
    assert (root / "round-0001" / "global.safetensors").read_bytes() == b"new"
    assert _mode(root / "round-0001" / "global.safetensors") == 0o444


def test_a_real_run_is_read_only_and_shared_files_cannot_be_edited(
    chunked_run: Path, tmp_path: Path, blazefl: Callable[..., Result], chunked_args: list[str]
) -> None:
    files = [p for p in chunked_run.rglob("*") if p.is_file() and p.name != ".blazefl.lock"]
    writable = [p.relative_to(chunked_run).as_posix() for p in files if _mode(p) != 0o444]
    assert writable in ([], ["plots/metrics.png"]), writable  # the PNG is drawn by matplotlib
    assert all(_mode(p) & 0o200 for p in chunked_run.rglob("*") if p.is_dir())
    # a `cp -a` copy keeps the run's hard links (and so the read-only mode)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(chunked_run), str(copy)], check=True)
    shared = copy / "round-0003" / "index"
    names = sorted(p.name for p in shared.iterdir() if p.stat().st_nlink > 1)
    assert names, "no index chunk of round 3 is shared with an earlier round"
    assert _as_nobody(shared, *names) == ["denied"] * len(names)
    # re-running a stage over its old output still works (replaces, never writes in place)
    before = (copy / "round-0003" / "manifest.json").read_bytes()
    result = blazefl("stage", "round", "--round", "3", "--out", str(copy), *chunked_args)
    assert result.exit_code == 0, result.output
    assert (copy / "round-0003" / "manifest.json").read_bytes() == before
    assert _mode(copy / "round-0003" / "manifest.json") == 0o444
