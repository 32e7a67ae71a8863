"""`blazefl plot RUN... -o FIG`: accuracy and loss per round across runs, for a paper.

The series drawn (`figure_series`) are checked against the metrics files and statistics
computed here; the files are checked as files (PNG magic, decoded by matplotlib, its size in
pixels; SVG as XML holding the caption, legend and digests; PDF magic); bad input ends in
one line before any work.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from blazefl.pipeline import run_figures
from blazefl.pipeline.run_figures import figure_series, render_figure
from tests.tiny_configs import TWO_ROUNDS

TINY = list(TWO_ROUNDS)
SETS = [a for item in TINY for a in ("--set", item)]
Invoke = Callable[..., Result]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory, blazefl: Invoke) -> Path:
    """Two learning rates times two seeds (read only)."""
    out = tmp_path_factory.mktemp("plot") / "sweep"
    result = blazefl(
        "sweep", "--grid", "train.lr=0.01,0.05", "--seeds", "0,1", "--out", str(out), *SETS,
        "--quiet", "--mode", "sequential",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def _metrics(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "metrics").glob("round-*.json"))]


def _digest(blazefl: Invoke, run: Path) -> str:
    shown = blazefl("show", str(run)).output
    return next(ln.split()[1] for ln in shown.splitlines() if ln.startswith("digest: "))


def _svg_text(path: Path) -> str:
    root = ET.fromstring(path.read_bytes())  # well-formed XML or this raises
    assert root.tag.endswith("svg")
    return " ".join(t.strip() for el in root.iter() for t in (el.text,) if t and t.strip())


@pytest.mark.parametrize("band", ["std", "minmax"])
def test_series_match_the_metrics_files(sweep_dir: Path, blazefl: Invoke, band: str) -> None:
    d = figure_series([sweep_dir], band)
    assert d.differing == ("train.lr",) and d.band == band
    assert [g.label for g in d.groups] == ["lr=0.01", "lr=0.05"]
    zarr = json.loads((sweep_dir / "train.lr=0.01/seed=0/dataset/zarr.json").read_text())
    assert d.chance == 1 / zarr["attributes"]["num_classes"] == 0.1
    for g, lr in zip(d.groups, ("0.01", "0.05"), strict=True):
        assert [r.seed for r in g.runs] == [0, 1]
        files = []
        for r in g.runs:
            run = sweep_dir / f"train.lr={lr}" / f"seed={r.seed}"
            m = _metrics(run)
            files.append(m)
            assert r.rounds == g.rounds == (1, 2)
            assert list(r.test_accuracy) == [x["test_accuracy"] for x in m]
            assert list(r.test_loss) == [x["test_loss"] for x in m]
            assert r.digest == _digest(blazefl, run)
        for band_of, key in ((g.accuracy, "test_accuracy"), (g.loss, "test_loss")):
            for i in range(2):
                xs = [m[i][key] for m in files]
                mean = statistics.fmean(xs)
                spread = abs(xs[0] - xs[1]) / math.sqrt(2)  # sample std of two values
                low, high = (
                    (min(xs), max(xs)) if band == "minmax" else (mean - spread, mean + spread)
                )
                assert band_of.mean[i] == pytest.approx(mean, abs=1e-12)
                assert band_of.low[i] == pytest.approx(low, abs=1e-12)
                assert band_of.high[i] == pytest.approx(high, abs=1e-12)


def test_runs_given_one_by_one_group_into_seeds(
    sweep_dir: Path, blazefl: Invoke, tmp_path: Path
) -> None:
    single = tmp_path / "other"
    result = blazefl("run", "--out", str(single), "--quiet", *SETS, "--set", "train.momentum=0.5")
    assert result.exit_code == 0, result.output
    seeds = [sweep_dir / "train.lr=0.05" / f"seed={s}" for s in (0, 1)]
    d = figure_series([*seeds, seeds[0], single])  # the run given twice is drawn once
    assert [len(g.runs) for g in d.groups] == [2, 1]
    assert d.differing == ("train.momentum",)  # train.lr is 0.05 in all three
    assert [g.label for g in d.groups] == ["momentum=0.9", "momentum=0.5"]


def test_png_is_well_formed_at_a_column_width(sweep_dir: Path, blazefl: Invoke, tmp_path: Path):
    import matplotlib.image

    for width, pixels in (("3.5", 1050), ("7", 2100)):
        fig = tmp_path / f"acc-{width}.png"
        result = blazefl("plot", str(sweep_dir), "-o", str(fig), "--width", width)
        assert result.exit_code == 0, result.output
        assert result.output == f"plot: {fig} (4 runs, 2 lines)\n"
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(fig)
        assert image.shape[1] == pixels and image.shape[2] in (3, 4)  # 300 dpi
        assert 0.3 * pixels < image.shape[0] < 2 * pixels
        assert not list(tmp_path.glob(".*.partial"))


def test_svg_holds_caption_legend_and_digests(
    sweep_dir: Path, blazefl: Invoke, tmp_path: Path
) -> None:
    fig = tmp_path / "acc.svg"
    result = blazefl("plot", str(sweep_dir), "-o", str(fig), "--band", "minmax")
    assert result.exit_code == 0, result.output
    text = _svg_text(fig)
    assert "Config differs in: train.lr; seeds 0, 1." in text
    for label in ("test accuracy (%)", "test loss", "round", "chance (1/10)"):
        assert label in text
    assert "mean, min–max over seeds" in text and "lr=0.01 (n=2)" in text
    for run in sorted(sweep_dir.glob("*/seed=*")):
        assert _digest(blazefl, run)[:8] in text


def test_same_runs_give_the_same_bytes(sweep_dir: Path) -> None:
    d = figure_series([sweep_dir])
    for fmt, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<?xml")):
        first = render_figure(d, fmt)
        assert first.startswith(magic) and render_figure(d, fmt) == first


def test_a_store_whose_attributes_are_off_its_manifest_gives_no_chance_line(
    sweep_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(sweep_dir / "train.lr=0.01" / "seed=0", run)
    meta = run / "dataset" / "zarr.json"
    tree = json.loads(meta.read_text())
    tree["attributes"]["num_classes"] = 2
    meta.chmod(0o644)
    meta.write_text(json.dumps(tree))
    assert figure_series([run]).chance is None


@pytest.mark.parametrize(
    ("name", "says"),
    [("fig.jpg", "the suffix must be"), ("missing/fig.png", "does not exist"), (".", "directory")],
)
def test_bad_target_is_one_line_before_any_work(
    blazefl: Invoke, tmp_path: Path, name: str, says: str
) -> None:
    target = tmp_path / name
    result = blazefl("plot", str(tmp_path / "no-such-run"), "-o", str(target))
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: "), result.output
    assert "-o" in result.output
    assert says in result.output


def test_unwritable_folder_and_missing_matplotlib_are_one_line(
    sweep_dir: Path, blazefl: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:  # as root every folder is writable: test the check
        m.setattr(run_figures.os, "access", lambda path, mode: not mode & os.W_OK)
        result = blazefl("plot", str(sweep_dir), "-o", str(tmp_path / "f.png"))
        assert result.exit_code == 2 and result.output.count("\n") == 1
        assert f"the folder {tmp_path} is not writable" in result.output
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = blazefl("plot", str(sweep_dir), "-o", str(tmp_path / "f.png"))
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "pip install 'blazefl[plot]'" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("what", ["missing", "not a run", "no rounds", "no args"])
def test_bad_runs_are_one_line(blazefl: Invoke, tmp_path: Path, what: str) -> None:
    arg = tmp_path / "in"
    if what == "not a run":
        arg.mkdir()
        (arg / "notes.txt").write_text("hello")
    elif what == "no rounds":
        made = blazefl("run", "--out", str(arg), "--quiet", *SETS, "--set", "fl.rounds=0")
        assert made.exit_code == 0, made.output
    args = [] if what == "no args" else [str(arg)]
    result = blazefl("plot", *args, "-o", str(tmp_path / "f.png"))
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: "), result.output
    assert not (tmp_path / "f.png").exists()


def test_help_imports_neither_matplotlib_nor_torch() -> None:
    code = (
        "import sys\nfrom blazefl.pipeline.cli import main\n"
        "for cmd in ('plot', 'sweep', 'sweep-table'):\n"
        "    try:\n        main([cmd, '--help'])\n    except SystemExit:\n        pass\n"
        "assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "-o, --output FIG" in out.stdout and "--grid KEY=V1,V2" in out.stdout
