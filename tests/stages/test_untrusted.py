"""Paths named by a downloaded run's artifacts are opened only inside the run, bounded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from blazefl.stages.untrusted import (
    UntrustedArtifactError,
    check_writable_inside,
    is_safe_relpath,
    read_bounded,
    resolve_inside,
    safe_child_dirs,
    sha256_inside,
)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    (root / "round-0001").mkdir(parents=True)
    (root / "round-0001" / "global.safetensors").write_bytes(b"weights")
    return root


def _refused(fn: object, *args: object, fragment: str = "") -> str:
    with pytest.raises(UntrustedArtifactError) as info:
        fn(*args)  # type: ignore[operator]
    message = str(info.value)
    assert "\n" not in message and "restore it from its source" in message
    assert fragment in message
    return message


def test_regular_file_inside_is_read(run: Path) -> None:
    rel = "round-0001/global.safetensors"
    assert resolve_inside(run, rel) == run / rel
    assert read_bounded(run, rel, 100) == b"weights"
    assert sha256_inside(run, rel, 100) == hashlib.sha256(b"weights").hexdigest()


@pytest.mark.parametrize(
    "rel",
    [
        "../x",
        "round-0001/../../x",
        "/etc/passwd",
        "/dev/zero",
        "",
        "a//b",
        "./a",
        "a/",
        "a\\b",
        "a\x00b",
        "a\nb",
        5,
        None,
        ["round-0001"],
        "x" * 5000,
    ],
)
def test_unsafe_names_are_refused(run: Path, rel: object) -> None:
    assert not is_safe_relpath(rel)
    for fn in (resolve_inside, check_writable_inside):
        _refused(fn, run, rel, fragment="not a plain relative path")
    _refused(read_bounded, run, rel, 10)


def test_symlink_to_system_file_is_refused(run: Path) -> None:
    (run / "round-0001" / "rng.safetensors").symlink_to("/etc/passwd")
    _refused(resolve_inside, run, "round-0001/rng.safetensors", fragment="symlink")
    _refused(sha256_inside, run, "round-0001/rng.safetensors", 1 << 20, fragment="symlink")


def test_symlinked_directory_is_refused(run: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "global.safetensors").write_bytes(b"x")
    (run / "round-0002").symlink_to(outside, target_is_directory=True)
    _refused(read_bounded, run, "round-0002/global.safetensors", 10, fragment="symlink")


def test_device_fifo_and_folder_are_refused(run: Path) -> None:
    (run / "dev").symlink_to("/dev", target_is_directory=True)
    _refused(read_bounded, run, "dev/zero", 10, fragment="symlink")
    os.mkfifo(run / "round-0001" / "fifo")  # no writer: a blocking open would hang
    _refused(read_bounded, run, "round-0001/fifo", 10, fragment="not a regular file")
    _refused(read_bounded, run, "round-0001", 10, fragment="not a regular file")


def test_device_reached_as_root_is_refused() -> None:
    # the root is the user's choice; a device below it is still never read
    _refused(read_bounded, Path("/dev"), "zero", 10, fragment="not a regular file")


def test_missing_and_oversize_files(run: Path) -> None:
    _refused(read_bounded, run, "round-0001/none.safetensors", 10, fragment="is missing")
    big = run / "round-0001" / "big.bin"
    with open(big, "wb") as f:
        f.truncate(1 << 40)  # sparse 1 TiB: refused from its size, never read
    _refused(read_bounded, run, "round-0001/big.bin", 1 << 20, fragment="more than the")
    _refused(sha256_inside, run, "round-0001/big.bin", 1 << 20, fragment="more than the")
    _refused(read_bounded, run, "round-0001/global.safetensors", 3, fragment="holds 7 bytes")


def test_file_in_place_of_a_folder(run: Path) -> None:
    _refused(read_bounded, run, "round-0001/global.safetensors/x", 10)


def test_writes_never_follow_symlinks(run: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert check_writable_inside(run, "metrics/round-0001.json") == run / "metrics/round-0001.json"
    assert check_writable_inside(run, "round-0001/global.safetensors")
    assert check_writable_inside(run, "round-0001")  # an existing folder replaced atomically
    for name in ("metrics", "timings", "plots"):
        (run / name).symlink_to(outside, target_is_directory=True)
        _refused(check_writable_inside, run, f"{name}/round-0001.json", fragment=name)
    (run / "summary.json").symlink_to(outside / "summary.json")
    _refused(check_writable_inside, run, "summary.json", fragment="symlink")
    os.mkfifo(run / "round-0001" / "fifo")
    _refused(check_writable_inside, run, "round-0001/fifo", fragment="in the way")


def test_safe_child_dirs(run: Path, tmp_path: Path) -> None:
    (run / "round-0002").symlink_to(tmp_path, target_is_directory=True)
    (run / "summary.json").write_text("{}")
    assert safe_child_dirs(run) == ["round-0001"]
    assert safe_child_dirs(run / "missing") == []
