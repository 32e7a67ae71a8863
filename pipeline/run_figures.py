"""`blazefl plot RUN... -o FIG`: test accuracy and loss per round across runs, for a paper.

- `figure_series` computes what is drawn: each run's per-round metrics (from its
  `metrics/round-NNNN.json`), runs grouped into seeds of one config (the same recorded byte
  config but `seed`), each group's mean and band (±1 sample std, or min-max), the config keys
  that differ between groups, the chance level (1 / the dataset store's `num_classes`).
- `check_figure_target` refuses a bad suffix, an unwritable folder or a missing matplotlib in
  one line, before any work.
- `render_figure` draws it (.png, .pdf, .svg) at a paper's column width (3.5 in, or 7 in for
  the full page) with fonts of 7 pt and more, a legend that says what the band is, and a
  caption naming the differing keys and every run's digest; `plot_runs` writes it atomically.

Runs are untrusted input: every file is read through `RunDir` (bounded, no symlinked folder
followed, manifests schema-checked), and the dataset store's attributes only when their bytes
match the sha256 its manifest records. A sweep folder (`blazefl sweep --out`) stands for all
its runs.
"""

from __future__ import annotations

import io
import json
import math
import os
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blazefl.pipeline.sweep_table import find_sweep_runs
from blazefl.pipeline.user_files import write_atomically
from blazefl.stages.artifacts import MANIFEST, ArtifactError, RunDir, sha256_bytes

__all__ = [
    "FIGURE_FORMATS",
    "BANDS",
    "RunCurve",
    "Band",
    "CurveGroup",
    "FigureData",
    "check_figure_target",
    "figure_series",
    "render_figure",
    "plot_runs",
]

#: Suffix -> matplotlib format and the metadata that would put a date or version in the file.
FIGURE_FORMATS: dict[str, tuple[str, dict[str, None]]] = {
    ".png": ("png", {"Software": None}),
    ".pdf": ("pdf", {"CreationDate": None, "Producer": None}),
    ".svg": ("svg", {"Date": None}),
}
#: How a group of seeds is drawn around its mean, and what the legend calls it.
BANDS = {"std": "mean ±1 std over seeds", "minmax": "mean, min–max over seeds"}
#: Okabe-Ito colours: distinguishable with the common colour-vision deficiencies; markers
#: tell the lines apart in grey print as well.
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_ALGORITHM = "fl.algorithm"  # its value names itself in a legend (fedprox, not algorithm=...)
_FONT_PT = 7  # the smallest size a printed two-column paper keeps readable
_DIGESTS_SHOWN = 16
_INSTALL = "pip install 'blazefl[plot]'"


@dataclass(frozen=True)
class RunCurve:
    """One run's metrics per evaluated round, and what identifies it."""

    name: str
    path: Path
    seed: int
    digest: str  # sha256 of its last complete round's manifest (`blazefl show`)
    config: dict[str, Any]  # the byte config recorded in round 0
    num_classes: int | None
    rounds: tuple[int, ...]
    test_accuracy: tuple[float, ...]  # nan where a round recorded none
    test_loss: tuple[float, ...]


@dataclass(frozen=True)
class Band:
    """A group's mean per round and the band drawn around it."""

    mean: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]


@dataclass(frozen=True)
class CurveGroup:
    """Runs that are seeds of one config, drawn as one line (with a band if n > 1)."""

    label: str
    runs: tuple[RunCurve, ...]
    rounds: tuple[int, ...]  # the rounds every run of the group holds
    accuracy: Band
    loss: Band


@dataclass(frozen=True)
class FigureData:
    """Everything the figure shows."""

    groups: tuple[CurveGroup, ...]
    band: str  # a key of BANDS
    differing: tuple[str, ...]  # config keys whose values differ between groups
    chance: float | None  # 1 / num_classes, when every run's dataset agrees
    notes: tuple[str, ...] = ()

    @property
    def runs(self) -> tuple[RunCurve, ...]:
        """Every run, in legend order."""
        return tuple(r for g in self.groups for r in g.runs)


# -- checks before any work ----------------------------------------------------------------
def check_figure_target(path: Path) -> str:
    """Check that `path` can receive the figure, before any run is read.

    Args:
        path: the file to write; its suffix picks the format.

    Returns:
        The matplotlib format ("png", "pdf" or "svg").

    Raises:
        ValueError: a bad suffix, a missing or unwritable folder, a folder as the path, or
            matplotlib missing (one line each).

    Example:
        >>> check_figure_target(Path("fig.pdf"))
        'pdf'
    """
    suffix = path.suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise ValueError(f"-o {path}: the suffix must be {', '.join(FIGURE_FORMATS)}")
    if path.is_dir():
        raise ValueError(f"-o {path} is a folder: name a file")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"-o {path}: the folder {folder} does not exist")
    # the temporary file is made next to the target, so the folder itself must be writable
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"-o {path}: the folder {folder} is not writable")
    _matplotlib()
    return FIGURE_FORMATS[suffix][0]


def _matplotlib() -> Any:
    """matplotlib, imported lazily: `blazefl --help` must not pay for it."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise ValueError(f"plot needs matplotlib, which is not installed: {_INSTALL}") from None
    return matplotlib


# -- the numbers ---------------------------------------------------------------------------
def _expand(paths: list[Path]) -> list[tuple[str, Path]]:
    """(name, run directory) per run: a run as itself, a sweep folder as all its runs."""
    out: list[tuple[str, Path]] = []
    for p in paths:
        if (p / "round-0000" / MANIFEST).is_file():
            out.append((p.name, p))
        elif not p.is_dir():
            raise ArtifactError(f"run directory {p} does not exist")
        elif RunDir(p).is_run_dir():
            raise ArtifactError(f"{p} holds no round 0 yet: nothing to draw")
        else:
            prefix = f"{p.name}/" if len(paths) > 1 else ""
            out.extend((prefix + r.rel, r.path) for r in find_sweep_runs(p))
    names = [n for n, _ in out]
    seen: set[Path] = set()
    unique = []
    for name, path in out:  # a run given twice is drawn once
        if path.resolve() not in seen:
            seen.add(path.resolve())
            # two runs of one folder name: say which parent each is in
            shown = f"{path.parent.name}/{name}" if names.count(name) > 1 else name
            unique.append((shown, path))
    return unique


def _num_classes(run: RunDir) -> int | None:
    """The dataset store's `num_classes`, if its attributes match the store's manifest."""
    try:
        recorded = run.store_manifest("dataset")["files"].get("zarr.json")
        data = run.read_file("dataset/zarr.json", 1 << 20)
        if sha256_bytes(data) != recorded:
            return None
        n = json.loads(data)["attributes"]["num_classes"]
    except (ValueError, KeyError, TypeError):  # no store, or not one this version wrote
        return None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 2 else None


def _metric(run: RunDir, t: int, m: dict[str, Any], key: str) -> float:
    value = m.get(key)
    if value is None:
        return math.nan  # a round that recorded none: a gap in the line
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ArtifactError(f"{run.root}/metrics/round-{t:04d}.json: {key} is not a number")
    return float(value)


def _read_curve(name: str, path: Path) -> RunCurve:
    run = RunDir(path)
    config = run.manifest(0)["config"]
    last = run.last_complete_round() or 0
    rounds, acc, loss = [], [], []
    for t in range(1, last + 1):
        if not run.metrics_path(t).is_file():
            break  # evaluated later by `blazefl run`; the curve stops before it
        m = run.read_json(run.metrics_path(t))
        rounds.append(t)
        acc.append(_metric(run, t, m, "test_accuracy"))
        loss.append(_metric(run, t, m, "test_loss"))
    if not rounds:
        raise ArtifactError(f"{path} has no evaluated round yet: nothing to draw")
    seed = config.get("seed")
    return RunCurve(
        name=name,
        path=path,
        seed=seed if isinstance(seed, int) else -1,
        digest=run.hash_file(f"round-{last:04d}/{MANIFEST}"),
        config=config,
        num_classes=_num_classes(run),
        rounds=tuple(rounds),
        test_accuracy=tuple(acc),
        test_loss=tuple(loss),
    )


def _band(series: list[list[float]], kind: str) -> Band:
    """Mean and band per round over the runs' values (one list per run)."""
    rows: list[tuple[float, float, float]] = []  # (mean, low, high) per round
    for xs in zip(*series, strict=True):
        ok = [x for x in xs if not math.isnan(x)]
        if not ok:
            rows.append((math.nan, math.nan, math.nan))
            continue
        mu = statistics.fmean(ok)
        if kind == "minmax":
            rows.append((mu, min(ok), max(ok)))
        else:
            sd = statistics.stdev(ok) if len(ok) > 1 else 0.0
            rows.append((mu, mu - sd, mu + sd))
    mean, low, high = (tuple(col) for col in zip(*rows, strict=True)) if rows else ((), (), ())
    return Band(mean, low, high)


def _group(runs: list[RunCurve]) -> list[tuple[list[RunCurve], tuple[int, ...]]]:
    """Runs into seeds of one config: the same byte config except `seed`, distinct seeds."""
    groups: list[tuple[str, list[RunCurve]]] = []
    for run in runs:
        key = json.dumps({k: v for k, v in run.config.items() if k != "seed"}, sort_keys=True)
        home = next(
            (g for k, g in groups if k == key and run.seed not in {r.seed for r in g}), None
        )
        if home is None:  # a new config, or a seed repeated: a line of its own
            groups.append((key, [run]))
        else:
            home.append(run)
    out = []
    for _, members in groups:
        common = set(members[0].rounds).intersection(*(r.rounds for r in members[1:]))
        out.append((members, tuple(sorted(common))))
    return out


def _differing(configs: list[dict[str, Any]]) -> list[str]:
    """Config keys whose values differ between groups, the algorithm first. A key only some
    configs hold with one value (`fedprox.mu` of the FedProx runs) comes with the algorithm
    and is left out."""
    keys = sorted({k for c in configs for k in c} - {"seed"}, key=lambda k: (k != _ALGORITHM, k))
    return [k for k in keys if len({json.dumps(c[k]) for c in configs if k in c}) > 1]


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Legend names of config keys: the last part (`lr`) unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def _shown(value: Any, limit: int = 18) -> str:
    text = json.dumps(value) if value is None or isinstance(value, bool) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def figure_series(paths: list[Path], band: str = "std") -> FigureData:
    """The numbers `blazefl plot` draws.

    Args:
        paths: run directories and sweep folders (a sweep stands for all its runs).
        band: "std" (mean ±1 sample std over seeds) or "minmax".

    Returns:
        A `FigureData`: groups of seeds in the order their first run was given.

    Raises:
        ArtifactError: not a run or sweep folder, a run without an evaluated round, a
            manifest or metrics file that cannot be read (one line each).

    Example:
        >>> d = figure_series([Path("artifacts/sweep")])
        >>> [(g.label, len(g.runs)) for g in d.groups][:2], d.chance
        ([('lr=0.01, algorithm=fedavg', 2), ('lr=0.01, algorithm=fedprox', 2)], 0.1)
    """
    if band not in BANDS:
        raise ValueError(f"--band must be one of {', '.join(BANDS)}, got {band!r}")
    runs = [_read_curve(name, path) for name, path in _expand(paths)]
    grouped = _group(runs)
    configs = [members[0].config for members, _ in grouped]
    differing = _differing(configs)
    short = _short_keys(differing)
    notes = []
    groups = []
    labels: list[str] = []
    for members, common in grouped:
        if len(grouped) == 1:
            # one config: its algorithm names the line; a single run, its folder
            algorithm = _shown(members[0].config.get(_ALGORITHM))
            label = algorithm if len(members) > 1 else members[0].name
        else:
            config = members[0].config
            parts = [
                _shown(config[k]) if k == _ALGORITHM else f"{short[k]}={_shown(config[k])}"
                for k in differing
                if k in config
            ]
            label = ", ".join(parts) or members[0].name
        if label in labels:  # the same config with a seed repeated: name the run
            label = f"{label} ({members[0].name})"
        labels.append(label)
        if any(r.rounds != common for r in members):
            notes.append(f"{label}: drawn over the rounds every seed holds")
        if not common:
            raise ArtifactError(f"the runs of {label} share no evaluated round: nothing to draw")
        index = [[r.rounds.index(t) for t in common] for r in members]
        acc = [[r.test_accuracy[i] for i in ix] for r, ix in zip(members, index, strict=True)]
        loss = [[r.test_loss[i] for i in ix] for r, ix in zip(members, index, strict=True)]
        groups.append(
            CurveGroup(label, tuple(members), common, _band(acc, band), _band(loss, band))
        )
    classes = {r.num_classes for r in runs}
    known = {n for n in classes if n is not None}
    chance = 1 / next(iter(known)) if classes == known and len(known) == 1 else None
    if len(known) > 1:
        notes.append("no chance line: the runs' datasets have different numbers of classes")
    return FigureData(tuple(groups), band, tuple(differing), chance, tuple(notes))


# -- the picture ---------------------------------------------------------------------------
def _caption(d: FigureData, chars: int) -> str:
    """The caption: what differs, the seeds, every run's digest (in legend order)."""
    seeds = sorted({r.seed for r in d.runs})
    banded = any(len(g.runs) > 1 for g in d.groups)
    seed_list = ", ".join(map(str, seeds))
    differing = ", ".join(d.differing) if d.differing else "nothing (one config)"
    runs = d.runs[:_DIGESTS_SHOWN]
    digests = " | ".join(
        " ".join(r.digest[:8] for r in g.runs if r in runs) for g in d.groups if g.runs[0] in runs
    )
    if len(d.runs) > _DIGESTS_SHOWN:  # a big sweep: the first digests, then a count
        digests += f" and {len(d.runs) - _DIGESTS_SHOWN} more"
    parts = [
        f"Config differs in: {differing}; seed{'s' * (len(seeds) > 1)} {seed_list}. Run digests "
        f"(blazefl show; legend order, | between entries): {digests}."
        + (" The std is the sample one (n - 1)." if d.band == "std" and banded else ""),
        *(f"Note: {n}." for n in d.notes),
    ]
    return "\n".join(textwrap.fill(p, chars, break_on_hyphens=False) for p in parts)


def _draw(ax: Any, d: FigureData, metric: str, scale: float) -> None:
    """One panel: a line per group (markers for grey print), its band, the chance line."""
    for i, g in enumerate(d.groups):
        band = getattr(g, metric)
        colour = _COLOURS[i % len(_COLOURS)]
        every = max(1, len(g.rounds) // 10)  # markers stay legible over hundreds of rounds
        label = g.label + (f" (n={len(g.runs)})" if len(g.runs) > 1 else "")
        style = {"marker": _MARKERS[i % len(_MARKERS)], "markersize": 3.5, "markevery": every}
        ax.plot(g.rounds, [v * scale for v in band.mean], color=colour, label=label, **style)
        if len(g.runs) > 1:
            low, high = [v * scale for v in band.low], [v * scale for v in band.high]
            ax.fill_between(g.rounds, low, high, color=colour, alpha=0.2, linewidth=0)
    ax.grid(True, alpha=0.3, linewidth=0.5)
    ax.margins(x=0.02)


def _accuracy_limits(ax: Any, d: FigureData) -> None:
    top = max((v for g in d.groups for v in g.accuracy.high if not math.isnan(v)), default=1)
    top = max(top, (d.chance or 0) * 1.5)
    ax.set_ylim(0, min(100, math.ceil(top * 100 / 10) * 10 + 2))


def render_figure(d: FigureData, fmt: str, width: float = 3.5) -> bytes:
    """The figure of `d` as bytes in `fmt` ("png", "pdf" or "svg").

    Below 5 in wide (one column of a two-column paper: 3.5 in) the accuracy panel sits
    above the loss panel; wider (the page: 7 in) they sit side by side. Text is 7 pt or more.

    Args:
        d: the numbers, from `figure_series`.
        fmt: the output format.
        width: figure width in inches.

    Returns:
        The file's bytes (no date or version metadata: the same runs give the same file).

    Example:
        >>> render_figure(figure_series([Path("artifacts/sweep")]), "png")[:4]
        b'\\x89PNG'
    """
    mpl = _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    wide = width >= 5
    # characters per caption line: 7 pt glyphs average ~0.55 em; a margin for wide digits
    caption = _caption(d, int(width * 72 / (_FONT_PT * 0.6)))
    entries = len(d.groups) + (d.chance is not None) + any(len(g.runs) > 1 for g in d.groups)
    # as many legend columns as the longest entry leaves room for (a handle is ~5 chars)
    labels = [f"{g.label} (n={len(g.runs)})" for g in d.groups] + [BANDS[d.band]]
    longest = max(len(label) for label in labels) + 5
    columns = max(1, min(4, int(width * 72 / (_FONT_PT * 0.55)) // longest, entries))
    legend_in = math.ceil(entries / columns) * 0.16 + 0.1
    panels_in = 2.0 if wide else 2.9
    height = panels_in + legend_in + (caption.count("\n") + 1) * 0.125 + 0.15
    sizes = ("font.size", "axes.labelsize", "xtick.labelsize", "ytick.labelsize")
    rc = {
        **dict.fromkeys((*sizes, "legend.fontsize"), _FONT_PT),
        "axes.linewidth": 0.6,
        "lines.linewidth": 1.2,
        "svg.fonttype": "none",  # text stays text: searchable, editable in a paper
        "svg.hashsalt": "blazefl",
        "pdf.fonttype": 42,  # TrueType, not Type 3: what publishers' checks ask for
    }
    with mpl.rc_context(rc):
        # a Figure of its own, not pyplot's global state: nothing accumulates in a process
        fig = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasAgg(fig)
        ax_acc, ax_loss = fig.subplots(1, 2) if wide else fig.subplots(2, 1, sharex=True)
        _draw(ax_acc, d, "accuracy", 100)
        _draw(ax_loss, d, "loss", 1)
        if d.chance is not None:
            ax_acc.axhline(d.chance * 100, color="0.4", linestyle=":", linewidth=1,
                           label=f"chance (1/{round(1 / d.chance)})")  # fmt: skip
        _accuracy_limits(ax_acc, d)
        ax_acc.set_ylabel("test accuracy (%)")
        ax_loss.set_ylabel("test loss")
        for ax in (ax_acc, ax_loss) if wide else (ax_loss,):
            ax.set_xlabel("round")
        for ax in (ax_acc, ax_loss):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, labels = ax_acc.get_legend_handles_labels()
        if any(len(g.runs) > 1 for g in d.groups):  # a grey band with its mean line
            band = Patch(color="0.6", alpha=0.4, linewidth=0)
            handles.append((band, Line2D([], [], color="0.35", linewidth=1.2)))
            labels.append(BANDS[d.band])
        fig.legend(
            handles, labels, loc="outside upper center", ncols=min(columns, len(labels)),
            frameon=False, handlelength=1.8, columnspacing=1.0,
        )  # fmt: skip
        fig.supxlabel(caption, fontsize=_FONT_PT, ha="left", x=0.01, color="0.25")
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=300, metadata=FIGURE_FORMATS[f".{fmt}"][1])
    return buffer.getvalue()


def plot_runs(paths: list[Path], out: Path, band: str = "std", width: float = 3.5) -> FigureData:
    """`blazefl plot RUN... -o FIG`: compute the series and write the figure atomically.

    Args:
        paths: run directories and sweep folders.
        out: the figure (.png, .pdf or .svg).
        band: "std" or "minmax".
        width: inches (3.5: one column of a two-column paper; 7: the page).

    Returns:
        The `FigureData` drawn.

    Example:
        >>> len(plot_runs([Path("artifacts/sweep")], Path("fig.pdf")).groups)
        4
    """
    fmt = check_figure_target(out)
    d = figure_series(paths, band)
    write_atomically(out, render_figure(d, fmt, width))
    return d
