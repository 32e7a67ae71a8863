"""DS-FL: distillation-based semi-supervised FL (Itahara et al., 2020).

Clients never send weights. Each round the server names a slice of a shared unlabeled open set;
every sampled client trains its own persistent local model (distill on last round's global soft
labels, then SGD on its private data) and uploads its softmax outputs on that slice. The server
averages them in ascending client-id order, sharpens the mean with Entropy Reduction
Aggregation (ERA, a low-temperature softmax), distils its own global model on the result and
broadcasts the ERA labels next round.

State that outlives a round, and so must be snapshotted by a pipeline:

- client: `{"model": flat float vector}` (`ClientTask.state`; the trainer keeps it in
  `trainer.client_states[cid]`);
- server: `server.state_tensors()` = `{"soft_labels": [n, C] float32, "indices": [n] int64}`
  (the ERA labels and the open-set indices they belong to), plus the global model weights and
  the server's RNG suite. The next round's open-set indices are not state: they are drawn from
  the server generator when the round's downlink is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from blazefl.algorithms.base import Algorithm
from blazefl.algorithms.common import (
    ClientPartition,
    LocalSGD,
    TrainHParams,
    dataset_on,
)
from blazefl.algorithms.context import ExperimentContext
from blazefl.algorithms.distillation import (
    distill,
    entropy_reduction_aggregation,
    predict_soft_labels,
    split_open_set,
)
from blazefl.algorithms.fedavg import ModelSpec
from blazefl.algorithms.model_server import ModelServerHandler
from blazefl.core.devices import current_worker_device, model_generator
from blazefl.core.optim import FlatSGD
from blazefl.core.packages import ClientTask, DownlinkPackage, UplinkPackage
from blazefl.core.serialization import flatten_module_
from blazefl.core.server import ServerSettings
from blazefl.data import ImageDataset
from blazefl.hparams import MAX_SAMPLES, HParamError, param, validate
from blazefl.reproducibility import RNGSuite

__all__ = [
    "DSFLClientWorkload",
    "DSFLDownlinkPackage",
    "DSFLHParams",
    "DSFLServerHandler",
    "DSFLUplinkPackage",
    "DSFLWorker",
    "DSFL",
    "distill",
    "entropy_reduction_aggregation",
    "predict_soft_labels",
    "split_open_set",
]


@dataclass
class DSFLDownlinkPackage(DownlinkPackage):
    """What the server broadcasts in a round.

    Attributes:
        soft_labels: ERA soft labels of the previous round, float32 `[n, C]` (n = 0 in round 1).
        indices: int64 `[n]` open-set indices `soft_labels` belong to (sorted).
        next_indices: int64 `[m]` open-set indices clients must label this round (sorted).
    """

    soft_labels: torch.Tensor
    indices: torch.Tensor
    next_indices: torch.Tensor


@dataclass
class DSFLUplinkPackage(UplinkPackage):
    """A client's softmax outputs on `next_indices`, its sample count and mean private loss."""

    cid: int
    soft_labels: torch.Tensor
    num_samples: int
    loss: float


@dataclass(frozen=True)
class DSFLHParams:
    """DS-FL hyper-parameters (all change result bits; config section `dsfl`).

    Args:
        open_size: the last samples of the training set, held back as the shared unlabeled
            open set (only the rest is partitioned among clients).
        public_size_per_round: open-set samples labelled by clients each round.
        kd_epochs: distillation epochs (clients and server).
        kd_batch_size: distillation (and soft-label inference) batch size.
        kd_lr: distillation SGD learning rate (no momentum: the optimizer keeps no state).
        era_temperature: ERA softmax temperature; lower sharpens more.
    """

    open_size: int = param(2000, low=1, high=MAX_SAMPLES, doc="shared unlabeled open set")
    public_size_per_round: int = param(500, low=1, high=MAX_SAMPLES, doc="labelled per round")
    kd_epochs: int = param(2, low=1, high=10_000, doc="distillation epochs")
    kd_batch_size: int = param(50, low=1, high=1_000_000, doc="distillation batch size")
    kd_lr: float = param(0.1, low=0.0, low_open=True, high=1e6, doc="distillation lr")
    era_temperature: float = param(0.1, low=0.0, low_open=True, high=1e6, doc="ERA temperature")

    def __post_init__(self) -> None:
        validate(self)
        if self.public_size_per_round > self.open_size:
            raise HParamError(
                f"public_size_per_round ({self.public_size_per_round}) must be <= open_size "
                f"({self.open_size})"
            )


# -- client ----------------------------------------------------------------------------------


class DSFLWorker:
    """One worker's model, optimizers and buffers; runs any client from its stored state.

    Nothing survives from one client to the next except allocations: the model's weights are
    overwritten from the client's state, the local SGD state is cleared, and the distillation
    optimizer (plain SGD) has no state.

    On a GPU the model, the private data and the open set live on the assigned device; the
    round's labels and indices go there once per client, and uplink and state come back to
    the CPU once per client. Shuffles draw from the client's CPU generator, dropout masks
    from its CUDA generator.
    """

    def __init__(self, workload: DSFLClientWorkload) -> None:
        self.workload = workload
        self.device = current_worker_device()
        self.model = workload.model.build_for_worker().to(self.device)
        self.flat = flatten_module_(self.model)
        self.open_set = dataset_on(workload.open_set, self.device)
        self.sgd = LocalSGD(self.model, self.flat, workload.train, workload.hparams)
        self.kd_optimizer = FlatSGD(
            self.model, self.flat, workload.dsfl.kd_lr, grad=self.sgd.optimizer.grad
        )

    def _initial_vector(self, rng: RNGSuite) -> torch.Tensor:
        if self.workload.init_model is not None:
            return self.workload.init_model
        # first participation without a shared init: the client's own generator draws weights
        return flatten_module_(self.workload.model.build(rng.torch))

    def train(
        self, task: ClientTask, payload: DSFLDownlinkPackage, rng: RNGSuite
    ) -> tuple[DSFLUplinkPackage, dict[str, torch.Tensor]]:
        """Distil on last round's labels, train on private data, label `next_indices`.

        Returns:
            The uplink and the client's new state `{"model": flat vector}`.
        """
        hp = self.workload.dsfl
        start = self._initial_vector(rng) if task.state is None else task.state["model"]
        if start.shape != self.flat.shape:
            raise ValueError(
                f"client {task.cid} model state has shape {tuple(start.shape)}, "
                f"expected {tuple(self.flat.shape)}"
            )
        self.flat.copy_(start)
        if hasattr(self.model, "generator"):  # generator-driven dropout, on the model's device
            cast(Any, self.model).generator = model_generator(rng, self.device)
        open_set = self.open_set
        distill(
            self.model,
            self.kd_optimizer,
            open_set,
            payload.indices.to(self.device),
            payload.soft_labels.to(self.device),
            epochs=hp.kd_epochs,
            batch_size=hp.kd_batch_size,
            generator=rng.torch,
        )
        indices = self.workload.partition.client(task.cid)
        loss = self.sgd.run(indices, rng.torch)
        next_indices = payload.next_indices.to(self.device)
        labels = predict_soft_labels(self.model, open_set, next_indices, hp.kd_batch_size)
        uplink = DSFLUplinkPackage(task.cid, labels.cpu(), int(indices.numel()), loss)
        return uplink, {"model": self.flat.to("cpu", copy=True)}


@dataclass
class DSFLClientWorkload:
    """Picklable DS-FL client work: private data, open set, partition, model and hyper-parameters.

    Args:
        train: the labelled training set clients' partitions index into.
        open_set: the shared unlabelled open set (its labels are never read).
        partition: every client's private indices into `train`.
        model: architecture.
        hparams: private local training.
        dsfl: distillation / ERA hyper-parameters.
        init_model: flat float vector every client starts from on first participation
            (typically the server's initial model); None draws it from the client's generator.

    Example:
        >>> workload = DSFLClientWorkload(train, open_set, partition, ModelSpec("cnn"),
        ...                               init_model=flatten_module_(init_model).clone())
        >>> trainer = make_trainer("threads", workload, seed=0, workers=2)
    """

    train: ImageDataset
    open_set: ImageDataset
    partition: ClientPartition
    model: ModelSpec = field(default_factory=ModelSpec)
    hparams: TrainHParams = field(default_factory=TrainHParams)
    dsfl: DSFLHParams = field(default_factory=DSFLHParams)
    init_model: torch.Tensor | None = None

    def make_worker(self) -> DSFLWorker:
        return DSFLWorker(self)

    def share_memory(self) -> None:
        for data in (self.train, self.open_set):
            data.images.share_memory_()
            data.labels.share_memory_()
        self.partition.share_memory_()
        if self.init_model is not None:
            self.init_model.share_memory_()


# -- server ----------------------------------------------------------------------------------


class DSFLServerHandler(ModelServerHandler[DSFLUplinkPackage, DSFLDownlinkPackage]):
    """DS-FL server: averages client soft labels, applies ERA, distils the global model.

    Randomness (all from `generator`, in this order per round): client sampling, the round's
    open-set indices (drawn once, when the round's downlink is first built), the shuffling of
    the server's distillation. Client soft labels are summed in float64 in ascending client-id
    order; the mean is unweighted, as in the paper. Distillation runs in the calling thread, so
    its bits depend on that thread's intra-op thread count; every trainer pins it when it starts
    (a caller running `global_update` without a trainer must call `pin_client_threads`).

    Args:
        model: the global model (distilled in place each round).
        settings: see `ServerSettings`.
        hparams: DS-FL hyper-parameters (must equal the clients'; default `DSFLHParams()`).
        open_set: the shared open set (same one the clients use).

    Example:
        >>> server = DSFLServerHandler(model, settings, DSFLHParams(), open_set=open_set)
        >>> run_round(server, trainer, 1).summary["test_accuracy"]
        >>> snapshot = server.state_tensors()   # + model weights + server RNG state
    """

    def __init__(
        self,
        model: nn.Module,
        settings: ServerSettings,
        hparams: DSFLHParams | None = None,
        *,
        open_set: ImageDataset,
    ) -> None:
        hp = DSFLHParams() if hparams is None else hparams
        if hp.public_size_per_round > len(open_set):
            raise ValueError(
                f"public_size_per_round ({hp.public_size_per_round}) exceeds the open "
                f"set ({len(open_set)} samples)"
            )
        super().__init__(model, settings, hp)
        self.open_set = open_set
        self.num_classes = open_set.num_classes
        self.optimizer = FlatSGD(model, self.flat, hp.kd_lr)
        self.soft_labels = torch.empty((0, self.num_classes), dtype=torch.float32)
        self.soft_indices = torch.empty(0, dtype=torch.int64)
        self.distill_loss: float | None = None
        self._next_indices: torch.Tensor | None = None
        self._reset_buffer()

    def _reset_buffer(self) -> None:
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._weight = 0
        self._loss_sum = 0.0
        self._last_cid = -1

    # -- state for snapshots ------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The server state carried to the next round (besides model weights and RNG).

        Returns:
            `{"indices": int64 [n], "soft_labels": float32 [n, C]}`, fresh contiguous tensors
            (n = 0 before the first round); ready for safetensors.
        """
        return {
            "indices": self.soft_indices.clone().contiguous(),
            "soft_labels": self.soft_labels.clone().contiguous(),
        }

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore `state_tensors()` output (call between rounds, after loading the model).

        Raises:
            ValueError: missing keys, wrong dtype/shape, or indices outside the open set.
        """
        missing = sorted({"indices", "soft_labels"} - set(tensors))
        if missing:
            raise ValueError(f"DS-FL server state lacks keys {missing}")
        indices, labels = tensors["indices"], tensors["soft_labels"]
        n = indices.numel()
        if indices.dtype != torch.int64 or indices.dim() != 1:
            raise ValueError(
                f"indices must be int64 [n], got {indices.dtype} {list(indices.shape)}"
            )
        if labels.dtype != torch.float32 or tuple(labels.shape) != (n, self.num_classes):
            raise ValueError(
                f"soft_labels must be float32 [{n}, {self.num_classes}], "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        if n and (int(indices.min()) < 0 or int(indices.max()) >= len(self.open_set)):
            raise ValueError(f"indices must lie in [0, {len(self.open_set)})")
        self.soft_indices = indices.clone().contiguous()
        self.soft_labels = labels.clone().contiguous()
        self._next_indices = None
        self._reset_buffer()

    # -- the round ----------------------------------------------------------------------------
    def downlink_package(self) -> DSFLDownlinkPackage:
        """This round's package; the open-set indices are drawn on the first call per round."""
        if self._next_indices is None:
            perm = torch.randperm(len(self.open_set), generator=self.generator)
            self._next_indices = perm[: self.hparams.public_size_per_round].sort().values
        # read in place by threads: global_update replaces these tensors, never mutates them
        return DSFLDownlinkPackage(self.soft_labels, self.soft_indices, self._next_indices)

    def load(self, payload: DSFLUplinkPackage) -> bool:
        if self._next_indices is None:
            raise RuntimeError("load called before downlink_package")
        self.check_order(payload.cid)
        expected = (self._next_indices.numel(), self.num_classes)
        if tuple(payload.soft_labels.shape) != expected:
            raise ValueError(
                f"client {payload.cid} sent soft labels of shape "
                f"{tuple(payload.soft_labels.shape)}, expected {expected}"
            )
        if self._sum is None:
            self._sum = torch.zeros(expected, dtype=torch.float64)
        self._sum.add_(payload.soft_labels)
        self._count += 1
        self._weight += payload.num_samples
        self._loss_sum += payload.loss * payload.num_samples
        return self._count >= self.clients_per_round

    def global_update(self) -> None:
        """Mean -> ERA -> distil the global model; the ERA labels go out next round."""
        if self._sum is None or self._next_indices is None:
            raise RuntimeError("global_update called before any uplink was loaded")
        mean = self._sum / self._count
        self.soft_labels = entropy_reduction_aggregation(mean, self.hparams.era_temperature)
        self.soft_indices = self._next_indices
        if hasattr(self.model, "generator"):
            cast(Any, self.model).generator = self.generator  # generator-driven dropout
        self.distill_loss = distill(
            self.model,
            self.optimizer,
            self.open_set,
            self.soft_indices,
            self.soft_labels,
            epochs=self.hparams.kd_epochs,
            batch_size=self.hparams.kd_batch_size,
            generator=self.generator,
        )
        self.train_loss = self._loss_sum / max(self._weight, 1)
        self.end_round()
        self._next_indices = None
        self._reset_buffer()

    def round_metrics(self) -> dict[str, Any]:
        """The last distillation's mean loss (after the first round)."""
        return {} if self.distill_loss is None else {"distill_loss": self.distill_loss}


class DSFL(Algorithm):
    """DS-FL as an algorithm object: the open set is held back from the partition, the
    server keeps ERA labels as state, every client keeps its own model as state."""

    name = "dsfl"
    supports_cuda = True  # its worker places itself on the assigned device (docs/gpu.md)
    HParams = DSFLHParams
    partition_keys = ("open_size",)

    def public_size(self, hparams: DSFLHParams) -> int:
        return hparams.open_size

    def check(self, spec: Any) -> None:
        private = spec.data.size - spec.hparams.open_size
        if private < spec.data.clients:
            raise HParamError(
                f"dsfl.open_size ({spec.hparams.open_size}) leaves {private} private samples "
                f"for {spec.data.clients} clients: lower dsfl.open_size or raise data.size"
            )

    def server(self, ctx: ExperimentContext, settings: ServerSettings) -> DSFLServerHandler:
        assert ctx.public_set is not None  # public_size() > 0 holds one back
        return DSFLServerHandler(
            ctx.initial_model(), settings, ctx.hparams, open_set=ctx.public_set
        )

    def workload(self, ctx: ExperimentContext) -> DSFLClientWorkload:
        assert ctx.public_set is not None
        return DSFLClientWorkload(
            ctx.private_train,
            ctx.public_set,
            ctx.partition,
            ctx.model_spec,
            ctx.train_hparams,
            ctx.hparams,
            init_model=flatten_module_(ctx.initial_model()),
        )
