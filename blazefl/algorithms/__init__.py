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
from blazefl.algorithms.context import ExperimentContext
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
    FedAvgDownlink,
    FedAvgServerHandler,
    FedAvgUplink,
    FedAvgWorker,
    ModelSpec,
)
from blazefl.algorithms.fedavgm import FedAvgM, FedAvgMHParams, FedAvgMServerHandler
from blazefl.algorithms.fedprox import (
    FedProx,
    FedProxHParams,
    FedProxWorker,
)
from blazefl.algorithms.model_server import ModelServerHandler, trainable_count
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
    "ExperimentContext",
    "ModelServerHandler",
    "trainable_count",
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
    "FedAvgDownlink",
    "FedAvgServerHandler",
    "FedAvgUplink",
    "FedAvgWorker",
    "FedAvgM",
    "FedAvgMHParams",
    "FedAvgMServerHandler",
    "FedProx",
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
