"""One writer per run directory: an exclusive lock that a crashed holder cannot leave stuck.

Two `blazefl run` (or `stage`) processes writing the same `--out` interleave rounds and store
rewrites into a run that fails `verify` for good. `RunLock` takes an exclusive, non-blocking
`flock` on `RUN/.blazefl.lock`; the second process is refused at once with one line.

`flock` locks belong to the open file, and the kernel drops them when the holder exits in any
way, SIGKILL included, so a crash never leaves the run locked. The pid written into the file
is only for the error message; it is never used to decide whether the lock is held.

An `flock` belongs to an inode, not to a path: when the run directory (or its lock file) is
removed and made again while a run is live, a second process locks the *new* file and both
would write. So the holder records the (st_dev, st_ino) of the run directory and of its lock
file when it acquires the lock, and `check_writer` compares them with what the paths name now
before every commit into the run (`atomic_dir` / `atomic_write` call it): a replaced directory
stops the run with one line (`RunReplacedError`) instead of writing into someone else's run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "RunReplacedError", "check_writer"]

#: The lock file inside the run directory (anything that lists a run must skip it).
LOCK_NAME = ".blazefl.lock"


class RunLockedError(ValueError):
    """Another live process holds the run directory's lock."""


class RunReplacedError(ValueError):
    """The locked run directory or its lock file was removed or replaced by another one."""


#: Locks held by this process, by absolute run path (what `check_writer` looks up); the
#: background commit thread reads it while the main thread may acquire or release.
_HELD: dict[str, RunLock] = {}
_HELD_GUARD = threading.Lock()

_Identity = tuple[int, int]


def _identity(info: os.stat_result) -> _Identity:
    return (info.st_dev, info.st_ino)


class RunLock:
    """Exclusive lock on a run directory for the lifetime of a `with` block.

    The directory is created if needed. Not reentrant: a second `RunLock` on the same
    directory in the same process is refused like one from another process.

    Args:
        root: the run directory (`--out`).

    Raises:
        RunLockedError: on entry, if another process holds the lock.
        ValueError: on entry, if `root` cannot be created or the lock file cannot be opened
            (e.g. `root` is a file, or the lock file is a symlink).

    Example:
        >>> with RunLock(Path("artifacts/default")):
        ...     run_everything()
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self._fd: int | None = None
        self._key = os.path.abspath(self.root)
        self._ids: tuple[_Identity, _Identity] | None = None  # (run dir, lock file)

    def acquire(self) -> RunLock:
        """Take the lock now (what `with` does); see the class for errors."""
        if self._fd is not None:
            return self
        for _ in range(3):
            fd = self._open_and_lock()
            ids = self._current_ids()
            # the folder may have been replaced between our open and our flock: the lock
            # must be on the file the path names now, or it excludes no one
            if ids is not None and ids[1] == _identity(os.fstat(fd)):
                break
            os.close(fd)
        else:
            raise RunReplacedError(
                f"cannot lock {self.root}: it keeps being removed and made again by another "
                "process: stop that process or use another --out"
            )
        with contextlib.suppress(OSError):  # informational only: a full disk must not matter
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd, self._ids = fd, ids
        with _HELD_GUARD:
            _HELD[self._key] = self
        return self

    def _open_and_lock(self) -> int:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a lock file planted as a symlink must not make us create or truncate
            # a file elsewhere; O_CLOEXEC: worker processes must not inherit (and keep) the lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            why = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
            raise ValueError(
                f"cannot lock {self.root} ({why}): use a writable folder as --out"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ValueError(f"cannot lock {self.root} ({exc.strerror})") from None
            raise RunLockedError(
                f"another blazefl process (pid {holder}) is writing {self.root}: wait for it "
                "to finish or use another --out"
            ) from None
        return fd

    def _current_ids(self) -> tuple[_Identity, _Identity] | None:
        """What the run path and the lock path name now, or None if either is gone."""
        try:
            return _identity(os.stat(self.root)), _identity(os.lstat(self.path))
        except OSError:
            return None

    def intact(self) -> bool:
        """Whether this object took the lock and the run directory and lock file are still
        the ones it locked (not removed, not replaced by a new folder or file); stays
        answerable after `release`, for clean-up decisions."""
        return self._ids is not None and self._current_ids() == self._ids

    def check(self) -> None:
        """Raise `RunReplacedError` unless `intact()`: call before writing into the run.

        Raises:
            RunReplacedError: the run directory or its lock file was removed or replaced.

        Example:
            >>> lock.check()  # before renaming a finished round into place
        """
        if self._fd is None or not self.intact():
            raise RunReplacedError(
                f"run directory {self.root} was removed or replaced while this process was "
                "writing it (another process may be writing the new one): stopped without "
                f"writing into it; check {self.root} and run again"
            )

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a new holder)."""
        if self._fd is not None:
            with _HELD_GUARD:
                if _HELD.get(self._key) is self:
                    del _HELD[self._key]
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def check_writer(path: str | os.PathLike[str]) -> None:
    """Before committing `path`: if this process holds the lock of a run directory that
    contains `path`, check that the directory and its lock file are still the locked ones.

    Paths outside every held run (an archive being unpacked, a test's scratch folder) pass.

    Args:
        path: the file or folder about to be written or renamed into place.

    Raises:
        RunReplacedError: the run directory holding `path` was removed or replaced.

    Example:
        >>> check_writer(run.root / "round-0003")
    """
    target = os.path.abspath(path)
    with _HELD_GUARD:
        locks = [
            lock
            for key, lock in _HELD.items()
            if target == key or target.startswith(key.rstrip(os.sep) + os.sep)
        ]
    for lock in locks:
        lock.check()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdecimal() else "unknown"
