"""The committed default experiment (params.yaml) runs and learns well above chance."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

ROOT = Path(__file__).parents[2]


def test_default_experiment_reaches_far_above_chance(
    tmp_path: Path, blazefl: Callable[..., Result]
) -> None:
    out = tmp_path / "default"
    result = blazefl("run", str(ROOT / "params.yaml"), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 10
    assert summary["test_accuracy"] >= 0.6  # 10 classes: chance is 0.1
