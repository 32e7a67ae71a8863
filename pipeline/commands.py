"""What each `blazefl` verb does, given its parsed arguments. `cli.py` parses the command
line and imports this module only when a command runs (it pulls in torch), so `--help` stays
instant."""

from __future__ import annotations

from typing import Any

from blazefl.core import ClientTrainingError, WorkerCrashedError
from blazefl.core.loop import ExecutionSettings
from blazefl.pipeline.runner import run_experiment
from blazefl.stages import evaluate, init, partition, prepare, report, round_stage
from blazefl.stages.artifacts import RunDir
from blazefl.stages.config import load_config, parse_set, schema_table, to_spec

__all__ = ["schema_table", "load", "execution", "run_command", "stage_command", "is_client_failure"]


def load(config_path: str, sets: tuple[str, ...]) -> dict[str, Any]:
    """The validated flat config from a params file and `--set` overrides."""
    return load_config(config_path, parse_set(sets))


def execution(
    config: dict[str, Any], mode: str | None, workers: int | None, ipc: str | None
) -> ExecutionSettings:
    """The execution settings: command-line flags over the config's `runtime` section."""
    return ExecutionSettings.of(to_spec(config).runtime, mode, workers, ipc)


def run_command(
    config: dict[str, Any], out: str, how: ExecutionSettings, quiet: bool
) -> dict[str, Any]:
    """`blazefl run`: every missing stage of the run directory, in one process."""
    return run_experiment(config, RunDir(out), how, quiet)


def stage_command(
    name: str, t: int | None, config: dict[str, Any], out: str, how: ExecutionSettings
) -> None:
    """`blazefl stage NAME`: one stage, from its declared inputs alone (as DVC runs it).

    Later rounds on disk made with another config are not an error here: under DVC they are
    DVC's to replace as the pipeline proceeds. `blazefl run` keeps its resume guard.
    """
    run = RunDir(out)
    if name in ("round", "evaluate") and t is None:
        raise ValueError(f"stage {name} needs --round N")
    if name == "round":
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
