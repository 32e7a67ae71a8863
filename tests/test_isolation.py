"""The suite never reads the user's working files: the README's DVC steps leave their own
params.yaml (e.g. `train.lr: 0.02`) in the repository root, and a test that ran `blazefl run`
there picked it up as its default config."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ROOT


def test_tests_run_outside_the_repository_root() -> None:
    assert Path.cwd().resolve() != ROOT
    assert not Path("params.yaml").exists() and not Path("dvc.yaml").exists()
