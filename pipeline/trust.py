"""What `blazefl verify` may run: consent before user code, and which copy of it runs.

A run's manifests name code by import path (`fl.algorithm: myfl.feddyn:FedDyn`); re-executing
the run imports and calls it. A downloaded run is untrusted input, so `verify` imports user
code only after the reader consents (`--trust-code`), having been shown the import paths and
the recorded hashes of every source file; built-in names need no consent. `show`, `diff`,
`pack` and `unpack` never import anything a run names.

With consent, the code that runs is by default the run's own copy (round 0 carries every
user source file, content-addressed): it is re-created in a temporary folder, checked
against the recorded hashes, and the re-execution runs there (working directory and
`sys.path`, which spawned pool workers inherit). `--code-from here` runs the code of the
current folder instead; either way a difference between the recorded closure and the current
folder's is named first ("user code differs: myfl/common.py").

Example:
    >>> require_consent(run, manifests, trust=False)
    ConsentError: artifacts/x names user code that verify would import and run: ...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from blazefl.modes import CODE_SOURCES
from blazefl.registry import is_import_path
from blazefl.stages.artifacts import RunDir
from blazefl.stages.config import CODE_KEYS
from blazefl.stages.snapshot import CODE
from blazefl.stages.user_code import (
    code_differences,
    config_code,
    materialize_code,
)

__all__ = [
    "CODE_SOURCES",
    "ConsentError",
    "named_code",
    "require_consent",
    "code_notes",
    "code_root",
]


class ConsentError(ValueError):
    """Re-executing the run would import user code the reader has not consented to."""


def named_code(manifests: dict[int, dict[str, Any]]) -> list[str]:
    """`key=import.path:Name` for every user import path the manifests' configs name, sorted.

    Only strings are read from the manifests: nothing is imported.
    """
    found = set()
    for m in manifests.values():
        config = m.get("config", {})
        for key in CODE_KEYS:
            value = config.get(key)
            if isinstance(value, str) and is_import_path(value):
                found.add(f"{key}={value}")
    return sorted(found)


def _files_text(record: dict[str, str], limit: int = 6) -> str:
    shown = [f"{rel} {sha[:12]}" for rel, sha in sorted(record.items())[:limit]]
    more = f", and {len(record) - limit} more" if len(record) > limit else ""
    return ", ".join(shown) + more if shown else "no source files recorded"


def require_consent(run: RunDir, manifests: dict[int, dict[str, Any]], trust: bool) -> None:
    """Refuse (one line) to go on when the run names user code and the reader has not
    consented; built-in names pass.

    Raises:
        ConsentError: user code named and `trust` is False.
    """
    named = named_code(manifests)
    if not named or trust:
        return
    record = manifests[min(manifests)].get("user_code", {})
    raise ConsentError(
        f"{run.root} names user code that verify would import and run: {', '.join(named)} "
        f"(recorded sources: {_files_text(record)}): read it, then pass --trust-code to "
        "re-execute it (show, diff, pack and unpack never run it)"
    )


def code_notes(record: dict[str, str], config: dict[str, Any]) -> list[str]:
    """A note when the recorded user code differs from the current folder's.

    Args:
        record: round 0's `user_code`.
        config: the run's config (only its import paths are read; nothing is imported).
    """
    if not record:
        return []
    here = config_code(config)
    changed = code_differences(record, here)

    def listed(paths: list[str]) -> str:
        return ", ".join(paths[:6]) + (f" and {len(paths) - 6} more" if len(paths) > 6 else "")

    absent = [p for p in changed if p not in here]
    differ = [p for p in changed if p in here]
    notes = []
    if differ:
        notes.append(f"user code differs: {listed(differ)} (recorded in the run vs this folder)")
    if absent:
        notes.append(f"user code not in this folder: {listed(absent)}")
    return notes


@contextlib.contextmanager
def code_root(run: RunDir, m0: dict[str, Any], source: str) -> Iterator[None]:
    """Run the block in the folder whose code re-executes the run.

    Args:
        run: the run (its path must be absolute: the working directory changes).
        m0: round 0's manifest (its `user_code` record and `outputs`).
        source: "run" (the run's own copy, re-created in a temporary folder) or "here".

    Raises:
        UserCodeError: a copy is missing or does not match its recorded hash (one line).
    """
    record: dict[str, str] = m0.get("user_code", {})
    if source == "here" or not record:
        yield
        return
    names = [n.removeprefix(f"{CODE}/") for n in m0["outputs"] if n.startswith(f"{CODE}/")]
    copies = {name: run.read_file(f"round-0000/{CODE}/{name}") for name in names}
    folder = Path(tempfile.mkdtemp(prefix="blazefl-verify-code-"))
    old_cwd = os.getcwd()
    try:
        materialize_code(copies, record, folder)
        os.chdir(folder)  # the registry imports from the working directory, as workers do
        sys.path.insert(0, str(folder))
        yield
    finally:
        os.chdir(old_cwd)
        with contextlib.suppress(ValueError):
            sys.path.remove(str(folder))
        shutil.rmtree(folder, ignore_errors=True)
