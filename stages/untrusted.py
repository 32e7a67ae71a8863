"""Reading and writing files whose names come from untrusted artifacts (a downloaded run).

A manifest's `inputs` / `outputs` / `files` may name any string. Before a name is opened it
must be a plain relative path that stays inside the run directory, goes through no symlinked
folder, and ends at a regular file of bounded size: `/dev/zero`, a FIFO, `/etc/passwd` behind a
symlink or a `../` escape are refused with one line instead of exhausting memory, hanging or
reading a system file.

Files are opened component by component with `dir_fd` and `O_NOFOLLOW`, so a symlink swapped
in between the check and the open is refused too, and with `O_NONBLOCK`, so opening a FIFO
never waits for a writer.

The symlink rule every reader of a run follows (`blazefl run`, the stages, `verify`, `pack`,
`unpack`, through this module and `pipeline.run_check`): a folder below the run is never
followed; a file may be a symlink only if it ends at a regular file inside the run or at a file
of DVC's content-addressed cache (DVC's `symlink` cache type checks outputs out as such links:
`.dvc/cache/files/md5/ab/cdef...`, a folder of 2 and a file of 30 hex digits). Its bytes are
still checked against the manifest's sha256 by every reader. Any other link is refused. The run
directory itself may be a symlink: it is the path the user chose.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "UntrustedArtifactError",
    "is_safe_relpath",
    "resolve_inside",
    "read_bounded",
    "sha256_inside",
    "check_writable_inside",
    "safe_child_dirs",
    "linked_file_target",
    "LINK_REFUSED",
]

#: Longest relative path accepted from an artifact (Linux PATH_MAX).
MAX_RELPATH_CHARS = 4096
_NOT_REGULAR = "is not a regular file (a device, FIFO, socket or folder)"
_FIX = "the run directory is damaged or tampered; restore it from its source"
#: DVC's cache names a file by its md5: a folder of the first 2 hex digits, a file of the other 30
_DVC_CACHE_NAME = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{30}$")
#: Why a symlinked file is refused (`linked_file_target` gave None).
LINK_REFUSED = (
    "is a symlink that leaves the run and is not a DVC cache file (or ends at no regular file)"
)


class UntrustedArtifactError(ValueError):
    """A path named by an artifact is unsafe to open or write; the message names it."""


def is_safe_relpath(rel: Any) -> bool:
    """Whether `rel` is a normalized relative posix path that cannot leave its root.

    Refused: non-strings, empty, absolute, `.` / `..` parts, empty parts (`a//b`, `a/`),
    NUL, backslashes, control characters, over `MAX_RELPATH_CHARS`.

    Example:
        >>> is_safe_relpath("round-0001/global.safetensors"), is_safe_relpath("../x")
        (True, False)
    """
    if not isinstance(rel, str) or not rel or len(rel) > MAX_RELPATH_CHARS:
        return False
    if "\\" in rel or any(ord(ch) < 32 or ord(ch) == 127 for ch in rel):
        return False
    parts = rel.split("/")
    return (
        all(part not in ("", ".", "..") for part in parts) and not PurePosixPath(rel).is_absolute()
    )


def _error(root: Path, rel: Any, problem: str) -> UntrustedArtifactError:
    shown = rel[:200] if isinstance(rel, str) and rel.isprintable() else repr(rel)[:120]
    return UntrustedArtifactError(f"{shown} in {root}: {problem}: {_FIX}")


def _parts(root: Path, rel: Any) -> list[str]:
    if not is_safe_relpath(rel):
        raise _error(
            root, rel, "not a plain relative path inside the run (absolute, '..', '\\' or NUL)"
        )
    parts: list[str] = rel.split("/")
    return parts


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def linked_file_target(root: Path, rel: str) -> Path | None:
    """Where the symlinked file `root/rel` ends, if a reader of the run may follow it: a regular
    file inside the run, or a file of DVC's content-addressed cache; else None.

    Example:
        >>> linked_file_target(Path("runs/a"), "round-0001/global.safetensors")
        PosixPath('/repo/.dvc/cache/files/md5/3f/0c5d2a9b1e...')
    """
    target = Path(os.path.realpath(root / rel))
    try:
        if not stat.S_ISREG(os.stat(target).st_mode):
            return None
    except OSError:  # dangling, or a loop
        return None
    if target.is_relative_to(os.path.realpath(root)):
        return target
    return target if _DVC_CACHE_NAME.match(f"{target.parent.name}/{target.name}") else None


def _check_regular(root: Path, rel: Any, name: str, dir_fd: int) -> Path | None:
    """Check the last component of `rel`: a regular file (None), or a symlinked file that
    `linked_file_target` accepts (its target)."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        raise _error(root, rel, "is missing") from None
    except OSError as exc:
        raise _error(root, rel, f"cannot be checked ({exc.strerror})") from None
    if stat.S_ISLNK(mode):
        target = linked_file_target(root, rel)
        if target is None:
            raise _error(root, rel, LINK_REFUSED)
        return target
    if not stat.S_ISREG(mode):
        raise _error(root, rel, _NOT_REGULAR)
    return None


def _open_leaf(root: Path, rel: Any) -> int:
    """Open `root/rel` read-only without following any symlinked folder below `root` (a
    symlinked file only as `linked_file_target` allows); return the fd of a regular file (the
    caller closes it)."""
    parts = _parts(root, rel)
    try:
        current = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _error(root, rel, f"the run directory cannot be opened ({exc.strerror})") from None
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            target = None
            if last:  # never open a device at all: opening some has side effects
                target = _check_regular(root, rel, part, current)
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            flags |= os.O_NONBLOCK if last else os.O_DIRECTORY
            try:
                # an accepted link is opened at its resolved target, still without following
                # a link there (and checked a regular file below)
                fd = os.open(target, flags) if target else os.open(part, flags, dir_fd=current)
            except FileNotFoundError:
                raise _error(root, rel, "is missing") from None
            except OSError as exc:
                # O_NOFOLLOW fails with ELOOP on a symlink, or ENOTDIR with O_DIRECTORY
                what = "goes through a symlink" if _is_link(part, current) else exc.strerror
                raise _error(root, rel, f"cannot be opened safely ({what})") from None
            os.close(current)
            current = fd  # the folder just opened, then finally the file
        # checked again on the open file: the entry may have been swapped since the lstat
        if not stat.S_ISREG(os.fstat(current).st_mode):
            raise _error(root, rel, _NOT_REGULAR)
    except BaseException:
        os.close(current)
        raise
    return current


def resolve_inside(root: Path, rel: str) -> Path:
    """`root / rel`, after checking it is a regular file inside `root` reached through no
    symlinked folder (a symlinked file only as `linked_file_target` allows).

    Args:
        root: the run directory (it may itself be a symlink: the user chose it).
        rel: a relative posix path taken from an artifact.

    Returns:
        The path `root / rel`.

    Raises:
        UntrustedArtifactError: unsafe name, missing, symlink on the way, not a regular file.

    Example:
        >>> resolve_inside(Path("runs/a"), "round-0000/manifest.json")
        PosixPath('runs/a/round-0000/manifest.json')
    """
    os.close(_open_leaf(root, rel))
    return root / rel


def read_bounded(root: Path, rel: str, max_bytes: int) -> bytes:
    """Read `root / rel` (checked as in `resolve_inside`) if it holds at most `max_bytes`.

    Args:
        root: the run directory.
        rel: a relative posix path taken from an artifact.
        max_bytes: size bound, checked on the open file before reading.

    Returns:
        The file's bytes.

    Raises:
        UntrustedArtifactError: as `resolve_inside`, or larger than `max_bytes`.

    Example:
        >>> read_bounded(Path("runs/a"), "round-0000/manifest.json", 1 << 20)[:1]
        b'{'
    """
    fd = _open_leaf(root, rel)
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise _error(root, rel, f"holds {size} bytes, more than the {max_bytes} allowed")
        chunks, left = [], max_bytes + 1  # +1: a file that grew after fstat is caught too
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise _error(root, rel, f"grew past the {max_bytes} bytes allowed while being read")
    return data


def sha256_inside(root: Path, rel: str, max_bytes: int) -> str:
    """SHA-256 of `root / rel` (checked as in `read_bounded`), streamed in 1 MiB blocks.

    Example:
        >>> len(sha256_inside(Path("runs/a"), "round-0000/global.safetensors", 1 << 30))
        64
    """
    fd = _open_leaf(root, rel)
    h, total = hashlib.sha256(), 0
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise _error(root, rel, f"holds {size} bytes, more than the {max_bytes} allowed")
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > max_bytes:
                raise _error(root, rel, f"grew past the {max_bytes} bytes allowed")
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def check_writable_inside(root: Path, rel: str) -> Path:
    """`root / rel` after checking that writing it cannot leave `root`.

    Every existing component below `root` must be a real folder (not a symlink, e.g. a
    symlinked `metrics/` or `timings/`), and the target, if it exists, a regular file or
    (for a folder to replace atomically) a real folder. Missing components are fine: the
    writer creates them.

    Raises:
        UntrustedArtifactError: unsafe name or a symlink / special file on the way.

    Example:
        >>> check_writable_inside(Path("runs/a"), "metrics/round-0001.json")
        PosixPath('runs/a/metrics/round-0001.json')
    """
    parts = _parts(root, rel)
    current = root
    for i, part in enumerate(parts):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            break  # the rest does not exist yet: nothing to follow
        except OSError as exc:
            raise _error(root, rel, f"cannot be checked ({exc.strerror})") from None
        if stat.S_ISLNK(mode):
            where = "/".join(parts[: i + 1])
            raise _error(root, rel, f"{where} is a symlink, and writes must stay inside the run")
        last = i == len(parts) - 1
        if not stat.S_ISDIR(mode) and not (last and stat.S_ISREG(mode)):
            raise _error(root, rel, "is in the way of a write (not a regular file or folder)")
    return root / rel


def safe_child_dirs(root: Path) -> list[str]:
    """Names of the real folders directly inside `root` (symlinks and files skipped), sorted.

    Example:
        >>> safe_child_dirs(Path("runs/a"))
        ['dataset', 'metrics', 'partitions', 'round-0000']
    """
    try:
        with os.scandir(root) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UntrustedArtifactError(f"{root} cannot be listed ({exc.strerror}): {_FIX}") from None
