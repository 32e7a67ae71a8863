"""Telling the user code's failures apart from the run's while `blazefl verify` re-executes.

A re-execution can fail for two unrelated reasons. The run's own files may be damaged or
unusable here (a file that does not match its manifest, a GPU run on a CPU machine): that is
a finding about the run, reported per round as "cannot re-execute" (exit 1) or, when the run
cannot be read at all, as one line (exit 2). Or the user code in this folder cannot run it:
it does not parse, does not import, or raises while a round is re-executed (a server step, a
client, a model factory, a partitioner). That says nothing about the run, neither identical
nor different, so it ends as `CodeCannotRunError` and the CLI exits 125, the code
`git bisect run` reads as "this commit cannot be tested, skip it" (docs/auditing.md).

Example:
    >>> with code_must_run(3):
    ...     session.compute(3)  # a server that raises RuntimeError("boom") at myplug.py:7
    CodeCannotRunError: round 3 cannot be re-executed with this code: RuntimeError: boom (at
    myplug.py:7)
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterator
from typing import Any

from blazefl.core.devices import DeviceUnavailableError
from blazefl.data import DatasetNotFoundError, MissingDependencyError
from blazefl.pipeline.trust import code_notes
from blazefl.registry import is_import_path
from blazefl.spec import algorithm_of
from blazefl.stages.artifacts import ArtifactError
from blazefl.stages.config import ConfigError
from blazefl.stages.data_files import DataFilesError
from blazefl.stages.manifest_schema import ManifestError
from blazefl.stages.tensor_checks import ArtifactContentError
from blazefl.stages.untrusted import UntrustedArtifactError
from blazefl.stages.user_code import UserCodeError

__all__ = [
    "RUN_ERRORS",
    "CodeCannotRunError",
    "code_must_run",
    "import_algorithms",
    "listed_code_notes",
    "one_line",
]


class CodeCannotRunError(ValueError):
    """The user code here cannot re-execute the run: it cannot be listed, parsed or imported,
    or it raised while re-executing a round. Nothing is known about the run then (neither
    identical nor different), so the CLI exits 125: `git bisect run` skips the commit."""


#: What a damaged run, or a machine that cannot re-execute it, raises while a round is
#: re-executed: these keep their meaning (a round that "cannot re-execute", exit 1). Anything
#: else raised then is the user code's doing (`code_must_run`).
RUN_ERRORS: tuple[type[Exception], ...] = (
    ArtifactError,  # ProvenanceError, RunCheckError: the files, the chain, the stores
    ArtifactContentError,
    UntrustedArtifactError,
    ManifestError,
    ConfigError,
    UserCodeError,  # the run's own copy of its code is missing or altered
    DataFilesError,
    DeviceUnavailableError,  # a GPU run on a machine without that GPU
    DatasetNotFoundError,
    MissingDependencyError,
)


def one_line(exc: BaseException) -> str:
    """One line for an exception: the package's own carry a one-line message already
    ("client 3 failed in round 1: ..."); anything else is its type, its first line and the
    line of code that raised it, relative to the folder the code runs in."""
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    if type(exc).__module__.startswith("blazefl.") and text:
        return text
    frames = traceback.extract_tb(exc.__traceback__)
    where = frames[-1].filename.removeprefix(os.getcwd() + os.sep) if frames else ""
    at = f" (at {where}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}{': ' + text if text else ''}{at}"


@contextlib.contextmanager
def code_must_run(t: int) -> Iterator[None]:
    """Re-execute round t: what the block raises that is not about the run (`RUN_ERRORS`)
    comes from the code here (a server, a client, a model, a partitioner that raises, a
    module imported only now) and becomes a `CodeCannotRunError` naming round t."""
    try:
        yield
    except RUN_ERRORS:
        raise
    except Exception as exc:  # any type: user code may raise anything
        raise CodeCannotRunError(
            f"round {t} cannot be re-executed with this code: {one_line(exc)}"
        ) from exc


def import_algorithms(manifests: dict[int, dict[str, Any]]) -> None:
    """Import the algorithms the rounds name by import path before their configs are read:
    reading a config imports its algorithm, and code here that cannot be imported (a module
    that raises, a missing name, a missing module) must not pass for a tampered config.

    Raises:
        CodeCannotRunError: the registry's one line ("importing myplug raised ...").
    """
    names = {m.get("config", {}).get("fl.algorithm") for m in manifests.values()}
    for name in sorted(n for n in names if isinstance(n, str) and is_import_path(n)):
        try:
            algorithm_of(name)
        except ValueError as exc:
            raise CodeCannotRunError(str(exc)) from exc


def listed_code_notes(record: dict[str, str], config: dict[str, Any]) -> list[str]:
    """`pipeline.trust.code_notes`: listing this folder's code parses it, and a file that
    does not parse ("myplug.py:12: cannot be parsed") is the code's failure, not the run's.

    Raises:
        CodeCannotRunError: this folder's code cannot be listed.
    """
    try:
        return code_notes(record, config)
    except UserCodeError as exc:
        raise CodeCannotRunError(str(exc)) from exc
