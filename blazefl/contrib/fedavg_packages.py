"""The original BlazeFL's FedAvg packages and dataset split names."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch

from blazefl.core import DownlinkPackage, PartitionedDataset, UplinkPackage

__all__ = [
    "FedAvgDownlinkPackage",
    "FedAvgPartitionType",
    "FedAvgPartitionedDataset",
    "FedAvgUplinkPackage",
]


@dataclass
class FedAvgUplinkPackage(UplinkPackage):
    """What a FedAvg client sends back.

    Attributes:
        cid: client id.
        model_parameters: the client's model as one flat vector (`serialize_model`); an
            `SHMHandle` in the receipt a process-pool worker returns.
        data_size: samples the client trained on (summed over its local epochs).
        metadata: optional extra values (e.g. evaluation metrics).
    """

    cid: int
    model_parameters: torch.Tensor
    data_size: int
    metadata: dict[str, float] | None = None


@dataclass
class FedAvgDownlinkPackage(DownlinkPackage):
    """What the FedAvg server broadcasts: the global model as one flat vector."""

    model_parameters: torch.Tensor


class FedAvgPartitionType(StrEnum):
    """The dataset splits FedAvg reads."""

    TRAIN = "train"
    TEST = "test"


FedAvgPartitionedDataset = PartitionedDataset[FedAvgPartitionType]
"""A `PartitionedDataset` keyed by `FedAvgPartitionType`."""
