"""Build a complete FL experiment from one frozen spec, and simulate it in memory.

The pipeline (artifacts, CLI, DVC) builds the same objects from params.yaml; this module is
the library-only path: `simulate(spec, mode="threads", workers=2)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
from torch import nn

from blazefl.algorithms import Algorithm, ClientPartition, TrainHParams, split_open_set
from blazefl.algorithms.fedavg import ModelSpec
from blazefl.core.devices import run_devices, server_device
from blazefl.core.loop import ExecutionSettings, RoundResult, run_round
from blazefl.core.protocols import ClientWorkload, ServerHandler
from blazefl.core.server import ServerSettings
from blazefl.data import ImageDataset, load_dataset, partition_indices, sample_users
from blazefl.reproducibility import SERVER_STREAM_ID, RNGSuite, create_rng_suite
from blazefl.spec import DataConfig, ExperimentSpec, FLConfig, ModelConfig, RuntimeConfig

__all__ = [
    "DataConfig",
    "ExperimentSpec",
    "Experiment",
    "FLConfig",
    "ModelConfig",
    "RuntimeConfig",
    "build_data",
    "build_experiment",
    "build_partition",
    "model_spec_for",
    "simulate",
    "MODEL_INIT_STREAM_ID",
]

#: RNG stream of the initial global model's weights (distinct from server and clients).
MODEL_INIT_STREAM_ID = SERVER_STREAM_ID + 1


@dataclass
class Experiment:
    """The built pieces of an experiment.

    `train` is the whole training set; an algorithm with a public set (DS-FL's open set)
    holds back its last `algorithm.public_size(...)` samples and only the rest is
    partitioned among clients.
    """

    spec: ExperimentSpec
    train: ImageDataset
    test: ImageDataset
    partition: ClientPartition
    model_spec: ModelSpec

    @property
    def algorithm(self) -> Algorithm:
        return self.spec.algorithm

    # -- the ExperimentContext an algorithm builds from -------------------------------------
    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def hparams(self) -> Any:
        """The selected algorithm's own hyper-parameters."""
        return self.spec.hparams

    @property
    def train_hparams(self) -> TrainHParams:
        """The `train` section."""
        return self.spec.train

    @cached_property
    def _split(self) -> tuple[ImageDataset, ImageDataset | None]:
        public = self.algorithm.public_size(self.spec.hparams)
        if public == 0:
            return self.train, None
        return split_open_set(self.train, public)

    @property
    def private_train(self) -> ImageDataset:
        """The samples the clients' partitions index into."""
        return self._split[0]

    @property
    def public_set(self) -> ImageDataset | None:
        """The algorithm's shared public set (DS-FL's open set), or None."""
        return self._split[1]

    def initial_model(self) -> nn.Module:
        """The round-0 global model, drawn from its own RNG stream."""
        return self.model_spec.build(create_rng_suite(self.spec.seed, MODEL_INIT_STREAM_ID).torch)

    def server_settings(self, rng: RNGSuite | None = None, round: int = 0) -> ServerSettings:
        """What the server is built from.

        Args:
            rng: the server's RNG suite (default: its round-0 suite from the seed).
            round: rounds already done.
        """
        suite = rng if rng is not None else create_rng_suite(self.spec.seed, SERVER_STREAM_ID)
        return ServerSettings(
            num_clients=self.spec.data.clients,
            clients_per_round=self.spec.fl.clients_per_round or self.spec.data.clients,
            total_rounds=self.spec.fl.rounds,
            rng=suite,
            test_set=self.test,
            eval_device=self.eval_device,
            round=round,
        )

    def server_kwargs(self, settings: ServerSettings) -> dict[str, Any]:
        """Keyword arguments for a server built the way 0.2 plugins build theirs.

        A 0.2 algorithm's ``server(exp, generator)`` receives the settings in place of the
        generator and passes ``**exp.server_kwargs(generator)`` on to a package server, so
        the plugin of a published run re-executes unchanged. New code passes the settings.
        """
        return {"settings": settings}

    def workload(self) -> ClientWorkload[Any, Any]:
        """The picklable client work of the spec's algorithm."""
        return self.algorithm.workload(self)

    def server(self, rng: RNGSuite | None = None, round: int = 0) -> ServerHandler[Any, Any]:
        """A server with the initial global model.

        Args:
            rng: the server's RNG suite (default: its round-0 suite from the seed); the
                server keeps it as `server.rng`, to be snapshotted with the round.
            round: rounds already done.

        The server keeps its model on the CPU and evaluates on the run's first device
        (`ServerSettings.eval_device`).

        Raises:
            DeviceUnavailableError: `runtime.device` names a GPU this machine lacks.
        """
        settings = self.server_settings(rng, round)
        server: Any = self.algorithm.server(self, settings)
        if getattr(server, "rng", None) is None:
            # a server built with the four-number form of earlier versions: it has the
            # settings' generator but not the suite the pipeline snapshots
            server.rng = settings.rng
            server.round = round
        return server  # type: ignore[no-any-return]

    @property
    def eval_device(self) -> str:
        """Where the server evaluates: the first of the run's devices (`blazefl.core.devices`)."""
        return server_device(run_devices(self.spec.runtime.device))


def build_data(spec: ExperimentSpec) -> tuple[ImageDataset, ImageDataset]:
    """Train and test sets of the spec (synthetic ones are generated from the seed)."""
    d = spec.data
    train = load_dataset(d.dataset, root=d.root, size=d.size, seed=spec.seed)
    test = load_dataset(d.dataset, root=d.root, size=d.test_size, seed=spec.seed, train=False)
    return train, test


def build_partition(
    spec: ExperimentSpec,
    labels: Any,
    features: np.ndarray | None = None,
    users: np.ndarray | None = None,
) -> ClientPartition:
    """Partition the training labels among clients, deterministically from the seed.

    An algorithm's public set (the last `public_size` samples) is left out.

    Args:
        spec: the experiment (`data.partition` and its settings).
        labels: one label per training sample.
        features: the training images (one row per sample), for a user partitioner that
            declares `features` (`blazefl.data.wants_features`).
        users: one user code per training sample (`blazefl.data.sample_users`), for
            `data.partition: natural`.

    Raises:
        ValueError: fewer private samples than clients, or a user partitioner's mistake.
    """
    labels = np.asarray(labels)
    private = len(labels) - spec.algorithm.public_size(spec.hparams)
    if spec.data.clients > private:
        raise ValueError(
            f"data.clients ({spec.data.clients}) must be <= the number of private training "
            f"samples ({private}): lower data.clients"
        )
    parts = partition_indices(
        labels[:private],
        spec.data.clients,
        spec.data.partition,
        spec.seed,
        alpha=spec.data.alpha,
        shards_per_client=spec.data.shards_per_client,
        features=None if features is None else features[:private],
        users=None if users is None else np.asarray(users)[:private],
    )
    return ClientPartition.from_lists(parts)


def model_spec_for(spec: ExperimentSpec, train: ImageDataset) -> ModelSpec:
    """The model spec fitting the training set's sample shape, dtype and classes.

    Images ``[C, H, W]`` give ``in_channels=C, image_size=H`` as always; other samples (a
    `FeatureDataset`'s vectors or token sequences) give 0 for both, and factories learn
    their shape from ``input_shape`` (`blazefl.models.build_model`).
    """
    shape = tuple(int(d) for d in train.images.shape[1:])
    c, h = (shape[0], shape[1]) if len(shape) == 3 else (0, 0)
    return ModelSpec(
        spec.model.name,
        train.num_classes,
        c,
        h,
        spec.model.dropout,
        input_shape=shape,
        input_dtype=train.input_dtype,
    )


def build_experiment(spec: ExperimentSpec) -> Experiment:
    """Load data, partition it and describe the model.

    Returns:
        The experiment, ready for `workload()` and `server()`.
    """
    train, test = build_data(spec)
    users = sample_users(train)
    partition = build_partition(spec, train.labels, users=None if users is None else users.codes)
    return Experiment(spec, train, test, partition, model_spec_for(spec, train))


def simulate(
    spec: ExperimentSpec,
    mode: Literal["sequential", "threads", "processes"] | None = None,
    workers: int | None = None,
    ipc: Literal["shared_memory", "storage"] | None = None,
    on_round: Callable[[RoundResult], None] | None = None,
) -> tuple[Any, list[RoundResult]]:
    """Run the whole experiment in memory.

    Args:
        spec: the experiment.
        mode / workers / ipc: execution (default: `spec.runtime`; never changes the bytes).
        on_round: called after every round.

    Returns:
        The final server (its `model` is the global model) and every round's result.

    Example:
        >>> server, rounds = simulate(ExperimentSpec(fl=FLConfig(rounds=2)), mode="threads")
        >>> rounds[-1].summary["test_accuracy"]
    """
    execution = ExecutionSettings.of(spec.runtime, mode, workers, ipc)  # before data is built
    exp = build_experiment(spec)
    server = exp.server()
    results = []
    with execution.make_trainer(
        exp.workload(),
        seed=spec.seed,
        threads_per_client=spec.runtime.threads_per_client,
        device=spec.runtime.device,
    ) as trainer:
        for t in range(1, spec.fl.rounds + 1):
            result = run_round(server, trainer, t)
            results.append(result)
            if on_round is not None:
                on_round(result)
    return server, results
