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

The moments `m` and `v` outlive a round, so the server exposes them as state (`state_tensors` /
`load_state_tensors`): the pipeline writes them to `round-N/state/server.safetensors`, and a
round run alone (`blazefl stage round`, `dvc repro`, `blazefl verify`) restores them exactly.

Example:
    >>> spec = ExperimentSpec.from_flat({"fl.algorithm": "myalgo:FedAdam",
    ...                                  "fedadam.server_lr": 0.03})
    >>> server, rounds = simulate(spec, mode="threads")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from blazefl.algorithms import Algorithm
from blazefl.algorithms.fedavg import (
    FedAvgClientWorkload,
    FedAvgDownlinkPackage,
    FedAvgServerHandler,
    FedAvgUplinkPackage,
    FedAvgWorker,
)
from blazefl.core import ClientTask
from blazefl.hparams import HParamError, param, validate
from blazefl.reproducibility import RNGSuite

__all__ = ["FedAdam", "FedAdamHParams", "FedAdamServerHandler", "FedAdamWorkload"]


@dataclass(frozen=True)
class FedAdamHParams:
    """FedAdam hyper-parameters: config section `fedadam` (all change result bytes)."""

    server_lr: float = param(0.03, low=0.0, low_open=True, high=10.0, doc="server step size")
    beta1: float = param(0.9, low=0.0, high=1.0, doc="first-moment decay, in [0, 1)")
    beta2: float = param(0.99, low=0.0, high=1.0, doc="second-moment decay, in [0, 1)")
    tau: float = param(1e-3, low=0.0, low_open=True, high=1.0, doc="adaptivity floor")
    clip_norm: float = param(0.0, low=0.0, high=1e6, doc="client update L2 clip (0: off)")

    def __post_init__(self) -> None:
        validate(self)
        for name in ("beta1", "beta2"):
            if getattr(self, name) >= 1.0:  # param bounds are inclusive; 1 never forgets
                raise HParamError(f"{name} must be < 1.0, got {getattr(self, name)}")


# -- client: FedAvg's local SGD, then the update clipped --------------------------------------


class FedAdamWorker(FedAvgWorker):
    """FedAvg's worker (local SGD from the global model), with the update clipped after it."""

    def __init__(self, workload: FedAdamWorkload) -> None:
        super().__init__(workload)
        self.clip_norm = workload.fedadam.clip_norm

    def train(
        self, task: ClientTask, payload: FedAvgDownlinkPackage, rng: RNGSuite
    ) -> tuple[FedAvgUplinkPackage, None]:
        uplink, _ = super().train(task, payload, rng)
        if self.clip_norm > 0.0:
            # float64 so the clipped model is rounded once; the downlink is read, never written
            start = payload.model.double()
            update = uplink.model.double() - start
            norm = float(update.norm())
            if norm > self.clip_norm:
                uplink.model = (start + update * (self.clip_norm / norm)).float()
        return uplink, None


@dataclass
class FedAdamWorkload(FedAvgClientWorkload):
    """FedAvg's picklable client work plus this algorithm's hyper-parameters.

    Process pools pickle it into every worker: the worker process imports this module by
    name, which works because pool workers inherit the parent's `sys.path` (the `blazefl`
    command puts the folder it runs in there).
    """

    fedadam: FedAdamHParams = field(default_factory=FedAdamHParams)

    def make_worker(self) -> FedAdamWorker:
        return FedAdamWorker(self)


# -- server: FedAvg's weighted mean, applied as an Adam step ------------------------------------


class FedAdamServerHandler(FedAvgServerHandler):
    """FedAvg's server (uplinks summed in ascending client-id order) with an Adam step.

    The step moves the model's parameters only; float buffers (batch-norm running statistics)
    take FedAvg's average, since an Adam step could push a running variance below zero. The
    moments are float64: the pseudo-gradient is never rounded before it is accumulated, and
    only the new global model is rounded to float32.

    Args:
        model / num_clients / clients_per_round / total_rounds / generator / test_set: see
            `FedAvgServerHandler`.
        hparams: the server's Adam settings.
    """

    def __init__(self, model: torch.nn.Module, *, hparams: FedAdamHParams, **kwargs: Any):
        super().__init__(model, **kwargs)
        self.hparams = hparams
        # parameters come first in the flat vector (flatten_module_ puts buffers after them)
        self.num_params = sum(p.numel() for p in dict.fromkeys(model.parameters()))
        self.m = torch.zeros(self.num_params, dtype=torch.float64)
        self.v = torch.zeros(self.num_params, dtype=torch.float64)

    def global_update(self) -> None:
        """Let FedAvg average the clients, then turn the average into an Adam step."""
        hp = self.hparams
        params = self.flat[: self.num_params]
        previous = params.double()  # a copy: FedAvg overwrites flat with the average
        super().global_update()  # flat <- weighted average, round += 1, train_loss
        delta = params.double() - previous
        self.m = hp.beta1 * self.m + (1.0 - hp.beta1) * delta
        self.v = hp.beta2 * self.v + (1.0 - hp.beta2) * delta.square()
        params.copy_(previous + hp.server_lr * self.m / (self.v.sqrt() + hp.tau))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The server state that outlives a round, for the pipeline's snapshot."""
        return {"m": self.m.clone(), "v": self.v.clone()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore `state_tensors()` output (the pipeline calls it between rounds).

        Raises:
            ValueError: a moment is missing, or is not float64 of the parameter count.
        """
        for name in ("m", "v"):
            t = tensors.get(name)
            if t is None or t.dtype != torch.float64 or t.shape != (self.num_params,):
                raise ValueError(f"FedAdam server state needs {name!r} float64 [{self.num_params}]")
        if bool((tensors["v"] < 0).any()):
            raise ValueError("FedAdam server state: the second moment 'v' has negative entries")
        self.m, self.v = tensors["m"].clone(), tensors["v"].clone()


# -- the algorithm object the config names ------------------------------------------------------


class FedAdam(Algorithm):
    """FedAdam as an algorithm object: `fl.algorithm: myalgo:FedAdam`, section `fedadam`."""

    name = "fedadam"
    HParams = FedAdamHParams

    def server(self, exp: Any, generator: torch.Generator) -> FedAdamServerHandler:
        return FedAdamServerHandler(
            exp.initial_model(), hparams=exp.spec.hparams, **exp.server_kwargs(generator)
        )

    def workload(self, exp: Any) -> FedAdamWorkload:
        return FedAdamWorkload(
            exp.train, exp.partition, exp.model_spec, exp.spec.train, fedadam=exp.spec.hparams
        )
