"""Files the user names outside a run (figures, tables): written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_file", "write_atomically"]


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A file of the user's (an archive, a table, a figure) written whole or not at all: a
    temporary sibling of a name no one else uses, fsync'ed, then renamed over `path`.

    Example:
        >>> with atomic_file(Path("run.tar.gz")) as f:
        ...     f.write(data)
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
    # O_EXCL | O_NOFOLLOW: never write through a file or link someone placed there
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomically(path: Path, data: bytes) -> None:
    """Write a file of the user's (a table, a figure) atomically (`atomic_file`), so a
    killed process never leaves half a file.

    Example:
        >>> write_atomically(Path("sweep.md"), b"| a |\\n")
    """
    with atomic_file(path) as f:
        f.write(data)
