"""Core of the framework: packages, protocols, server handler, trainers, IPC, round loop, and
the original BlazeFL's core names (`IPCMode`, `SHMHandle`, `ModelSelector`, ...)."""

from blazefl.core.cancellation import (
    ClientCancelledError,
    current_stop_event,
    raise_if_cancelled,
)
from blazefl.core.filtered_dataset import FilteredDataset
from blazefl.core.loop import (
    EXECUTION_MODES,
    ExecutionSettings,
    RoundResult,
    make_trainer,
    run_round,
)
from blazefl.core.memory import tune_malloc
from blazefl.core.original_pool import IPCMode
from blazefl.core.packages import (
    ClientResult,
    ClientTask,
    DownlinkPackage,
    UplinkPackage,
    package_layout,
    package_sha256,
)
from blazefl.core.process_pool import (
    IPC_MODES,
    ProcessPoolClientTrainer,
    WorkerCrashedError,
    WorkerStartError,
)
from blazefl.core.protocols import (
    ClientTrainer,
    ClientWorker,
    ClientWorkload,
    ModelSelector,
    PartitionedDataset,
    ServerHandler,
)
from blazefl.core.serialization import (
    deserialize_model,
    flatten_module_,
    load_model_state_dict,
    model_state_dict,
    serialize_model,
)
from blazefl.core.server import BaseServerHandler, ServerSettings, StatefulServer
from blazefl.core.shared_memory import (
    SHMHandle,
    process_tensors_in_object,
    reconstruct_from_shared_memory,
)
from blazefl.core.trainers import (
    BaseClientTrainer,
    ClientTrainingError,
    ThreadPoolClientTrainer,
    run_client_task,
)

__all__ = [
    "EXECUTION_MODES",
    "ExecutionSettings",
    "IPC_MODES",
    "BaseClientTrainer",
    "BaseServerHandler",
    "ClientCancelledError",
    "ClientResult",
    "ClientTask",
    "ClientTrainer",
    "ClientTrainingError",
    "ClientWorker",
    "ClientWorkload",
    "DownlinkPackage",
    "FilteredDataset",
    "IPCMode",
    "ModelSelector",
    "PartitionedDataset",
    "SHMHandle",
    "ProcessPoolClientTrainer",
    "RoundResult",
    "ServerHandler",
    "ServerSettings",
    "StatefulServer",
    "ThreadPoolClientTrainer",
    "UplinkPackage",
    "WorkerCrashedError",
    "WorkerStartError",
    "current_stop_event",
    "deserialize_model",
    "flatten_module_",
    "load_model_state_dict",
    "make_trainer",
    "model_state_dict",
    "package_layout",
    "package_sha256",
    "process_tensors_in_object",
    "reconstruct_from_shared_memory",
    "raise_if_cancelled",
    "run_client_task",
    "run_round",
    "serialize_model",
    "tune_malloc",
]
