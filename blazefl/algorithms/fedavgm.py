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

import torch
from torch import nn

from blazefl.algorithms.fedavg import FedAvg, FedAvgServerHandler
from blazefl.core.server import ServerSettings
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
        settings: see `ServerSettings`.
        hparams: server learning rate and momentum (default `FedAvgMHParams()`).

    Example:
        >>> server = FedAvgMServerHandler(model, settings, FedAvgMHParams(server_momentum=0.5))
        >>> run_round(server, trainer, 1)
        >>> state = server.state_tensors()  # {"momentum": float64 [num_params]}
    """

    def __init__(
        self, model: nn.Module, settings: ServerSettings, hparams: FedAvgMHParams | None = None
    ) -> None:
        super().__init__(model, settings, FedAvgMHParams() if hparams is None else hparams)
        # flatten_module_ puts the parameters first: they are the prefix flat[:num_params]
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
        self.momentum.mul_(self.hparams.server_momentum).add_(delta)
        average[:n] = self.flat[:n].double().sub_(self.momentum, alpha=self.hparams.server_lr)
        self.flat.copy_(average)  # buffers beyond n: the plain average
        self.train_loss = self._loss_sum / self._weight
        self.end_round()
        self._reset_buffer()


class FedAvgM(FedAvg):
    """FedAvgM as an algorithm object: FedAvg's clients, a server with momentum state."""

    name = "fedavgm"
    supports_cuda = False  # tested on the CPU only
    HParams = FedAvgMHParams
    Server = FedAvgMServerHandler
