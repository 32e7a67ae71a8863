"""Files the user names outside a run (figures, tables): written whole or not at all."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, data: bytes) -> None:
    """Write a file of the user's (a table, a figure) atomically: a temporary sibling,
    fsync'ed, then renamed, so a killed process never leaves half a file.

    Example:
        >>> write_atomically(Path("sweep.md"), b"| a |\\n")
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
    # O_EXCL | O_NOFOLLOW: never write through a file or link someone placed there
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
