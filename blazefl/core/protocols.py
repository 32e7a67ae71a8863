"""Protocols at the seams: what a server handler, a trainer and client work must provide.

Users plug in their own package types and algorithms by satisfying these Protocols; nothing
needs to inherit implementation from the framework.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from blazefl.core.packages import ClientResult, ClientTask

__all__ = ["ServerHandler", "ClientTrainer", "ClientWorkload", "ClientWorker"]

UpT_co = TypeVar("UpT_co", covariant=True)
UpT_contra = TypeVar("UpT_contra", contravariant=True)
DownT_co = TypeVar("DownT_co", covariant=True)
DownT_contra = TypeVar("DownT_contra", contravariant=True)


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
        self, payload: DownT_contra, cid_list: Sequence[int], round: int = ...
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
