"""Checks of artifact contents (tensors, partition arrays, zarr array metadata) before use.

A tampered artifact whose hash was re-sealed in its manifest passes the hash check; these
checks catch what would otherwise reach training: a float64 tensor where float32 is expected,
an RNG state of the wrong rank, negative or shared sample indices, decreasing offsets, or a
zarr.json declaring a shape that would allocate tens of GiB before failing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blazefl.stages.untrusted import read_bounded

__all__ = [
    "ArtifactContentError",
    "ZarrArrayMeta",
    "check_tensors",
    "check_partition_arrays",
    "check_zarr_array_meta",
]

_FIX = "the artifact is corrupt or tampered; restore the run from its source"
#: Largest zarr.json read (a real one is under 1 KiB).
MAX_ZARR_JSON_BYTES = 64 << 10
_ZARR_DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
    + ["float16", "float32", "float64"]
)


class ArtifactContentError(ValueError):
    """An artifact's contents do not have the expected names, dtypes, shapes or ranges."""


def _names(names: set[str]) -> str:
    shown = sorted(names)
    return ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")


def check_tensors(
    tensors: dict[str, torch.Tensor],
    expected: dict[str, tuple[torch.dtype, tuple[int, ...]]],
    where: str,
) -> None:
    """Check that `tensors` holds exactly the expected names, each with its dtype and shape.

    Args:
        tensors: as loaded from a safetensors file.
        expected: name -> (dtype, shape), e.g. from the model's `state_dict()`.
        where: what to call the file in errors, e.g. "round-0003/global.safetensors".

    Raises:
        ArtifactContentError: one line naming the first wrong tensor.

    Example:
        >>> want = {k: (v.dtype, tuple(v.shape)) for k, v in model.state_dict().items()}
        >>> check_tensors(load(blob), want, "round-0003/global.safetensors")
    """
    missing, extra = expected.keys() - tensors.keys(), tensors.keys() - expected.keys()
    if missing:
        raise ArtifactContentError(f"{where}: tensors missing: {_names(set(missing))}: {_FIX}")
    if extra:
        raise ArtifactContentError(f"{where}: unexpected tensors: {_names(set(extra))}: {_FIX}")
    for name in sorted(expected):
        dtype, shape = expected[name]
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            raise ArtifactContentError(f"{where}: {name} is not a tensor: {_FIX}")
        if t.dtype != dtype:
            raise ArtifactContentError(
                f"{where}: tensor {name} has dtype {t.dtype}, expected {dtype}: {_FIX}"
            )
        if tuple(t.shape) != tuple(shape):
            raise ArtifactContentError(
                f"{where}: tensor {name} has shape {list(t.shape)}, expected {list(shape)}: {_FIX}"
            )


def check_partition_arrays(
    indices: np.ndarray, offsets: np.ndarray, num_clients: int, num_samples: int, where: str
) -> None:
    """Check a partition (client c owns `indices[offsets[c]:offsets[c + 1]]`) before use.

    Args:
        indices: flat sample indices of every client.
        offsets: client boundaries into `indices`, `num_clients + 1` long.
        num_clients: data.clients.
        num_samples: samples clients may own (the private set: for DS-FL the training set
            minus the open set).
        where: what to call the store in errors, e.g. "partitions".

    Raises:
        ArtifactContentError: wrong dtype or rank, offsets not starting at 0, decreasing or not
            ending at len(indices), an index outside [0, num_samples), or a sample owned by
            more than one client.

    Example:
        >>> check_partition_arrays(np.array([2, 0, 1]), np.array([0, 1, 3]), 2, 3, "partitions")
    """
    for name, a in (("indices", indices), ("offsets", offsets)):
        if not isinstance(a, np.ndarray) or a.dtype != np.int64 or a.ndim != 1:
            got = f"{a.dtype} with {a.ndim} dims" if isinstance(a, np.ndarray) else type(a)
            raise ArtifactContentError(
                f"{where}: {name} must be a 1-D int64 array, got {got}: {_FIX}"
            )

    def fail(problem: str) -> ArtifactContentError:
        return ArtifactContentError(f"{where}: {problem}: {_FIX}")

    if len(offsets) != num_clients + 1:
        raise fail(f"offsets has {len(offsets)} entries, expected {num_clients + 1} (clients + 1)")
    if offsets[0] != 0 or offsets[-1] != len(indices):
        raise fail(f"offsets must run from 0 to {len(indices)}, got {offsets[0]}..{offsets[-1]}")
    if np.any(np.diff(offsets) < 0):
        raise fail(f"offsets decrease at client {int(np.argmax(np.diff(offsets) < 0))}")
    if len(indices) == 0:
        return
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= num_samples:
        bad = low if low < 0 else high
        raise fail(f"sample index {bad} is outside [0, {num_samples})")
    if len(indices) > num_samples or int(np.bincount(indices, minlength=0).max()) > 1:
        raise fail("a sample is owned by more than one client")


@dataclass(frozen=True)
class ZarrArrayMeta:
    """What a zarr v3 array declares: its shape, dtype and chunk shape."""

    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]


def _dims(v: Any) -> tuple[int, ...] | None:
    if not isinstance(v, list) or len(v) > 32:
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v):
        return None
    return tuple(v)


def check_zarr_array_meta(
    zarr_json: Path,
    max_elements: int,
    *,
    dtype: str | None = None,
    ndim: int | None = None,
) -> ZarrArrayMeta:
    """Read a zarr v3 array's `zarr.json` (bounded) and refuse what would over-allocate.

    Call before opening the array with zarr: a declared shape or chunk shape of more than
    `max_elements` elements, an unknown dtype, or (if given) another dtype or rank is refused,
    so a tampered store never makes the reader allocate.

    Args:
        zarr_json: the array's `zarr.json` (no symlink as its last component).
        max_elements: most elements the array and each chunk may hold.
        dtype: the zarr data_type expected, e.g. "int64".
        ndim: the rank expected.

    Returns:
        The declared metadata, for further checks against the config (e.g. shape[0] ==
        data.size).

    Raises:
        ArtifactContentError: unreadable, not a zarr v3 array, or over the bounds.

    Example:
        >>> check_zarr_array_meta(run / "partitions/indices/zarr.json", 10**8, dtype="int64")
        ZarrArrayMeta(shape=(600,), dtype='int64', chunks=(600,))
    """
    where = str(zarr_json)
    try:
        meta = json.loads(read_bounded(zarr_json.parent, zarr_json.name, MAX_ZARR_JSON_BYTES))
    except (ValueError, RecursionError) as exc:  # includes UntrustedArtifactError
        raise ArtifactContentError(
            f"{where}: unreadable ({' '.join(str(exc).split())[:100]}): {_FIX}"
        ) from None
    if not isinstance(meta, dict) or (meta.get("zarr_format"), meta.get("node_type")) != (
        3,
        "array",
    ):
        raise ArtifactContentError(f"{where}: not a zarr v3 array: {_FIX}")
    grid = meta.get("chunk_grid")
    config = grid.get("configuration") if isinstance(grid, dict) else None
    shape = _dims(meta.get("shape"))
    chunks = _dims(config.get("chunk_shape")) if isinstance(config, dict) else None
    if shape is None or chunks is None or len(chunks) != len(shape) or 0 in chunks:
        raise ArtifactContentError(f"{where}: shape or chunk_shape is malformed: {_FIX}")
    declared = meta.get("data_type")
    if not isinstance(declared, str) or declared not in _ZARR_DTYPES:
        raise ArtifactContentError(f"{where}: data_type {declared!r:.40} is not supported: {_FIX}")
    if dtype is not None and declared != dtype:
        raise ArtifactContentError(f"{where}: data_type is {declared}, expected {dtype}: {_FIX}")
    if ndim is not None and len(shape) != ndim:
        raise ArtifactContentError(f"{where}: has {len(shape)} dims, expected {ndim}: {_FIX}")
    for what, dims in (("shape", shape), ("chunk_shape", chunks)):
        if math.prod(dims) > max_elements:
            raise ArtifactContentError(
                f"{where}: {what} {list(dims)} holds more than {max_elements} elements: {_FIX}"
            )
    return ZarrArrayMeta(shape, declared, chunks)
