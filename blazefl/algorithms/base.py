"""`Algorithm`: what the pipeline needs to know about an FL algorithm, in one object.

An algorithm object names its config section, owns its hyper-parameter dataclass (defaults,
validation and docs, see `blazefl.hparams`), says which data it holds back from the clients
(DS-FL's shared open set), and builds its server handler and client workload from an
`ExperimentContext`. Built-ins are registered by name in `blazefl.algorithms.ALGORITHMS`; a
user's own is named in the config by import path (`fl.algorithm: mypkg.algo:MyAlgorithm`) and
needs no edit to this package.

State that outlives a round is declared: a server that is a `StatefulServer`
(`state_tensors()` / `load_state_tensors(tensors)`, or `ModelServerHandler.state` names), and
clients that return a new state dict from `ClientWorker.train` (kept per client by the trainer).

Example:
    >>> class MyAlgorithm(Algorithm):
    ...     HParams = MyHParams          # config section "myalgorithm" (the class name)
    ...     def server(self, ctx, settings):
    ...         return MyServer(ctx.initial_model(), settings, ctx.hparams)
    ...     def workload(self, ctx):
    ...         return MyWorkload(ctx.train, ctx.partition, ctx.model_spec, ctx.train_hparams)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, is_dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from blazefl.algorithms.context import ExperimentContext
from blazefl.core.protocols import ClientWorkload, ServerHandler
from blazefl.core.server import ServerSettings
from blazefl.registry import RegistryError, describe_kind

if TYPE_CHECKING:  # annotations only: spec.py imports this module to find algorithms
    from blazefl.spec import ExperimentSpec

__all__ = ["Algorithm", "NoHParams", "RESERVED_SECTIONS", "adapt_algorithm"]

#: Config sections that belong to the experiment itself; an algorithm may not take one.
RESERVED_SECTIONS = ("seed", "data", "model", "fl", "train", "runtime")


@dataclass(frozen=True)
class NoHParams:
    """The hyper-parameters of an algorithm that has none of its own (FedAvg)."""


class Algorithm:
    """Base class of algorithm objects (subclass it, set `name` and `HParams`).

    Attributes:
        name: the config section of its hyper-parameters (`fedprox` -> `fedprox.mu`); a
            class that does not set it is named after itself, lower-cased (`FedAdam` ->
            `fedadam`).
        HParams: a frozen dataclass whose fields are declared with `blazefl.hparams.param`.
        partition_keys: names of `HParams` fields the client partition depends on (through
            `public_size`); the pipeline re-partitions when they change.
        supports_cuda: whether its client work places itself on the device the trainer
            assigns (`runtime.device: cuda` is refused otherwise).
    """

    name: ClassVar[str] = ""
    HParams: ClassVar[type] = NoHParams
    partition_keys: ClassVar[tuple[str, ...]] = ()
    supports_cuda: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:  # a subclass of FedAvg must not take the name fedavg
            cls.name = cls.__name__.lower()

    def public_size(self, hparams: Any) -> int:
        """Training samples (the last ones) held back from the clients as shared public data.

        Returns:
            0 unless the algorithm uses a public set.
        """
        return 0

    def check(self, spec: ExperimentSpec) -> None:
        """Cross-section checks on a spec (raise `HParamError` with the fix); default none."""

    def server(self, ctx: ExperimentContext, settings: ServerSettings) -> ServerHandler[Any, Any]:
        """The server handler with the experiment's initial global model.

        Args:
            ctx: the experiment's data, partition, model spec and hyper-parameters.
            settings: counts, the server's generators, test set, evaluation device.
        """
        raise NotImplementedError

    def workload(self, ctx: ExperimentContext) -> ClientWorkload[Any, Any]:
        """The picklable client work (pickled once into every worker process)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def adapt_algorithm(obj: Any, path: str) -> Algorithm:
    """Check a user's algorithm found at import path `path`; a class is instantiated, but only
    once it is known to be an `Algorithm` subclass (`subprocess:Popen` is never called).

    Args:
        obj: what the import path resolved to.
        path: the import path, for messages.

    Returns:
        The algorithm object.

    Raises:
        RegistryError: not an `Algorithm` subclass or instance, or its class cannot be built.
        ValueError: it lacks a valid section name, an `HParams` dataclass or the builders.

    Example:
        >>> adapt_algorithm(FedAvg, "blazefl.algorithms:FedAvg").name
        'fedavg'
    """
    # type() rather than isinstance(): the check reads the real type, not a `__class__` the
    # user's object may claim; nothing of the object is called before it passes
    if issubclass(type(obj), type) and issubclass(obj, Algorithm):
        try:
            algo = obj()
        except Exception as exc:  # e.g. an __init__ that wants arguments: the user's to fix
            detail = " ".join(str(exc).split())[:200]
            raise RegistryError(
                f"algorithm {path!r}: {describe_kind(obj)}() failed ({type(exc).__name__}: "
                f"{detail}); an Algorithm subclass must be constructible without arguments"
            ) from None
    elif issubclass(type(obj), Algorithm):
        algo = obj
    else:
        raise RegistryError(
            f"algorithm {path!r} resolves to {describe_kind(obj)}, not an Algorithm; name a "
            "subclass of blazefl.algorithms.Algorithm (or an instance of one)"
        )
    name = getattr(algo, "name", "")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(
            f"algorithm {path!r} needs a `name` (lower-case identifier: its config section), "
            f"got {name!r}"
        )
    if name in RESERVED_SECTIONS:
        raise ValueError(f"algorithm {path!r}: name {name!r} is a reserved config section")
    hp = getattr(algo, "HParams", None)
    if not (isinstance(hp, type) and is_dataclass(hp)):
        raise ValueError(f"algorithm {path!r} needs `HParams`, a dataclass (or NoHParams)")
    for method in ("server", "workload", "public_size", "check"):
        if not callable(getattr(algo, method, None)):
            raise ValueError(f"algorithm {path!r} has no {method}() (subclass Algorithm)")
    return algo
