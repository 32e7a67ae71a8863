"""Build a complete FL experiment from one frozen spec, and simulate it in memory.

The pipeline (artifacts, CLI, DVC) builds the same objects from params.yaml; this module is
the library-only path: `simulate(spec, mode="threads", workers=2)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
from torch import nn

from blazefl.algorithms.common import ClientPartition, TrainHParams
from blazefl.algorithms.dsfl import (
    DSFLClientWorkload,
    DSFLHParams,
    DSFLServerHandler,
    split_open_set,
)
from blazefl.algorithms.fedavg import FedAvgClientWorkload, FedAvgServerHandler, ModelSpec
from blazefl.core.loop import EXECUTION_MODES, RoundResult, make_trainer, run_round
from blazefl.core.serialization import flatten_module_
from blazefl.data import DATASETS, PARTITIONERS, ImageDataset, load_dataset, partition_indices
from blazefl.models import MODELS
from blazefl.reproducibility import SERVER_STREAM_ID, RNGSuite, create_rng_suite

__all__ = ["ExperimentSpec", "Experiment", "build_experiment", "simulate", "MODEL_INIT_STREAM_ID"]

#: RNG stream of the initial global model's weights (distinct from server and clients).
MODEL_INIT_STREAM_ID = SERVER_STREAM_ID + 1

ALGORITHMS = ("fedavg", "dsfl")


@dataclass(frozen=True)
class ExperimentSpec:
    """Everything that determines an experiment's bytes (execution mode and workers do not).

    Example:
        >>> spec = ExperimentSpec(seed=1, num_clients=10, clients_per_round=5, rounds=3)
    """

    seed: int = 0
    dataset: str = "synthetic"
    data_root: str | None = None
    data_size: int = 20000
    test_size: int = 2000
    num_clients: int = 100
    partition: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    model: str = "cnn"
    dropout: float = 0.0
    algorithm: str = "fedavg"
    rounds: int = 3
    clients_per_round: int | None = None  # None: every client every round
    hparams: TrainHParams = field(default_factory=TrainHParams)
    threads_per_client: int = 1
    open_size: int = 2000  # dsfl: last samples of the train set, the shared unlabeled open set
    dsfl: DSFLHParams = field(default_factory=DSFLHParams)

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.num_clients <= 0:
            raise ValueError(f"number of clients must be >= 1, got {self.num_clients}")
        # names and ranges are checked here, before any data is generated or loaded
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; allowed: {', '.join(DATASETS)}")
        if self.partition not in PARTITIONERS:
            raise ValueError(
                f"unknown partition method {self.partition!r}; allowed: {', '.join(PARTITIONERS)}"
            )
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; allowed: {', '.join(MODELS)}")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"alpha must be a finite number > 0, got {self.alpha}")
        if self.data_size <= 0 or self.test_size <= 0:
            raise ValueError(
                f"data_size and test_size must be >= 1, got {self.data_size}, {self.test_size}"
            )
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}"
            )
        if self.algorithm == "dsfl" and not 0 < self.open_size < self.data_size:
            raise ValueError(
                f"open_size must be between 1 and data_size - 1 ({self.data_size - 1}), "
                f"got {self.open_size}"
            )
        k = self.clients_per_round
        if k is not None and not 1 <= k <= self.num_clients:
            raise ValueError(f"clients_per_round must be between 1 and {self.num_clients}, got {k}")
        if self.threads_per_client <= 0:
            raise ValueError(f"threads_per_client must be >= 1, got {self.threads_per_client}")


@dataclass
class Experiment:
    """The built pieces of an experiment.

    `train` is the whole training set; for DS-FL its last `spec.open_size` samples are the
    shared unlabeled open set and only the rest is partitioned among clients.
    """

    spec: ExperimentSpec
    train: ImageDataset
    test: ImageDataset
    partition: ClientPartition
    model_spec: ModelSpec

    @cached_property
    def _split(self) -> tuple[ImageDataset, ImageDataset | None]:
        if self.spec.algorithm != "dsfl":
            return self.train, None
        return split_open_set(self.train, self.spec.open_size)

    @property
    def private_train(self) -> ImageDataset:
        """The samples the clients' partitions index into."""
        return self._split[0]

    @property
    def open_set(self) -> ImageDataset | None:
        """DS-FL's shared unlabeled set (None for FedAvg)."""
        return self._split[1]

    def initial_model(self) -> nn.Module:
        """The round-0 global model, drawn from its own RNG stream."""
        return self.model_spec.build(create_rng_suite(self.spec.seed, MODEL_INIT_STREAM_ID).torch)

    def workload(self) -> FedAvgClientWorkload | DSFLClientWorkload:
        """The picklable client work of the spec's algorithm."""
        if self.spec.algorithm == "dsfl":
            assert self.open_set is not None
            return DSFLClientWorkload(
                self.private_train,
                self.open_set,
                self.partition,
                self.model_spec,
                self.spec.hparams,
                self.spec.dsfl,
                init_model=flatten_module_(self.initial_model()),
            )
        return FedAvgClientWorkload(self.train, self.partition, self.model_spec, self.spec.hparams)

    def server(
        self, rng: RNGSuite | None = None, round: int = 0
    ) -> FedAvgServerHandler | DSFLServerHandler:
        """A server with the initial global model.

        Args:
            rng: the server's RNG suite (default: its round-0 suite from the seed); kept as
                `server.rng` so it can be snapshotted with the round.
            round: rounds already done.
        """
        suite = rng if rng is not None else create_rng_suite(self.spec.seed, SERVER_STREAM_ID)
        common: dict[str, Any] = {
            "num_clients": self.spec.num_clients,
            "clients_per_round": self.spec.clients_per_round or self.spec.num_clients,
            "total_rounds": self.spec.rounds,
            "generator": suite.torch,
            "test_set": self.test,
        }
        server: FedAvgServerHandler | DSFLServerHandler
        if self.spec.algorithm == "dsfl":
            assert self.open_set is not None
            server = DSFLServerHandler(
                self.initial_model(), open_set=self.open_set, dsfl=self.spec.dsfl, **common
            )
        else:
            server = FedAvgServerHandler(self.initial_model(), **common)
        server.rng = suite
        server.round = round
        return server


def build_data(spec: ExperimentSpec) -> tuple[ImageDataset, ImageDataset]:
    """Train and test sets of the spec (synthetic ones are generated from the seed)."""
    train = load_dataset(spec.dataset, root=spec.data_root, size=spec.data_size, seed=spec.seed)
    test = load_dataset(
        spec.dataset, root=spec.data_root, size=spec.test_size, seed=spec.seed, train=False
    )
    return train, test


def build_partition(spec: ExperimentSpec, labels: Any) -> ClientPartition:
    """Partition the training labels among clients, deterministically from the seed.

    For DS-FL the open set (the last `open_size` samples) is left out.
    """
    labels = np.asarray(labels)
    if spec.algorithm == "dsfl":
        labels = labels[: len(labels) - spec.open_size]
    parts = partition_indices(
        labels,
        spec.num_clients,
        spec.partition,
        spec.seed,
        alpha=spec.alpha,
        shards_per_client=spec.shards_per_client,
    )
    return ClientPartition.from_lists(parts)


def build_experiment(spec: ExperimentSpec) -> Experiment:
    """Load data, partition it and describe the model.

    Returns:
        The experiment, ready for `workload()` and `server()`.
    """
    train, test = build_data(spec)
    private = len(train) - (spec.open_size if spec.algorithm == "dsfl" else 0)
    if spec.num_clients > private:
        raise ValueError(
            f"number of clients ({spec.num_clients}) must be <= the number of training "
            f"samples ({private})"
        )
    partition = build_partition(spec, train.labels)
    c, h, _ = train.images.shape[1:]
    model_spec = ModelSpec(spec.model, train.num_classes, c, h, spec.dropout)
    return Experiment(spec, train, test, partition, model_spec)


def simulate(
    spec: ExperimentSpec,
    mode: Literal["sequential", "threads", "processes"] = "sequential",
    workers: int = 1,
    ipc: Literal["shared_memory", "storage"] = "shared_memory",
    on_round: Callable[[RoundResult], None] | None = None,
) -> tuple[FedAvgServerHandler | DSFLServerHandler, list[RoundResult]]:
    """Run the whole experiment in memory.

    Args:
        spec: the experiment.
        mode / workers / ipc: execution mode (never changes the result bytes).
        on_round: called after every round.

    Returns:
        The final server (its `model` is the global model) and every round's result.

    Example:
        >>> server, rounds = simulate(ExperimentSpec(rounds=2), mode="threads", workers=2)
        >>> rounds[-1].summary["test_accuracy"]
    """
    if mode not in EXECUTION_MODES:  # before any data is built
        raise ValueError(f"mode must be one of {', '.join(EXECUTION_MODES)}, got {mode!r}")
    exp = build_experiment(spec)
    server = exp.server()
    results = []
    with make_trainer(
        mode,
        exp.workload(),
        seed=spec.seed,
        workers=workers,
        ipc=ipc,
        threads_per_client=spec.threads_per_client,
    ) as trainer:
        for t in range(1, spec.rounds + 1):
            result = run_round(server, trainer, t)
            results.append(result)
            if on_round is not None:
                on_round(result)
    return server, results
