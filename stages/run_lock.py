"""One writer per run directory: an exclusive lock that a crashed holder cannot leave stuck.

Two `blazefl run` (or `stage`) processes writing the same `--out` interleave rounds and store
rewrites into a run that fails `verify` for good. `RunLock` takes an exclusive, non-blocking
`flock` on `RUN/.blazefl.lock`; the second process is refused at once with one line.

`flock` locks belong to the open file, and the kernel drops them when the holder exits in any
way, SIGKILL included, so a crash never leaves the run locked. The pid written into the file
is only for the error message; it is never used to decide whether the lock is held.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError"]

#: The lock file inside the run directory (anything that lists a run must skip it).
LOCK_NAME = ".blazefl.lock"


class RunLockedError(ValueError):
    """Another live process holds the run directory's lock."""


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

    def acquire(self) -> RunLock:
        """Take the lock now (what `with` does); see the class for errors."""
        if self._fd is not None:
            return self
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
        with contextlib.suppress(OSError):  # informational only: a full disk must not matter
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a new holder)."""
        if self._fd is not None:
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


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdecimal() else "unknown"
