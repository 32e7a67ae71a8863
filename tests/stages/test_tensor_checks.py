"""Artifact contents (tensors, partition arrays, zarr metadata) are checked before use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from blazefl.stages.tensor_checks import (
    ArtifactContentError,
    ZarrArrayMeta,
    check_partition_arrays,
    check_tensors,
    check_zarr_array_meta,
)

EXPECTED = {"fc.weight": (torch.float32, (4, 3)), "rng.numpy": (torch.uint8, (2500,))}


def _tensors() -> dict[str, torch.Tensor]:
    return {"fc.weight": torch.zeros(4, 3), "rng.numpy": torch.zeros(2500, dtype=torch.uint8)}


def test_matching_tensors_pass() -> None:
    check_tensors(_tensors(), EXPECTED, "round-0001/global.safetensors")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"fc.weight": torch.zeros(4, 3, dtype=torch.float64)}, "dtype torch.float64, expected"),
        ({"fc.weight": torch.zeros(3, 4)}, "shape [3, 4], expected [4, 3]"),
        ({"rng.numpy": torch.zeros(50, 50, dtype=torch.uint8)}, "shape [50, 50]"),
        ({"extra": torch.zeros(1)}, "unexpected tensors: extra"),
        ({"fc.weight": None}, "tensors missing: fc.weight"),
        ({"fc.weight": np.zeros((4, 3), np.float32)}, "is not a tensor"),
    ],
)
def test_wrong_tensors_are_refused(change: dict[str, Any], fragment: str) -> None:
    tensors: dict[str, Any] = {**_tensors(), **change}
    tensors = {k: v for k, v in tensors.items() if v is not None}
    with pytest.raises(ArtifactContentError) as info:
        check_tensors(tensors, EXPECTED, "round-0001/rng.safetensors")
    assert fragment in str(info.value) and "\n" not in str(info.value)


def _part() -> tuple[np.ndarray, np.ndarray]:
    return np.array([5, 0, 2, 1, 3], np.int64), np.array([0, 2, 2, 5], np.int64)


def test_valid_partition_passes() -> None:
    check_partition_arrays(*_part(), num_clients=3, num_samples=6, where="partitions")
    empty = np.zeros(0, np.int64)
    check_partition_arrays(empty, np.zeros(3, np.int64), 2, 6, "partitions")


def _int64(values: Any) -> np.ndarray:
    """Lists become int64 arrays; arrays keep their (possibly wrong) dtype."""
    return values if isinstance(values, np.ndarray) else np.array(values, np.int64)


@pytest.mark.parametrize(
    ("indices", "offsets", "fragment"),
    [
        ([5, 0, -2, 1, 3], None, "sample index -2 is outside [0, 6)"),
        ([5, 0, 2, 1, 6], None, "sample index 6 is outside"),
        ([5, 0, 2, 1, 5], None, "owned by more than one client"),
        (None, [0, 3, 2, 5], "offsets decrease at client 1"),
        (None, [1, 2, 2, 5], "offsets must run from 0 to 5"),
        (None, [0, 2, 2, 4], "offsets must run from 0 to 5"),
        (None, [0, 2, 5], "offsets has 3 entries, expected 4"),
        (np.array([5, 0, 2, 1, 3], np.int32), None, "indices must be a 1-D int64 array"),
        (np.array([[5, 0, 2, 1, 3]], np.int64), None, "indices must be a 1-D int64"),
        (None, np.array([0.0, 2, 2, 5]), "offsets must be a 1-D int64 array"),
        ([0, 1, 2, 3, 4, 5, 0], [0, 2, 2, 7], "owned by more than one client"),
    ],
)
def test_tampered_partitions_are_refused(indices: Any, offsets: Any, fragment: str) -> None:
    good_i, good_o = _part()
    i = good_i if indices is None else _int64(indices)
    o = good_o if offsets is None else _int64(offsets)
    with pytest.raises(ArtifactContentError) as info:
        check_partition_arrays(i, o, num_clients=3, num_samples=6, where="partitions")
    assert fragment in str(info.value) and "\n" not in str(info.value)


def _zarr_json(tmp_path: Path, **changes: Any) -> Path:
    meta: dict[str, Any] = {
        "shape": [600, 3, 32, 32],
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [600, 3, 32, 32]}},
        "codecs": [{"name": "bytes"}],
        "zarr_format": 3,
        "node_type": "array",
    }
    meta.update(changes)
    folder = tmp_path / "train_images"
    folder.mkdir(exist_ok=True)
    (folder / "zarr.json").write_text(json.dumps(meta))
    return folder / "zarr.json"


def test_zarr_meta_within_bounds(tmp_path: Path) -> None:
    meta = check_zarr_array_meta(_zarr_json(tmp_path), 10**7, dtype="uint8", ndim=4)
    assert meta == ZarrArrayMeta((600, 3, 32, 32), "uint8", (600, 3, 32, 32))


def test_zarr_meta_of_a_real_store(tmp_path: Path) -> None:
    import zarr

    group = zarr.open_group(str(tmp_path / "store"), mode="w")
    group.create_array("indices", data=np.arange(10, dtype=np.int64))
    meta = check_zarr_array_meta(tmp_path / "store/indices/zarr.json", 100, dtype="int64")
    assert meta.shape == (10,)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"shape": [10**9, 3, 32, 32]}, "holds more than"),
        ({"chunk_grid": {"configuration": {"chunk_shape": [10**6, 10**6, 1, 1]}}}, "chunk_shape"),
        ({"shape": [600, 3, 32]}, "malformed"),
        ({"shape": [-1, 3, 32, 32]}, "malformed"),
        ({"shape": "big"}, "malformed"),
        ({"shape": [True, 3, 32, 32]}, "malformed"),
        ({"chunk_grid": {"configuration": {"chunk_shape": [0, 3, 32, 32]}}}, "malformed"),
        ({"chunk_grid": "regular"}, "malformed"),
        ({"data_type": "float32"}, "data_type is float32, expected uint8"),
        ({"data_type": {"name": "struct"}}, "is not supported"),
        ({"data_type": "complex128"}, "is not supported"),
        ({"node_type": "group"}, "not a zarr v3 array"),
        ({"zarr_format": 2}, "not a zarr v3 array"),
    ],
)
def test_zarr_meta_refused(tmp_path: Path, changes: dict[str, Any], fragment: str) -> None:
    path = _zarr_json(tmp_path, **changes)
    with pytest.raises(ArtifactContentError) as info:
        check_zarr_array_meta(path, 10**7, dtype="uint8", ndim=4)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"[" * 100_000, b"{", b"\xff", b"1", b" " * (65 << 10)])
def test_zarr_json_unreadable(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "zarr.json").write_bytes(content)
    with pytest.raises(ArtifactContentError):
        check_zarr_array_meta(tmp_path / "zarr.json", 10)


def test_zarr_json_symlink_or_fifo_is_refused(tmp_path: Path) -> None:
    import os

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "zarr.json").symlink_to("/etc/passwd")
    (tmp_path / "b").mkdir()
    os.mkfifo(tmp_path / "b" / "zarr.json")
    for name in ("a", "b"):
        with pytest.raises(ArtifactContentError, match="unreadable"):
            check_zarr_array_meta(tmp_path / name / "zarr.json", 10)
