"""`BaseServerHandler`: the server half of an FL algorithm, and `ServerSettings`, the one
object a server is built from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Generic, Protocol, runtime_checkable

import torch

from blazefl.core.packages import DownlinkT, UplinkT
from blazefl.reproducibility import RNGSuite

__all__ = ["BaseServerHandler", "ServerSettings", "StatefulServer"]


@runtime_checkable
class StatefulServer(Protocol):
    """A server with state that outlives a round (besides its model and generators): the
    pipeline writes `state_tensors()` to `round-N/state/server.safetensors` after every
    round and hands it to `load_state_tensors` before the next one, so a round re-executed
    alone starts from exactly the state it had. A server without these methods has none.

    `ModelServerHandler` subclasses get both by naming tensor attributes in `state`.
    """

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The state, as named tensors (fixed names, dtypes and shapes for one run)."""
        ...

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore `state_tensors()` output; raise ValueError on anything else."""
        ...


def _check_counts(num_clients: int, clients_per_round: int, total_rounds: int) -> None:
    if num_clients <= 0:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not 1 <= clients_per_round <= num_clients:
        raise ValueError(
            f"clients_per_round must be between 1 and num_clients={num_clients}, "
            f"got {clients_per_round}"
        )
    if total_rounds < 0:
        raise ValueError(f"total_rounds must be >= 0, got {total_rounds}")


@dataclass(frozen=True)
class ServerSettings:
    """What every server is built from, whatever its algorithm (hyper-parameters come apart,
    as the algorithm's one `hparams` object).

    Args:
        num_clients: total number of clients.
        clients_per_round: clients sampled each round (1 <= clients_per_round <= num_clients).
        total_rounds: rounds after which `is_stopped` is True.
        rng: the server's generator suite; `rng.torch` is the only source of randomness a
            server may draw from (client sampling included), and the whole suite is
            snapshotted with every round.
        test_set: evaluation data (None disables evaluation).
        eval_device: where `summary` evaluates ("cpu", or the run's first GPU).
        round: rounds already done when the server is built (0 for a new run).

    Example:
        >>> settings = ServerSettings(10, 5, 3, create_rng_suite(0, SERVER_STREAM_ID))
        >>> settings.generator is settings.rng.torch
        True
    """

    num_clients: int
    clients_per_round: int
    total_rounds: int
    rng: RNGSuite
    test_set: Any = None
    eval_device: str = "cpu"
    round: int = 0

    def __post_init__(self) -> None:
        _check_counts(self.num_clients, self.clients_per_round, self.total_rounds)
        if self.round < 0:
            raise ValueError(f"round must be >= 0, got {self.round}")

    @property
    def generator(self) -> torch.Generator:
        """The server's torch generator (`rng.torch`)."""
        return self.rng.torch


class BaseServerHandler(ABC, Generic[UplinkT, DownlinkT]):
    """Base class for server handlers with client sampling from the server's own generator.

    Subclasses implement `downlink_package`, `load` and `global_update`; `sample_clients` draws
    `clients_per_round` distinct ids with the server's generator (never the global RNG), so
    sampling is part of the reproducible state.

    Args:
        settings: the server's `ServerSettings`. The form of earlier versions,
            ``(num_clients, clients_per_round, total_rounds, generator)``, is still accepted
            (a server built that way has no `rng` suite of its own: `Experiment.server`
            gives it the suite its generator came from).

    Attributes (a subclass may read them; the pipeline sets `round` when it loads a round):
        settings: as given (None for the older form).
        num_clients / clients_per_round / total_rounds: from the settings.
        generator: the only source of randomness a server may draw from (sampling included);
            its state is snapshotted with every round.
        rng: the `RNGSuite` that `generator` belongs to (None for the older form).
        round: rounds completed so far (the settings' `round` at first).

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
        settings: ServerSettings | int,
        clients_per_round: int | None = None,
        total_rounds: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if isinstance(settings, ServerSettings):
            self.settings: ServerSettings | None = settings
            self.num_clients = settings.num_clients
            self.clients_per_round = settings.clients_per_round
            self.total_rounds = settings.total_rounds
            self.generator = settings.generator
            self.rng: RNGSuite | None = settings.rng
            self.round = settings.round
            return
        # the four-argument form of earlier versions (the plugins of published runs use it)
        if clients_per_round is None or total_rounds is None or generator is None:
            raise TypeError(
                "BaseServerHandler takes ServerSettings (or num_clients, clients_per_round, "
                "total_rounds, generator)"
            )
        _check_counts(settings, clients_per_round, total_rounds)
        self.settings = None
        self.num_clients, self.clients_per_round = settings, clients_per_round
        self.total_rounds, self.generator = total_rounds, generator
        self.rng = None
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

    def client_settings(self, clients: list[int]) -> dict[int, dict[str, Any]]:
        """This round's settings of each sampled client (override for heterogeneous clients:
        a local epoch count, a step budget or a learning rate per client).

        Called once per round, after `sample_clients` and before `downlink_package`; draw only
        from `self.generator` (it is snapshotted with the round). Each client gets its dict as
        `ClientTask.settings` in every execution mode, and the round's manifest records them.

        Args:
            clients: this round's sample, sorted.

        Returns:
            `{cid: {name: value}}` for some or all of `clients`; values are JSON numbers,
            strings or booleans. Default: none (every client runs the algorithm's settings).

        Example:
            >>> def client_settings(self, clients):
            ...     epochs = torch.randint(1, 4, (len(clients),), generator=self.generator)
            ...     return {c: {"local_epochs": int(e)} for c, e in zip(clients, epochs)}
        """
        return {}

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
