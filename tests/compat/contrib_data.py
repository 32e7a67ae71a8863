"""A partitioned dataset written against the original BlazeFL's contract, for the
`blazefl.contrib` tests (module level: process-pool workers unpickle it by name). Like the
original's quickstart dataset it keeps a `torch.Generator` for its augmentation."""

from __future__ import annotations

from enum import StrEnum

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from blazefl.contrib import FedAvgPartitionType
from blazefl.core import ModelSelector, PartitionedDataset

FEATURES, CLASSES = 4, 3


class ModelName(StrEnum):
    LINEAR = "linear"


class Selector(ModelSelector[ModelName]):
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def select_model(self, model_name: ModelName) -> torch.nn.Module:
        with torch.random.fork_rng([]):
            torch.manual_seed(self.seed)
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(FEATURES, CLASSES))


class Jitter:
    """An augmentation drawing from its own generator (pickled with the dataset)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.0 * torch.rand(x.shape, generator=self.generator)


class Data(PartitionedDataset[FedAvgPartitionType]):
    def __init__(self, num_clients: int, size: int, seed: int) -> None:
        self.num_clients = num_clients
        g = torch.Generator().manual_seed(seed)
        teacher = torch.randn(FEATURES, CLASSES, generator=g)
        self.parts = []
        for _ in range(num_clients + 1):  # the last one is the test split
            x = torch.randn(size, FEATURES, generator=g)
            self.parts.append(TensorDataset(x, (x @ teacher).argmax(1)))
        self.jitter = Jitter(torch.Generator().manual_seed(seed))

    def get_dataset(self, type_: FedAvgPartitionType, cid: int | None) -> Dataset[object]:
        if type_ is FedAvgPartitionType.TEST:
            return self.parts[-1]
        assert cid is not None
        return self.parts[cid]

    def get_dataloader(
        self,
        type_: FedAvgPartitionType,
        cid: int | None,
        batch_size: int | None,
        generator: torch.Generator | None = None,
    ) -> DataLoader[object]:
        dataset = self.get_dataset(type_, cid)
        size = batch_size or len(dataset)  # type: ignore[arg-type]
        shuffle = type_ is FedAvgPartitionType.TRAIN
        return DataLoader(dataset, batch_size=size, shuffle=shuffle, generator=generator)
