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

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from blazefl.algorithms import ALGORITHMS, RESERVED_SECTIONS, Algorithm
from blazefl.algorithms.common import TrainHParams
from blazefl.core.devices import DeviceChoices
from blazefl.core.loop import EXECUTION_MODES
from blazefl.core.process_pool import IPC_MODES
from blazefl.data import DATASETS, PARTITIONERS
from blazefl.hparams import (
    MAX_CLIENTS,
    MAX_ROUNDS,
    MAX_SAMPLES,
    MAX_THREADS,
    MAX_WORKERS,
    FieldSpec,
    HParamError,
    field_specs,
    from_mapping,
    param,
    validate,
)
from blazefl.models import MODELS
from blazefl.trackers import TrackChoices

__all__ = [
    "DataConfig",
    "ModelConfig",
    "FLConfig",
    "RuntimeConfig",
    "ExperimentSpec",
    "SECTIONS",
    "algorithm_of",
    "schema",
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
    partition: str = param(
        "dirichlet", choices=lambda: PARTITIONERS, doc="split method or 'pkg.module:partitioner'"
    )
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

    Mode, workers, IPC and tracking never change result bytes; the intra-op thread count
    does (conv backward and large reductions split work by thread), so it is recorded, and so
    does the device (a GPU run and a CPU run are different experiments). Whether the GPU
    exists is checked when a trainer starts, so a GPU config validates on any machine.
    """

    mode: str = param(
        "threads", choices=lambda: EXECUTION_MODES, affects_bytes=False, doc="execution mode"
    )
    workers: int = param(2, low=1, high=MAX_WORKERS, affects_bytes=False, doc="pool size")
    ipc: str = param(
        "shared_memory", choices=lambda: IPC_MODES, affects_bytes=False, doc="process-pool IPC"
    )
    threads_per_client: int = param(1, low=1, high=MAX_THREADS, doc="intra-op threads")
    device: str = param(
        "cpu", choices=DeviceChoices, doc="cpu, cuda (every GPU) or cuda:N (docs/gpu.md)"
    )
    # last, so the settings before it keep their places in params.yaml and the schema
    track: str = param(
        "none",
        choices=TrackChoices,
        affects_bytes=False,
        doc="experiment tracking (README: Tracking); never changes bytes",
    )

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
        for key, registry, name in (
            ("model.name", MODELS, self.model.name),
            ("data.dataset", DATASETS, self.data.dataset),
        ):
            try:
                registry.get(name)
            except ValueError as exc:
                raise HParamError(f"{key}: {exc}") from None
        if self.hparams is None:
            object.__setattr__(self, "hparams", _default_hparams(self.fl.algorithm))
        elif not isinstance(self.hparams, algo.HParams):
            raise HParamError(
                f"hparams of {algo.name} must be a {algo.HParams.__name__}, got "
                f"{type(self.hparams).__name__}"
            )
        # an algorithm's section is checked against its declared bounds here, so a plugin's
        # HParams need not call validate() itself (it may, for direct construction)
        validate(self.hparams, prefix=f"{algo.name}.")
        k, n = self.fl.clients_per_round, self.data.clients
        if k is not None and k > n:
            raise HParamError(
                f"fl.clients_per_round ({k}) must be <= data.clients ({n}); lower it or add clients"
            )
        if self.runtime.device != "cpu" and not algo.supports_cuda:
            raise HParamError(
                f"fl.algorithm {algo.name} does not run on a GPU yet (runtime.device is "
                f"{self.runtime.device}): set runtime.device: cpu"
            )
        algo.check(self)

    @property
    def algorithm(self) -> Algorithm:
        """The selected algorithm object (built-in or imported)."""
        return ALGORITHMS.get(self.fl.algorithm)

    # -- the flat form: dotted keys, as params.yaml, manifests and DVC name them ----------
    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> ExperimentSpec:
        """Build from dotted keys (`{"data.clients": 8, "train.lr": 0.05, ...}`); keys left
        out keep their defaults.

        Raises:
            HParamError: unknown key or section, wrong type or value, cross-field conflict.

        Example:
            >>> ExperimentSpec.from_flat({"seed": 3, "fl.algorithm": "fedprox", "fedprox.mu": 0.1})
        """
        algo = algorithm_of(flat.get("fl.algorithm", FLConfig.algorithm))
        groups = _section_values(flat, algo)
        built: dict[str, Any] = {s: from_mapping(c, groups[s], s) for s, c in SECTIONS.items()}
        hparams: Any = from_mapping(algo.HParams, groups[algo.name], algo.name)
        seed = _SEED.check(flat.get("seed", _SEED.default), "seed")
        return cls(seed=seed, hparams=hparams, **built)

    def to_flat(self) -> dict[str, Any]:
        """Every setting as dotted keys, in params.yaml order (the algorithm's section last)."""
        out: dict[str, Any] = {"seed": self.seed}
        sections: dict[str, Any] = {s: getattr(self, s) for s in SECTIONS}
        sections[self.algorithm.name] = self.hparams
        for section, obj in sections.items():
            out.update({f"{section}.{f.name}": getattr(obj, f.name) for f in fields(obj)})
        return out

    def updated(self, changes: Mapping[str, Any]) -> ExperimentSpec:
        """A copy with some dotted keys changed (`spec.updated({"data.size": 80})`)."""
        flat = self.to_flat()
        if "fl.algorithm" in changes and changes["fl.algorithm"] != self.fl.algorithm:
            flat = {k: v for k, v in flat.items() if k.partition(".")[0] != self.algorithm.name}
        return ExperimentSpec.from_flat({**flat, **changes})


#: The experiment's own sections, in params.yaml order (the algorithm's section follows).
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "fl": FLConfig,
    "train": TrainHParams,
    "runtime": RuntimeConfig,
}
assert ("seed", *SECTIONS) == RESERVED_SECTIONS

_SEED = next(s for s in field_specs(ExperimentSpec) if s.name == "seed")


def algorithm_of(name: Any) -> Algorithm:
    """The algorithm object `fl.algorithm` names (built-in or import path).

    Raises:
        HParamError: not a string, unknown, or not importable.
    """
    if not isinstance(name, str):
        raise HParamError(f"fl.algorithm must be a string, got {name!r}")
    try:
        return ALGORITHMS.get(name)
    except ValueError as exc:  # RegistryError, or a malformed user algorithm
        raise HParamError(f"fl.algorithm: {exc}") from None


def schema(algorithm: str = "fedavg") -> dict[str, FieldSpec]:
    """Every dotted key of an experiment with `algorithm`, in params.yaml order.

    Returns:
        {"seed": spec, "data.dataset": spec, ..., "<algorithm>.<key>": spec}.
    """
    algo = algorithm_of(algorithm)
    out = {"seed": _SEED}
    for section, cls in {**SECTIONS, algo.name: algo.HParams}.items():
        out.update({f"{section}.{s.name}": s for s in field_specs(cls)})
    return out


def _section_values(flat: Mapping[str, Any], algo: Algorithm) -> dict[str, dict[str, Any]]:
    """Group dotted keys by section; refuse unknown sections and malformed keys.

    Sections of built-in algorithms that are not selected are validated (a typo is caught)
    and then ignored: they neither change the run nor its hash.
    """
    builtins = {a.name: a for a in map(ALGORITHMS.get, ALGORITHMS)}
    groups: dict[str, dict[str, Any]] = {s: {} for s in (*SECTIONS, algo.name)}
    others: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if key == "seed":
            continue
        section, dot, leaf = key.partition(".") if isinstance(key, str) else ("", "", "")
        if not dot or not leaf or "." in leaf:
            raise HParamError(f"unknown config key {key!r}: keys look like train.lr or seed")
        if section in groups:
            groups[section][leaf] = value
        elif section in builtins:
            others.setdefault(section, {})[leaf] = value
        else:
            raise HParamError(
                f"unknown config section {section!r} (key {key}); sections: "
                f"seed, {', '.join(groups)}"
            )
    for section, values in others.items():
        from_mapping(builtins[section].HParams, values, section)
    return groups
