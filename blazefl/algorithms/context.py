"""`ExperimentContext`: what an algorithm builds its server and client work from.

An algorithm object (`Algorithm`) never sees the pipeline, files or the command line: its
`server` and `workload` builders get this context, which the library (`blazefl.experiment`)
and the pipeline (`blazefl run`, `dvc repro`, `verify`) fill from the same frozen spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from torch import nn

from blazefl.algorithms.common import ClientPartition, TrainHParams
from blazefl.data import ImageDataset

if TYPE_CHECKING:  # annotations only: fedavg.py (which defines ModelSpec) names this module
    from blazefl.algorithms.fedavg import ModelSpec

__all__ = ["ExperimentContext"]


class ExperimentContext(Protocol):
    """The built pieces of an experiment, as an algorithm reads them.

    Attributes:
        seed: the experiment seed.
        hparams: the algorithm's own hyper-parameters (an instance of its `HParams`).
        train_hparams: the `train` section (local SGD: lr, epochs, batch size, ...).
        train / test: the whole training set and the test set.
        private_train: the samples the clients' partitions index into (`train` without an
            algorithm's public set).
        public_set: the algorithm's shared public set (`Algorithm.public_size`), or None.
        partition: every client's sample indices into `private_train`.
        model_spec: how to build the model (architecture, classes, input shape).

    Example:
        >>> def server(self, ctx: ExperimentContext, settings: ServerSettings):
        ...     return MyServer(ctx.initial_model(), settings, ctx.hparams)
    """

    @property
    def seed(self) -> int: ...

    @property
    def hparams(self) -> Any: ...

    @property
    def train_hparams(self) -> TrainHParams: ...

    @property
    def train(self) -> ImageDataset: ...

    @property
    def test(self) -> ImageDataset: ...

    @property
    def private_train(self) -> ImageDataset: ...

    @property
    def public_set(self) -> ImageDataset | None: ...

    @property
    def partition(self) -> ClientPartition: ...

    @property
    def model_spec(self) -> ModelSpec: ...

    def initial_model(self) -> nn.Module:
        """The round-0 global model, drawn from its own RNG stream (the same in every run of
        the spec)."""
        ...
