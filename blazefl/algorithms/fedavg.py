"""FedAvg: clients run local SGD from the global model; the server averages their models
weighted by sample count, in ascending client-id order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import nn

from blazefl.algorithms.base import Algorithm, NoHParams
from blazefl.algorithms.common import ClientPartition, LocalSGD, TrainHParams
from blazefl.algorithms.model_server import ModelServerHandler
from blazefl.core.devices import current_worker_device, model_generator
from blazefl.core.packages import ClientTask, DownlinkPackage, UplinkPackage
from blazefl.core.serialization import flatten_module_
from blazefl.core.server import ServerSettings
from blazefl.data import ImageDataset
from blazefl.models import build_model
from blazefl.reproducibility import RNGSuite

if TYPE_CHECKING:  # annotations only: the context module names ModelSpec from here
    from blazefl.algorithms.context import ExperimentContext

__all__ = [
    "FedAvgDownlink",
    "FedAvgUplink",
    "FedAvgClientWorkload",
    "FedAvgWorker",
    "FedAvgServerHandler",
    "LOCAL_WORK_SETTINGS",
    "local_work",
    "ModelSpec",
    "FedAvg",
]


@dataclass
class FedAvgDownlink(DownlinkPackage):
    """The global model's float state as one flat vector."""

    model: torch.Tensor


@dataclass
class FedAvgUplink(UplinkPackage):
    """A client's trained model vector, its sample count and mean training loss.

    (`blazefl.contrib.FedAvgUplink` is the original BlazeFL's, with its own fields.)"""

    cid: int
    model: torch.Tensor
    num_samples: int
    loss: float


@dataclass(frozen=True)
class ModelSpec:
    """How to build the model (architecture only; weights come from artifacts or downlinks).

    Args:
        name: a built-in model or 'pkg.module:factory'.
        num_classes: output logits.
        in_channels / image_size: the image keywords every factory gets (for samples that
            are not ``[C, H, W]`` images, 0).
        dropout: dropout probability.
        input_shape: the per-sample shape (None: ``(in_channels, image_size, image_size)``);
            a factory declaring ``input_shape=`` gets it.
        input_dtype: what the model receives (float32 images and vectors, int64 token ids);
            a factory declaring ``input_dtype=`` gets it.

    Example:
        >>> ModelSpec("mymodel:mlp", 3, 0, 0, input_shape=(20,)).build(torch.Generator())
    """

    name: str = "cnn"
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    dropout: float = 0.0
    input_shape: tuple[int, ...] | None = None
    input_dtype: torch.dtype = torch.float32

    def build(self, generator: torch.Generator | None = None) -> nn.Module:
        return build_model(
            self.name,
            self.num_classes,
            self.in_channels,
            self.image_size,
            dropout=self.dropout,
            generator=generator,
            input_shape=self.input_shape,
            input_dtype=self.input_dtype,
        )

    def build_for_worker(self) -> nn.Module:
        """A worker's model: every downlink overwrites its weights, so it is built from a
        throwaway generator and leaves torch's global RNG as it was (workers build their
        models in their own threads, where global draws would race)."""
        return self.build(torch.Generator())


#: Per-client settings the built-in workers honour (`BaseServerHandler.client_settings`), as
#: `LocalSGD.run` arguments.
LOCAL_WORK_SETTINGS = {"local_epochs": "epochs", "max_steps": "max_steps"}


def local_work(settings: dict[str, Any]) -> dict[str, int]:
    """`LocalSGD.run` arguments from a client's settings (`local_epochs`, `max_steps`); other
    settings are the algorithm's own and ignored here.

    Raises:
        ValueError: a work setting that is not a positive integer.

    Example:
        >>> local_work({"local_epochs": 3, "mu": 0.1})
        {'epochs': 3}
    """
    out = {}
    for name, arg in LOCAL_WORK_SETTINGS.items():
        if name in settings:
            value = settings[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"client setting {name} must be an integer >= 1, got {value!r}")
            out[arg] = value
    return out


class FedAvgWorker:
    """One worker's model/optimizer/buffers; trains any client from the downlink.

    The model, its optimizer and the training set live on the device the trainer assigned
    (`current_worker_device()`); the downlink is copied there once per client and the uplink
    comes back to the CPU once per client.

    Attributes a subclass builds on:
        hparams: the algorithm's hyper-parameters (`FedAvgClientWorkload.algorithm_hparams`).
        model / flat / sgd: the worker's model, its flat float state, its `LocalSGD` loop.

    Example (clip each client's update; `uplink_model` is the one hook):
        >>> class ClippingWorker(FedAvgWorker):
        ...     def uplink_model(self, start, trained):
        ...         return start + clip(trained - start, self.hparams.clip_norm)
    """

    def __init__(self, workload: FedAvgClientWorkload) -> None:
        self.workload = workload
        self.hparams = workload.algorithm_hparams
        self.device = current_worker_device()
        self.model = workload.model.build_for_worker().to(self.device)
        self.flat = flatten_module_(self.model)
        self.sgd = LocalSGD(self.model, self.flat, workload.train, workload.hparams)

    def train(
        self, task: ClientTask, payload: FedAvgDownlink, rng: RNGSuite
    ) -> tuple[FedAvgUplink, None]:
        self.flat.copy_(payload.model)
        if hasattr(self.model, "generator"):  # generator-driven dropout, on the model's device
            cast(Any, self.model).generator = model_generator(rng, self.device)
        indices = self.workload.partition.client(task.cid)
        work = local_work(task.settings)
        loss = self.sgd.run(
            indices, rng.torch, epochs=work.get("epochs"), max_steps=work.get("max_steps")
        )
        model = self.flat.to("cpu", copy=True)  # the pipeline hashes and saves CPU tensors
        model = self.uplink_model(payload.model, model)
        uplink = FedAvgUplink(task.cid, model, int(indices.numel()), loss)
        return uplink, None

    def uplink_model(self, start: torch.Tensor, trained: torch.Tensor) -> torch.Tensor:
        """What the client uploads, from the global model it started at and the model it
        trained (both flat float CPU vectors, `start` read-only); FedAvg uploads `trained`.

        Returns:
            A float vector of the same length (override to clip, compress or add noise).
        """
        return trained


@dataclass
class FedAvgClientWorkload:
    """Picklable FedAvg client work: data, partition, model spec and hyper-parameters.

    Args:
        train / partition / model: the clients' data, their indices, the model to build.
        hparams: the `train` section (local SGD).
        worker: the worker class each worker thread or process builds (a `FedAvgWorker`).
        algorithm_hparams: the algorithm's own section, handed to the worker as `hparams`.

    Example:
        >>> workload = FedAvgClientWorkload(train, partition, ModelSpec("cnn"), TrainHParams())
        >>> trainer = ThreadPoolClientTrainer(workload, seed=0, num_workers=2)
    """

    train: ImageDataset
    partition: ClientPartition
    model: ModelSpec = field(default_factory=ModelSpec)
    hparams: TrainHParams = field(default_factory=TrainHParams)
    worker: type[FedAvgWorker] = FedAvgWorker
    algorithm_hparams: Any = None

    def make_worker(self) -> FedAvgWorker:
        return self.worker(self)

    def share_memory(self) -> None:
        self.train.images.share_memory_()
        self.train.labels.share_memory_()
        self.partition.share_memory_()


class FedAvgServerHandler(ModelServerHandler[FedAvgUplink, FedAvgDownlink]):
    """FedAvg server: weighted average of client models, server-side test evaluation.

    Uplinks are folded into a float64 running sum as they arrive (ascending client id), so
    memory does not grow with the number of clients. `global_update` writes the average into
    `flat` and sets `train_loss` to the sample-weighted mean client loss.

    Args:
        model: the global model (its float state is flattened in place).
        settings: see `ServerSettings`.
        hparams: the algorithm's hyper-parameters (FedAvg has none; a subclass's arrive here).

    Attributes: those of `ModelServerHandler` (`model`, `flat`, `num_params`, `params`,
    `hparams`, `test_set`, `eval_device`, `train_loss`) and `BaseServerHandler`.

    Example:
        >>> settings = ServerSettings(100, 10, 5, create_rng_suite(0, SERVER_STREAM_ID), test)
        >>> server = FedAvgServerHandler(model, settings)
    """

    def __init__(self, model: nn.Module, settings: ServerSettings, hparams: Any = None) -> None:
        super().__init__(model, settings, NoHParams() if hparams is None else hparams)
        self._reset_buffer()

    def _reset_buffer(self) -> None:
        self._sum = torch.zeros(self.flat.numel(), dtype=torch.float64)
        self._weight = 0
        self._loss_sum = 0.0
        self._loaded = 0

    def downlink_package(self) -> FedAvgDownlink:
        return FedAvgDownlink(self.flat)  # read in place by threads; untouched until update

    def load(self, payload: FedAvgUplink) -> bool:
        self.check_order(payload.cid)
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
        self.end_round()
        self._reset_buffer()


class FedAvg(Algorithm):
    """FedAvg as an algorithm object (no hyper-parameters beyond the `train` section).

    A variant subclasses it and swaps its parts: `Server` (built as
    ``Server(ctx.initial_model(), settings, ctx.hparams)``) and `Worker` (built once per
    worker from the workload; its `hparams` are the algorithm's).

    Example:
        >>> class FedAdam(FedAvg):
        ...     HParams = FedAdamHParams
        ...     Server = FedAdamServerHandler
    """

    name = "fedavg"
    supports_cuda = True  # its worker places itself on the assigned device (docs/gpu.md)
    Server: ClassVar[type[FedAvgServerHandler]] = FedAvgServerHandler
    Worker: ClassVar[type[FedAvgWorker]] = FedAvgWorker

    def server(self, ctx: ExperimentContext, settings: ServerSettings) -> FedAvgServerHandler:
        return self.Server(ctx.initial_model(), settings, ctx.hparams)

    def workload(self, ctx: ExperimentContext) -> FedAvgClientWorkload:
        return FedAvgClientWorkload(
            ctx.train,
            ctx.partition,
            ctx.model_spec,
            ctx.train_hparams,
            worker=self.Worker,
            algorithm_hparams=ctx.hparams,
        )
