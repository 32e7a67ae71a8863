"""Removing temporary folders that a killed run left behind.

A process-pool run makes Python's multiprocessing create a `pymp-*` folder in the temp
directory (it holds the socket through which workers receive the shared-memory arenas). It is
removed by an exit handler, which a SIGKILL never runs, so every killed run used to leave one.

Nothing in a `pymp-*` folder says which process made it, and other Python programs of the
same user make them too, so an unmarked one is never removed: deleting the folder of a live
process would break its next worker start. Instead a blazefl process *claims* its folder
(`claim_pymp_dir`) by writing an owner file holding its pid and the kernel's start time of that
pid; `clean_stale_pymp_dirs` removes claimed folders whose owner is gone (no such pid, or the
pid now names a process that started at another time, i.e. the pid was reused). Folders the
run makes itself (`owned_temp_dir`, e.g. for storage-mode IPC files) carry the same owner tag
in their name and are cleaned the same way.
"""

from __future__ import annotations

import contextlib
import multiprocessing.util
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "OWNER_FILE",
    "OWNED_PREFIX",
    "owner_tag",
    "process_start_time",
    "claim_pymp_dir",
    "owned_temp_dir",
    "clean_stale_pymp_dirs",
]

#: Owner file written into a claimed `pymp-*` folder: "PID START\n".
OWNER_FILE = ".blazefl-owner"
#: Name prefix of folders made by `owned_temp_dir`: blazefl-tmp-PID-START-XXXXXXXX.
OWNED_PREFIX = "blazefl-tmp-"


def process_start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None if no such
    process exists. Where /proc is missing, "?" for any live pid (no pid-reuse protection).
    """
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"
    except OSError:
        return None
    # field 22 (starttime); the command name (field 2) may hold spaces and ')', so split after
    # the last ')'
    fields = stat_line.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def owner_tag(pid: int | None = None) -> str:
    """ "PID-START" naming a process unambiguously (pids are reused, start times are not)."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{process_start_time(pid)}"


def _owner_gone(tag: str) -> bool:
    pid_text, _, start = tag.strip().partition("-")
    if not pid_text.isdecimal() or not start:
        return False  # not a tag we wrote: leave the folder alone
    now = process_start_time(int(pid_text))
    return now is None or (now != start and "?" not in (now, start))


def claim_pymp_dir() -> Path:
    """Mark this process's multiprocessing temp folder as owned by it (creating the folder if
    multiprocessing has not yet), so a later run can remove it if this process is killed.

    Call in the main process before starting a process pool. The folder is still removed by
    multiprocessing's own exit handler on a normal exit.

    Returns:
        The `pymp-*` folder.

    Example:
        >>> claim_pymp_dir().name.startswith("pymp-")
        True
    """
    folder = Path(multiprocessing.util.get_temp_dir())  # type: ignore[attr-defined]
    with contextlib.suppress(OSError):  # best effort: a full disk must not stop the run
        (folder / OWNER_FILE).write_text(owner_tag() + "\n")
    return folder


@contextlib.contextmanager
def owned_temp_dir(parent: Path | None = None) -> Iterator[Path]:
    """A private temp folder named with this process's owner tag, removed on exit of the
    block (and by a later `clean_stale_pymp_dirs` if this process is killed).

    Example:
        >>> with owned_temp_dir() as tmp:
        ...     trainer = ProcessPoolClientTrainer(..., storage_dir=tmp)
    """
    path = Path(tempfile.mkdtemp(prefix=f"{OWNED_PREFIX}{owner_tag()}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _read_owner_file(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # unclaimed
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 64).decode("ascii", "replace")
    finally:
        os.close(fd)


def clean_stale_pymp_dirs(tmpdir: Path | None = None) -> list[Path]:
    """Remove the temp folders of blazefl processes that no longer exist.

    Removed: `pymp-*` folders claimed with `claim_pymp_dir`, and `blazefl-tmp-*` folders from
    `owned_temp_dir`, whose owner process is gone. Kept: unclaimed `pymp-*` folders (their
    owner cannot be told), folders of live owners, symlinks, and anything owned by another
    user.

    Args:
        tmpdir: the folder to clean (default: `tempfile.gettempdir()`).

    Returns:
        The folders removed.

    Example:
        >>> clean_stale_pymp_dirs()  # at the start of a run
        [PosixPath('/tmp/pymp-x7hn8rw1')]
    """
    base = Path(tmpdir) if tmpdir is not None else Path(tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith(("pymp-", OWNED_PREFIX)):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        if entry.name.startswith("pymp-"):
            tag = _read_owner_file(Path(entry.path) / OWNER_FILE)
        else:
            pid, _, rest = entry.name.removeprefix(OWNED_PREFIX).partition("-")
            tag = f"{pid}-{rest.partition('-')[0]}"
        if tag is None or not _owner_gone(tag):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            removed.append(Path(entry.path))
    return sorted(removed)
