"""GoldAvg: FedAvg whose server moves only part of the way to the clients' average.

    w_global <- w_global + mix * (weighted_mean(client models) - w_global)

`mix = 1` is FedAvg. Its one hyper-parameter forms the config section `goldavg`
(`goldavg.mix`). The server keeps no state across rounds (the previous global model is the
round's input), so a round re-executes from its recorded inputs alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from blazefl.algorithms.fedavg import FedAvg, FedAvgServerHandler
from blazefl.hparams import param, validate

# isort: split
# The plugin's own helper, by absolute import as researchers write it. Split off because a
# linter sees `goldplug` as first-party here but as third-party in the run's copy of this file.
from goldplug.common import mix_toward

__all__ = ["GoldAvg", "GoldAvgHParams", "GoldAvgServerHandler"]


@dataclass(frozen=True)
class GoldAvgHParams:
    """GoldAvg hyper-parameters: config section `goldavg` (they change result bytes)."""

    mix: float = param(0.5, low=0.0, low_open=True, high=1.0, doc="step toward the average")

    def __post_init__(self) -> None:
        validate(self)


class GoldAvgServerHandler(FedAvgServerHandler):
    """FedAvg's server (sum in ascending client-id order), then a partial step to the mean."""

    def __init__(self, model: torch.nn.Module, *, mix: float, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.mix = mix

    def global_update(self) -> None:
        """Let FedAvg average the uplinks, then keep only `mix` of the move."""
        previous = self.flat.clone()  # FedAvg overwrites flat with the average
        super().global_update()
        self.flat.copy_(mix_toward(previous, self.flat, self.mix))


class GoldAvg(FedAvg):
    """The algorithm object the config names: `fl.algorithm: goldplug.algo:GoldAvg`."""

    name = "goldavg"
    HParams = GoldAvgHParams
    supports_cuda = False  # tested on the CPU only

    def server(self, exp: Any, generator: torch.Generator) -> GoldAvgServerHandler:
        return GoldAvgServerHandler(
            exp.initial_model(), mix=exp.spec.hparams.mix, **exp.server_kwargs(generator)
        )
