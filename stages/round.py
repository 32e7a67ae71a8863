"""round: round t-1's artifacts -> round t's artifacts (+ its metrics)."""

from __future__ import annotations

from pathlib import Path

from blazefl.core.loop import ExecutionSettings
from blazefl.stages.artifacts import MANIFEST, ArtifactError, RunDir
from blazefl.stages.config import RunConfig
from blazefl.stages.session import Session


def round_stage(
    config: RunConfig,
    run: RunDir,
    t: int,
    execution: ExecutionSettings | None = None,
) -> Path:
    """Compute round `t` from `RUN/round-(t-1)` and commit `RUN/round-t` and its metrics.

    Args:
        config: the validated config (`RunConfig`).
        run: run directory.
        t: round number (>= 1); round t-1 must be complete.
        execution: mode / workers / IPC (default: the config's; never changes bytes).

    Returns:
        The round directory.
    """
    if t < 1:
        raise ArtifactError(f"--round must be >= 1 (round 0 is the init stage), got {t}")
    last = run.last_complete_round()
    if not (run.round_dir(t - 1) / MANIFEST).exists():  # only the parent round must exist
        have = "no complete round" if last is None else f"last complete round is {last}"
        raise ArtifactError(
            f"cannot run round {t}: {have}; run round {0 if last is None else last + 1} first"
        )
    runtime = config.spec.runtime
    how = execution or ExecutionSettings.of(runtime)
    # in ray mode, Ray and its actors start while the session reads the stores and round t-1
    with (
        how.started(runtime.threads_per_client, runtime.device) as how,
        Session(config, run, how) as session,
    ):
        session.load(t - 1)
        session.commit(session.compute(t))
    return run.round_dir(t)
