"""The `blazefl sweep`, `sweep-table` and `plot` commands: seeds, sweeps and a figure for a
paper (`pipeline.sweep`, `pipeline.sweep_table`, `pipeline.run_figures` do the work).

`cli.py` adds them to the `blazefl` group with its own error handling and runtime flags
(`experiment_commands(_user_errors, _runtime_options)`), so the flags and the one-line errors
are those of `blazefl run`. Like every command, they import torch and matplotlib only when
they run: `blazefl --help` stays instant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["experiment_commands"]


def _sweep_execution(runtime: dict[str, Any], config: Any) -> Any:
    """A sweep point's execution settings from the runtime flags, as `run` makes them."""
    from blazefl.pipeline import commands  # lazy: --help skips torch

    # Any: the runtime flags grow with the execution modes; each mode's settings follow
    how: Any = commands.execution(config, runtime["mode"], runtime["workers"], runtime["ipc"])
    ray = {k: v for k, v in runtime.items() if k.startswith("ray_")}
    return how.with_ray(ray["ray_address"], ray["ray_allow_mixed_env"]) if ray else how


def _sweep_runs(plan: Any) -> list[Any]:
    """The plan's runs in run order, as the table reads them."""
    from blazefl.pipeline.sweep_table import SweepRun

    return [SweepRun(p.name, p.seed, plan.path(p)) for p in plan.points]


def experiment_commands(
    user_errors: Callable[[Any], Any],
    runtime_options: Callable[[Any], Any],
    track_options: Callable[[Any], Any],
) -> list[click.Command]:
    """The commands, wrapped in the CLI's error handling and runtime flags.

    Args:
        user_errors: turns user mistakes into one line and exit code 2 (`cli._user_errors`).
        runtime_options: adds --mode / --workers / --ipc ... (`cli._runtime_options`).
        track_options: adds --track / --track-dir (`cli._track_options`).

    Returns:
        The `sweep`, `sweep-table` and `plot` commands, for `main.add_command`.

    Example:
        >>> for command in experiment_commands(_user_errors, _runtime_options, _track_options):
        ...     main.add_command(command)
    """

    @click.command()
    @click.option(
        "--grid",
        "grid",
        multiple=True,
        metavar="KEY=V1,V2",
        help="A config key and its values (repeatable; the grid is every combination).",
    )
    @click.option(
        "--seeds",
        default=None,
        metavar="0,1,2",
        help="Seeds per grid point: 0,1,2 or 0-4 (default: the config's seed).",
    )
    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default="params.yaml",
        show_default=True,
        help="Config file.",
    )
    @click.option(
        "--out",
        type=click.Path(file_okay=False),
        default="artifacts/sweep",
        show_default=True,
        help="Sweep folder: one run directory per point, POINT/seed=S.",
    )
    @click.option(
        "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a key for every point."
    )
    @runtime_options
    @track_options
    @click.option("--table", is_flag=True, help="Only print the table of a complete sweep.")
    @click.option("--quiet", "-q", is_flag=True, help="No line per point.")
    @user_errors
    def sweep(
        grid: tuple[str, ...],
        seeds: str | None,
        config_path: str,
        out: str,
        sets: tuple[str, ...],
        table: bool,
        quiet: bool,
        track: tuple[str, ...],
        track_dir: str | None,
        **runtime: Any,
    ) -> None:
        """Run a grid of config values times seeds, one run directory per point.

        \b
        Each point is the run `blazefl run --set KEY=V ... --set seed=S` makes (same bytes),
        in OUT/KEY=V,KEY=V/seed=S. Complete points are skipped, incomplete ones resume. At the
        end: final metrics per grid point, mean ± std over seeds (OUT/sweep.md, OUT/sweep.json).
        With --track (or runtime.track), every point is a tracked run named by its folder, in
        one tracking folder (default OUT/tracking).
        Example:
          blazefl sweep --grid train.lr=0.01,0.05 --grid fl.algorithm=fedavg,fedprox \\
            --seeds 0,1,2 --out artifacts/sweep
        """
        # lazy: --help skips torch
        from blazefl.pipeline.sweep import plan_sweep, run_sweep, sweep_tracking
        from blazefl.pipeline.sweep_table import markdown_table, sweep_table, write_table

        def say(line: str) -> None:
            if not quiet or line.startswith("warning:"):
                click.echo(line, err=True)

        plan = plan_sweep(config_path, sets, grid, seeds, out, say)
        runs = _sweep_runs(plan)
        if not table:
            tracking = sweep_tracking(plan, track, track_dir)  # checked before any point runs
            run_sweep(plan, functools.partial(_sweep_execution, runtime), say, tracking)
        got = sweep_table(plan.out, runs)
        if not table:
            md, js = write_table(plan.out, got)
            say(f"table: {md}, {js}")
        click.echo(markdown_table(got), nl=False)

    @click.command("sweep-table")
    @click.argument("sweep_dir", type=click.Path(file_okay=False))
    @user_errors
    def sweep_table_command(sweep_dir: str) -> None:
        """Table of a sweep folder: final metrics per grid point, mean ± std over seeds.

        Prints it as markdown and writes SWEEP_DIR/sweep.md and SWEEP_DIR/sweep.json.
        """
        from blazefl.pipeline.sweep_table import markdown_table, sweep_table, write_table

        got = sweep_table(Path(sweep_dir))
        md, js = write_table(Path(sweep_dir), got)
        click.echo(markdown_table(got), nl=False)
        click.echo(f"table: {md}, {js}", err=True)

    @click.command()
    @click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
    @click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(dir_okay=False),
        metavar="FIG",
        help="The figure: .png, .pdf or .svg (needs matplotlib: pip install 'blazefl[plot]').",
    )
    @click.option(
        "--band",
        type=click.Choice(["std", "minmax"]),
        default="std",
        show_default=True,
        help="Around a mean over seeds: ±1 sample std, or min to max.",
    )
    @click.option(
        "--width",
        type=click.FloatRange(2.0, 12.0),
        default=3.5,
        show_default=True,
        help="Inches: 3.5 is one column of a two-column paper, 7 the page (panels side by side).",
    )
    @user_errors
    def plot(runs: tuple[str, ...], output: str, band: str, width: float) -> None:
        """Test accuracy and loss per round across runs (a figure for a paper).

        RUN is a run directory or a sweep folder (all its runs). Runs that are seeds of one
        config are drawn as their mean with a band; a dotted line marks chance; the caption
        names the config keys that differ and every run's digest.
        """
        from blazefl.pipeline.run_figures import check_figure_target, plot_runs  # lazy

        check_figure_target(Path(output))  # a bad suffix or folder: one line before any work
        got = plot_runs([Path(r) for r in runs], Path(output), band, width)
        drawn, lines = len(got.runs), len(got.groups)
        click.echo(
            f"plot: {output} ({drawn} run{'s' * (drawn != 1)}, {lines} line{'s' * (lines != 1)})"
        )

    return [sweep, sweep_table_command, plot]
