"""`blazefl diff A B --plot FILE`: a picture of how two runs drift apart, round by round.

- `divergence_series` computes the numbers the picture is drawn from: per round, the max abs
  and relative L2 difference of the global model (every float tensor of
  `round-N/global.safetensors`) and which sampled clients' uplinks differ.
- `check_plot_target` refuses a bad suffix, an unwritable folder or a missing matplotlib in one
  line, before any work.
- `write_divergence_plot` draws it (.png, .pdf or .svg) and writes the file atomically.

Runs are untrusted input: files are read through `RunDir` (bounded, no symlinked folder
followed, manifests schema-checked) and each global model's bytes are checked against the
sha256 its manifest records before they are loaded.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blazefl.pipeline.user_files import write_atomically
from blazefl.pipeline.verify import _open_run, _rounds, differing_uplinks
from blazefl.stages.artifacts import MANIFEST, RunDir, sha256_bytes

__all__ = [
    "PLOT_FORMATS",
    "RoundDivergence",
    "Divergence",
    "check_plot_target",
    "divergence_series",
    "model_difference",
    "render_divergence_plot",
    "write_divergence_plot",
    "plot_divergence",
]

#: Suffix -> matplotlib format (and the metadata that would put a date or version in the file).
PLOT_FORMATS: dict[str, tuple[str, dict[str, None]]] = {
    ".png": ("png", {"Software": None}),
    ".pdf": ("pdf", {"CreationDate": None, "Producer": None}),
    ".svg": ("svg", {"Date": None}),
}
#: Up to this many distinct client ids the client panel is a raster (one row per client);
#: above it, rows would be thinner than a pixel, so it shows counts per round instead.
RASTER_MAX_CLIENTS = 200
_GLOBAL = "global.safetensors"
_INSTALL = "pip install 'blazefl[plot]'"


@dataclass(frozen=True)
class RoundDivergence:
    """How one round present in both runs differs.

    `max_abs` / `rel_l2` are None when the global models cannot be compared (unreadable, hash
    mismatch, different tensor names or shapes); `note` says why.
    """

    round: int
    max_abs: float | None
    rel_l2: float | None
    uplink_differs: tuple[int, ...] = ()  # sampled in both runs, different uplink hash
    one_run_only: tuple[int, ...] = ()  # sampled in one run only
    same: tuple[int, ...] = ()  # sampled in both, same uplink hash
    note: str = ""

    @property
    def differs(self) -> bool:
        """Whether the global model or any sampled client's uplink differs (or is unknown)."""
        return self.max_abs != 0 or bool(self.uplink_differs or self.one_run_only)


@dataclass(frozen=True)
class Divergence:
    """Everything the picture shows: both runs' names and digests, the config keys that
    differ, and one `RoundDivergence` per round present in both runs."""

    name_a: str
    name_b: str
    digest_a: str
    digest_b: str
    config_diff: tuple[tuple[str, Any, Any], ...]  # (key, value in A, value in B)
    rounds: tuple[RoundDivergence, ...]
    only_a: tuple[int, ...] = ()
    only_b: tuple[int, ...] = ()

    @property
    def config_keys(self) -> tuple[str, ...]:
        """The config keys whose values differ."""
        return tuple(k for k, _, _ in self.config_diff)

    @property
    def first_difference(self) -> int | None:
        """The first common round whose global model or uplinks differ (None: none does)."""
        return next((r.round for r in self.rounds if r.differs), None)

    @property
    def identical(self) -> bool:
        """Every common round agrees and both runs hold the same rounds."""
        return self.first_difference is None and not (self.only_a or self.only_b)

    @property
    def notes(self) -> list[str]:
        """Why parts of the data are missing from the picture."""
        out = [f"round {r.round}: {r.note}" for r in self.rounds if r.note]
        for name, only in (("A", self.only_a), ("B", self.only_b)):
            if only:
                out.append(f"{_rounds(list(only))} only in {name} (not drawn)")
        return out


# -- checks before any work ----------------------------------------------------------------
def check_plot_target(path: Path) -> str:
    """Check that `path` can receive a plot, before `diff` does any work.

    Args:
        path: the file to write; its suffix picks the format.

    Returns:
        The matplotlib format ("png", "pdf" or "svg").

    Raises:
        ValueError: a bad suffix, a folder that does not exist or cannot be written, a path
            that is a folder, or matplotlib missing (one line each).

    Example:
        >>> check_plot_target(Path("drift.png"))
        'png'
    """
    suffix = path.suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise ValueError(
            f"--plot {path}: the suffix must be {', '.join(PLOT_FORMATS)} (it picks the format)"
        )
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"--plot {path} is a folder: name a file")
    if not folder.is_dir():
        raise ValueError(f"--plot {path}: the folder {folder} does not exist")
    # the temp file is made next to the target, so the folder itself must be writable
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--plot {path}: the folder {folder} is not writable")
    _matplotlib()
    return PLOT_FORMATS[suffix][0]


def _matplotlib() -> Any:
    """The matplotlib module (imported lazily: `blazefl --help` must not pay for it)."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise ValueError(f"--plot needs matplotlib, which is not installed: {_INSTALL}") from None
    return matplotlib


# -- the numbers ---------------------------------------------------------------------------
def _run_name(run: RunDir, other: RunDir) -> str:
    """The run's folder name; with the parent's too when both runs have the same name."""
    a, b = run.root.resolve(), other.root.resolve()
    return f"{a.parent.name}/{a.name}" if a.name == b.name else a.name


def _digest(run: RunDir) -> str:
    """The run's digest as `blazefl show` prints it: sha256 of its last chained manifest."""
    last = run.last_complete_round()
    return run.hash_file(f"round-{last or 0:04d}/{MANIFEST}")


def _global_model(run: RunDir, t: int, manifest: dict[str, Any]) -> dict[str, Any] | str:
    """Round t's global tensors, or a note saying why they cannot be read."""
    from safetensors.torch import load

    rel = f"round-{t:04d}/{_GLOBAL}"
    try:
        data = run.read_file(rel)
    except ValueError as exc:  # missing, a symlink out of the run, a FIFO, too large
        return f"{rel} is unreadable ({str(exc).splitlines()[0][:60]})"
    if sha256_bytes(data) != manifest["outputs"][_GLOBAL]:
        return f"{rel} does not match its manifest's sha256"
    try:
        return dict(load(data))
    except Exception as exc:  # damaged bytes the hash did not catch (a tampered manifest)
        return f"{rel} is not a safetensors file ({str(exc).splitlines()[0][:60]})"


def model_difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float] | str:
    """Max abs and relative L2 difference (||a-b|| / ||a||) over every float tensor.

    Args:
        a: run A's tensors (name -> torch.Tensor).
        b: run B's tensors.

    Returns:
        (max_abs, rel_l2), or a note when the two cannot be compared (other names or shapes).
        rel_l2 is inf when ||a|| is 0 and b differs.

    Example:
        >>> model_difference({"w": torch.ones(2)}, {"w": torch.zeros(2)})
        (1.0, 1.0)
    """
    if set(a) != set(b):
        return f"tensor names differ ({len(set(a) ^ set(b))} in one model only)"
    max_abs, diff_sq, norm_sq = 0.0, 0.0, 0.0
    for key in a:  # file order; the numbers do not depend on it
        x, y = a[key], b[key]
        if x.shape != y.shape:
            return f"{key} has shape {tuple(x.shape)} in A, {tuple(y.shape)} in B"
        if not (x.dtype.is_floating_point and y.dtype.is_floating_point):
            continue  # integer buffers (counters) are not part of the numbers drawn
        # in float64, so a difference of one float32 ulp is not rounded away
        d = x.double() - y.double()
        if d.numel():
            max_abs = max(max_abs, d.abs().max().item())
        diff_sq += float(d.square().sum().item())
        norm_sq += float(x.double().square().sum().item())
    if diff_sq == 0:
        return max_abs, 0.0
    return max_abs, math.sqrt(diff_sq / norm_sq) if norm_sq else math.inf


def _round(a: RunDir, b: RunDir, t: int) -> RoundDivergence:
    ma, mb = a.manifest(t), b.manifest(t)
    ca, cb = set(ma["clients"]), set(mb["clients"])
    changed = set(differing_uplinks(ma, mb))
    ga, gb = _global_model(a, t, ma), _global_model(b, t, mb)
    got: tuple[float, float] | str
    if isinstance(ga, dict) and isinstance(gb, dict):
        got = model_difference(ga, gb)
    else:  # a note on A's file, else B's
        got = str(ga if isinstance(ga, str) else gb).replace(f"round-{t:04d}/", "")
    max_abs, rel_l2 = (None, None) if isinstance(got, str) else got
    return RoundDivergence(
        t,
        max_abs,
        rel_l2,
        uplink_differs=tuple(sorted(changed & ca & cb)),
        one_run_only=tuple(sorted(ca ^ cb)),
        same=tuple(sorted((ca & cb) - changed)),
        note=got if isinstance(got, str) else "",
    )


def divergence_series(run_a: Path, run_b: Path) -> Divergence:
    """The per-round numbers `blazefl diff --plot` draws.

    Args:
        run_a: run directory A (the reference: relative L2 is ||a-b|| / ||a||).
        run_b: run directory B.

    Returns:
        A `Divergence`; rounds present in one run only are listed, not compared.

    Raises:
        ArtifactError: not a run directory, or a manifest that fails its schema.

    Example:
        >>> d = divergence_series(Path("runs/a"), Path("runs/b"))
        >>> [(r.round, r.max_abs) for r in d.rounds], d.first_difference
        ([(0, 0.0), (1, 0.0021), (2, 0.0043)], 1)
    """
    a, b = _open_run(run_a), _open_run(run_b)
    ca, cb = a.manifest(0)["config"], b.manifest(0)["config"]
    keys = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
    absent = "(absent)"
    ra, rb = set(a.complete_rounds()), set(b.complete_rounds())
    return Divergence(
        name_a=_run_name(a, b),
        name_b=_run_name(b, a),
        digest_a=_digest(a),
        digest_b=_digest(b),
        config_diff=tuple((k, ca.get(k, absent), cb.get(k, absent)) for k in keys),
        rounds=tuple(_round(a, b, t) for t in sorted(ra & rb)),
        only_a=tuple(sorted(ra - rb)),
        only_b=tuple(sorted(rb - ra)),
    )


# -- the picture ---------------------------------------------------------------------------
def _title(d: Divergence) -> str:
    lines = [f"A: {d.name_a} ({d.digest_a[:12]})   vs   B: {d.name_b} ({d.digest_b[:12]})"]
    if d.config_diff:
        # values too when short (a learning rate); a long one (an import path) by name only
        parts = [
            f"{k} {va} (A) vs {vb} (B)" if len(f"{va}{vb}") <= 24 else k
            for k, va, vb in d.config_diff[:4]
        ]
        more = f" and {len(d.config_diff) - 4} more" if len(d.config_diff) > 4 else ""
        lines.append(textwrap.shorten(f"config differs: {', '.join(parts)}{more}", 140))
    else:
        lines.append("same config")
    if d.identical:
        lines.append("identical: every round's global model and uplinks agree")
    return "\n".join(lines)


def _draw_model(ax: Any, d: Divergence) -> None:
    """Top panel: max abs and relative L2 difference per round, log scale."""
    nums = [r for r in d.rounds if r.max_abs is not None]
    positive = [
        v for r in nums for v in (r.max_abs, r.rel_l2) if v is not None and 0 < v < math.inf
    ]
    # zeros have no place on a log axis: they sit on a floor, the decade below the smallest
    # value, whose tick is labelled "0" (and the decades above it as usual)
    low = math.floor(math.log10(min(positive))) - 1 if positive else -3
    high = math.ceil(math.log10(max(positive))) if positive else 0
    floor = 10.0**low
    for attr, label, style in (
        ("max_abs", "max |a - b|", {"marker": "o", "color": "C0"}),
        ("rel_l2", "‖a - b‖ / ‖a‖", {"marker": "s", "color": "C1", "linestyle": "--"}),
    ):
        xs = [r.round for r in nums]
        ys = [getattr(r, attr) if 0 < getattr(r, attr) < math.inf else math.nan for r in nums]
        ax.plot(xs, ys, label=label, markersize=4, **style)
    zeros = [r.round for r in nums if r.max_abs == 0]
    hollow = {"linestyle": "none", "marker": "v", "markerfacecolor": "none", "color": "0.35"}
    if zeros:
        ax.plot(zeros, [floor] * len(zeros), label="identical (difference 0)", **hollow)
    _zero_floor_axis(ax, low, high)
    if not positive:
        middle = {"transform": ax.transAxes, "ha": "center", "va": "center"}
        ax.text(0.5, 0.5, "identical: every global model is bit-identical", **middle)
    ax.set_ylabel("global model difference")
    ax.grid(True, which="major", alpha=0.3)


def _zero_floor_axis(ax: Any, low: int, high: int) -> None:
    """A log y axis from 10**low (drawn as "0", in a shaded band) up to 10**high."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_yscale("log")
    stride = max(1, math.ceil((high - low) / 7))  # at most ~8 labelled decades
    ticks = [10.0**e for e in range(low, high + 1, stride)]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())  # minor ticks inside the band would mislead
    ax.yaxis.set_major_formatter(
        FuncFormatter(lambda v, _: "0" if v <= ticks[0] else f"$10^{{{round(math.log10(v))}}}$")
    )
    ax.set_ylim(10 ** (low - 0.3), 10 ** (high + 0.1))
    ax.axhspan(10 ** (low - 0.3), 10 ** (low + 0.4), color="0.93", zorder=0)


def _draw_clients(ax: Any, d: Divergence) -> None:
    """Bottom panel: which sampled clients differ; a raster of (round, client id) up to
    `RASTER_MAX_CLIENTS` distinct clients, counts per round above."""
    kinds = (
        ("uplink_differs", "uplink differs", "C3", "x"),
        ("one_run_only", "sampled in one run only", "C4", "D"),
        ("same", "same uplink", "0.6", "."),
    )
    ids = {c for r in d.rounds for kind, *_ in kinds for c in getattr(r, kind)}
    if not ids:
        ax.text(0.5, 0.5, "no sampled clients", transform=ax.transAxes, ha="center")
        ax.set_yticks([])
    elif len(ids) <= RASTER_MAX_CLIENTS:
        for kind, label, color, marker in kinds:
            pts = [(r.round, c) for r in d.rounds for c in getattr(r, kind)]
            if pts:
                ax.scatter(
                    *zip(*pts, strict=True),
                    label=label,
                    color=color,
                    marker=marker,
                    s=18,
                    linewidths=1,
                )
        ax.set_ylabel("client id")
        ax.yaxis.get_major_locator().set_params(integer=True)
    else:
        bottom = [0] * len(d.rounds)
        xs = [r.round for r in d.rounds]
        for kind, label, color, _ in kinds:
            counts = [len(getattr(r, kind)) for r in d.rounds]
            if any(counts):  # no legend entry for a kind that never occurs
                ax.bar(xs, counts, bottom=bottom, label=label, color=color, width=0.8)
                bottom = [x + y for x, y in zip(bottom, counts, strict=True)]
        ax.set_ylabel("sampled clients")
        ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("round")
    ax.grid(True, axis="x", alpha=0.3)


def render_divergence_plot(d: Divergence, fmt: str) -> bytes:
    """The picture of `d` as bytes in `fmt` ("png", "pdf" or "svg").

    Args:
        d: the numbers, from `divergence_series`.
        fmt: the output format.

    Returns:
        The file's bytes (no date or version metadata, so the same runs give the same file).

    Example:
        >>> render_divergence_plot(divergence_series(a, b), "png")[:4]
        b'\\x89PNG'
    """
    mpl = _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rc = {"font.size": 8, "svg.fonttype": "none", "svg.hashsalt": "blazefl"}
    with mpl.rc_context(rc):  # svg text stays text: searchable and editable in a paper
        # 7 in wide: the full width of a two-column page; a Figure of its own, not pyplot's
        # global state, so a long-lived process does not accumulate figures
        fig = Figure(figsize=(7, 5), layout="constrained")
        FigureCanvasAgg(fig)
        ax_model, ax_clients = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
        _draw_model(ax_model, d)
        _draw_clients(ax_clients, d)
        first = d.first_difference
        if first is not None:
            for ax in (ax_model, ax_clients):
                ax.axvline(first, color="C3", linestyle=":", linewidth=1.2, zorder=3)
            ax_model.annotate(
                f" first difference: round {first}",
                xy=(first, 1),
                xycoords=("data", "axes fraction"),
                va="top",
                ha="left",
                color="C3",
            )
        ax_clients.xaxis.set_major_locator(MaxNLocator(integer=True))
        if d.rounds:
            lo, hi = d.rounds[0].round, d.rounds[-1].round
            ax_clients.set_xlim(lo - 0.5, hi + 0.5)
        for ax in (ax_model, ax_clients):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.suptitle(_title(d), fontsize=9)
        notes = d.notes
        if notes:
            text = "; ".join(notes[:4]) + (f"; and {len(notes) - 4} more" if len(notes) > 4 else "")
            fig.supxlabel(textwrap.fill(f"note: {text}", 120), fontsize=7, color="0.3")
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=200, metadata=PLOT_FORMATS[f".{fmt}"][1])
    return buffer.getvalue()


def write_divergence_plot(d: Divergence, path: Path) -> Path:
    """Draw `d` into `path` atomically: a temporary sibling, fsync'ed, then renamed, so a
    killed process never leaves half a picture.

    Args:
        d: the numbers, from `divergence_series`.
        path: the file; its suffix (.png, .pdf, .svg) picks the format.

    Returns:
        The path written.

    Example:
        >>> write_divergence_plot(divergence_series(a, b), Path("drift.svg"))
        PosixPath('drift.svg')
    """
    write_atomically(path, render_divergence_plot(d, check_plot_target(path)))
    return path


def plot_divergence(run_a: Path, run_b: Path, path: Path) -> Divergence:
    """`blazefl diff A B --plot FILE`: compute the series and write the picture.

    Args:
        run_a: run directory A.
        run_b: run directory B.
        path: the picture (.png, .pdf or .svg).

    Returns:
        The `Divergence` drawn.

    Example:
        >>> plot_divergence(Path("runs/a"), Path("runs/b"), Path("drift.png")).first_difference
        1
    """
    d = divergence_series(run_a, run_b)
    write_divergence_plot(d, path)
    return d
