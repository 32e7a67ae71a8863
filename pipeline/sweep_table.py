"""The table of a sweep: final metrics per grid point, mean and standard deviation over seeds.

- `find_sweep_runs` lists the runs of a sweep folder from its layout (`POINT/seed=S`, or
  `seed=S` for a sweep over seeds only), so a sweep made elsewhere (downloaded, unpacked)
  reads like one made here.
- `sweep_table` reads each run's `summary.json` and round-0 manifest through `RunDir` (runs
  are untrusted input: bounded reads, no symlinked folder followed, manifests schema-checked),
  checks that the runs of a point are seeds of one config, and computes the statistics.
- `markdown_table` renders it; `write_table` writes `DIR/sweep.md` and `DIR/sweep.json`
  atomically.

The standard deviation is the sample one (n - 1 in the denominator), the usual "mean ± std
over seeds" of a paper; with one seed it is left empty.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blazefl.pipeline.user_files import write_atomically
from blazefl.stages.artifacts import MANIFEST, ArtifactError, RunDir
from blazefl.stages.config import ConfigError, parse_set
from blazefl.stages.untrusted import safe_child_dirs

__all__ = [
    "METRICS",
    "SweepRun",
    "parse_point_name",
    "find_sweep_runs",
    "sweep_table",
    "markdown_table",
    "write_table",
]

#: The final metrics of each run the table shows (from its summary.json), in column order.
METRICS = ("test_accuracy", "best_test_accuracy", "test_loss", "train_loss")
STD_NOTE = "sample standard deviation over seeds (n - 1)"
_SEED = re.compile(r"^seed=(\d{1,18})$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SHOWN_INCOMPLETE = 3


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep folder: its grid point's folder name ("" for seeds only), its
    seed and its run directory."""

    point: str
    seed: int
    path: Path

    @property
    def rel(self) -> str:
        """The run directory relative to the sweep folder."""
        return f"{self.point}/seed={self.seed}" if self.point else f"seed={self.seed}"


def parse_point_name(name: str) -> tuple[tuple[str, str], ...] | None:
    """The (key, value text) pairs of a grid point's folder name; None if it is not one.

    Example:
        >>> parse_point_name("train.lr=0.05,data.root=data%2Fleaf")
        (('train.lr', '0.05'), ('data.root', 'data/leaf'))
    """
    pairs = []
    for part in name.split(","):
        key, sep, text = part.partition("=")
        if not sep or not _KEY.match(key) or not text:
            return None
        pairs.append((key, urllib.parse.unquote(text)))
    return tuple(pairs)


def _value(key: str, text: str) -> Any:
    """A value text read back as `--set` reads it (a number, true/false, null, text)."""
    try:
        return parse_set([f"{key}={text}"])[key]
    except ConfigError:
        return text


def _order(run: SweepRun) -> tuple[Any, ...]:
    """Sort key: grid values numerically where they are numbers, then the seed."""
    values = []
    for key, text in parse_point_name(run.point) or ():
        v = _value(key, text)
        number = isinstance(v, int | float) and not isinstance(v, bool)
        values.append((key, (0, float(v), "") if number else (1, 0.0, str(v))))
    return (tuple(values), run.seed)


def find_sweep_runs(folder: Path) -> list[SweepRun]:
    """The runs of a sweep folder, sorted by grid values (numerically) and seed.

    Args:
        folder: the sweep's `--out`.

    Returns:
        One `SweepRun` per `POINT/seed=S` (or `seed=S`) folder; other folders are ignored.

    Raises:
        ArtifactError: no such folder, a run directory instead of a sweep, no runs in it.

    Example:
        >>> [r.rel for r in find_sweep_runs(Path("artifacts/sweep"))][:2]
        ['train.lr=0.01,fl.algorithm=fedavg/seed=0', 'train.lr=0.01,fl.algorithm=fedavg/seed=1']
    """
    if not folder.is_dir():
        raise ArtifactError(f"sweep folder {folder} does not exist")
    if RunDir(folder).is_run_dir():
        raise ArtifactError(f"{folder} is a run directory, not a sweep folder")
    runs = []
    for name in safe_child_dirs(folder):  # symlinked folders are never followed
        seed = _SEED.match(name)
        if seed:
            runs.append(SweepRun("", int(seed.group(1)), folder / name))
        elif parse_point_name(name) is not None:
            for child in safe_child_dirs(folder / name):
                seed = _SEED.match(child)
                if seed:
                    runs.append(SweepRun(name, int(seed.group(1)), folder / name / child))
    if not runs:
        raise ArtifactError(
            f"{folder} holds no sweep runs (folders KEY=VALUE,.../seed=S or seed=S): pass the "
            "--out of a `blazefl sweep`"
        )
    return sorted(runs, key=_order)


def _number(run: SweepRun, summary: dict[str, Any], metric: str) -> float | None:
    value = summary.get(metric)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ArtifactError(f"{run.rel}/summary.json: {metric} is not a finite number")
    return float(value)


def _read_run(run: SweepRun) -> dict[str, Any] | None:
    """The table's record of one run (None: it has no report yet)."""
    rd = RunDir(run.path)
    if not (rd.round_dir(0) / MANIFEST).is_file() or not rd.summary_path.is_file():
        return None
    summary = rd.read_json(rd.summary_path)
    rounds = summary.get("rounds")
    last = rd.last_complete_round() or 0
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 0 <= rounds <= last:
        return None  # a report of rounds the run does not hold: it is being rewritten
    config = rd.manifest(0)["config"]
    if config.get("seed") != run.seed:
        raise ArtifactError(
            f"{run.rel} holds a run with seed {config.get('seed')!r}: the folder was renamed"
        )
    return {
        "config": config,
        "digest": rd.hash_file(f"round-{last:04d}/{MANIFEST}"),  # as `blazefl show` says
        "path": run.rel,
        "rounds": rounds,
        "seed": run.seed,
        **{m: _number(run, summary, m) for m in METRICS},
    }


def _stats(values: list[float | None]) -> tuple[float | None, float | None]:
    if not values or any(v is None for v in values):
        return None, None
    xs = [v for v in values if v is not None]
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None


def sweep_table(folder: Path, runs: list[SweepRun] | None = None) -> dict[str, Any]:
    """Final metrics per grid point with mean and standard deviation over seeds.

    Args:
        folder: the sweep folder.
        runs: its runs in table order (default: `find_sweep_runs(folder)`).

    Returns:
        The table as `sweep.json` holds it: `keys` (grid keys), `metrics`, `std` (what the
        deviation is), `points` (per grid point: `name`, `values`, `seeds`, `mean`, `std`
        and `runs` with each run's path, seed, rounds, digest and metrics).

    Raises:
        ArtifactError: a run without its report (the sweep is incomplete), runs of one point
            that are not seeds of one config, an unreadable run (one line each).

    Example:
        >>> t = sweep_table(Path("artifacts/sweep"))
        >>> t["points"][0]["mean"]["test_accuracy"], t["points"][0]["seeds"]
        (0.4125, [0, 1])
    """
    runs = find_sweep_runs(folder) if runs is None else runs
    records = [(run, _read_run(run)) for run in runs]
    missing = [run.rel for run, rec in records if rec is None]
    if missing:
        shown = ", ".join(missing[:_SHOWN_INCOMPLETE])
        more = f" and {len(missing) - _SHOWN_INCOMPLETE} more" if len(missing) > 3 else ""
        raise ArtifactError(
            f"the sweep in {folder} is incomplete: {len(missing)} of {len(runs)} runs have no "
            f"report ({shown}{more}): run the sweep again to finish them"
        )
    groups: dict[str, list[dict[str, Any]]] = {}
    for run, rec in records:
        groups.setdefault(run.point, []).append(rec or {})
    keys: list[str] = []
    points = []
    for name, members in groups.items():
        pairs = parse_point_name(name) or ()
        keys.extend(k for k, _ in pairs if k not in keys)
        _check_seeds_of_one_config(name, members)
        config = members[0]["config"]
        stats = {m: _stats([r[m] for r in members]) for m in METRICS}
        points.append(
            {
                "mean": {m: s[0] for m, s in stats.items()},
                "name": name,
                "runs": [{k: v for k, v in r.items() if k != "config"} for r in members],
                "seeds": [r["seed"] for r in members],
                "std": {m: s[1] for m, s in stats.items()},
                # the run's recorded value where it is a byte key, else the folder's text
                "values": {k: config[k] if k in config else _value(k, t) for k, t in pairs},
            }
        )
    return {"keys": keys, "metrics": list(METRICS), "points": points, "std": STD_NOTE}


def _check_seeds_of_one_config(name: str, members: list[dict[str, Any]]) -> None:
    first = members[0]
    for other in members[1:]:
        a, b = first["config"], other["config"]
        keys = sorted(k for k in set(a) | set(b) if k != "seed" and a.get(k) != b.get(k))
        if keys:
            raise ArtifactError(
                f"{other['path']} and {first['path']} differ in {', '.join(keys[:4])}: the "
                f"runs of grid point {name or '(seeds)'} are not seeds of one config"
            )


def _shown(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)  # null, true, false: as params.yaml spells them
    return str(value)


def _cell(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


def markdown_table(table: dict[str, Any]) -> str:
    """The table as markdown: one row per grid point, mean ± std over seeds per metric.

    Example:
        >>> print(markdown_table(sweep_table(Path("artifacts/sweep"))))
        | train.lr | seeds | test_accuracy | ...
    """
    keys, metrics = table["keys"], table["metrics"]
    header = [*keys, "seeds", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in table["points"]:
        values = [_shown(p["values"][k]) if k in p["values"] else "" for k in keys]
        seeds = ",".join(str(s) for s in p["seeds"])
        cells = [_cell(p["mean"][m], p["std"][m]) for m in metrics]
        lines.append("| " + " | ".join([*values, seeds, *cells]) + " |")
    rounds = sorted({r["rounds"] for p in table["points"] for r in p["runs"]})
    after = f"round {rounds[0]}" if len(rounds) == 1 else f"rounds {', '.join(map(str, rounds))}"
    lines.append("")
    lines.append(
        f"Final values after {after}: mean ± {table['std']}; each run's digest (as "
        "`blazefl show` prints it) is in sweep.json."
    )
    return "\n".join(lines) + "\n"


def write_table(folder: Path, table: dict[str, Any]) -> tuple[Path, Path]:
    """Write `folder/sweep.md` and `folder/sweep.json` (the machine-readable table).

    Returns:
        The two paths.

    Example:
        >>> write_table(Path("artifacts/sweep"), sweep_table(Path("artifacts/sweep")))
        (PosixPath('artifacts/sweep/sweep.md'), PosixPath('artifacts/sweep/sweep.json'))
    """
    md, js = folder / "sweep.md", folder / "sweep.json"
    write_atomically(md, markdown_table(table).encode())
    text = json.dumps(table, indent=1, sort_keys=True, allow_nan=False, ensure_ascii=False)
    write_atomically(js, (text + "\n").encode())
    return md, js
