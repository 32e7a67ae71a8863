"""A researcher's own algorithm: FedAdam (adaptive server optimizer) with optional clipping of
client updates. It lives outside the blazefl package and is selected by import path
(`fl.algorithm: myalgo:FedAdam`); its hyper-parameters form the config section `fedadam`.

FedAdam (Reddi et al., 2021, "Adaptive Federated Optimization", Algorithm 2) treats the change
FedAvg would make to the global model as a pseudo-gradient and applies it with Adam on the
server, so every coordinate gets its own step size:

    delta = weighted_mean(client models) - x
    m     = beta1 * m + (1 - beta1) * delta
    v     = beta2 * v + (1 - beta2) * delta**2
    x     = x + server_lr * m / (sqrt(v) + tau)

(no bias correction, as in the paper; `tau` bounds the step where updates are tiny). Clients may
also clip their update `client model - global model` to an L2 norm of at most `clip_norm`
before uploading (as in DP-FedAvg, McMahan et al., 2018), which bounds how far any one client can
pull the model.

The moments `m` and `v` outlive a round, so the server declares them as state
(`state = ("m", "v")`): the pipeline writes them to `round-N/state/server.safetensors`, and a
round run alone (`blazefl stage round`, `dvc repro`, `blazefl verify`) restores them exactly.

It is FedAvg with two twists, so it subclasses FedAvg's parts and uses 12 names of the package
(counted in docs/tutorial.md): `FedAvg`, `FedAvgServerHandler`, `FedAvgWorker`, `param`;
`HParams`, `Server`, `Worker`; `hparams`, `params`, `global_update`, `state`, `uplink_model`.

Example:
    >>> spec = ExperimentSpec.from_flat({"fl.algorithm": "myalgo:FedAdam",
    ...                                  "fedadam.server_lr": 0.03})
    >>> server, rounds = simulate(spec, mode="threads")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from blazefl.algorithms import FedAvg, FedAvgServerHandler, FedAvgWorker
from blazefl.hparams import param

__all__ = ["FedAdam", "FedAdamHParams", "FedAdamServerHandler", "FedAdamWorker"]


@dataclass(frozen=True)
class FedAdamHParams:
    """FedAdam hyper-parameters: config section `fedadam` (all change result bytes)."""

    server_lr: float = param(0.03, low=0.0, low_open=True, high=10.0, doc="server step size")
    beta1: float = param(0.9, low=0.0, high=1.0, high_open=True, doc="first-moment decay")
    beta2: float = param(0.99, low=0.0, high=1.0, high_open=True, doc="second-moment decay")
    tau: float = param(1e-3, low=0.0, low_open=True, high=1.0, doc="adaptivity floor")
    clip_norm: float = param(0.0, low=0.0, high=1e6, doc="client update L2 clip (0: off)")


# -- client: FedAvg's local SGD, then the update clipped --------------------------------------


class FedAdamWorker(FedAvgWorker):
    """FedAvg's worker (local SGD from the global model); the update it uploads is clipped."""

    def uplink_model(self, start: torch.Tensor, trained: torch.Tensor) -> torch.Tensor:
        """`start + update * min(1, clip_norm / |update|)`, with `update = trained - start`."""
        clip = self.hparams.clip_norm
        if clip == 0.0:
            return trained
        # float64 so the clipped model is rounded once; `start` (the downlink) is read only
        update = trained.double() - start.double()
        norm = float(update.norm())
        return (start.double() + update * (clip / norm)).float() if norm > clip else trained


# -- server: FedAvg's weighted mean, applied as an Adam step ------------------------------------


class FedAdamServerHandler(FedAvgServerHandler):
    """FedAvg's server (uplinks summed in ascending client-id order) with an Adam step.

    The step moves the model's parameters only; float buffers (batch-norm running statistics)
    take FedAvg's average, since an Adam step could push a running variance below zero. The
    moments are float64: the pseudo-gradient is never rounded before it is accumulated, and
    only the new global model is rounded to float32.
    """

    state = ("m", "v")  # snapshotted with every round, restored before the next

    def __init__(self, *args: Any) -> None:  # (model, settings, hparams), as FedAvg's
        super().__init__(*args)
        self.m = torch.zeros_like(self.params, dtype=torch.float64)
        self.v = torch.zeros_like(self.params, dtype=torch.float64)

    def global_update(self) -> None:
        """Let FedAvg average the clients, then turn the average into an Adam step."""
        hp = self.hparams
        previous = self.params.double()  # a copy: FedAvg overwrites the model with the mean
        super().global_update()
        delta = self.params.double() - previous
        self.m = hp.beta1 * self.m + (1.0 - hp.beta1) * delta
        self.v = hp.beta2 * self.v + (1.0 - hp.beta2) * delta.square()
        self.params.copy_(previous + hp.server_lr * self.m / (self.v.sqrt() + hp.tau))


# -- the algorithm object the config names ------------------------------------------------------


class FedAdam(FedAvg):
    """FedAdam: `fl.algorithm: myalgo:FedAdam`, config section `fedadam` (its class name)."""

    HParams = FedAdamHParams
    Server = FedAdamServerHandler
    Worker = FedAdamWorker
