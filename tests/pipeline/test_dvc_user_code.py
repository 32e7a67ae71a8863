"""User code under DVC: every module the user's algorithm, model or dataset imports is a
dependency of exactly the stages that run it, so editing a helper module (not the module the
config names) makes those stages stale and `dvc repro` reruns them.

The plugin project: `myfl/feddyn.py` (FedAvg with a server step) imports its step from
`myfl/common.py`; the model factory `mynet/factory.py` (a namespace package) takes its width
from `mynet/layers.py`. The reproduced repository is built once per module; each test edits a
copy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from dvc_helpers import (
    OUT,
    ROUND_STAGES,
    TINY,
    commit,
    copy_repo,
    init_repo,
    needs_dvc,
    ran_stages,
    sets,
    sh,
    status,
)

from blazefl.pipeline.dvcgen import stage_code

PLUGIN = {
    "myfl/__init__.py": "",
    "myfl/common.py": '''\
"""The server step FedDyn takes toward the clients' average (1.0: FedAvg's)."""

STEP = 1.0


def server_step(previous, average):
    return previous + STEP * (average - previous)
''',
    "myfl/feddyn.py": '''\
"""FedAvg whose server moves part of the way to the average (`common.STEP`)."""

from blazefl.algorithms.fedavg import FedAvg, FedAvgServerHandler

from .common import server_step


class FedDynServerHandler(FedAvgServerHandler):
    def global_update(self):
        previous = self.flat.clone()
        super().global_update()
        self.flat.copy_(server_step(previous, self.flat))


class FedDyn(FedAvg):
    name = "feddyn"

    def server(self, exp, generator):
        return FedDynServerHandler(exp.initial_model(), **exp.server_kwargs(generator))
''',
    "mynet/layers.py": "HIDDEN = 16\n",
    "mynet/factory.py": '''\
"""A one-hidden-layer perceptron, its width from `mynet.layers`."""

from torch import nn

from mynet.layers import HIDDEN


def mlp(*, num_classes, in_channels, image_size, dropout):
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, num_classes),
    )
''',
}
PARAMS = "fl:\n  algorithm: myfl.feddyn:FedDyn\nmodel:\n  name: mynet.factory:mlp\n"
ALGORITHM_FILES = ["myfl/__init__.py", "myfl/common.py", "myfl/feddyn.py"]
MODEL_FILES = ["mynet/factory.py", "mynet/layers.py"]


def write_plugin(root: Path) -> None:
    for rel, text in PLUGIN.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_stage_code_lists_the_closure_per_stage_without_importing_it(tmp_path: Path) -> None:
    write_plugin(tmp_path)
    config = {
        "fl.algorithm": "myfl.feddyn:FedDyn",
        "model.name": "mynet.factory:mlp",
        "data.dataset": "synthetic",
    }
    code = stage_code(config, tmp_path)
    assert code == {
        "prepare": [],
        "partition": ALGORITHM_FILES,
        "init": sorted(ALGORITHM_FILES + MODEL_FILES),
        "round": sorted(ALGORITHM_FILES + MODEL_FILES),
    }
    assert "myfl" not in sys.modules and "mynet" not in sys.modules  # read, never imported


@pytest.fixture(scope="module")
def plugin_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline with the plugin algorithm and model, reproduced and committed."""
    repo = tmp_path_factory.mktemp("dvc-user-code") / "repo"
    init_repo(repo)
    with open(repo / ".gitignore", "a") as f:
        f.write("__pycache__/\n")
    write_plugin(repo)
    (repo / "params.yaml").write_text(PARAMS)
    sh(repo, "blazefl", "dvc", "--config", "params.yaml", "--out", OUT, *sets(TINY))
    sh(repo, "dvc", "repro")
    commit(repo, "reproduce the plugin pipeline")
    return repo


@pytest.fixture
def repo(plugin_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the reproduced plugin repository."""
    return copy_repo(plugin_repo, tmp_path / "repo")


def edit(repo: Path, rel: str, old: str, new: str) -> None:
    path = repo / rel
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@needs_dvc
def test_dvc_yaml_lists_each_stages_whole_closure(plugin_repo: Path) -> None:
    stages = yaml.safe_load((plugin_repo / "dvc.yaml").read_text())["stages"]
    assert "deps" not in stages["prepare"]  # the built-in dataset runs no user code
    assert stages["partition"]["deps"] == [f"{OUT}/dataset", *ALGORITHM_FILES]
    for name in ROUND_STAGES:
        assert stages[name]["deps"][-5:] == sorted(ALGORITHM_FILES + MODEL_FILES), name
    assert status(plugin_repo) == {}


@needs_dvc
def test_editing_the_algorithms_helper_reruns_exactly_its_stages(repo: Path) -> None:
    before = {t: (repo / OUT / f"metrics/round-000{t}.json").read_bytes() for t in (1, 2)}
    edit(repo, "myfl/common.py", "STEP = 1.0", "STEP = 0.5")
    stale = status(repo)
    assert sorted(stale) == ["partition", *ROUND_STAGES]  # not prepare, not yet report
    for name in stale:
        assert "myfl/common.py" in json.dumps(stale[name]), name
    assert ran_stages(sh(repo, "dvc", "repro")) == sorted(["partition", *ROUND_STAGES, "report"])
    assert status(repo) == {}
    after = {t: (repo / OUT / f"metrics/round-000{t}.json").read_bytes() for t in (1, 2)}
    assert all(before[t] != after[t] for t in before)  # the helper's edit changed the results


@needs_dvc
def test_editing_the_models_helper_makes_only_init_and_rounds_stale(repo: Path) -> None:
    edit(repo, "mynet/layers.py", "HIDDEN = 16", "HIDDEN = 24")
    stale = status(repo)
    assert sorted(stale) == ROUND_STAGES
    for name in stale:
        assert "mynet/layers.py" in json.dumps(stale[name]), name
