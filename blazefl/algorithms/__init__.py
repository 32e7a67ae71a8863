"""FL algorithms built on the core: each is package types + server handler + client work."""

from blazefl.algorithms.common import ClientPartition, LocalSGD, TrainHParams, evaluate_model
from blazefl.algorithms.dsfl import (
    DSFLClientWorkload,
    DSFLDownlinkPackage,
    DSFLHParams,
    DSFLServerHandler,
    DSFLUplinkPackage,
    DSFLWorker,
    entropy_reduction_aggregation,
    split_open_set,
)
from blazefl.algorithms.fedavg import (
    FedAvgClientWorkload,
    FedAvgDownlinkPackage,
    FedAvgServerHandler,
    FedAvgUplinkPackage,
    FedAvgWorker,
    ModelSpec,
)

__all__ = [
    "ClientPartition",
    "DSFLClientWorkload",
    "DSFLDownlinkPackage",
    "DSFLHParams",
    "DSFLServerHandler",
    "DSFLUplinkPackage",
    "DSFLWorker",
    "FedAvgClientWorkload",
    "FedAvgDownlinkPackage",
    "FedAvgServerHandler",
    "FedAvgUplinkPackage",
    "FedAvgWorker",
    "LocalSGD",
    "ModelSpec",
    "TrainHParams",
    "entropy_reduction_aggregation",
    "evaluate_model",
    "split_open_set",
]
