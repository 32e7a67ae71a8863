"""FedProx (Li et al., 2020): FedAvg whose clients minimise their loss plus a proximal term
`(mu / 2) * ||w - w_global||^2` that keeps local models near the round's global model.

Only the client side differs from FedAvg: the packages and the server (sample-weighted
average, float64, ascending client id) are FedAvg's. The term's gradient `mu * (w - w_global)`
is added to the flat gradient after each backward pass through `LocalSGD.run`'s `grad_hook`:
two fused ops over the parameter vector per step, identical in every execution mode because
`w_global` is the downlink vector every client receives. With `mu = 0` no hook is installed,
so the bytes are exactly FedAvg's. The reported training loss is the cross-entropy alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from blazefl.algorithms.fedavg import (
    FedAvg,
    FedAvgClientWorkload,
    FedAvgDownlink,
    FedAvgUplink,
    FedAvgWorker,
    local_work,
)
from blazefl.core.packages import ClientTask
from blazefl.hparams import param, validate
from blazefl.reproducibility import RNGSuite

__all__ = ["FedProx", "FedProxHParams", "FedProxWorker"]


@dataclass(frozen=True)
class FedProxHParams:
    """FedProx hyper-parameters (config section `fedprox`; they change result bits).

    Args:
        mu: weight of the proximal term `(mu / 2) * ||w - w_global||^2`; 0 is FedAvg.

    Example:
        >>> spec = ExperimentSpec.from_flat({"fl.algorithm": "fedprox", "fedprox.mu": 0.1})
    """

    mu: float = param(0.01, low=0.0, high=1e6, doc="proximal term weight (0: FedAvg)")

    def __post_init__(self) -> None:
        validate(self)


class FedProxWorker(FedAvgWorker):
    """A FedAvg worker whose local SGD adds the proximal gradient `mu * (w - w_global)`
    (`mu` from its `hparams`, the algorithm's `FedProxHParams`)."""

    def __init__(self, workload: FedAvgClientWorkload) -> None:
        super().__init__(workload)
        self.mu = (self.hparams or FedProxHParams()).mu
        params = self.sgd.optimizer.params
        self._center = torch.empty_like(params)  # this client's w_global (parameters only)
        self._diff = torch.empty_like(params)  # scratch: no allocation per step

    def _proximal_gradient(self, grad: torch.Tensor, params: torch.Tensor) -> None:
        torch.sub(params, self._center, out=self._diff)
        grad.add_(self._diff, alpha=self.mu)

    def train(
        self, task: ClientTask, payload: FedAvgDownlink, rng: RNGSuite
    ) -> tuple[FedAvgUplink, None]:
        """Local SGD on the proximal objective from the global model in `payload`.

        Returns:
            The uplink (trained model vector, sample count, mean cross-entropy) and no state.
        """
        if self.mu == 0:
            return super().train(task, payload, rng)  # no hook: exactly FedAvg's bytes
        self.flat.copy_(payload.model)
        # copied, not viewed: in thread mode the downlink is the server's live vector
        self._center.copy_(self.flat[: self._center.numel()])
        if hasattr(self.model, "generator"):
            cast(Any, self.model).generator = rng.torch  # generator-driven dropout
        indices = self.workload.partition.client(task.cid)
        work = local_work(task.settings)
        loss = self.sgd.run(
            indices,
            rng.torch,
            grad_hook=self._proximal_gradient,
            epochs=work.get("epochs"),
            max_steps=work.get("max_steps"),
        )
        uplink = FedAvgUplink(task.cid, self.flat.clone(), int(indices.numel()), loss)
        return uplink, None


class FedProx(FedAvg):
    """FedProx as an algorithm object: FedAvg's server, clients with a proximal term.

    Example:
        >>> workload = FedAvgClientWorkload(train, partition, ModelSpec("cnn"),
        ...                                 worker=FedProxWorker,
        ...                                 algorithm_hparams=FedProxHParams(mu=0.1))
    """

    name = "fedprox"
    supports_cuda = False  # tested on the CPU only
    HParams = FedProxHParams
    Worker = FedProxWorker
