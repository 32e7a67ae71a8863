"""SCAFFOLD: stochastic controlled averaging (Karimireddy et al., 2020, option II).

Client drift on non-IID data is corrected with control variates: the server keeps `c`, every
client `i` keeps its own `c_i` (zero until its first participation). Each local step uses the
corrected gradient `g + c - c_i`; after `K` steps from the global model `w` a client sets

    c_i+ = c_i - c + (w - w_i) / (K * lr)                                       (option II)

and uploads its model `w_i` and `delta_c = c_i+ - c_i`. The server, over the `|S|` sampled of
`N` clients, takes

    w += server_lr * mean_i(w_i - w);    c += (|S| / N) * mean_i(delta_c) = sum_i(delta_c) / N

Choices this implementation makes (all deterministic, the same bytes in every execution mode):

- The means are unweighted, as in the paper (FedAvg weights by sample count). Sums run in
  float64 in ascending client-id order; `w`, `c` and every `c_i` are stored as float32.
- Control variates cover the model's parameters only (the prefix `flat[:P]` that `FlatSGD`
  updates). Float buffers (batch-norm running statistics) get the plain mean of the clients'
  buffers: a server step size above 1 could push a running variance below zero.
- Momentum and weight decay of the `train` section act on the corrected gradient as on any
  gradient: `d = g + (c - c_i) + weight_decay * w`, then heavy-ball momentum on `d`. The
  option-II estimate divides by the displacement a constant `d` would have produced,
  `lr * sum_{k=1..K} sum_{j<k} momentum**j` (= `K * lr` without momentum, the paper's rule),
  so a client whose corrected gradient is constant recovers it exactly; with `K * lr` and
  momentum 0.9 the estimate would be about ten times too large. Momentum restarts per client.
- A client that took no step (no samples) keeps its `c_i` and sends `delta_c = 0`.

State that outlives a round, and so is snapshotted by a pipeline:

- server: `server.state_tensors()` = `{"control": float32 [P]}` (besides model and RNG);
- client: `{"control": float32 [P]}` (`ClientTask.state`; absent before it first participates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from blazefl.algorithms.base import Algorithm
from blazefl.algorithms.common import LocalSGD, TrainHParams
from blazefl.algorithms.context import ExperimentContext
from blazefl.algorithms.fedavg import FedAvgClientWorkload
from blazefl.algorithms.model_server import ModelServerHandler
from blazefl.core.optim import FlatSGD
from blazefl.core.packages import ClientTask, DownlinkPackage, UplinkPackage
from blazefl.core.serialization import flatten_module_
from blazefl.core.server import ServerSettings
from blazefl.hparams import param, validate
from blazefl.reproducibility import RNGSuite

__all__ = [
    "Scaffold",
    "ScaffoldClientWorkload",
    "ScaffoldDownlinkPackage",
    "ScaffoldHParams",
    "ScaffoldServerHandler",
    "ScaffoldUplinkPackage",
    "ScaffoldWorker",
    "effective_steps",
]

_CONTROL = "control"  # the one key of both server and client state


@dataclass(frozen=True)
class ScaffoldHParams:
    """SCAFFOLD hyper-parameters (config section `scaffold`; all change result bits).

    Args:
        server_lr: global step size on the mean model change (1.0: the mean client model).
    """

    server_lr: float = param(
        1.0, low=0.0, low_open=True, high=1e6, doc="server step on the mean model change"
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class ScaffoldDownlinkPackage(DownlinkPackage):
    """The global model's float state as one flat vector and the server control variate `c`
    (float32, one entry per model parameter)."""

    model: torch.Tensor
    control: torch.Tensor


@dataclass
class ScaffoldUplinkPackage(UplinkPackage):
    """A client's trained model vector, its control-variate change `c_i+ - c_i`, its sample
    count and mean training loss."""

    cid: int
    model: torch.Tensor
    delta_control: torch.Tensor
    num_samples: int
    loss: float


def effective_steps(steps: int, momentum: float) -> float:
    """How many plain-SGD steps `steps` heavy-ball steps amount to for a constant gradient.

    Starting from fresh momentum, step k moves by `lr * d * sum_{j<k} momentum**j`.

    Args:
        steps: local steps taken (K).
        momentum: the SGD momentum.

    Returns:
        `sum_{k=1..K} sum_{j<k} momentum**j`; exactly `float(K)` when momentum is 0.

    Example:
        >>> effective_steps(3, 0.5)  # 1 + 1.5 + 1.75
        4.25
    """
    total, velocity = 0.0, 0.0
    for _ in range(steps):
        velocity = velocity * momentum + 1.0
        total += velocity
    return total


def _check_control(tensor: Any, size: int, what: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{what} must be a tensor, got {type(tensor).__name__}")
    if tensor.dtype != torch.float32 or tuple(tensor.shape) != (size,):
        raise ValueError(
            f"{what} must be float32 [{size}] (one entry per model parameter), got "
            f"{tensor.dtype} {list(tensor.shape)}: it belongs to another model or config"
        )
    return tensor


# -- client ----------------------------------------------------------------------------------


class _CorrectedFlatSGD(FlatSGD):
    """`FlatSGD` that adds a fixed vector to every gradient (before weight decay and momentum)
    and counts its steps: SCAFFOLD's `g + c - c_i` as one fused op per step."""

    def __init__(self, model: nn.Module, flat: torch.Tensor, hp: TrainHParams) -> None:
        super().__init__(model, flat, hp.lr, hp.momentum, hp.weight_decay)
        self.correction = torch.zeros_like(self.params)
        self.steps = 0

    def reset(self) -> None:
        super().reset()
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        self.grad.add_(self.correction)
        self.steps += 1
        super().step()


class ScaffoldWorker:
    """One worker's model, corrected optimizer and buffers; trains any client from the
    downlink and its stored control variate.

    Nothing survives from one client to the next except allocations: weights come from the
    downlink, the correction from the client's state, and momentum restarts.
    """

    def __init__(self, workload: ScaffoldClientWorkload) -> None:
        self.workload = workload
        self.model = workload.model.build_for_worker()
        self.flat = flatten_module_(self.model)
        self.sgd = LocalSGD(self.model, self.flat, workload.train, workload.hparams)
        self.optimizer = _CorrectedFlatSGD(self.model, self.flat, workload.hparams)
        self.sgd.optimizer = self.optimizer  # re-points the gradients to its own buffer
        self.num_params = int(self.optimizer.params.numel())

    def train(
        self, task: ClientTask, payload: ScaffoldDownlinkPackage, rng: RNGSuite
    ) -> tuple[ScaffoldUplinkPackage, dict[str, torch.Tensor]]:
        """Local SGD with the corrected gradient, then the option-II control-variate update.

        Returns:
            The uplink and the client's new state `{"control": c_i+}`.

        Raises:
            ValueError: the downlink or the client's stored state does not fit the model.
        """
        p = self.num_params
        control = _check_control(payload.control, p, "the server control variate")
        if task.state is None:
            client_control = torch.zeros(p, dtype=torch.float32)
        else:
            stored = task.state.get(_CONTROL)
            client_control = _check_control(stored, p, f"client {task.cid} control variate")
        self.flat.copy_(payload.model)
        torch.sub(control, client_control, out=self.optimizer.correction)
        if hasattr(self.model, "generator"):
            cast(Any, self.model).generator = rng.torch  # generator-driven dropout
        indices = self.workload.partition.client(task.cid)
        loss = self.sgd.run(indices, rng.torch)
        hp = self.workload.hparams
        steps = effective_steps(self.optimizer.steps, hp.momentum)
        if steps > 0:
            drift = (payload.model[:p] - self.flat[:p]).div_(hp.lr * steps)
            new_control = torch.sub(client_control, control).add_(drift)
        else:  # no step, no estimate: keep c_i
            new_control = client_control.clone()
        delta = new_control - client_control
        uplink = ScaffoldUplinkPackage(
            task.cid, self.flat.clone(), delta, int(indices.numel()), loss
        )
        return uplink, {_CONTROL: new_control}


@dataclass
class ScaffoldClientWorkload(FedAvgClientWorkload):
    """Picklable SCAFFOLD client work: FedAvg's data, partition, model spec and
    hyper-parameters, with SCAFFOLD's worker.

    Example:
        >>> workload = ScaffoldClientWorkload(train, partition, ModelSpec("cnn"), TrainHParams())
        >>> trainer = make_trainer("processes", workload, seed=0, workers=2)
    """

    def make_worker(self) -> ScaffoldWorker:  # type: ignore[override]
        return ScaffoldWorker(self)


# -- server ----------------------------------------------------------------------------------


class ScaffoldServerHandler(ModelServerHandler[ScaffoldUplinkPackage, ScaffoldDownlinkPackage]):
    """SCAFFOLD server: steps the global model and the control variate `c`.

    Uplinks are folded into float64 running sums as they arrive (ascending client id), so
    memory does not grow with the number of clients.

    Args:
        model: the global model (its float state is flattened in place).
        settings: see `ServerSettings`.
        hparams: SCAFFOLD hyper-parameters (`server_lr`; default `ScaffoldHParams()`).

    Example:
        >>> server = ScaffoldServerHandler(model, settings, ScaffoldHParams(server_lr=1.0))
        >>> run_round(server, trainer, 1).summary["test_accuracy"]
        >>> snapshot = server.state_tensors()   # + model weights + server RNG state
    """

    def __init__(
        self, model: nn.Module, settings: ServerSettings, hparams: ScaffoldHParams | None = None
    ) -> None:
        super().__init__(model, settings, ScaffoldHParams() if hparams is None else hparams)
        self.control = torch.zeros(self.num_params, dtype=torch.float32)
        self._reset_buffer()

    def _reset_buffer(self) -> None:
        self._model_sum = torch.zeros(self.flat.numel(), dtype=torch.float64)
        self._control_sum = torch.zeros(self.num_params, dtype=torch.float64)
        self._count = 0
        self._weight = 0
        self._loss_sum = 0.0

    # -- state for snapshots ------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The server state carried to the next round (besides model weights and RNG).

        Returns:
            `{"control": float32 [P]}`, a fresh contiguous tensor (zeros before round 1).
        """
        return {_CONTROL: self.control.clone().contiguous()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore `state_tensors()` output (call between rounds).

        Raises:
            ValueError: other keys than `control`, or not float32 [P].
        """
        if set(tensors) != {_CONTROL}:
            raise ValueError(
                f"SCAFFOLD server state must hold exactly ['{_CONTROL}'], got {sorted(tensors)}"
            )
        control = _check_control(tensors[_CONTROL], self.num_params, "SCAFFOLD server control")
        self.control = control.clone().contiguous()
        self._reset_buffer()

    # -- the round ----------------------------------------------------------------------------
    def downlink_package(self) -> ScaffoldDownlinkPackage:
        # read in place by threads: untouched until global_update, which replaces `control`
        return ScaffoldDownlinkPackage(self.flat, self.control)

    def load(self, payload: ScaffoldUplinkPackage) -> bool:
        self.check_order(payload.cid)
        if tuple(payload.model.shape) != tuple(self.flat.shape):
            raise ValueError(
                f"client {payload.cid} sent a model of shape {tuple(payload.model.shape)}, "
                f"expected {tuple(self.flat.shape)}"
            )
        _check_control(payload.delta_control, self.num_params, f"client {payload.cid} delta_c")
        self._model_sum.add_(payload.model)
        self._control_sum.add_(payload.delta_control)
        self._count += 1
        self._weight += payload.num_samples
        self._loss_sum += payload.loss * payload.num_samples
        return self._count >= self.clients_per_round

    def global_update(self) -> None:
        """`w += server_lr * mean(w_i - w)` on parameters, mean buffers, `c += sum(delta_c)/N`."""
        if self._count == 0:
            raise RuntimeError("global_update called before any uplink was loaded")
        p = self.num_params
        mean = self._model_sum.div_(self._count)
        new = self.flat.double()
        new[:p].add_(mean[:p] - new[:p], alpha=self.hparams.server_lr)
        new[p:] = mean[p:]
        self.flat.copy_(new)
        self.control = (self.control.double() + self._control_sum / self.num_clients).float()
        self.train_loss = self._loss_sum / max(self._weight, 1)
        self.end_round()
        self._reset_buffer()


class Scaffold(Algorithm):
    """SCAFFOLD as an algorithm object: the server keeps `c` as state, every client that has
    participated keeps its `c_i` as state (config section `scaffold`)."""

    name = "scaffold"
    HParams = ScaffoldHParams

    def server(self, ctx: ExperimentContext, settings: ServerSettings) -> ScaffoldServerHandler:
        return ScaffoldServerHandler(ctx.initial_model(), settings, ctx.hparams)

    def workload(self, ctx: ExperimentContext) -> ScaffoldClientWorkload:
        return ScaffoldClientWorkload(ctx.train, ctx.partition, ctx.model_spec, ctx.train_hparams)
