"""The `blazefl` command line. Heavy imports (torch) happen inside commands, so `--help`
is instant.

Exit codes: 0 ok; 1 verify/diff found a difference (or client work failed); 2 bad input
(the command itself: a missing run folder, a bad flag or `--rounds`, a run whose files cannot
be read as a run); 125 `verify` only: the user code here cannot be judged, it cannot be parsed
or imported or it raised while re-executing a round (`git bisect run` skips such a commit,
docs/auditing.md). 130 interrupted.
"""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from blazefl.modes import CODE_SOURCES, EXECUTION_MODES, IPC_MODES
from blazefl.pipeline.cli_sweeps import experiment_commands
from blazefl.trackers import TRACKERS

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_OUT = "artifacts/default"

#: `blazefl verify`'s exit code when the user code here cannot re-execute the run: the value
#: `git bisect run` reads as "this commit cannot be tested, skip it" (any other code from 1 to
#: 127 marks the commit bad, so a failure of the code must not exit 1 or 2).
EXIT_CANNOT_JUDGE = 125

#: The stages `blazefl stage NAME` runs (dispatched in `blazefl.pipeline.commands`).
STAGE_NAMES = ("prepare", "partition", "init", "round", "evaluate", "report")


def _user_errors(fn: F) -> F:
    """Turn user mistakes into a one-line message and exit code 2 (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except KeyboardInterrupt:
            click.echo("interrupted: completed rounds are kept; run again to resume", err=True)
            _exit_promptly()
            sys.exit(130)
        except ValueError as exc:  # ConfigError, ArtifactError, DatasetNotFoundError, ...
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:  # unwritable --out, a file where a folder should be, disk full
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(f"error: cannot access{where}: {exc.strerror or exc}", err=True)
            sys.exit(2)
        except RuntimeError as exc:
            from blazefl.pipeline.commands import is_client_failure  # lazy: --help skips torch

            if is_client_failure(exc):
                click.echo(f"error: {str(exc).splitlines()[0]}", err=True)
                sys.exit(1)
            raise

    return wrapper  # type: ignore[return-value]


def _exit_promptly() -> None:
    """Skip the interpreter's last garbage collection on the way out of an interrupted run:
    with torch and Ray loaded it walks millions of objects for over a second and frees only
    memory the process gives back anyway, while Ctrl-C must end a run within 2 s. Everything
    that must be released (pools, Ray, locks, temporary files) was closed before this."""
    import gc

    gc.freeze()


def _config_options(fn: F) -> F:
    fn = click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config key (dotted), repeatable.",
    )(fn)
    fn = click.option(
        "--out",
        type=click.Path(file_okay=False),
        default=DEFAULT_OUT,
        show_default=True,
        help="Run directory.",
    )(fn)
    fn = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default="params.yaml",
        show_default=True,
        help="Config file.",
    )(fn)
    return fn


def _runtime_options(fn: F) -> F:
    fn = click.option(
        "--ipc",
        type=click.Choice(IPC_MODES),
        default=None,
        help="Process-pool IPC (default: runtime.ipc).",
    )(fn)
    fn = click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        help="Worker threads/processes/Ray actors (default: runtime.workers).",
    )(fn)
    fn = click.option(
        "--mode",
        type=click.Choice(EXECUTION_MODES),
        default=None,
        help="Execution mode (default: runtime.mode).",
    )(fn)
    return fn


def _track_options(fn: F) -> F:
    """`--track` and `--track-dir` (the commands that run experiments)."""
    fn = click.option(
        "--track-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Tracking folder: an MLflow store (mlflow.db, mlartifacts/) and tensorboard/ event "
        "files (default: tracking/ next to --out, inside it for a sweep; for mlflow, "
        "MLFLOW_TRACKING_URI when set).",
    )(fn)
    fn = click.option(
        "--track",
        "track",
        multiple=True,
        type=click.Choice((*TRACKERS, "none")),
        help="Track runs with mlflow and/or tensorboard (repeatable; default: runtime.track). "
        "Never changes a run's bytes; a tracker that fails is one warning line.",
    )(fn)
    return fn


def _ray_options(fn: F) -> F:
    """`--ray-address` and `--ray-allow-mixed-env` (ray mode; the commands that run rounds)."""
    fn = click.option(
        "--ray-allow-mixed-env",
        is_flag=True,
        default=False,
        help="Ray mode: run clients on nodes whose torch build, CPU or bit-relevant variables "
        "differ from this machine's (a warning line instead of a refusal).",
    )(fn)
    fn = click.option(
        "--ray-address",
        metavar="ADDRESS",
        default=None,
        help="Ray mode: the cluster to join ('auto', HOST:PORT; default: RAY_ADDRESS, else a "
        "local Ray runtime sized by --workers).",
    )(fn)
    return fn


class _OneLineErrors(click.Group):
    """Usage mistakes (unknown option, bad flag value) end as one line and exit code 2,
    like every other bad input, instead of click's usage block."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
            sys.exit(0)
        except click.ClickException as exc:
            hint = ""
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                hint = f" (see: {exc.ctx.command_path} --help)"
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="blazefl", prog_name="blazefl")
def main() -> None:
    """BlazeFL: reproducible federated-learning simulation as a snapshot pipeline."""


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@_config_options
@_runtime_options
@_ray_options
@_track_options
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No progress output, no closing lines (warnings and errors only).",
)
@_user_errors
def run(
    config: str | None,
    config_path: str,
    out: str,
    sets: tuple[str, ...],
    mode: str | None,
    workers: int | None,
    ipc: str | None,
    ray_address: str | None,
    ray_allow_mixed_env: bool,
    track: tuple[str, ...],
    track_dir: str | None,
    quiet: bool,
) -> None:
    """Run init and every round in one process; resume after the last complete round.

    On a terminal a line redrawn in place shows the round's clients done and the ETA; on a
    log, one line per round. At the end: where the plot is, and each tracker's record.
    """
    from blazefl.pipeline import commands  # lazy: --help skips torch
    from blazefl.pipeline.tracking import TrackOptions

    cfg = commands.load(config or config_path, sets)
    # a missing tracker package or a bad folder: one line before any work
    tracking = TrackOptions.of(cfg.spec.runtime.track, track, track_dir, out)
    how = commands.execution(cfg, mode, workers, ipc).with_ray(ray_address, ray_allow_mixed_env)
    result = commands.run_command(cfg, out, how, quiet, tracking)
    if not quiet:
        s = result["summary"]
        acc = s.get("test_accuracy")
        click.echo(
            f"done: {s['rounds']} rounds in {out}; final test accuracy {acc:.4f}"
            if acc is not None
            else f"done: {s['rounds']} rounds in {out}",
            err=True,
        )
        for line in ([f"plot: {result['plot']}"] if result["plot"] else []) + result["tracking"]:
            click.echo(line, err=True)


@main.command()
@click.argument("name", type=click.Choice(STAGE_NAMES))
@click.option("--round", "round_", type=int, default=None, help="Round (round/evaluate).")
@_config_options
@_runtime_options
@_ray_options
@_user_errors
def stage(
    name: str,
    round_: int | None,
    config_path: str,
    out: str,
    sets: tuple[str, ...],
    mode: str | None,
    workers: int | None,
    ipc: str | None,
    ray_address: str | None,
    ray_allow_mixed_env: bool,
) -> None:
    """Run one stage, as dvc.yaml calls it."""
    from blazefl.pipeline import commands  # lazy: --help skips torch

    if name in ("round", "evaluate") and round_ is None:
        raise click.UsageError(f"stage {name} needs --round N")
    cfg = commands.load(config_path, sets)
    how = commands.execution(cfg, mode, workers, ipc).with_ray(ray_address, ray_allow_mixed_env)
    commands.stage_command(name, round_, cfg, out, how)


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@_config_options
@click.option(
    "--dvc-file",
    type=click.Path(dir_okay=False),
    default="dvc.yaml",
    show_default=True,
    help="Where to write the pipeline.",
)
@_user_errors
def dvc(
    config: str | None, config_path: str, out: str, sets: tuple[str, ...], dvc_file: str
) -> None:
    """Write dvc.yaml (one stage per round) and params.yaml for the config."""
    from blazefl.pipeline import commands  # lazy: --help skips torch
    from blazefl.pipeline.dvcgen import path_note, write_dvc  # lazy: --help skips torch

    path = config or config_path
    cfg = commands.load(path, sets)
    written = write_dvc(cfg, out=out, dvc_file=Path(dvc_file), params_file=Path(path))
    click.echo(f"wrote {', '.join(str(p) for p in written)}", err=True)
    note = path_note()
    if note:
        click.echo(note, err=True)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--rounds", default=None, help="Rounds to check, e.g. 3,5-7 (default: all).")
@_runtime_options
@_ray_options
@click.option(
    "--trust-code",
    is_flag=True,
    help="Consent to importing and running the user code the run names (built-ins need none).",
)
@click.option(
    "--code-from",
    type=click.Choice(CODE_SOURCES),
    default="auto",
    show_default=True,
    help="User code to re-execute with: the run's own copy, this folder's, or auto (this "
    "folder's when it matches the record, else the run's).",
)
@_user_errors
def verify(
    run_dir: str,
    rounds: str | None,
    mode: str | None,
    workers: int | None,
    ipc: str | None,
    ray_address: str | None,
    ray_allow_mixed_env: bool,
    trust_code: bool,
    code_from: str,
) -> None:
    """Re-execute rounds from their recorded inputs and compare with the manifests.

    \b
    Exit codes (fit for `git bisect run blazefl verify ...`, see docs/auditing.md):
      0    every chosen round re-executes identically
      1    a round differs, or a file of the run does not match its manifest
      2    the command or the run cannot be used: no such run folder, a bad --rounds
           or flag, --trust-code missing, a manifest or config that cannot be read
      125  the user code here cannot be judged: it cannot be parsed or imported, or
           it raised while re-executing a round (a server, a client); bisect skips it
    """
    from blazefl.pipeline.verify import CodeCannotRunError, verify_run  # lazy: skips torch

    try:
        ok = verify_run(
            Path(run_dir),
            rounds,
            mode,
            workers,
            ipc,
            click.echo,
            trust_code,
            code_from,
            ray=(ray_address, ray_allow_mixed_env),
        )
    except CodeCannotRunError as exc:  # the code's failure, not the run's nor the command's
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CANNOT_JUDGE)
    sys.exit(0 if ok else 1)


@main.command()
@click.argument("run_a", type=click.Path(file_okay=False))
@click.argument("run_b", type=click.Path(file_okay=False))
@click.option(
    "--plot",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also draw how the runs drift apart per round (global model max abs and relative L2 "
    "difference, which clients' uplinks differ) into FILE: .png, .pdf or .svg (needs "
    "matplotlib: pip install 'blazefl[plot]').",
)
@_user_errors
def diff(run_a: str, run_b: str, plot: str | None) -> None:
    """First differing round of two runs: files, tensors, clients.

    With --plot FILE it also draws, per round, how far the global models are apart (log
    scale) and which sampled clients' uplinks differ, the first differing round marked.
    """
    from blazefl.pipeline.compare import diff_runs  # lazy: --help skips torch

    if plot is not None:
        from blazefl.pipeline.diff_plot import check_plot_target  # lazy: --help skips matplotlib

        check_plot_target(Path(plot))  # a bad suffix or folder: one line before any work
    same = diff_runs(Path(run_a), Path(run_b), echo=click.echo)
    if plot is not None:
        from blazefl.pipeline.diff_plot import plot_divergence

        plot_divergence(Path(run_a), Path(run_b), Path(plot))
        click.echo(f"plot: {plot}")
    sys.exit(0 if same else 1)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("archive", type=click.Path(dir_okay=False))
@_user_errors
def pack(run_dir: str, archive: str) -> None:
    """Write one archive of a run (.tar, .tar.gz or .tgz; same run, same bytes)."""
    from blazefl.pipeline import commands  # lazy: --help skips torch

    got = commands.pack_command(run_dir, archive)
    click.echo(f"packed rounds 0-{got.last_round} of {run_dir} into {archive}", err=True)
    click.echo(f"digest: {got.digest}")


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False))
@click.argument("run_dir", type=click.Path(file_okay=False))
@_user_errors
def unpack(archive: str, run_dir: str) -> None:
    """Check an archive of a run file by file, then unpack it into a new folder."""
    from blazefl.pipeline import commands  # lazy: --help skips torch

    got = commands.unpack_command(archive, run_dir)
    click.echo(
        f"unpacked rounds 0-{got.last_round} into {run_dir}; every file matches its manifest "
        f"(re-execute with: blazefl verify {run_dir})",
        err=True,
    )
    click.echo(f"digest: {got.digest}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@_user_errors
def show(run_dir: str) -> None:
    """Rounds, hashes and metrics of a run at a glance."""
    from blazefl.pipeline.compare import show_run  # lazy: --help skips torch

    show_run(Path(run_dir), echo=click.echo)


@main.command()
@click.option(
    "--algorithm",
    default="fedavg",
    show_default=True,
    help="Algorithm whose own section to list (a name or 'pkg.module:Name').",
)
@_user_errors
def schema(algorithm: str) -> None:
    """Every config key: default, allowed values, whether it changes result bytes."""
    from blazefl.pipeline import commands  # lazy: --help skips torch

    click.echo(commands.schema_table(algorithm), nl=False)


# sweep, sweep-table, plot: in a module of their own (this file keeps under 500 lines)
for _command in experiment_commands(_user_errors, _runtime_options, _track_options):
    main.add_command(_command)


def console_main() -> None:
    """The `blazefl` command (and `python -m blazefl.pipeline.cli`): `main`, then a quick exit.

    When the interpreter exits, its last garbage collections walk every object the command
    left behind (torch's modules, datasets): about 0.5 s of every `blazefl` process here,
    paid again by each stage process of a DVC pipeline. Frozen objects are skipped by those
    collections; everything else about the exit (atexit handlers, thread joins, file flushes)
    is unchanged. Only here, where the process ends: `main` is also called in-process (tests,
    notebooks), where a freeze would keep every later cycle of garbage alive.

    Example:
        >>> console_main()  # sys.argv[1:] are the command line; exits the process
    """
    try:
        main()
    finally:
        gc.freeze()


if __name__ == "__main__":
    console_main()
