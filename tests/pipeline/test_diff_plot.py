"""`blazefl diff A B --plot FILE`: the picture of two runs drifting apart.

The numbers drawn (`divergence_series`) are checked against an independent computation from
the safetensors files; the pictures are checked as files (PNG magic and size, SVG as XML with
its title); bad input ends in one line before any work, and `diff`'s own output and exit codes
stay as they are.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, load_file

from blazefl.pipeline import diff_plot, user_files
from blazefl.pipeline.diff_plot import divergence_series, write_divergence_plot
from blazefl.stages.artifacts import canonical_json, safetensors_bytes, sha256_bytes

_GLOBAL = "global.safetensors"


@pytest.fixture(scope="module")
def lr_run(tmp_path_factory, blazefl, tiny_args) -> Path:
    """The tiny run with another learning rate: it differs from round 1 on."""
    out = tmp_path_factory.mktemp("lr") / "lr_run"
    result = blazefl(
        "run", "--out", str(out), "--mode", "sequential", "--quiet", *tiny_args,
        "--set", "train.lr=0.1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def late_run(tmp_path_factory, tiny_run: Path) -> Path:
    """A copy of the tiny run whose round 2 global model (and its manifest's hash) is changed:
    rounds 0-1 identical, round 2 differs by exactly 0.5 in one weight, round 3 identical."""
    out = tmp_path_factory.mktemp("late") / "late_run"
    shutil.copytree(tiny_run, out)
    folder = out / "round-0002"
    tensors = load((folder / _GLOBAL).read_bytes())
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] += 0.5
    data = safetensors_bytes(tensors)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["outputs"][_GLOBAL] = sha256_bytes(data)
    for rel, content in ((_GLOBAL, data), ("manifest.json", canonical_json(manifest))):
        (folder / rel).unlink()  # committed files are read-only and may be hard links
        (folder / rel).write_bytes(content)
    return out


def _independent(a: Path, b: Path, t: int) -> tuple[float, float]:
    """Max abs and ||a-b|| / ||a|| of round t's global models, from the files directly."""
    ta = load_file(a / f"round-{t:04d}" / _GLOBAL)
    tb = load_file(b / f"round-{t:04d}" / _GLOBAL)
    keys = [k for k in ta if ta[k].is_floating_point()]
    va = torch.cat([ta[k].flatten().double() for k in keys])
    vb = torch.cat([tb[k].flatten().double() for k in keys])
    return (va - vb).abs().max().item(), ((va - vb).norm() / va.norm()).item()


def _svg_text(path: Path) -> str:
    root = ET.fromstring(path.read_bytes())  # well-formed XML or this raises
    assert root.tag.endswith("svg")
    return " ".join(t for el in root.iter() for t in (el.text,) if t)


def test_series_matches_the_safetensors_files(tiny_run: Path, lr_run: Path) -> None:
    d = divergence_series(tiny_run, lr_run)
    assert [r.round for r in d.rounds] == [0, 1, 2, 3]
    for r in d.rounds:
        max_abs, rel = _independent(tiny_run, lr_run, r.round)
        assert r.max_abs == pytest.approx(max_abs, rel=1e-12, abs=0)
        assert r.rel_l2 == pytest.approx(rel, rel=1e-9, abs=0)
    assert d.rounds[0].max_abs == 0 and d.rounds[0].rel_l2 == 0
    assert all(r.max_abs > 0 and r.rel_l2 > 0 for r in d.rounds[1:])  # type: ignore[operator]
    assert d.first_difference == 1 and not d.identical
    assert d.config_keys == ("train.lr",) and d.config_diff == (("train.lr", 0.05, 0.1),)
    assert all(r.uplink_differs and not r.one_run_only for r in d.rounds[1:])
    assert d.notes == []


def test_series_of_a_run_diverging_at_round_2(tiny_run: Path, late_run: Path) -> None:
    d = divergence_series(tiny_run, late_run)
    assert [r.max_abs for r in d.rounds] == [0.0, 0.0, _independent(tiny_run, late_run, 2)[0], 0]
    assert d.rounds[2].max_abs == pytest.approx(0.5, rel=1e-6)
    assert d.rounds[2].rel_l2 == pytest.approx(_independent(tiny_run, late_run, 2)[1], rel=1e-9)
    assert d.first_difference == 2 and d.config_keys == ()
    assert all(not r.uplink_differs and r.same for r in d.rounds[1:])  # uplinks untouched


def test_plot_png_of_runs_differing_in_lr(tiny_run, lr_run, blazefl, tmp_path) -> None:
    from matplotlib.image import imread

    png = tmp_path / "drift.png"
    plain = blazefl("diff", str(tiny_run), str(lr_run))
    result = blazefl("diff", str(tiny_run), str(lr_run), "--plot", str(png))
    assert result.exit_code == plain.exit_code == 1, result.output
    # --plot only adds its line: the diff itself is unchanged
    assert result.output.splitlines() == [*plain.output.splitlines(), f"plot: {png}"]
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    height, width, _ = imread(png).shape
    assert 600 <= width <= 3000 and 400 <= height <= 2500 and width > height
    assert [p.name for p in tmp_path.iterdir()] == ["drift.png"]  # no temp file left


def test_plot_svg_names_both_runs_and_the_first_difference(
    tiny_run, late_run, blazefl, tmp_path
) -> None:
    svg = tmp_path / "drift.svg"
    result = blazefl("diff", str(tiny_run), str(late_run), "--plot", str(svg))
    assert result.exit_code == 1, result.output
    text = _svg_text(svg)
    for run in (tiny_run, late_run):
        digest = blazefl("show", str(run)).output.split("digest: ")[1].split()[0]
        assert f"{run.name} ({digest[:12]})" in text
    assert "first difference: round 2" in text and "same config" in text
    assert "identical (difference 0)" in text  # rounds 0, 1 and 3 sit on the floor


def test_identical_runs_give_zeros_and_say_so(tiny_run, blazefl, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    d = divergence_series(tiny_run, copy)
    assert [(r.max_abs, r.rel_l2) for r in d.rounds] == [(0.0, 0.0)] * 4
    assert d.identical and d.first_difference is None
    assert all(not r.uplink_differs and not r.one_run_only for r in d.rounds)
    svg = tmp_path / "same.svg"
    result = blazefl("diff", str(tiny_run), str(copy), "--plot", str(svg))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["identical: 3 rounds", f"plot: {svg}"]
    text = _svg_text(svg)
    assert "identical: every round's global model and uplinks agree" in text
    assert "first difference" not in text
    pdf = tmp_path / "same.pdf"
    assert blazefl("diff", str(tiny_run), str(copy), "--plot", str(pdf)).exit_code == 0
    assert pdf.read_bytes().startswith(b"%PDF")


def test_rounds_in_one_run_only_are_noted(tiny_run, blazefl, tmp_path) -> None:
    short = tmp_path / "short"
    shutil.copytree(tiny_run, short)
    shutil.rmtree(short / "round-0003")
    d = divergence_series(tiny_run, short)
    assert [r.round for r in d.rounds] == [0, 1, 2] and d.only_a == (3,)
    assert d.notes == ["round 3 only in A (not drawn)"] and not d.identical
    svg = tmp_path / "short.svg"
    result = blazefl("diff", str(tiny_run), str(short), "--plot", str(svg))
    assert result.exit_code == 1 and result.output.splitlines()[-1] == f"plot: {svg}"
    assert "round 3 only in A (not drawn)" in _svg_text(svg)


def test_a_global_model_off_its_manifest_is_not_drawn(tiny_run, tmp_path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_run, bad)
    path = bad / "round-0001" / _GLOBAL
    tensors = load(path.read_bytes())
    next(iter(tensors.values())).view(-1)[0] += 1
    path.unlink()
    path.write_bytes(safetensors_bytes(tensors))  # the manifest still has the old hash
    d = divergence_series(tiny_run, bad)
    assert d.rounds[1].max_abs is None and d.first_difference == 1
    assert d.notes == [f"round 1: {_GLOBAL} does not match its manifest's sha256"]


@pytest.mark.parametrize(
    ("name", "problem"),
    [("drift.jpg", "the suffix must be .png, .pdf, .svg"), ("missing/drift.png", "does not exist")],
)
def test_bad_plot_target_is_one_line_before_any_work(
    tiny_run, blazefl, tmp_path, name: str, problem: str
) -> None:
    target = tmp_path / name
    result = blazefl("diff", str(tiny_run), str(tiny_run), "--plot", str(target))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --plot") and problem in lines[0]
    assert not target.exists()


def test_unwritable_folder_is_one_line(
    tiny_run, blazefl, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as root every folder is writable: the permission check itself is what is tested
    monkeypatch.setattr(diff_plot.os, "access", lambda path, mode: not mode & os.W_OK)
    result = blazefl("diff", str(tiny_run), str(tiny_run), "--plot", str(tmp_path / "d.png"))
    assert result.exit_code == 2 and f"the folder {tmp_path} is not writable" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_matplotlib_says_what_to_install(
    tiny_run, blazefl, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    target = tmp_path / "drift.png"
    result = blazefl("diff", str(tiny_run), str(tiny_run), "--plot", str(target))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pip install 'blazefl[plot]'" in lines[0], lines
    assert not target.exists()


def test_write_is_atomic(tiny_run, lr_run, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed rename leaves the previous picture whole and no temporary file behind."""
    target = tmp_path / "drift.png"
    target.write_bytes(b"old picture")
    d = divergence_series(tiny_run, lr_run)

    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(user_files.os, "replace", fail)
    with pytest.raises(OSError):
        write_divergence_plot(d, target)
    assert target.read_bytes() == b"old picture"
    assert [p.name for p in tmp_path.iterdir()] == ["drift.png"]


def test_many_clients_are_counted_per_round(
    tiny_run, lr_run, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(diff_plot, "RASTER_MAX_CLIENTS", 2)  # the tiny run has 6 clients
    svg = write_divergence_plot(divergence_series(tiny_run, lr_run), tmp_path / "bars.svg")
    assert "sampled clients" in _svg_text(svg) and "client id" not in _svg_text(svg)


def test_model_difference_of_zero_and_incomparable_models() -> None:
    zero, one = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    assert diff_plot.model_difference(one, zero) == (1.0, 1.0)
    assert diff_plot.model_difference(zero, one) == (1.0, math.inf)
    assert diff_plot.model_difference(zero, zero) == (0.0, 0.0)
    assert "shape" in str(diff_plot.model_difference(one, {"w": torch.ones(4)}))
    assert "names" in str(diff_plot.model_difference(one, {"v": torch.ones(3)}))
    counter = {"w": torch.ones(3), "n": torch.tensor(1)}  # integer buffers are not counted
    assert diff_plot.model_difference(counter, {**counter, "n": torch.tensor(2)}) == (0.0, 0.0)


def test_diff_help_names_the_flag_without_importing_matplotlib() -> None:
    code = (
        "import sys; from blazefl.pipeline.cli import main\n"
        "try:\n    main(['diff', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--plot FILE" in result.stdout and ".svg" in result.stdout
