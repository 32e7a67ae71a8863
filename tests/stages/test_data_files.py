"""The record of data.root: every regular file hashed, bounded, one line past the bounds."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from blazefl.stages import data_files
from blazefl.stages.data_files import DataFilesError, data_differences, data_file_hashes


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_every_file_under_root_is_hashed_by_relative_path(tmp_path: Path) -> None:
    (tmp_path / "batches").mkdir()
    (tmp_path / "batches" / "b1").write_bytes(b"one")
    (tmp_path / "meta").write_bytes(b"two")
    (tmp_path / "link").symlink_to(tmp_path / "meta")  # a linked file counts by content
    os.mkfifo(tmp_path / "fifo")  # nothing a loader reads: skipped, never opened
    assert data_file_hashes(tmp_path) == {
        "batches/b1": _sha(b"one"),
        "link": _sha(b"two"),
        "meta": _sha(b"two"),
    }
    assert data_file_hashes(None) == {}
    assert data_file_hashes(tmp_path / "meta") == {"meta": _sha(b"two")}  # a one-file root


def test_a_missing_root_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataFilesError, match="is not a folder: point data.root"):
        data_file_hashes(tmp_path / "absent")


@pytest.mark.parametrize("bound", ["MAX_DATA_FILES", "MAX_DATA_BYTES"])
def test_past_the_bounds_is_one_line(
    bound: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        (tmp_path / f"f{i}").write_bytes(b"x" * 10)
    monkeypatch.setattr(data_files, bound, 2 if bound == "MAX_DATA_FILES" else 25)
    with pytest.raises(DataFilesError) as info:
        data_file_hashes(tmp_path)
    assert "point data.root at the dataset's own folder" in str(info.value)
    assert "\n" not in str(info.value)


def test_differences_name_changed_added_and_removed_files() -> None:
    a, b = "0" * 64, "1" * 64
    assert data_differences({"x": a, "y": a}, {"x": b, "z": a}) == ["x", "y", "z"]
    assert data_differences({"x": a}, {"x": a}) == []
