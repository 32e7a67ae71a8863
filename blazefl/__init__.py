"""BlazeFL: fast, exactly reproducible federated-learning simulation for PyTorch.

Every public name is importable from here. Names are loaded on first use (PEP 562), so
`import blazefl` and the `blazefl --help` command do not pay torch's import time. The core
needs only torch and numpy; torchvision is imported only when a torchvision dataset is asked
for (ResNet-18 is defined here), safetensors/zarr only by the pipeline.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:  # one source: pyproject.toml (the version manifests record is the installed metadata)
    __version__ = version("blazefl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "ALGORITHMS",
            "Algorithm",
            "ExperimentContext",
            "ModelServerHandler",
            "ClientPartition",
            "DSFL",
            "DSFLClientWorkload",
            "DSFLDownlinkPackage",
            "DSFLHParams",
            "DSFLServerHandler",
            "DSFLUplinkPackage",
            "FedAvg",
            "FedAvgClientWorkload",
            "FedAvgDownlink",
            "FedAvgServerHandler",
            "FedAvgUplink",
            "LocalSGD",
            "ModelSpec",
            "NoHParams",
            "TrainHParams",
            "FedAvgM",
            "FedAvgMHParams",
            "FedAvgMServerHandler",
            "FedProx",
            "FedProxHParams",
            "Scaffold",
            "ScaffoldClientWorkload",
            "ScaffoldHParams",
            "ScaffoldServerHandler",
            "GradHook",
            "evaluate_model",
        ),
        "blazefl.algorithms",
    ),
    **dict.fromkeys(
        (
            "EXECUTION_MODES",
            "IPC_MODES",
            "BaseClientTrainer",
            "BaseServerHandler",
            "ClientResult",
            "ClientTask",
            "ClientTrainer",
            "ClientTrainingError",
            "ClientWorker",
            "ClientWorkload",
            "DownlinkPackage",
            "ExecutionSettings",
            "ProcessPoolClientTrainer",
            "RoundResult",
            "ServerHandler",
            "ServerSettings",
            "StatefulServer",
            "ThreadPoolClientTrainer",
            "UplinkPackage",
            "WorkerCrashedError",
            "WorkerStartError",
            "ClientCancelledError",
            "current_stop_event",
            "deserialize_model",
            "make_trainer",
            "package_sha256",
            "raise_if_cancelled",
            "run_round",
            "serialize_model",
        ),
        "blazefl.core",
    ),
    **dict.fromkeys(
        (
            "DATASETS",
            "PARTITIONERS",
            "FilteredDataset",
            "FeatureDataset",
            "ImageDataset",
            "PartitionedDataset",
            "load_dataset",
            "partition_indices",
            "synthetic_dataset",
        ),
        "blazefl.data",
    ),
    **dict.fromkeys(
        (
            "DataConfig",
            "Experiment",
            "ExperimentSpec",
            "FLConfig",
            "ModelConfig",
            "RuntimeConfig",
            "build_experiment",
            "simulate",
        ),
        "blazefl.experiment",
    ),
    **dict.fromkeys(("HParamError", "param", "validate"), "blazefl.hparams"),
    **dict.fromkeys(("CNN", "MODELS", "ModelSelector", "build_model"), "blazefl.models"),
    **dict.fromkeys(("Registry", "RegistryError"), "blazefl.registry"),
    **dict.fromkeys(
        (
            "SERVER_STREAM_ID",
            "RandomStateSnapshot",
            "RNGSuite",
            "create_rng_suite",
            "pin_client_threads",
            "seed_everything",
            "setup_reproducibility",
        ),
        "blazefl.reproducibility",
    ),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'blazefl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from blazefl.algorithms import (  # noqa: F401
        ALGORITHMS,
        DSFL,
        Algorithm,
        ClientPartition,
        DSFLClientWorkload,
        DSFLDownlinkPackage,
        DSFLHParams,
        DSFLServerHandler,
        DSFLUplinkPackage,
        ExperimentContext,
        FedAvg,
        FedAvgClientWorkload,
        FedAvgDownlink,
        FedAvgM,
        FedAvgMHParams,
        FedAvgMServerHandler,
        FedAvgServerHandler,
        FedAvgUplink,
        FedProx,
        FedProxHParams,
        GradHook,
        LocalSGD,
        ModelServerHandler,
        ModelSpec,
        NoHParams,
        Scaffold,
        ScaffoldClientWorkload,
        ScaffoldHParams,
        ScaffoldServerHandler,
        TrainHParams,
        evaluate_model,
    )
    from blazefl.core import (  # noqa: F401
        EXECUTION_MODES,
        IPC_MODES,
        BaseClientTrainer,
        BaseServerHandler,
        ClientCancelledError,
        ClientResult,
        ClientTask,
        ClientTrainer,
        ClientTrainingError,
        ClientWorker,
        ClientWorkload,
        DownlinkPackage,
        ExecutionSettings,
        ProcessPoolClientTrainer,
        RoundResult,
        ServerHandler,
        ServerSettings,
        StatefulServer,
        ThreadPoolClientTrainer,
        UplinkPackage,
        WorkerCrashedError,
        WorkerStartError,
        current_stop_event,
        deserialize_model,
        make_trainer,
        package_sha256,
        raise_if_cancelled,
        run_round,
        serialize_model,
    )
    from blazefl.data import (  # noqa: F401
        DATASETS,
        PARTITIONERS,
        FeatureDataset,
        FilteredDataset,
        ImageDataset,
        PartitionedDataset,
        load_dataset,
        partition_indices,
        synthetic_dataset,
    )
    from blazefl.experiment import (  # noqa: F401
        DataConfig,
        Experiment,
        ExperimentSpec,
        FLConfig,
        ModelConfig,
        RuntimeConfig,
        build_experiment,
        simulate,
    )
    from blazefl.hparams import HParamError, param, validate  # noqa: F401
    from blazefl.models import CNN, MODELS, ModelSelector, build_model  # noqa: F401
    from blazefl.registry import Registry, RegistryError  # noqa: F401
    from blazefl.reproducibility import (  # noqa: F401
        SERVER_STREAM_ID,
        RandomStateSnapshot,
        RNGSuite,
        create_rng_suite,
        pin_client_threads,
        seed_everything,
        setup_reproducibility,
    )
