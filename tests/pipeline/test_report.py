"""report: summary.json for `dvc exp show`, a PNG plot, and a clear message without matplotlib."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from blazefl.stages.report import write_plot

METRICS = [
    {"round": t, "test_accuracy": 0.1 * t, "test_loss": 2.0 / t, "train_loss": 2.1 / t}
    for t in (1, 2, 3)
]


def test_plot_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "metrics.png"
    assert write_plot(METRICS, path)
    assert path.read_bytes().startswith(b"\x89PNG")


def test_missing_matplotlib_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    path = tmp_path / "metrics.png"
    assert write_plot(METRICS, path) is False
    assert not path.exists()
    err = capsys.readouterr().err
    assert "matplotlib is not installed" in err and "pip install 'blazefl[plot]'" in err


def test_summary_holds_final_and_best_accuracy(tiny_run: Path) -> None:
    summary = json.loads((tiny_run / "summary.json").read_text())
    metrics = [json.loads(p.read_text()) for p in sorted((tiny_run / "metrics").glob("*.json"))]
    assert summary["rounds"] == len(metrics) == 3
    assert summary["test_accuracy"] == metrics[-1]["test_accuracy"]
    assert summary["best_test_accuracy"] == max(m["test_accuracy"] for m in metrics)
