"""What each `blazefl` verb does, given its parsed arguments. `cli.py` parses the command
line and imports this module only when a command runs (it pulls in torch), so `--help` stays
instant."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from blazefl.core import ClientTrainingError, WorkerCrashedError
from blazefl.core.loop import ExecutionSettings
from blazefl.pipeline.archive import pack_run, unpack_run
from blazefl.pipeline.runner import run_experiment
from blazefl.pipeline.tracking import TrackOptions
from blazefl.stages import evaluate, init, partition, prepare, report, round_stage
from blazefl.stages.artifacts import ArtifactError, RunDir
from blazefl.stages.config import RunConfig, load_config, parse_set, schema_table
from blazefl.stages.provenance import refuse_upstream_rewrite
from blazefl.stages.run_lock import LOCK_NAME, RunLock
from blazefl.stages.temp_cleanup import clean_stale_pymp_dirs

__all__ = [
    "schema_table",
    "load",
    "execution",
    "run_command",
    "stage_command",
    "is_client_failure",
    "pack_command",
    "unpack_command",
]


def load(config_path: str, sets: tuple[str, ...]) -> RunConfig:
    """The validated config from a params file and `--set` overrides (a warning line on
    stderr for sections of the file that the selected algorithm does not use): the one value
    every stage below the command line takes."""

    def warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    return RunConfig.of(load_config(config_path, parse_set(sets), warn))


def execution(
    config: RunConfig, mode: str | None, workers: int | None, ipc: str | None
) -> ExecutionSettings:
    """The execution settings: command-line flags over the config's `runtime` section."""
    return ExecutionSettings.of(config.spec.runtime, mode, workers, ipc)


def run_command(
    config: RunConfig,
    out: str,
    how: ExecutionSettings,
    quiet: bool,
    track: TrackOptions | None = None,
) -> dict[str, Any]:
    """`blazefl run`: every missing stage of the run directory, in one process (holding the
    run's lock: a second writer is refused), tracked by `track`'s trackers if any."""
    with writing(out) as run:
        return run_experiment(config, run, how, quiet, track=track)


@contextlib.contextmanager
def writing(out: str) -> Iterator[RunDir]:
    """The run directory `out`, locked for this process while the block writes it.

    Raises:
        ArtifactError: `out` is an existing non-empty folder that is not a run directory.
        RunLockedError: another blazefl process is writing `out`.
    """
    run = RunDir(out)
    if run.root.is_dir() and any(run.root.iterdir()) and not run.is_run_dir():
        raise ArtifactError(
            f"--out {run.root} is a non-empty folder that is not a blazefl run directory: "
            "choose a new or empty folder"
        )
    created = not run.root.exists()
    lock = RunLock(run.root)
    try:
        with lock:
            yield run
            lock.check()  # a run whose folder was replaced at the very end did not finish
    except BaseException:
        # a refused or failed command that made the folder leaves nothing behind; a folder
        # replaced while we held the lock is someone else's now (its lock file included)
        if created and lock.intact() and [p.name for p in run.root.iterdir()] == [LOCK_NAME]:
            (run.root / LOCK_NAME).unlink()
            run.root.rmdir()
        raise


def stage_command(
    name: str, t: int | None, config: RunConfig, out: str, how: ExecutionSettings
) -> None:
    """`blazefl stage NAME`: one stage, from its declared inputs alone (as DVC runs it).

    Later rounds on disk made with another config are not an error here: under DVC they are
    DVC's to replace as the pipeline proceeds. `blazefl run` keeps its resume guard. Outside
    DVC, re-running prepare / partition / init over a run with later rounds is refused.
    """
    if name in ("round", "evaluate") and t is None:
        raise ValueError(f"stage {name} needs --round N")
    with writing(out) as run:
        _stage(name, t, config, run, how)


def _stage(
    name: str, t: int | None, config: RunConfig, run: RunDir, how: ExecutionSettings
) -> None:
    if name in ("prepare", "partition", "init"):
        refuse_upstream_rewrite(run, name)  # later rounds would silently go stale
    if name == "round":
        clean_stale_pymp_dirs()
        round_stage(config, run, t, how)  # type: ignore[arg-type]
    elif name == "evaluate":
        evaluate(config, run, t)  # type: ignore[arg-type]
    else:
        {"prepare": prepare, "partition": partition, "init": init, "report": report}[name](
            config, run
        )


def is_client_failure(exc: BaseException) -> bool:
    """True when client work failed (exit code 1), as opposed to bad input."""
    return isinstance(exc, ClientTrainingError | WorkerCrashedError)


def pack_command(run_dir: str, archive: str) -> Any:
    """`blazefl pack RUN ARCHIVE`: check the run against its manifests and write one archive
    of it (same run, same bytes). Returns the `RunContents` (its `digest` is quoted)."""
    return pack_run(Path(run_dir), Path(archive))


def unpack_command(archive: str, dest: str) -> Any:
    """`blazefl unpack ARCHIVE DIR`: unpack into a new or empty DIR after checking every
    member and every file against the manifests. Returns the `RunContents`."""
    return unpack_run(Path(archive), Path(dest))
