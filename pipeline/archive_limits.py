"""What bounds `blazefl unpack`: the manifests an archive carries first, and its temporary folder.

`pack` writes every manifest first (`dataset/`, `partitions/`, then `round-0000/` ...
`round-T/`), so `unpack` knows, before the first data byte, every file the run may hold, its
size and its sha256 (format-2 manifests record `sizes` next to the hashes). `ManifestBook`
collects and validates those manifests and answers, for each later member, what it must be:
a member whose header size differs from the recorded size is refused before any of its bytes
is written, the total recorded size is checked against the free disk space before any data is
written, and each member is hashed as it streams and refused at its end on a mismatch. So a
9 MB archive whose header claims 2 GiB of zeros at a dataset chunk path is refused at once
instead of filling the disk.

An archive whose manifests carry no `sizes` (written by an earlier blazefl, manifests sorted
among the other files) is "legacy": members are bounded by their header size, the running
total of header sizes is checked against the free space before each member is written, and a
member is checked against its folder's manifest when that manifest came earlier.

The temporary folder is named `.DEST.unpack-PID-START-XXXXXXXX` (the owner's pid and the
kernel's start time of that pid, as `stages.temp_cleanup` tags its folders): an unpack killed
by SIGKILL leaves it behind, and the next unpack into the same parent folder removes every such
folder whose owner is gone. SIGTERM and Ctrl-C remove it at once (`exit_on_sigterm` turns
SIGTERM into `SystemExit`, so the `finally` clean-up runs).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from blazefl.pipeline.run_check import MAX_JSON_BYTES, STORES, ArchiveError
from blazefl.stages.manifest_schema import (
    MAX_MANIFEST_BYTES,
    parse_manifest_json,
    validate_round_manifest,
    validate_store_manifest,
)
from blazefl.stages.temp_cleanup import owner_tag, process_start_time

__all__ = [
    "ManifestBook",
    "manifests_first",
    "is_manifest",
    "unpack_prefix",
    "remove_stale_unpack_dirs",
    "exit_on_sigterm",
    "MAX_MANIFEST_BYTES",
]

_MANIFEST_REL = re.compile(r"^(dataset|partitions|round-(\d{4,}))/manifest\.json$")
_DERIVED = re.compile(r"^(metrics/round-\d{4,}\.json|summary\.json|plots/metrics\.json)$")
# .DEST.unpack-PID-START-XXXXXXXX (mkdtemp's suffix: letters, digits, _)
_UNPACK_DIR = re.compile(r"^\..+\.unpack-(\d{1,10})-([0-9?]{1,20})-[a-z0-9_]{6,}$")


def is_manifest(rel: str) -> bool:
    """Whether a run-relative path is a store or round manifest.

    Example:
        >>> is_manifest("round-0003/manifest.json"), is_manifest("round-0003/global.safetensors")
        (True, False)
    """
    return bool(_MANIFEST_REL.match(rel))


def manifests_first(files: tuple[str, ...] | list[str]) -> list[str]:
    """The order `pack` writes a run's files in: the dataset, partitions and round manifests
    (rounds ascending), then every other file sorted.

    Args:
        files: the run's files (run-relative posix paths).

    Returns:
        The same paths, manifests first.

    Example:
        >>> manifests_first(["round-0000/a", "round-0000/manifest.json", "dataset/manifest.json"])
        ['dataset/manifest.json', 'round-0000/manifest.json', 'round-0000/a']
    """

    def rank(rel: str) -> tuple[int, int, str]:
        m = _MANIFEST_REL.match(rel)
        if m is None:
            return (3, 0, rel)
        if m.group(2) is None:
            return (STORES.index(m.group(1)), 0, rel)
        return (2, int(m.group(2)), rel)

    return sorted(files, key=rank)


class ManifestBook:
    """The manifests read so far from an archive, and what they say each member must be.

    Example:
        >>> book = ManifestBook()
        >>> book.add("dataset/manifest.json", data)
        >>> book.expected("dataset/zarr.json")
        (500, '3f0c...')
    """

    def __init__(self) -> None:
        self._files: dict[str, tuple[int | None, str]] = {}  # rel -> (size, sha256)
        self._folders: set[str] = set()  # folders whose manifest was read
        self._legacy = False  # some manifest carries no sizes
        self.complete = False  # set by `start_data`: every manifest came first, with sizes

    def add(self, rel: str, data: bytes) -> None:
        """Validate the manifest `rel` (its bytes `data`) and record the files it lists.

        Raises:
            ArchiveError / ManifestError: not a valid manifest of that folder.
        """
        m = _MANIFEST_REL.match(rel)
        if m is None:
            raise ArchiveError(f"member {rel!r} is not a manifest")
        folder = m.group(1)
        parsed: Any = parse_manifest_json(data, rel)
        if m.group(2) is None:
            manifest = validate_store_manifest(parsed, rel)
            if manifest["kind"] != folder:
                raise ArchiveError(f"{rel} is a {manifest['kind']} manifest")
            listed = manifest["files"]
        else:
            manifest = validate_round_manifest(parsed, rel)
            if manifest["round"] != int(m.group(2)):
                raise ArchiveError(f"{rel} says it is round {manifest['round']}")
            listed = manifest["outputs"]
        sizes = manifest.get("sizes")
        self._legacy = self._legacy or not isinstance(sizes, dict)
        for name, sha in listed.items():
            size = sizes.get(name) if isinstance(sizes, dict) else None
            self._files[f"{folder}/{name}"] = (size, sha)
        self._folders.add(folder)

    def sized(self) -> bool:
        """Whether the manifests read so far bound the whole run: both stores and round 0
        are among them and every one records `sizes` (a format-2 archive)."""
        return not self._legacy and {*STORES, "round-0000"} <= self._folders

    def start_data(self) -> bool:
        """Called at the first member that is not a manifest: from here on the book is
        `complete` (a format-2 archive, manifests first) or not (a legacy archive, whose
        manifests may still come). Returns `complete`."""
        self.complete = self.sized()
        return self.complete

    def recorded_total(self) -> int:
        """Bytes of every file the manifests list (their recorded sizes)."""
        return sum(size or 0 for size, _ in self._files.values())

    def expected(self, rel: str) -> tuple[int | None, str | None]:
        """(recorded size or None, recorded sha256 or None) of member `rel`."""
        return self._files.get(rel, (None, None))

    def covers(self, rel: str) -> bool:
        """Whether the manifest of `rel`'s folder was read (so an unlisted `rel` is extra)."""
        return rel.split("/", 1)[0] in self._folders

    def check_member(self, rel: str, size: int) -> str | None:
        """What member `rel` declaring `size` bytes must hash to; refuses it, before any of
        its bytes is written, when the manifests say it cannot be part of the run.

        Returns:
            The recorded sha256, or None when no manifest read so far lists it (a metrics
            or report file, or a legacy archive's member that comes before its manifest).

        Raises:
            ArchiveError: unlisted in a manifest that covers it, a size other than the
                recorded one, or a report file over its bound.
        """
        recorded, sha = self.expected(rel)
        if _DERIVED.match(rel):
            if size > MAX_JSON_BYTES:
                raise ArchiveError(f"member {rel!r} declares {size} bytes, over {MAX_JSON_BYTES}")
            return None
        if sha is None and (self.complete or self.covers(rel)):
            folder = rel.split("/", 1)[0]
            where = f"{folder}/manifest.json" if self.covers(rel) else "any manifest"
            raise ArchiveError(f"{rel} is not listed in {where} (refused before writing it)")
        if recorded is not None and size != recorded:
            raise ArchiveError(
                f"{rel} declares {size} bytes in its tar header, but {rel.split('/', 1)[0]}/"
                f"manifest.json records {recorded} (refused before writing it)"
            )
        return sha


def unpack_prefix(dest: Path) -> str:
    """The name prefix of `dest`'s temporary folder: hidden, and tagged with this process.

    Example:
        >>> unpack_prefix(Path("downloaded"))
        '.downloaded.unpack-4242-98765-'
    """
    return f".{dest.name}.unpack-{owner_tag()}-"


def remove_stale_unpack_dirs(parent: Path) -> list[Path]:
    """Remove the temporary folders of killed unpacks in `parent` (owner process gone).

    Args:
        parent: the folder unpacks write their temporary folders into.

    Returns:
        The folders removed.

    Example:
        >>> remove_stale_unpack_dirs(Path("."))
        [PosixPath('.downloaded.unpack-4242-98765-k2j4h5g6')]
    """
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _UNPACK_DIR.match(entry.name)
        if m is None or not _owner_gone(int(m.group(1)), m.group(2)):
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(entry.lstat().st_mode):  # never follow a planted symlink
                shutil.rmtree(entry)
                removed.append(entry)
    return removed


def _owner_gone(pid: int, start: str) -> bool:
    now = process_start_time(pid)
    return now is None or (now != start and "?" not in (now, start))


class _Terminated(SystemExit):
    """SIGTERM, raised where the process is so that clean-up blocks run."""


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises `SystemExit(143)` (main thread only), so `finally` and
    `except BaseException` clean-ups run; the previous handler is restored after.

    Example:
        >>> with exit_on_sigterm():
        ...     unpack_into(tmp)  # a SIGTERM removes tmp on the way out
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
