"""Protocols at the seams: what a server handler, a trainer, client work, a model selector and
a partitioned dataset must provide.

Users plug in their own package types and algorithms by satisfying these Protocols; nothing
needs to inherit implementation from the framework. `ModelSelector` and `PartitionedDataset`
are the original BlazeFL's: subscript them with your own name enum and subclass them with
your own constructor (`class MyData(PartitionedDataset[MySplit]): ...`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset

from blazefl.core.packages import ClientResult, ClientTask

__all__ = [
    "ServerHandler",
    "ClientTrainer",
    "ClientWorkload",
    "ClientWorker",
    "ModelSelector",
    "PartitionedDataset",
]

UpT_co = TypeVar("UpT_co", covariant=True)
UpT_contra = TypeVar("UpT_contra", contravariant=True)
DownT_co = TypeVar("DownT_co", covariant=True)
DownT_contra = TypeVar("DownT_contra", contravariant=True)
# names of models and of dataset splits: a StrEnum in the original, any str subclass here
ModelName_contra = TypeVar("ModelName_contra", bound=str, contravariant=True)
PartitionType_contra = TypeVar("PartitionType_contra", bound=str, contravariant=True)


@runtime_checkable
class ServerHandler(Protocol[UpT_contra, DownT_co]):
    """The server side of an FL algorithm.

    The round loop calls `sample_clients`, `downlink_package`, then `load` once per client
    result in ascending client-id order, then `global_update`.
    """

    def sample_clients(self) -> list[int]: ...

    def downlink_package(self) -> DownT_co: ...

    def load(self, payload: UpT_contra) -> bool: ...

    def global_update(self) -> None: ...

    def is_stopped(self) -> bool: ...

    def summary(self) -> dict[str, Any]: ...


@runtime_checkable
class ClientTrainer(Protocol[UpT_co, DownT_contra]):
    """Runs client work for one round, in any execution mode.

    `train_round` yields results in ascending client-id order, whatever order clients finish in.
    """

    def local_process(self, payload: DownT_contra, cid_list: Sequence[int]) -> None: ...

    def uplink_package(self) -> Sequence[UpT_co]: ...

    def train_round(
        self,
        payload: DownT_contra,
        cid_list: Sequence[int],
        round: int = ...,
        settings: Mapping[int, Mapping[str, Any]] | None = ...,
    ) -> Iterator[ClientResult]: ...


class ClientWorker(Protocol[UpT_co, DownT_contra]):
    """Per-worker object: one model / optimizer / batch buffer, reused for many clients.

    `train` must use only `rng` (the client's generators) for randomness and must leave no
    state behind that changes the next client's result.
    """

    def train(self, task: ClientTask, payload: DownT_contra, rng: Any) -> tuple[UpT_co, Any]:
        """Run one client. Returns (uplink, new persistent client state or None)."""
        ...


class ClientWorkload(Protocol[UpT_co, DownT_contra]):
    """Picklable description of client work; builds one `ClientWorker` per worker.

    For process pools it is pickled once per run into every worker process; its tensors
    should be in shared memory (`share_memory()`) so they are not copied per worker.
    """

    def make_worker(self) -> ClientWorker[UpT_co, DownT_contra]: ...

    def share_memory(self) -> None: ...


@runtime_checkable
class ModelSelector(Protocol[ModelName_contra]):
    """Builds a model by name (the original BlazeFL's `ModelSelector`).

    Example:
        >>> class Selector(ModelSelector[MyModelName]):
        ...     def __init__(self, num_classes: int) -> None:
        ...         self.num_classes = num_classes
        ...     def select_model(self, model_name: MyModelName) -> torch.nn.Module:
        ...         return torch.nn.Linear(4, self.num_classes)
    """

    def select_model(self, model_name: ModelName_contra) -> torch.nn.Module:
        """Return a new model called `model_name`."""
        ...


@runtime_checkable
class PartitionedDataset(Protocol[PartitionType_contra]):
    """A dataset split among clients (the original BlazeFL's `PartitionedDataset`).

    `type_` names a split ("train", "test", ...; a StrEnum in the original); `cid` a client,
    or None for a split shared by all. `set_dataset` is optional: the original's process-pool
    examples call it to store a client's dataset back (e.g. with its advanced transforms).

    Example:
        >>> class MyData(PartitionedDataset[MySplit]):
        ...     def __init__(self, num_clients: int) -> None:
        ...         self.num_clients = num_clients
        ...     def get_dataset(self, type_: MySplit, cid: int | None) -> Dataset: ...
        ...     def get_dataloader(self, type_, cid, batch_size, generator=None): ...
    """

    def get_dataset(self, type_: PartitionType_contra, cid: int | None) -> Dataset[Any]:
        """Return split `type_` of client `cid`."""
        ...

    def set_dataset(
        self, type_: PartitionType_contra, cid: int | None, dataset: Dataset[Any]
    ) -> None:
        """Replace split `type_` of client `cid` (optional; no-op by default)."""
        return None

    def get_dataloader(
        self,
        type_: PartitionType_contra,
        cid: int | None,
        batch_size: int | None,
        generator: torch.Generator | None,
    ) -> DataLoader[Any]:
        """Return a loader over split `type_` of client `cid`, shuffled by `generator`."""
        ...
