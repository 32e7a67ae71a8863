"""Non-image data through `blazefl run` with no package edits: a tabular dataset read from CSV
files under data.root with an MLP, and token-id sequences with an embedding + LSTM, each a
user loader returning a `FeatureDataset` and a user factory declaring `input_shape`. Same
bytes in every execution mode, `verify` OK, the store holds the samples as they were; a model
that does not fit the data is one line before anything is written."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from blazefl.data import FeatureDataset
from blazefl.stages.artifacts import RunDir
from blazefl.stages.stores import load_dataset_store
from tests.pipeline.integrity_helpers import cli, one_line_error

USER_CODE = '''
"""A researcher's tabular and sequence data, and models that take their input shape."""
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from blazefl.data import FeatureDataset

VOCAB, LENGTH = 20, 8


def table(*, root, size, seed, train):
    rows = np.loadtxt(Path(root) / ("train.csv" if train else "test.csv"), delimiter=",")
    features = torch.from_numpy(rows[:, :-1].astype(np.float32))
    return FeatureDataset(features, torch.from_numpy(rows[:, -1].astype(np.int64)), 3)


def tokens(*, root, size, seed, train):
    # the class is whether token 1 occurs more often than token 2
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1 if train else 2,)))
    ids = rng.integers(0, VOCAB, (size, LENGTH))
    labels = ((ids == 1).sum(1) > (ids == 2).sum(1)).astype(np.int64)
    return FeatureDataset(torch.from_numpy(ids), torch.from_numpy(labels), num_classes=2)


def mlp(*, num_classes, input_shape, dropout):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), 16), nn.ReLU(), nn.Linear(16, num_classes)
    )


class LSTMClassifier(nn.Module):
    def __init__(self, num_classes, vocab):
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.out = nn.Linear(16, num_classes)

    def forward(self, x):
        _, (h, _) = self.lstm(self.embed(x))
        return self.out(h[-1])


def lstm(*, num_classes, input_shape, input_dtype, dropout):
    assert input_dtype == torch.int64 and input_shape == (LENGTH,)
    return LSTMClassifier(num_classes, VOCAB)


def lstm_small_vocab(*, num_classes, input_shape, dropout):
    return LSTMClassifier(num_classes, VOCAB - 5)


def mlp_wrong_width(*, num_classes, input_shape, dropout):
    return nn.Linear(7, num_classes)


def mlp_wrong_classes(*, num_classes, input_shape, dropout):
    return nn.Linear(math.prod(input_shape), num_classes + 1)


def image_factory(*, num_classes, in_channels, image_size, dropout):
    return nn.Linear(in_channels * image_size * image_size, num_classes)


def split_mismatch(*, root, size, seed, train):
    width = 6 if train else 5
    return FeatureDataset(torch.zeros(size, width), torch.zeros(size, dtype=torch.int64), 3)
'''

SMALL = [
    "seed=3",
    "data.clients=4",
    "data.size=120",
    "data.test_size=40",
    "data.partition=iid",
    "fl.rounds=2",
    "fl.clients_per_round=2",
    "train.local_epochs=1",
    "train.batch_size=16",
]
KINDS = {
    "table": ["data.dataset=usernets:table", "data.root=data", "model.name=usernets:mlp"],
    "tokens": ["data.dataset=usernets:tokens", "model.name=usernets:lstm"],
}


def sets(*extra: str) -> list[str]:
    return [a for item in (*SMALL, *extra) for a in ("--set", item)]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "usernets.py").write_text(textwrap.dedent(USER_CODE))
    (tmp_path / "data").mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 120), ("test", 40)):
        y = rng.integers(0, 3, n)
        x = rng.normal(size=(n, 6)) + y[:, None] * 0.8
        np.savetxt(tmp_path / "data" / f"{name}.csv", np.column_stack([x, y]), delimiter=",")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_runs_identically_in_every_mode_and_verifies(kind: str, project: Path) -> None:
    runs = {}
    for mode in ("sequential", "threads", "processes"):
        runs[mode] = project / mode
        args = ["run", "--out", str(runs[mode]), "-q", "--mode", mode, "--workers", "2"]
        result = cli(*args, *sets(*KINDS[kind]))
        assert result.exit_code == 0, result.output
    for mode in ("threads", "processes"):
        assert cli("diff", str(runs["sequential"]), str(runs[mode])).exit_code == 0
    assert cli("verify", str(runs["processes"]), "--trust-code").exit_code == 0
    attrs = json.loads((runs["sequential"] / "dataset" / "zarr.json").read_text())["attributes"]
    dtype, shape = ("float32", [6]) if kind == "table" else ("int64", [8])
    assert attrs == {"dtype": dtype, "kind": "features", "num_classes": attrs["num_classes"],
                     "sample_shape": shape}  # fmt: skip
    train, test = load_dataset_store(RunDir(runs["threads"]))
    assert isinstance(train, FeatureDataset) and (len(train), len(test)) == (120, 40)
    assert str(train.images.dtype) == f"torch.{dtype}" and list(train.shape) == shape
    summary = json.loads((runs["sequential"] / "summary.json").read_text())
    assert summary  # the rounds' metrics were written


def test_the_stored_table_is_the_csv(project: Path) -> None:
    out = project / "run"
    assert cli("run", "--out", str(out), "-q", *sets(*KINDS["table"], "fl.rounds=0")).exit_code == 0
    train, _ = load_dataset_store(RunDir(out))
    rows = np.loadtxt(project / "data" / "train.csv", delimiter=",")
    assert np.array_equal(train.images.numpy(), rows[:, :-1].astype(np.float32))
    assert np.array_equal(train.labels.numpy(), rows[:, -1].astype(np.int64))


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (
            ["model.name=usernets:mlp_wrong_width"],
            ["model.name 'usernets:mlp_wrong_width'", "input [1, 6] float32", "input_shape (6,)"],
        ),
        (
            ["model.name=usernets:mlp_wrong_classes"],
            ["gave [1, 4] float32, expected float logits [1, 3]", "num_classes outputs"],
        ),
        (["model.name=cnn"], ["built-in model 'cnn'", "(6,) float32", "declares input_shape="]),
        (["model.name=usernets:image_factory"], ["'usernets:image_factory' takes images"]),
        (
            ["data.dataset=usernets:tokens", "model.name=usernets:lstm_small_vocab"],
            ["largest token id 19", "IndexError"],
        ),
        (
            ["data.dataset=usernets:split_mismatch"],
            ["training set holds samples (6,) float32", "test set samples (5,) float32"],
        ),
    ],
    ids=["width", "classes", "builtin", "image-factory", "vocab", "splits"],
)
def test_a_model_that_does_not_fit_is_one_line_before_any_store(
    extra: list[str], fragments: list[str], project: Path
) -> None:
    out = project / "run"
    line = one_line_error(cli("run", "--out", str(out), "-q", *sets(*KINDS["table"], *extra)))
    assert all(f in line for f in fragments), line
    assert not out.exists() or not any(out.iterdir())


def test_stage_prepare_checks_the_model_too(project: Path) -> None:
    out = project / "run"
    extra = sets(*KINDS["table"], "model.name=usernets:mlp_wrong_width")
    line = one_line_error(cli("stage", "prepare", "--out", str(out), *extra))
    assert "does not fit data.dataset 'usernets:table'" in line, line
    assert not (out / "dataset").exists()


def test_stage_init_checks_the_model_after_prepare(project: Path) -> None:
    """Under DVC the model may change after `prepare` checked it (model.name is no dataset
    key): `init` checks again, in one line, before round 0 is written."""
    out = project / "run"
    for stage in ("prepare", "partition"):
        result = cli("stage", stage, "--out", str(out), *sets(*KINDS["table"]))
        assert result.exit_code == 0, result.output
    extra = sets(*KINDS["table"], "model.name=usernets:mlp_wrong_width")
    line = one_line_error(cli("stage", "init", "--out", str(out), *extra))
    assert "does not fit data.dataset 'usernets:table'" in line, line
    assert not (out / "round-0000").exists()
