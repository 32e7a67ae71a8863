"""`BaseServerHandler`: the server half of an FL algorithm."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic

import torch

from blazefl.core.packages import DownlinkT, UplinkT

__all__ = ["BaseServerHandler"]


class BaseServerHandler(ABC, Generic[UplinkT, DownlinkT]):
    """Base class for server handlers with client sampling from the server's own generator.

    Subclasses implement `downlink_package`, `load` and `global_update`; `sample_clients` draws
    `clients_per_round` distinct ids with the server's generator (never the global RNG), so
    sampling is part of the reproducible state.

    Args:
        num_clients: total number of clients.
        clients_per_round: clients sampled each round (<= num_clients).
        total_rounds: rounds after which `is_stopped` is True.
        generator: the server's torch generator (from its `RNGSuite`).

    Attributes (a subclass may read them; the pipeline sets `round` when it loads a round):
        num_clients / clients_per_round / total_rounds: as given.
        generator: the only source of randomness a server may draw from (sampling included);
            its state is snapshotted with every round.
        round: rounds completed so far (0 before the first).

    A handler written against the original BlazeFL works unchanged: it sets up its own state
    in ``__init__`` (without calling this one), implements ``sample_clients``,
    ``downlink_package``, ``load`` (which calls its own ``global_update(buffer)`` once the
    round's buffer is full) and ``is_stopped`` or the older name ``if_stop``; either name then
    answers for both. The package's round loop (`run_round`) calls ``global_update()`` without
    arguments, so such a handler is driven by the user's own loop, as in the original.

    Example:
        >>> class MyServer(BaseServerHandler[MyUplink, MyDownlink]): ...
    """

    def __init__(
        self,
        num_clients: int,
        clients_per_round: int,
        total_rounds: int,
        generator: torch.Generator,
    ) -> None:
        if num_clients <= 0:
            raise ValueError(f"num_clients must be >= 1, got {num_clients}")
        if not 1 <= clients_per_round <= num_clients:
            raise ValueError(
                f"clients_per_round must be between 1 and num_clients={num_clients}, "
                f"got {clients_per_round}"
            )
        if total_rounds < 0:
            raise ValueError(f"total_rounds must be >= 0, got {total_rounds}")
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.total_rounds = total_rounds
        self.generator = generator
        self.round = 0

    def sample_clients(self) -> list[int]:
        """Sample this round's clients, sorted ascending.

        Returns:
            Sorted client ids. With full participation no random number is drawn.
        """
        if self.clients_per_round == self.num_clients:
            return list(range(self.num_clients))
        perm = torch.randperm(self.num_clients, generator=self.generator)
        return sorted(perm[: self.clients_per_round].tolist())

    @abstractmethod
    def downlink_package(self) -> DownlinkT:
        """The package broadcast to this round's clients."""

    @abstractmethod
    def load(self, payload: UplinkT) -> bool:
        """Take one client's uplink (called in ascending client-id order).

        Returns:
            True when the round's buffer is complete.
        """

    @abstractmethod
    def global_update(self) -> None:
        """Aggregate the loaded uplinks into the new global state and advance the round."""

    def is_stopped(self) -> bool:
        """True once `total_rounds` rounds are done (or what an overridden `if_stop` says)."""
        if type(self).if_stop is not BaseServerHandler.if_stop:
            return self.if_stop()
        return self.round >= self.total_rounds

    def if_stop(self) -> bool:
        """The original BlazeFL's older name for :meth:`is_stopped` (either may be overridden).

        Returns:
            Whether the federated run is over.
        """
        return self.is_stopped()

    def summary(self) -> dict[str, Any]:
        """Evaluation summary of the current global state (override to add metrics)."""
        return {"round": self.round}
