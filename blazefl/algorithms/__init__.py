"""FL algorithms built on the core: each is package types + server handler + client work."""

from blazefl.algorithms.common import ClientPartition, LocalSGD, TrainHParams, evaluate_model
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
    "FedAvgClientWorkload",
    "FedAvgDownlinkPackage",
    "FedAvgServerHandler",
    "FedAvgUplinkPackage",
    "FedAvgWorker",
    "LocalSGD",
    "ModelSpec",
    "TrainHParams",
    "evaluate_model",
]

# DS-FL (distillation-based semi-supervised FL)
from blazefl.algorithms.dsfl import (  # noqa: E402
    DSFLClientWorkload,
    DSFLDownlinkPackage,
    DSFLHParams,
    DSFLServerHandler,
    DSFLUplinkPackage,
    DSFLWorker,
    entropy_reduction_aggregation,
    split_open_set,
)

__all__ += [
    "DSFLClientWorkload",
    "DSFLDownlinkPackage",
    "DSFLHParams",
    "DSFLServerHandler",
    "DSFLUplinkPackage",
    "DSFLWorker",
    "entropy_reduction_aggregation",
    "split_open_set",
]
