"""`blazefl sweep`: a grid of `--set` values times seeds, one run directory per point.

- `parse_grid` / `parse_seeds` read `--grid KEY=V1,V2` and `--seeds 0,1,2` (or `0-4`).
- `plan_sweep` validates every point's config and every existing point folder before any
  work: a bad grid (unknown key, a value the schema refuses, an empty list, more than
  `MAX_POINTS` points) or a point folder made with another config is one line.
- `run_sweep` runs the points one after the other, each through `commands.run_command`, the
  code path of `blazefl run`: a point's folder holds the same bytes as the single
  `blazefl run --set KEY=V ... --set seed=S --out DIR`. A complete point is skipped; an
  incomplete one resumes.

Layout (a stable, readable name from the point's grid values, in `--grid` order)::

    OUT/train.lr=0.05,fl.algorithm=fedprox/seed=1/     a run directory
    OUT/seed=2/                                        (seeds only: no --grid)
    OUT/sweep.md, OUT/sweep.json                       the table (`pipeline.sweep_table`)

A value is written as its config value (`1e-2` and `0.01` name the same folder); characters
outside `[A-Za-z0-9._:+-]` are percent-encoded (`/` in a path, `,` and `=`), so the name
reads back into the grid values.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blazefl.core.loop import ExecutionSettings
from blazefl.pipeline import commands
from blazefl.pipeline.runner import check_run_config
from blazefl.pipeline.tracking import DEFAULT_TRACK_DIR, TrackOptions
from blazefl.stages.artifacts import MANIFEST, ArtifactError, RunDir
from blazefl.stages.config import ConfigError, RunConfig, load_config, parse_set
from blazefl.trackers import parse_track

__all__ = [
    "MAX_POINTS",
    "SweepPoint",
    "SweepPlan",
    "parse_grid",
    "parse_seeds",
    "value_text",
    "point_name",
    "plan_sweep",
    "is_complete",
    "run_sweep",
]

#: Most runs one sweep may hold (grid points times seeds): a typo such as a grid over 50
#: values of 4 keys should be a one-line refusal, not a week of runs.
MAX_POINTS = 1000
#: Longest folder name of a grid point; most file systems stop at 255 bytes.
MAX_NAME_CHARS = 200
_SAFE = "._:+-"  # besides letters and digits: readable and safe in a folder name
_SEED_RANGE = re.compile(r"^(\d+)-(\d+)$")

Echo = Callable[[str], None]


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its grid values (`--grid` order), its seed and its config.

    Example:
        >>> point.rel
        'train.lr=0.05,fl.algorithm=fedprox/seed=1'
    """

    values: tuple[tuple[str, Any], ...]
    seed: int
    config: RunConfig

    @property
    def name(self) -> str:
        """The grid point's folder name ("" when the sweep has no grid, only seeds)."""
        return point_name(self.values)

    @property
    def rel(self) -> str:
        """The run directory, relative to the sweep folder."""
        return f"{self.name}/seed={self.seed}" if self.name else f"seed={self.seed}"


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: the folder, the grid, the seeds and every point in run order
    (grid points in `--grid` order, the last key varying fastest, seeds innermost)."""

    out: Path
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    seeds: tuple[int, ...]
    points: tuple[SweepPoint, ...]

    def path(self, point: SweepPoint) -> Path:
        """The run directory of `point`."""
        return self.out / point.rel


# -- the command line ----------------------------------------------------------------------
def parse_grid(items: tuple[str, ...] | list[str]) -> list[tuple[str, list[Any]]]:
    """Parse `--grid KEY=V1,V2,...` items; each value is read as `--set` reads one (YAML).

    Args:
        items: the `--grid` arguments, in command-line order.

    Returns:
        (key, values) per item, in order.

    Raises:
        ConfigError: no '=', an empty list or value, a key given twice or `seed` (one line).

    Example:
        >>> parse_grid(["train.lr=0.01,0.05", "fl.algorithm=fedavg,fedprox"])
        [('train.lr', [0.01, 0.05]), ('fl.algorithm', ['fedavg', 'fedprox'])]
    """
    out: list[tuple[str, list[Any]]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"--grid expects KEY=V1,V2,... (e.g. train.lr=0.01,0.05), got {item!r}"
            )
        if key == "seed":
            raise ConfigError("--grid seed: give seeds with --seeds (e.g. --seeds 0,1,2)")
        if key in dict(out):
            raise ConfigError(f"--grid {key} is given twice: list all its values in one --grid")
        texts = [t.strip() for t in raw.split(",")]
        if not raw.strip():
            raise ConfigError(f"--grid {key}: the list of values is empty (e.g. {key}=A,B)")
        if "" in texts:
            raise ConfigError(f"--grid {key}: an empty value in {raw!r} (values: A,B,C)")
        if len(texts) > MAX_POINTS:
            raise ConfigError(f"--grid {key}: {len(texts)} values, at most {MAX_POINTS}")
        out.append((key, [parse_set([f"{key}={t}"])[key] for t in texts]))
    return out


def parse_seeds(text: str) -> list[int]:
    """Parse `--seeds`: comma-separated seeds and ranges (`0,1,2`, `0-4`, `0-2,7`).

    Raises:
        ConfigError: not a seed, a reversed range, a seed listed twice, too many (one line).

    Example:
        >>> parse_seeds("0-2,7")
        [0, 1, 2, 7]
    """
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        m = _SEED_RANGE.match(part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo or hi - lo >= MAX_POINTS:
                raise ConfigError(f"--seeds {part}: not a range of at most {MAX_POINTS} seeds")
            seeds.extend(range(lo, hi + 1))
        elif part.isdigit():
            seeds.append(int(part))
        else:
            raise ConfigError(
                f"--seeds expects seeds >= 0 and ranges, e.g. 0,1,2 or 0-4; got {part!r}"
            )
        if len(seeds) > MAX_POINTS:
            raise ConfigError(f"--seeds lists more than {MAX_POINTS} seeds")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"--seeds lists seed {repeated[0]} twice")
    return seeds


def value_text(value: Any) -> str:
    """A config value as a folder name shows it (YAML spelling; unsafe characters
    percent-encoded, so `/`, `,` and `=` never split the name).

    Example:
        >>> value_text(0.05), value_text(None), value_text("data/leaf")
        ('0.05', 'null', 'data%2Fleaf')
    """
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = repr(value) if isinstance(value, float) else str(value)
    return urllib.parse.quote(text, safe=_SAFE)


def point_name(values: tuple[tuple[str, Any], ...]) -> str:
    """The folder name of a grid point: `key=value` pairs joined by commas, `--grid` order.

    Example:
        >>> point_name((("train.lr", 0.05), ("fl.algorithm", "fedprox")))
        'train.lr=0.05,fl.algorithm=fedprox'
    """
    return ",".join(f"{k}={value_text(v)}" for k, v in values)


# -- the plan ------------------------------------------------------------------------------
def plan_sweep(
    config_path: str,
    sets: tuple[str, ...],
    grid_items: tuple[str, ...],
    seeds_text: str | None,
    out: str,
    warn: Echo,
) -> SweepPlan:
    """Validate a sweep before any work: the grid, every point's config, the folders.

    Each point's config is made as `blazefl run --config CONFIG --set ... --set KEY=V
    --set seed=S` makes it (the same `load_config` call), so the point is that run.

    Args:
        config_path: the params file (`--config`).
        sets: `--set KEY=VALUE` items shared by every point.
        grid_items: `--grid KEY=V1,V2` items.
        seeds_text: `--seeds` (None: the config's own seed only).
        out: the sweep folder.
        warn: where one-line warnings go (each said once, not once per point).

    Returns:
        The `SweepPlan`.

    Raises:
        ConfigError: a bad grid, seed list or value; too many points; a point folder made
            with another config or that is not a run directory (one line each).

    Example:
        >>> plan = plan_sweep("params.yaml", (), ("train.lr=0.01,0.05",), "0,1", "sw", print)
        >>> [p.rel for p in plan.points]
        ['train.lr=0.01/seed=0', 'train.lr=0.01/seed=1', 'train.lr=0.05/seed=0', ...]
    """
    said: set[str] = set()

    def once(message: str) -> None:
        if message not in said:
            said.add(message)
            warn(f"warning: {message}")

    base = parse_set(sets)
    grid = parse_grid(grid_items)
    for key, _ in grid:
        if key in base:
            raise ConfigError(f"--set {key} and --grid {key}: give the key in one of them")
    if seeds_text is not None and "seed" in base:
        raise ConfigError("--set seed and --seeds: give the seeds with --seeds only")
    total = len(parse_seeds(seeds_text)) if seeds_text is not None else 1
    for _, values in grid:
        total *= len(values)
    if total > MAX_POINTS:
        raise ConfigError(
            f"the sweep has {total:,} runs (grid points x seeds), at most {MAX_POINTS}: "
            "split it into smaller sweeps"
        )
    first = RunConfig.of(load_config(config_path, base, once))  # the file and --set alone
    seeds = parse_seeds(seeds_text) if seeds_text is not None else [int(first["seed"])]
    points: list[SweepPoint] = []
    for combo in itertools.product(*(values for _, values in grid)):
        chosen = {k: v for (k, _), v in zip(grid, combo, strict=True)}
        for seed in seeds:
            overrides = {**base, **chosen, "seed": seed}
            config = RunConfig.of(load_config(config_path, overrides, once))
            # the config's own spelling of a value names the folder (1e-2 -> 0.01); a key the
            # selected algorithm does not use keeps the value given
            named = tuple((k, config.get(k, v)) for k, v in chosen.items())
            points.append(SweepPoint(named, seed, config))
    _check_names(points)
    _warn_duplicates(points, once)
    plan = SweepPlan(Path(out), tuple((k, tuple(v)) for k, v in grid), tuple(seeds), tuple(points))
    _check_folders(plan)
    return plan


def _check_names(points: list[SweepPoint]) -> None:
    """Folder names fit the file system, and two values of one key that the schema makes
    equal (1 and 1.0 for a float) do not share a folder."""
    seen: set[str] = set()
    for p in points:
        if len(p.name) > MAX_NAME_CHARS:
            raise ConfigError(
                f"a grid point's folder name is {len(p.name)} characters (at most "
                f"{MAX_NAME_CHARS}): {p.name[:60]}...; use shorter values"
            )
        if p.rel in seen:
            raise ConfigError(
                f"--grid lists two values that are the same config value (both are "
                f"{p.rel}): list each value once"
            )
        seen.add(p.rel)


def _warn_duplicates(points: list[SweepPoint], warn: Echo) -> None:
    """Grid points that are one experiment (`fedprox.mu` with `fl.algorithm=fedavg`)."""
    first: dict[tuple[tuple[str, Any], ...], SweepPoint] = {}
    for p in points:
        key = tuple(sorted(p.config.items()))
        if key in first:
            warn(
                f"{first[key].name} and {p.name} are the same experiment (a key the selected "
                "algorithm does not use?): both are run"
            )
        first.setdefault(key, p)


def _check_folders(plan: SweepPlan) -> None:
    """Refuse, before any run, an --out that is itself a run and point folders that are not
    runs of their point's config (each would stop the sweep half-way)."""
    if RunDir(plan.out).is_run_dir():
        raise ConfigError(f"--out {plan.out} is a run directory: a sweep needs a folder of its own")
    if plan.out.exists() and not plan.out.is_dir():
        raise ConfigError(f"--out {plan.out} is a file: name a folder for the sweep")
    for point in plan.points:
        run = RunDir(plan.path(point))
        if not run.root.is_dir():
            continue
        if any(run.root.iterdir()) and not run.is_run_dir():
            raise ConfigError(
                f"{run.root} is a non-empty folder that is not a blazefl run: move it away"
            )
        try:
            check_run_config(point.config, run)
        except ValueError as exc:  # ConfigError, ArtifactError, ProvenanceError
            raise ConfigError(f"sweep point {point.rel}: {exc}") from None


# -- running -------------------------------------------------------------------------------
def is_complete(point: SweepPoint, run: RunDir) -> bool:
    """Whether `run` holds every round of `point` and its report (summary.json).

    Example:
        >>> is_complete(plan.points[0], RunDir(plan.path(plan.points[0])))
        True
    """
    rounds = point.config.spec.fl.rounds
    if not run.summary_path.is_file() or (run.last_complete_round() or 0) < rounds:
        return False
    if not all(run.metrics_path(t).is_file() for t in range(1, rounds + 1)):
        return False
    try:
        return bool(run.read_json(run.summary_path).get("rounds") == rounds)
    except ArtifactError:
        return False


def run_sweep(
    plan: SweepPlan,
    execution: Callable[[RunConfig], ExecutionSettings],
    echo: Echo,
    tracking: Callable[[SweepPoint, RunDir], TrackOptions | None] | None = None,
) -> list[str]:
    """Run every point of `plan` that is not complete, one after the other.

    Args:
        plan: from `plan_sweep`.
        execution: a point's config -> its execution settings (the command-line flags over
            the config's runtime section, as `blazefl run` makes them).
        echo: where the one line per point goes.
        tracking: a point and its run directory -> its trackers (`sweep_tracking`), or None.

    Returns:
        The points run here (relative paths); skipped points are not listed.

    Raises:
        ValueError, RuntimeError: as `blazefl run` (after a line naming the point).

    Example:
        >>> run_sweep(plan, lambda c: commands.execution(c, "threads", 2, None), print)
        [1/8] train.lr=0.01/seed=0: done in 2.1 s, test accuracy 0.4130
        ['train.lr=0.01/seed=0', ...]
    """
    ran: list[str] = []
    n = len(plan.points)
    for i, point in enumerate(plan.points, 1):
        where = f"[{i}/{n}] {point.rel}"
        run = RunDir(plan.path(point))
        if (run.round_dir(0) / MANIFEST).is_file() and is_complete(point, run):
            echo(f"{where}: skipped (complete)")
            continue
        how = execution(point.config)
        start = time.perf_counter()
        try:
            track = tracking(point, run) if tracking is not None else None
            result = commands.run_command(point.config, str(run.root), how, True, track)
        except BaseException:
            echo(f"{where}: failed (run the sweep again to resume)")
            raise
        acc = result["summary"].get("test_accuracy")
        resumed = result["resumed_from"]
        echo(
            f"{where}: done in {time.perf_counter() - start:.1f} s"
            + (f", resumed after round {resumed}" if resumed else "")
            + (f", test accuracy {acc:.4f}" if isinstance(acc, float) else "")
        )
        ran.append(point.rel)
    return ran


def sweep_tracking(
    plan: SweepPlan, flags: tuple[str, ...], track_dir: str | None
) -> Callable[[SweepPoint, RunDir], TrackOptions | None]:
    """Every point's trackers (`--track` flags over its `runtime.track`), checked for every
    point before any runs; one tracking folder for the sweep (default OUT/tracking), where
    each point is a run named by its folder (`train.lr=0.01/seed=0`).

    Raises:
        TrackingError: as `blazefl run --track`, for the first point it concerns.

    Example:
        >>> run_sweep(plan, how, print, sweep_tracking(plan, ("mlflow",), None))
    """
    folder = track_dir if track_dir is not None else str(plan.out / DEFAULT_TRACK_DIR)
    options = {}
    for point in plan.points:
        config_track = point.config.spec.runtime.track
        if flags or parse_track(config_track):
            found = TrackOptions.of(config_track, flags, folder, str(plan.path(point)))
            options[point.rel] = dataclasses.replace(found, run_name=point.rel)
        elif track_dir is not None:  # no tracker: --track-dir alone is refused as by `run`
            TrackOptions.of(config_track, flags, folder, str(plan.path(point)))
    return lambda point, _run: options.get(point.rel)
