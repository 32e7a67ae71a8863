"""FedAvg: clients run local SGD from the global model; the server averages their models
weighted by sample count, in ascending client-id order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from blazefl.algorithms.base import Algorithm
from blazefl.algorithms.common import ClientPartition, LocalSGD, TrainHParams, evaluate_model
from blazefl.core.devices import current_worker_device, model_generator
from blazefl.core.packages import ClientTask, DownlinkPackage, UplinkPackage
from blazefl.core.serialization import flatten_module_
from blazefl.core.server import BaseServerHandler
from blazefl.data import ImageDataset
from blazefl.models import build_model
from blazefl.reproducibility import RNGSuite

__all__ = [
    "FedAvgDownlinkPackage",
    "FedAvgUplinkPackage",
    "FedAvgClientWorkload",
    "FedAvgWorker",
    "FedAvgServerHandler",
    "ModelSpec",
    "FedAvg",
]


@dataclass
class FedAvgDownlinkPackage(DownlinkPackage):
    """The global model's float state as one flat vector."""

    model: torch.Tensor


@dataclass
class FedAvgUplinkPackage(UplinkPackage):
    """A client's trained model vector, its sample count and mean training loss."""

    cid: int
    model: torch.Tensor
    num_samples: int
    loss: float


@dataclass(frozen=True)
class ModelSpec:
    """How to build the model (architecture only; weights come from artifacts or downlinks)."""

    name: str = "cnn"
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    dropout: float = 0.0

    def build(self, generator: torch.Generator | None = None) -> nn.Module:
        return build_model(
            self.name,
            self.num_classes,
            self.in_channels,
            self.image_size,
            dropout=self.dropout,
            generator=generator,
        )

    def build_for_worker(self) -> nn.Module:
        """A worker's model: every downlink overwrites its weights, so it is built from a
        throwaway generator and leaves torch's global RNG as it was (workers build their
        models in their own threads, where global draws would race)."""
        return self.build(torch.Generator())


class FedAvgWorker:
    """One worker's model/optimizer/buffers; trains any client from the downlink.

    The model, its optimizer and the training set live on the device the trainer assigned
    (`current_worker_device()`); the downlink is copied there once per client and the uplink
    comes back to the CPU once per client.
    """

    def __init__(self, workload: FedAvgClientWorkload) -> None:
        self.workload = workload
        self.device = current_worker_device()
        self.model = workload.model.build_for_worker().to(self.device)
        self.flat = flatten_module_(self.model)
        self.sgd = LocalSGD(self.model, self.flat, workload.train, workload.hparams)

    def train(
        self, task: ClientTask, payload: FedAvgDownlinkPackage, rng: RNGSuite
    ) -> tuple[FedAvgUplinkPackage, None]:
        self.flat.copy_(payload.model)
        if hasattr(self.model, "generator"):  # generator-driven dropout, on the model's device
            cast(Any, self.model).generator = model_generator(rng, self.device)
        indices = self.workload.partition.client(task.cid)
        loss = self.sgd.run(indices, rng.torch)
        model = self.flat.to("cpu", copy=True)  # the pipeline hashes and saves CPU tensors
        uplink = FedAvgUplinkPackage(task.cid, model, int(indices.numel()), loss)
        return uplink, None


@dataclass
class FedAvgClientWorkload:
    """Picklable FedAvg client work: data, partition, model spec and hyper-parameters.

    Example:
        >>> workload = FedAvgClientWorkload(train, partition, ModelSpec("cnn"), TrainHParams())
        >>> trainer = ThreadPoolClientTrainer(workload, seed=0, num_workers=2)
    """

    train: ImageDataset
    partition: ClientPartition
    model: ModelSpec = field(default_factory=ModelSpec)
    hparams: TrainHParams = field(default_factory=TrainHParams)

    def make_worker(self) -> FedAvgWorker:
        return FedAvgWorker(self)

    def share_memory(self) -> None:
        self.train.images.share_memory_()
        self.train.labels.share_memory_()
        self.partition.share_memory_()


class FedAvgServerHandler(BaseServerHandler[FedAvgUplinkPackage, FedAvgDownlinkPackage]):
    """FedAvg server: weighted average of client models, server-side test evaluation.

    Uplinks are folded into a float64 running sum as they arrive (ascending client id), so
    memory does not grow with the number of clients.

    Args:
        model: the global model (its float state is flattened in place).
        num_clients / clients_per_round / total_rounds / generator: see `BaseServerHandler`.
        test_set: evaluation data (None disables evaluation).

    Attributes (besides `BaseServerHandler`'s; what a subclass such as the FedAdam example
    builds on):
        model: the global model; its float parameters and buffers are views into `flat`.
        flat: one vector holding the model's float state (`flatten_module_`): parameters
            first (tied ones once), then buffers, so `flat[:n]` with n the parameter count
            are the trainable weights; `global_update` writes the new global state into it.
        test_set: evaluation data, or None.
        eval_device: where `summary` evaluates.
        train_loss: the sample-weighted mean client loss of the last round (set by
            `global_update`; absent before the first round).
        rng: the `RNGSuite` that `generator` belongs to (set by the pipeline, for snapshots).

    Example:
        >>> server = FedAvgServerHandler(model, num_clients=100, clients_per_round=10,
        ...                              total_rounds=5, generator=suite.torch, test_set=test)
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
    ) -> None:
        super().__init__(num_clients, clients_per_round, total_rounds, generator)
        self.model = model
        self.flat = flatten_module_(model)
        self.test_set = test_set
        #: where `summary` evaluates (the model and the float64 aggregation stay on the CPU)
        self.eval_device = "cpu"
        self.rng: RNGSuite | None = None  # the suite `generator` belongs to, for snapshots
        self._reset_buffer()

    def _reset_buffer(self) -> None:
        self._sum = torch.zeros(self.flat.numel(), dtype=torch.float64)
        self._weight = 0
        self._loss_sum = 0.0
        self._last_cid = -1
        self._loaded = 0

    def downlink_package(self) -> FedAvgDownlinkPackage:
        return FedAvgDownlinkPackage(self.flat)  # read in place by threads; untouched until update

    def load(self, payload: FedAvgUplinkPackage) -> bool:
        if payload.cid <= self._last_cid:
            raise ValueError("uplinks must be loaded in ascending client-id order")
        self._last_cid = payload.cid
        self._sum.add_(payload.model, alpha=payload.num_samples)
        self._weight += payload.num_samples
        self._loss_sum += payload.loss * payload.num_samples
        self._loaded += 1
        return self._loaded >= self.clients_per_round

    def global_update(self) -> None:
        if self._weight == 0:
            raise RuntimeError("global_update called before any uplink was loaded")
        self.flat.copy_(self._sum.div_(self._weight))
        self.train_loss = self._loss_sum / self._weight
        self.round += 1
        self._reset_buffer()

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"round": self.round}
        if getattr(self, "train_loss", None) is not None:
            out["train_loss"] = self.train_loss
        if self.test_set is not None:
            metrics = evaluate_model(self.model, self.test_set, device=self.eval_device)
            out["test_loss"], out["test_accuracy"] = metrics["loss"], metrics["accuracy"]
        return out


class FedAvg(Algorithm):
    """FedAvg as an algorithm object (no hyper-parameters beyond the `train` section)."""

    name = "fedavg"
    supports_cuda = True  # its worker places itself on the assigned device (docs/gpu.md)

    def server(self, exp: Any, generator: torch.Generator) -> FedAvgServerHandler:
        return FedAvgServerHandler(exp.initial_model(), **exp.server_kwargs(generator))

    def workload(self, exp: Any) -> FedAvgClientWorkload:
        return FedAvgClientWorkload(exp.train, exp.partition, exp.model_spec, exp.spec.train)
