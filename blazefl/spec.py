"""The experiment's settings as frozen dataclasses: the one source of every default.

An `ExperimentSpec` is a seed plus sections (`data`, `model`, `fl`, `train`, `runtime`) and the
selected algorithm's own hyper-parameters. Each field is declared with `param(...)` (default,
bounds, choices, whether it changes result bytes), and the pipeline's config schema
(params.yaml keys such as `train.lr` or `fedprox.mu`) is derived from these declarations.

Upper bounds are generous but finite, so an absurd value (a typo such as a billion samples or
100,000 intra-op threads) is refused before anything is allocated or started.

Example:
    >>> spec = ExperimentSpec(seed=1, data=DataConfig(clients=10), fl=FLConfig(rounds=3))
    >>> spec.algorithm.name, spec.hparams
    ('fedavg', NoHParams())
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from blazefl.algorithms import ALGORITHMS, Algorithm
from blazefl.algorithms.common import TrainHParams
from blazefl.core.loop import EXECUTION_MODES
from blazefl.core.process_pool import IPC_MODES
from blazefl.data import DATASETS, PARTITIONERS
from blazefl.hparams import (
    MAX_CLIENTS,
    MAX_ROUNDS,
    MAX_SAMPLES,
    MAX_THREADS,
    MAX_WORKERS,
    HParamError,
    param,
    validate,
)
from blazefl.models import MODELS

__all__ = [
    "DataConfig",
    "ModelConfig",
    "FLConfig",
    "RuntimeConfig",
    "ExperimentSpec",
]

@dataclass(frozen=True)
class DataConfig:
    """Which data, how much, and how it is split among clients (config section `data`)."""

    dataset: str = param(
        "synthetic", choices=lambda: DATASETS, doc="dataset name or 'pkg.module:loader'"
    )
    root: str | None = param(None, doc="folder holding the dataset files (real datasets)")
    size: int = param(10000, low=1, high=MAX_SAMPLES, doc="training samples (synthetic)")
    test_size: int = param(2000, low=1, high=MAX_SAMPLES, doc="test samples (synthetic)")
    clients: int = param(20, low=1, high=MAX_CLIENTS, doc="number of clients")
    partition: str = param("dirichlet", choices=lambda: PARTITIONERS, doc="split method")
    alpha: float = param(1.0, low=0.0, low_open=True, high=1e6, doc="Dirichlet concentration")
    shards_per_client: int = param(2, low=1, high=100_000, doc="shards per client (shards)")

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ModelConfig:
    """The model architecture (config section `model`)."""

    name: str = param("cnn", choices=lambda: MODELS, doc="model name or 'pkg.module:factory'")
    dropout: float = param(0.0, low=0.0, high=0.99, doc="dropout probability (cnn)")

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class FLConfig:
    """The federated protocol (config section `fl`)."""

    algorithm: str = param(
        "fedavg", choices=lambda: ALGORITHMS, doc="algorithm name or 'pkg.module:Algorithm'"
    )
    rounds: int = param(10, low=0, high=MAX_ROUNDS, affects_bytes=False, doc="FL rounds")
    clients_per_round: int | None = param(
        10, low=1, high=MAX_CLIENTS, doc="clients sampled per round (null: all)"
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class RuntimeConfig:
    """How the experiment executes (config section `runtime`).

    Mode, workers and IPC never change result bytes; the intra-op thread count does (conv
    backward and large reductions split work by thread), so it is recorded.
    """

    mode: str = param(
        "threads", choices=lambda: EXECUTION_MODES, affects_bytes=False, doc="execution mode"
    )
    workers: int = param(2, low=1, high=MAX_WORKERS, affects_bytes=False, doc="pool size")
    ipc: str = param(
        "shared_memory", choices=lambda: IPC_MODES, affects_bytes=False, doc="process-pool IPC"
    )
    threads_per_client: int = param(1, low=1, high=MAX_THREADS, doc="intra-op threads")

    def __post_init__(self) -> None:
        validate(self)


def _default_hparams(algorithm: str) -> Any:
    return ALGORITHMS.get(algorithm).HParams()


@dataclass(frozen=True)
class ExperimentSpec:
    """Everything that determines an experiment (execution mode and workers do not change
    its bytes).

    Args:
        seed: experiment seed; every RNG stream derives from (seed, stream id).
        data / model / fl / train / runtime: the sections.
        hparams: the selected algorithm's hyper-parameters (an instance of its `HParams`;
            None means its defaults).

    Example:
        >>> spec = ExperimentSpec(fl=FLConfig(algorithm="fedprox"), hparams=FedProxHParams(mu=0.1))
    """

    seed: int = param(0, low=0, doc="experiment seed")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    train: TrainHParams = field(default_factory=TrainHParams)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    hparams: Any = None

    def __post_init__(self) -> None:
        validate(self)
        algo = self.algorithm  # resolves user import paths now: a bad one fails here
        if self.hparams is None:
            object.__setattr__(self, "hparams", _default_hparams(self.fl.algorithm))
        elif not isinstance(self.hparams, algo.HParams):
            raise HParamError(
                f"hparams of {algo.name} must be a {algo.HParams.__name__}, got "
                f"{type(self.hparams).__name__}"
            )
        k, n = self.fl.clients_per_round, self.data.clients
        if k is not None and k > n:
            raise HParamError(
                f"fl.clients_per_round ({k}) must be <= data.clients ({n}); lower it or add "
                "clients"
            )
        algo.check(self)

    @property
    def algorithm(self) -> Algorithm:
        """The selected algorithm object (built-in or imported)."""
        return ALGORITHMS.get(self.fl.algorithm)

    def replace(self, **changes: Any) -> ExperimentSpec:
        """A copy with top-level fields replaced (sections are replaced whole)."""
        return dataclasses.replace(self, **changes)
