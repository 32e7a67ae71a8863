"""`FeatureDataset`: float32 vectors and int64 token ids of any shape, taken by the training
loop, the evaluation and the algorithms' slicing like an `ImageDataset`, with one-line errors
for what a loader gets wrong; `ImageDataset` behaves as before."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
from torch import nn

from blazefl.algorithms.common import LocalSGD, TrainHParams, dataset_on, evaluate_model
from blazefl.core.serialization import flatten_module_
from blazefl.data import FeatureDataset, ImageDataset, load_dataset, synthetic_dataset


def _table(n: int = 40, width: int = 5) -> FeatureDataset:
    g = torch.Generator().manual_seed(0)
    return FeatureDataset(torch.randn(n, width, generator=g), torch.arange(n) % 3, 3)


def _tokens(n: int = 30, length: int = 7) -> FeatureDataset:
    g = torch.Generator().manual_seed(1)
    return FeatureDataset(torch.randint(0, 50, (n, length), generator=g), torch.arange(n) % 2, 2)


class _Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(x).mean(1))


def test_features_are_the_model_input_and_nothing_is_augmented() -> None:
    ds = _table()
    assert isinstance(ds, ImageDataset) and ds.shape == (5,) and ds.input_dtype == torch.float32
    x, y = ds[3]
    assert torch.equal(x, ds.features[3]) and y == 0
    batch = ds.images[:4]
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    assert ds.augment(batch, g) is batch and torch.equal(g.get_state(), before)
    assert ds.normalize(batch) is batch
    out = torch.empty(4, 5)
    assert ds.normalize(batch, out=out) is out and torch.equal(out, batch)
    assert "samples (5,) float32" in repr(ds) and _tokens().describe() == "samples (7,) int64"


def test_slicing_pickling_and_moving_keep_the_samples() -> None:
    ds = _tokens()
    part = dataclasses.replace(ds, images=ds.images[:10].clone(), labels=ds.labels[:10].clone())
    assert isinstance(part, FeatureDataset) and len(part) == 10
    back = pickle.loads(pickle.dumps(ds))
    assert torch.equal(back.images, ds.images) and back.num_classes == 2
    assert dataset_on(ds, "cpu") is ds and ds.to("cpu") is ds


@pytest.mark.parametrize("make", [_table, _tokens], ids=["float32", "int64"])
def test_local_sgd_and_evaluation_take_features(make: object) -> None:
    ds = make()  # type: ignore[operator]
    torch.manual_seed(0)
    model = (
        nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)) if ds.shape == (5,) else _Bag()
    )
    flat = flatten_module_(model)
    start = flat.clone()
    sgd = LocalSGD(model, flat, ds, TrainHParams(batch_size=8))
    losses = [sgd.run(torch.arange(len(ds)), torch.Generator().manual_seed(7)) for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses))) and not torch.equal(flat, start)
    metrics = evaluate_model(model, ds, batch_size=16)
    assert metrics["samples"] == len(ds) and 0.0 <= metrics["accuracy"] <= 1.0


def test_same_client_generator_gives_the_same_bits() -> None:
    ds = _table()
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Linear(5, 3)
        flat = flatten_module_(model)
        LocalSGD(model, flat, ds, TrainHParams(batch_size=8)).run(
            torch.arange(40), torch.Generator().manual_seed(3)
        )
        results.append(flat.clone())
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize(
    ("features", "labels", "fragment"),
    [
        (torch.zeros(4, 3, dtype=torch.uint8), None, "uint8 images belong in ImageDataset"),
        (torch.zeros(4), None, "one value per sample is [N, 1]"),
        (torch.zeros(4, 2, dtype=torch.float64), None, "convert with .float()"),
        (torch.tensor([[1.0], [float("nan")], [0.0], [0.0]]), None, "NaN or infinity"),
        (torch.full((4, 2), -1), None, "token ids must be >= 0"),
        (torch.zeros(4, 2), torch.zeros(3, dtype=torch.int64), "differ in length"),
        (torch.zeros(4, 2), torch.full((4,), 5), "labels must lie in [0, num_classes=3)"),
        (torch.zeros(4, 2), torch.zeros(4, dtype=torch.int32), "labels must be an int64"),
    ],
)
def test_loader_mistakes_are_one_line(
    features: torch.Tensor, labels: torch.Tensor | None, fragment: str
) -> None:
    y = torch.zeros(len(features), dtype=torch.int64) if labels is None else labels
    with pytest.raises(ValueError) as err:
        FeatureDataset(features, y, 3)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_image_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="for uint8 images use ImageDataset"):
        FeatureDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64), 3, mean=(0.5,))


def test_image_datasets_are_unchanged() -> None:
    ds = synthetic_dataset(8, seed=0)
    assert type(ds) is ImageDataset and ds.shape == (3, 32, 32)
    assert ds.input_dtype == torch.float32 and ds.features is ds.images
    assert ds.describe() == "images (3, 32, 32) uint8" and ds.to("cpu") is ds
    assert [f.name for f in dataclasses.fields(ImageDataset)] == [
        "images", "labels", "num_classes", "mean", "std", "crop_padding", "hflip",
    ]  # fmt: skip


def test_a_loader_returning_something_else_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from blazefl.data import DATASETS

    monkeypatch.setitem(DATASETS._items, "_test_returns_a_dict", lambda **_: {"x": 1})
    with pytest.raises(ValueError, match="return an ImageDataset .* or a FeatureDataset"):
        load_dataset("_test_returns_a_dict")
