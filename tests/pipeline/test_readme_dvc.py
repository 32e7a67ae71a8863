"""The README's "With DVC" commands, as written, in a fresh git + DVC repository holding a
tiny version of the default experiment: each exits 0, round 3 reproduces to the same
dvc.lock, the experiment runs, and `dvc exp show` lists the committed main with its metrics
(the metrics files DVC leaves to git are committed as the README says)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.pipeline.dvc_helpers import init_repo, run, sets, sh

README = Path(__file__).resolve().parents[2] / "README.md"
TINY: dict[str, object] = {
    "data.size": 120,
    "data.test_size": 40,
    "data.clients": 4,
    "fl.clients_per_round": 2,
    "fl.rounds": 4,
    "train.local_epochs": 1,
    "model.name": "cnn_small",
}


def readme_dvc_commands() -> list[str]:
    """The block's lines, verbatim (bash drops their comments); activating the venv is this
    process's."""
    text = README.read_text()
    section = text[text.index("### With DVC") : text.index("### Publishing a run")]
    block = re.findall(r"```bash\n(.*?)```", section, re.S)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith(". ")]


@pytest.mark.slow
def test_the_readme_dvc_commands_work_as_written(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repo(repo)
    sh(repo, "blazefl", "dvc", "--config", "params.yaml", *sets(TINY))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "the pipeline")
    commands = readme_dvc_commands()
    assert any(c.startswith("dvc exp run -S train.lr=0.02") for c in commands), commands
    for command in commands:
        if "round_003" in command:  # the tiny pipeline has 4 rounds: round 3 is there
            assert "git diff --exit-code dvc.lock" in command
        proc = run(repo, "bash", "-c", command)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    head = next(row for row in shown if row.get("rev") != "workspace")  # the committed branch
    metrics = head["data"]["metrics"]
    summary = next(v for k, v in metrics.items() if k.endswith("summary.json"))
    assert "best_test_accuracy" in summary["data"], metrics  # not "!": its metrics are in git
