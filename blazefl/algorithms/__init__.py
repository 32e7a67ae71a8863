"""FL algorithms built on the core: each is package types + server handler + client work +
an `Algorithm` object registered here by name (one line per built-in)."""

from blazefl.algorithms.base import RESERVED_SECTIONS, Algorithm, NoHParams, adapt_algorithm
from blazefl.algorithms.common import (
    ClientPartition,
    GradHook,
    LocalSGD,
    TrainHParams,
    evaluate_model,
)
from blazefl.algorithms.distillation import entropy_reduction_aggregation, split_open_set
from blazefl.algorithms.dsfl import (
    DSFL,
    DSFLClientWorkload,
    DSFLDownlinkPackage,
    DSFLHParams,
    DSFLServerHandler,
    DSFLUplinkPackage,
    DSFLWorker,
)
from blazefl.algorithms.fedavg import (
    FedAvg,
    FedAvgClientWorkload,
    FedAvgDownlinkPackage,
    FedAvgServerHandler,
    FedAvgUplinkPackage,
    FedAvgWorker,
    ModelSpec,
)
from blazefl.algorithms.fedavgm import FedAvgM, FedAvgMHParams, FedAvgMServerHandler
from blazefl.algorithms.fedprox import (
    FedProx,
    FedProxClientWorkload,
    FedProxHParams,
    FedProxWorker,
)
from blazefl.algorithms.scaffold import (
    Scaffold,
    ScaffoldClientWorkload,
    ScaffoldDownlinkPackage,
    ScaffoldHParams,
    ScaffoldServerHandler,
    ScaffoldUplinkPackage,
    ScaffoldWorker,
)
from blazefl.registry import Registry

#: Algorithms by config name (`fl.algorithm`); a user's own is given as 'pkg.module:Name'.
ALGORITHMS: Registry[Algorithm] = Registry("algorithm", adapt=adapt_algorithm)
ALGORITHMS.register("fedavg", FedAvg())
ALGORITHMS.register("dsfl", DSFL())
ALGORITHMS.register("scaffold", Scaffold())
ALGORITHMS.register("fedprox", FedProx())
ALGORITHMS.register("fedavgm", FedAvgM())

__all__ = [
    "ALGORITHMS",
    "RESERVED_SECTIONS",
    "Algorithm",
    "ClientPartition",
    "DSFL",
    "DSFLClientWorkload",
    "DSFLDownlinkPackage",
    "DSFLHParams",
    "DSFLServerHandler",
    "DSFLUplinkPackage",
    "DSFLWorker",
    "FedAvg",
    "FedAvgClientWorkload",
    "FedAvgDownlinkPackage",
    "FedAvgServerHandler",
    "FedAvgUplinkPackage",
    "FedAvgWorker",
    "FedAvgM",
    "FedAvgMHParams",
    "FedAvgMServerHandler",
    "FedProx",
    "FedProxClientWorkload",
    "FedProxHParams",
    "FedProxWorker",
    "GradHook",
    "LocalSGD",
    "ModelSpec",
    "NoHParams",
    "Scaffold",
    "ScaffoldClientWorkload",
    "ScaffoldDownlinkPackage",
    "ScaffoldHParams",
    "ScaffoldServerHandler",
    "ScaffoldUplinkPackage",
    "ScaffoldWorker",
    "TrainHParams",
    "entropy_reduction_aggregation",
    "evaluate_model",
    "split_open_set",
]
