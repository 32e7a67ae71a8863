"""`blazefl pack` / `blazefl unpack`: one archive of a run, to publish with a paper.

`pack_run` checks a run directory against its manifests, then writes one tar archive (gzip'ed
when the name ends in .tar.gz or .tgz) whose bytes depend only on the run's files: entries
under one folder `run/`, every manifest first (dataset, partitions, rounds 0..T) and then the
other files sorted by path, mtime 0, uid/gid 0, no user names, mode 0644, GNU headers (no pax
timestamps), gzip with mtime 0 and no file name. The same run always gives the same archive.
What goes in: the stores (`dataset/`, `partitions/`), every round 0..T, the per-round
metrics, `summary.json` and `plots/metrics.json`. What stays out: `timings/` (wall times
vary), the PNG plot (made again by `blazefl stage report`), the run lock, DVC's .gitignore and
leftovers of interrupted writes. The run is checked by `pipeline.run_check`, the one check
`verify` runs too (its symlink rule included: DVC cache links are read, other links refused).

`unpack_run` treats the archive as hostile. Every member is checked before its bytes are
read: a plain relative path under `run/` in the run layout (no absolute path, no `..`), a
regular file (no link, device or FIFO), within the size bounds, and within the bounds on
member count and total size. The manifests come first and bound everything after them: a
member's header size must equal its recorded size before any byte is written, the recorded
total must fit the free disk space before any data is written, and each member is hashed as
it streams (see `pipeline.archive_limits`, which also covers archives of earlier versions).
The files go into a temporary sibling of the destination, read-only as `blazefl run` commits
them; every one is then checked against the manifests (round `outputs`, store `files`,
`inputs`, the parent-hash chain), and only then is the folder renamed into place in one step.
On any failure, SIGTERM or Ctrl-C nothing is left behind; the folder of an unpack killed
with SIGKILL is removed by the next unpack into the same parent folder. The run's digest,
the sha256 of the last round's manifest file, covers the whole chain back to the dataset:
quote it in a paper.

Example:
    >>> pack_run(Path("artifacts/default"), Path("run.tar.gz")).digest
    '3f0c...'
    >>> unpack_run(Path("run.tar.gz"), Path("downloaded")).digest  # then: blazefl verify
    '3f0c...'
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import IO, cast

from blazefl.pipeline.archive_limits import (
    MAX_MANIFEST_BYTES,
    ManifestBook,
    exit_on_sigterm,
    is_manifest,
    manifests_first,
    remove_stale_unpack_dirs,
    unpack_prefix,
)
from blazefl.pipeline.run_check import (
    ArchiveError,
    RunCheckError,
    RunContents,
    check_run,
    differs,
    in_layout,
)
from blazefl.pipeline.user_files import atomic_file
from blazefl.stages.untrusted import is_safe_relpath

__all__ = [
    "ArchiveError",
    "RunContents",
    "check_run",
    "pack_run",
    "unpack_run",
    "MAX_MEMBERS",
    "MAX_MEMBER_BYTES",
    "MAX_TOTAL_BYTES",
]

#: The one folder every archive member lives under.
ROOT = "run"
#: Bounds of `unpack_run` (keyword arguments override them).
MAX_MEMBERS = 4_000_000
MAX_MEMBER_BYTES = 64 << 30
MAX_TOTAL_BYTES = 1 << 40
_FIX = "the archive is damaged or tampered; get it again from its source"


# -- pack --------------------------------------------------------------------------------
def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _gzipped(name: str) -> bool:
    if name.endswith((".tar.gz", ".tgz")):
        return True
    if name.endswith(".tar"):
        return False
    raise ArchiveError(f"archive name {name!r} must end in .tar, .tar.gz or .tgz")


def pack_run(run_dir: Path, archive: Path) -> RunContents:
    """Write one archive of a run, after checking the run against its manifests.

    Args:
        run_dir: the run directory (`--out` of `blazefl run`, or DVC's output folder).
        archive: the file to write (replaced atomically): `.tar`, `.tar.gz` or `.tgz`.

    Returns:
        What the archive holds and the run's digest.

    Raises:
        ArchiveError: a bad archive name, or a run that does not match its manifests.

    Example:
        >>> pack_run(Path("artifacts/default"), Path("run.tar.gz")).digest[:12]
        '3f0c5d2a9b1e'
    """
    gz = _gzipped(archive.name)
    contents = check_run(run_dir)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(archive) as raw:
        out: IO[bytes] = raw
        with contextlib.ExitStack() as stack:
            if gz:
                out = cast(
                    IO[bytes],
                    stack.enter_context(
                        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
                    ),
                )
            tar = stack.enter_context(
                tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT)
            )
            for rel in manifests_first(contents.files):  # unpack is bounded by them
                path = run_dir / rel
                with open(path, "rb") as f:
                    tar.addfile(_tarinfo(f"{ROOT}/{rel}", os.fstat(f.fileno()).st_size), f)
    return contents


# -- unpack ------------------------------------------------------------------------------
def _member_rel(member: tarfile.TarInfo, max_member_bytes: int) -> str | None:
    """The run-relative path of a member (None for folders), or why it is refused."""
    name = member.name
    shown = repr(name[:80])
    if not is_safe_relpath(name):
        raise ArchiveError(f"member {shown} is not a plain relative path (absolute or '..')")
    if member.isdir():
        if name != ROOT and not (name.startswith(f"{ROOT}/") and is_safe_relpath(name[4:])):
            raise ArchiveError(f"member {shown} is outside {ROOT}/")
        return None
    if member.issym() or member.islnk():
        raise ArchiveError(f"member {shown} is a link (links are refused)")
    if not member.isreg() or member.issparse():
        raise ArchiveError(f"member {shown} is not a regular file (a device, FIFO or sparse)")
    rel = name.removeprefix(f"{ROOT}/")
    if rel == name or not in_layout(rel):
        raise ArchiveError(f"member {shown} is not part of a run under {ROOT}/")
    if not 0 <= member.size <= max_member_bytes:
        raise ArchiveError(f"member {shown} declares {member.size} bytes, over {max_member_bytes}")
    return rel


def _write_member(
    tmp: Path, rel: str, src: IO[bytes], size: int, sha256: str | None
) -> bytes | None:
    """Stream exactly `size` bytes into `tmp/rel` (read-only once written), hashing them; a
    mismatch with `sha256` is refused before the next member. Returns the bytes of a
    manifest (kept to read it), else None."""
    path = tmp / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o666)
    digest = hashlib.sha256()
    kept: list[bytes] | None = [] if is_manifest(rel) else None
    with os.fdopen(fd, "wb") as f:
        left = size
        while left > 0:
            block = src.read(min(left, 1 << 20))
            if not block:
                raise ArchiveError(f"member {rel!r} is truncated")
            f.write(block)
            digest.update(block)
            if kept is not None:
                kept.append(block)
            left -= len(block)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ArchiveError(differs(rel))  # the words verify and pack use for it
        os.fchmod(f.fileno(), 0o444)  # committed files are read-only, as `blazefl run` makes them
        f.flush()
        os.fsync(f.fileno())
    return b"".join(kept) if kept is not None else None


class _Budget:
    """Bytes that may still be written: the free disk space and `max_total_bytes`."""

    def __init__(self, tmp: Path, max_total_bytes: int) -> None:
        self.free = shutil.disk_usage(tmp).free
        self.max_total = max_total_bytes
        self.total = 0

    def reserve(self, size: int, what: str = "members") -> None:
        """Count `size` more bytes, refusing before they are written if they do not fit."""
        if self.total + size > self.max_total:
            raise ArchiveError(f"{what} hold more than {self.max_total} bytes in all")
        if self.total + size > self.free:
            raise ArchiveError(f"{what} need more than the {self.free} bytes free on disk")
        self.total += size


def _extract(
    archive: Path, tmp: Path, max_members: int, max_member_bytes: int, max_total_bytes: int
) -> set[str]:
    """Write every accepted member under `tmp`; the run-relative paths written."""
    budget = _Budget(tmp, max_total_bytes)
    book = ManifestBook()
    data_started = False
    with open(archive, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        # Stream mode: members are checked one by one as their headers arrive, before any of
        # their data is read; nothing seeks to a declared offset.
        with tarfile.open(fileobj=raw, mode="r|gz" if gz else "r|") as tar:
            count = 0
            seen: set[str] = set()
            for member in tar:
                count += 1
                if count > max_members:
                    raise ArchiveError(f"more than {max_members} members")
                rel = _member_rel(member, max_member_bytes)
                if rel is None:
                    continue
                if rel in seen:
                    raise ArchiveError(f"member {rel!r} appears twice")
                seen.add(rel)
                if is_manifest(rel):
                    if data_started and book.complete:
                        raise ArchiveError(
                            f"member {rel!r} is a manifest after the data (pack writes every "
                            "manifest first)"
                        )
                    if member.size > MAX_MANIFEST_BYTES:
                        raise ArchiveError(
                            f"member {rel!r} declares {member.size} bytes, over the "
                            f"{MAX_MANIFEST_BYTES} of a manifest"
                        )
                    sha = None
                else:
                    if not data_started:
                        data_started = True
                        if book.start_data():  # the whole run is known: does it fit?
                            need = book.recorded_total()
                            budget.reserve(need, "the files the manifests list")
                            budget.total -= need  # counted again member by member
                    sha = book.check_member(rel, member.size)
                budget.reserve(member.size)
                src = tar.extractfile(member)
                assert src is not None  # a regular file
                data = _write_member(tmp, rel, src, member.size, sha)
                if data is not None:
                    book.add(rel, data)
    if not seen:
        raise ArchiveError("it holds no run files")
    return seen


def _check_dest(dest: Path) -> None:
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise ArchiveError(f"{dest} exists and is not a folder: unpack into a new folder")
    if dest.is_dir() and any(dest.iterdir()):
        raise ArchiveError(f"{dest} exists and is not empty: unpack into a new folder")


def unpack_run(
    archive: Path,
    dest: Path,
    *,
    max_members: int = MAX_MEMBERS,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> RunContents:
    """Unpack an archive written by `pack_run` into `dest`, checking everything first.

    Args:
        archive: the archive (.tar or gzip'ed tar; the content decides, not the name).
        dest: a folder that does not exist yet or is empty.
        max_members / max_member_bytes / max_total_bytes: bounds on what is accepted.

    Returns:
        What was unpacked and the run's digest (sha256 of the last round's manifest).

    Raises:
        ArchiveError: one line naming the refused member or the failed check; `dest` is then
            left as it was (absent or empty).

    Example:
        >>> unpack_run(Path("run.tar.gz"), Path("downloaded")).digest[:12]
        '3f0c5d2a9b1e'
    """
    if not archive.is_file():
        raise ArchiveError(f"archive {archive} does not exist or is not a file")
    _check_dest(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_unpack_dirs(dest.parent)  # what a SIGKILLed earlier unpack left there
    with exit_on_sigterm():
        return _unpack_into(archive, dest, max_members, max_member_bytes, max_total_bytes)


def _unpack_into(
    archive: Path, dest: Path, max_members: int, max_member_bytes: int, max_total_bytes: int
) -> RunContents:
    tmp = Path(tempfile.mkdtemp(prefix=unpack_prefix(dest), dir=dest.parent))
    try:
        try:
            written = _extract(archive, tmp, max_members, max_member_bytes, max_total_bytes)
            contents = check_run(tmp)
            extra = sorted(written - set(contents.files))
            if extra:
                raise ArchiveError(f"member {extra[0]!r} is not covered by the run's manifests")
        except RunCheckError as exc:  # ArchiveError too
            raise ArchiveError(
                f"archive {archive}: {str(exc).replace(str(tmp), str(dest))}: {_FIX}; "
                "nothing was unpacked"
            ) from None
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
            problem = " ".join(str(exc).replace(str(tmp), str(dest)).split())[:120]
            raise ArchiveError(
                f"archive {archive} cannot be read as a run archive ({problem}): {_FIX}; "
                "nothing was unpacked"
            ) from None
        except ValueError as exc:  # a manifest that fails its schema, and the like
            raise ArchiveError(
                f"archive {archive}: {str(exc).replace(str(tmp), str(dest))}; nothing was unpacked"
            ) from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private
        _check_dest(dest)  # again: something may have appeared while unpacking
        os.rename(tmp, dest)  # replaces an empty folder in one step
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return contents
