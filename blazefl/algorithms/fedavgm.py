"""FedAvgM (Hsu et al., 2019): FedAvg with server momentum.

Clients are FedAvg's. The server treats the move from the global model to the clients'
sample-weighted average as a pseudo-gradient and takes one SGD-with-momentum step on it:

    delta = w_global - average;   v = server_momentum * v + delta;   w_global -= server_lr * v

With `server_lr = 1` and `server_momentum = 0` this is FedAvg. The average is FedAvg's (float64
sum in ascending client-id order). The step acts on the model's parameters only: float buffers
(batch-norm running statistics) take the plain average, since momentum on a variance estimate
could push it below zero.

State that outlives a round (saved by the pipeline as `round-N/state/server.safetensors`):
`{"momentum": float64 [num_params]}`, zeros before the first round. It is kept in float64,
the dtype of the whole update, so the pseudo-gradient (a difference of nearby float32 models)
is never rounded before it is accumulated and a resumed run continues from exactly the buffer
an uninterrupted one holds; only the new global model is rounded to float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from blazefl.algorithms.base import Algorithm
from blazefl.algorithms.fedavg import FedAvgClientWorkload, FedAvgServerHandler
from blazefl.data import ImageDataset
from blazefl.hparams import HParamError, param, validate

__all__ = ["FedAvgM", "FedAvgMHParams", "FedAvgMServerHandler"]


@dataclass(frozen=True)
class FedAvgMHParams:
    """FedAvgM hyper-parameters (config section `fedavgm`; they change result bits).

    Args:
        server_lr: server learning rate applied to the momentum buffer.
        server_momentum: server momentum `beta` in `v = beta * v + delta`; in [0, 1).

    Example:
        >>> spec = ExperimentSpec.from_flat({"fl.algorithm": "fedavgm",
        ...                                  "fedavgm.server_momentum": 0.5})
    """

    server_lr: float = param(1.0, low=0.0, low_open=True, high=1e6, doc="server learning rate")
    server_momentum: float = param(0.9, low=0.0, high=1.0, doc="server momentum, in [0, 1)")

    def __post_init__(self) -> None:
        validate(self)
        if self.server_momentum >= 1.0:  # param bounds are inclusive; 1 never forgets
            raise HParamError(f"server_momentum must be < 1.0, got {self.server_momentum}")


class FedAvgMServerHandler(FedAvgServerHandler):
    """FedAvg server that applies the averaged update with server momentum.

    Args:
        model: the global model (its float state is flattened in place).
        num_clients / clients_per_round / total_rounds / generator / test_set: see
            `FedAvgServerHandler`.
        fedavgm: server learning rate and momentum.

    Example:
        >>> server = FedAvgMServerHandler(model, num_clients=6, clients_per_round=3,
        ...                               total_rounds=3, generator=suite.torch,
        ...                               fedavgm=FedAvgMHParams(server_momentum=0.5))
        >>> run_round(server, trainer, 1)
        >>> state = server.state_tensors()  # {"momentum": float64 [num_params]}
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        num_clients: int,
        clients_per_round: int,
        total_rounds: int,
        generator: torch.Generator,
        test_set: ImageDataset | None = None,
        fedavgm: FedAvgMHParams | None = None,
    ) -> None:
        super().__init__(
            model,
            num_clients=num_clients,
            clients_per_round=clients_per_round,
            total_rounds=total_rounds,
            generator=generator,
            test_set=test_set,
        )
        self.fedavgm = fedavgm if fedavgm is not None else FedAvgMHParams()
        # flatten_module_ puts the parameters first: they are the prefix flat[:num_params]
        self.num_params = sum(p.numel() for p in dict.fromkeys(model.parameters()))
        self.momentum = torch.zeros(self.num_params, dtype=torch.float64)

    # -- state for snapshots ------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The server momentum, carried to the next round.

        Returns:
            `{"momentum": float64 [num_params]}`, a fresh contiguous tensor.
        """
        return {"momentum": self.momentum.clone().contiguous()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore `state_tensors()` output (between rounds).

        Raises:
            ValueError: other keys, a wrong dtype or shape, or non-finite values.
        """
        if set(tensors) != {"momentum"}:
            raise ValueError(
                f"FedAvgM server state must hold only 'momentum', got {sorted(tensors)}"
            )
        v = tensors["momentum"]
        if v.dtype != torch.float64 or tuple(v.shape) != (self.num_params,):
            raise ValueError(
                f"momentum must be float64 [{self.num_params}], got {v.dtype} {list(v.shape)}"
            )
        if not bool(torch.isfinite(v).all()):
            raise ValueError("momentum holds NaN or infinite values: the state is corrupt")
        self.momentum = v.clone().contiguous()
        self._reset_buffer()

    # -- the round ----------------------------------------------------------------------------
    def global_update(self) -> None:
        """Average the uplinks (as FedAvg), then take the server momentum step."""
        if self._weight == 0:
            raise RuntimeError("global_update called before any uplink was loaded")
        average = self._sum.div_(self._weight)
        n = self.num_params
        delta = self.flat[:n].double().sub_(average[:n])  # pseudo-gradient
        self.momentum.mul_(self.fedavgm.server_momentum).add_(delta)
        average[:n] = self.flat[:n].double().sub_(self.momentum, alpha=self.fedavgm.server_lr)
        self.flat.copy_(average)  # buffers beyond n: the plain average
        self.train_loss = self._loss_sum / self._weight
        self.round += 1
        self._reset_buffer()


class FedAvgM(Algorithm):
    """FedAvgM as an algorithm object: FedAvg's clients, a server with momentum state."""

    name = "fedavgm"
    HParams = FedAvgMHParams

    def server(self, exp: Any, generator: torch.Generator) -> FedAvgMServerHandler:
        return FedAvgMServerHandler(
            exp.initial_model(), fedavgm=exp.spec.hparams, **exp.server_kwargs(generator)
        )

    def workload(self, exp: Any) -> FedAvgClientWorkload:
        return FedAvgClientWorkload(exp.train, exp.partition, exp.model_spec, exp.spec.train)
