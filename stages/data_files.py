"""The record of a dataset's source files: every file under `data.root`, hashed.

A loader named by the config (a built-in such as `cifar10`, or a user's `mypkg.data:load`)
reads files under `data.root`; what it read decides the dataset's bytes, so the dataset
store's manifest records the sha256 of every regular file under that folder (`data_files`).
A regenerated file then makes `blazefl run` refuse to resume and `blazefl verify` name the
file, instead of a run that claims data it was not made with.

Which files a loader opens cannot be known without tracing it, so the whole folder counts:
a file the loader ignores but that changed is reported too (the safe side). The walk is
bounded in file count and bytes, with one line saying to point `data.root` at the dataset's
own folder when a shared data folder is too large to hash.

Example:
    >>> data_file_hashes("data/cifar10")
    {'cifar-10-batches-py/data_batch_1': '3f0c...', ...}
"""

from __future__ import annotations

import os
from pathlib import Path

from blazefl.stages.artifacts import sha256_file

__all__ = [
    "DataFilesError",
    "MAX_DATA_FILES",
    "MAX_DATA_BYTES",
    "data_file_hashes",
    "data_differences",
]

#: Most files hashed under data.root.
MAX_DATA_FILES = 100_000
#: Most bytes hashed under data.root (hashing runs at ~1 GB/s: a minute at the bound).
MAX_DATA_BYTES = 64 << 30


class DataFilesError(ValueError):
    """data.root cannot be recorded (missing, or past the bounds); the message says the fix."""


def data_file_hashes(root: str | os.PathLike[str] | None) -> dict[str, str]:
    """sha256 of every regular file under `root`, by posix path relative to it, sorted.

    Symlinked files are hashed by content (a dataset folder may link shared files);
    symlinked folders are not followed (no cycles, no walking the whole disk).

    Args:
        root: data.root, a folder or one file (None: the dataset reads no files, e.g. the
            synthetic one).

    Returns:
        {relative path: sha256}; {} when root is None.

    Raises:
        DataFilesError: root is not a folder, or holds more than the bounds.
    """
    if root is None:
        return {}
    base = Path(root)
    if base.is_file():  # a loader may read one file
        return {base.name: sha256_file(base)}
    if not base.is_dir():
        raise DataFilesError(
            f"data.root {base} is not a folder: point data.root at the folder holding the "
            "dataset files"
        )
    found: list[tuple[str, Path]] = []
    total = 0
    for dirpath, dirs, names in os.walk(base):
        dirs.sort()
        for name in sorted(names):
            path = Path(dirpath) / name
            if not path.is_file():  # sockets, FIFOs, dangling links: nothing a loader reads
                continue
            total += path.stat().st_size
            found.append((path.relative_to(base).as_posix(), path))
            if len(found) > MAX_DATA_FILES or total > MAX_DATA_BYTES:
                raise DataFilesError(
                    f"data.root {base} holds more than {MAX_DATA_FILES:,} files or "
                    f"{MAX_DATA_BYTES >> 30} GiB, too much to record: point data.root at the "
                    "dataset's own folder"
                )
    return {rel: sha256_file(path) for rel, path in sorted(found)}


def data_differences(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """Paths under data.root whose hash differs, or that exist on one side only, sorted.

    Example:
        >>> data_differences({"a.bin": "00" * 32}, {"a.bin": "11" * 32, "b.bin": "22" * 32})
        ['a.bin', 'b.bin']
    """
    return sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
