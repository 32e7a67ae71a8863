"""`ModelSelector`, `PartitionedDataset` and `FilteredDataset` as the original BlazeFL has
them: subscriptable protocols subclassed with the user's own constructor, implemented by the
package's own classes, and the original's length check."""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import blazefl.data
import blazefl.models
from blazefl.core import FilteredDataset, ModelSelector, PartitionedDataset


class ModelName(StrEnum):
    LINEAR = "linear"


class Split(StrEnum):
    TRAIN = "train"
    TEST = "test"


class Selector(ModelSelector[ModelName]):
    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def select_model(self, model_name: ModelName) -> torch.nn.Module:
        assert model_name is ModelName.LINEAR
        return torch.nn.Linear(4, self.num_classes)


class Data(PartitionedDataset[Split]):
    def __init__(self, num_clients: int) -> None:
        self.num_clients = num_clients
        self.parts = [TensorDataset(torch.full((3, 4), float(c))) for c in range(num_clients)]

    def get_dataset(self, type_: Split, cid: int | None) -> Dataset[tuple[torch.Tensor, ...]]:
        return self.parts[cid or 0]

    def get_dataloader(
        self,
        type_: Split,
        cid: int | None,
        batch_size: int | None,
        generator: torch.Generator | None = None,
    ) -> DataLoader[tuple[torch.Tensor, ...]]:
        dataset = self.get_dataset(type_, cid)
        return DataLoader(dataset, batch_size=batch_size or 3, generator=generator)


def test_user_subclasses_keep_their_constructor() -> None:
    assert Selector(3).select_model(ModelName.LINEAR).out_features == 3
    data = Data(2)
    data.num_clients = 5  # a plain attribute, as in the original's examples
    assert data.num_clients == 5
    (batch,) = next(iter(data.get_dataloader(Split.TRAIN, 1, None)))
    assert batch.shape == (3, 4) and float(batch[0, 0]) == 1.0
    data.set_dataset(Split.TRAIN, 0, data.parts[1])  # optional hook: a no-op by default
    assert isinstance(data, PartitionedDataset) and isinstance(Selector(2), ModelSelector)


def test_the_package_classes_implement_the_protocols() -> None:
    selector = blazefl.models.ModelSelector(num_classes=10)
    assert isinstance(selector, ModelSelector)
    train = blazefl.data.synthetic_dataset(40, seed=0)
    parts = [np.arange(0, 20), np.arange(20, 40)]
    data = blazefl.data.PartitionedDataset(train, parts)
    assert isinstance(data, PartitionedDataset) and data.num_clients == 2
    images, _ = next(iter(data.get_dataloader("train", 1, None)))
    assert images.shape[0] == 20  # batch_size None: the whole subset, as in the original


def test_filtered_dataset_refuses_misaligned_targets() -> None:
    with pytest.raises(AssertionError, match="original_targets has 2"):
        FilteredDataset([0, 1], [0, 1, 2], [10, 11])
    with pytest.raises(ValueError, match="aligned"):
        FilteredDataset([0], torch.zeros(3, 2), torch.zeros(2))
    dataset = FilteredDataset([2, 0], ["a", "b", "c"], [1, 2, 3], target_transform=str)
    assert dataset[0] == ("c", "3") and len(dataset) == 2
    assert len(FilteredDataset([], [1, 2], [3, 4])) == 0
