"""Checks that need the loaded data but must pass before anything of a run is written.

A config can be valid key by key and still impossible: more clients than samples, a GPU the
machine lacks, a user's model factory or algorithm that raises. Found after `prepare` and
`partition` have written their stores, such a mistake leaves a half-made run directory that
the next, corrected run refuses as "made with another config". `preflight` builds in memory
what the first stages would build (the partition, the initial model, the server and the client
work) so each of those mistakes ends with one line before the first store is written.

Example:
    >>> preflight(config, *build_datasets(config))  # raises ValueError, or returns None
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from blazefl.core.devices import run_devices
from blazefl.data import ImageDataset, sample_users
from blazefl.experiment import Experiment, build_partition, model_spec_for
from blazefl.models.inputs import check_model_fits
from blazefl.stages.config import RunConfig

__all__ = ["UserCodeFailedError", "check_model_input", "check_splits", "guarded", "preflight"]

T = TypeVar("T")


class UserCodeFailedError(ValueError):
    """User code named by the config raised; the message names the key and the exception."""


def guarded(key: str, name: str, build: Callable[[], T]) -> T:
    """Run `build`; anything but a ValueError (already one line) becomes one line naming the
    config key and the user's exception (a bug in user code is not a traceback of ours).

    Example:
        >>> guarded("model.name", "mynet:broken", exp.initial_model)
        UserCodeFailedError: model.name 'mynet:broken' failed before anything was written ...
    """
    try:
        return build()
    except ValueError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())[:160]
        raise UserCodeFailedError(
            f"{key} {name!r} failed before anything was written ({type(exc).__name__}: "
            f"{text}): fix it, then run again"
        ) from None


def preflight(config: RunConfig, train: ImageDataset, test: ImageDataset) -> None:
    """Build the partition, the devices, the initial model, the server and the client work in
    memory, so that an impossible config fails before the first store is written.

    Args:
        config: the validated config (`RunConfig`).
        train / test: the loaded data sets (not yet written).

    Raises:
        ValueError: more clients than private samples, an unavailable device, a model that
            does not take the dataset's samples, or user code (model factory, algorithm)
            that raises; one line each.
    """
    spec = config.spec
    run_devices(spec.runtime.device)  # DeviceUnavailableError: one line
    users = sample_users(train)  # a federated dataset's, for data.partition: natural
    codes = None if users is None else users.codes
    partition = build_partition(spec, train.labels.numpy(), train.images.numpy(), codes)
    model_spec = model_spec_for(spec, train)
    model = spec.model.name
    algorithm = spec.fl.algorithm
    exp = Experiment(spec, train, test, partition, model_spec)
    check_model_input(config, train, guarded("model.name", model, exp.initial_model))
    guarded("fl.algorithm", algorithm, exp.server)
    guarded("fl.algorithm", algorithm, exp.workload)


def check_splits(name: str, train: ImageDataset, test: ImageDataset) -> None:
    """Refuse a loader whose training and test sets hold different kinds of samples (one
    line), which would otherwise fail at the first evaluation.

    Args:
        name: the `data.dataset` value, for the message.
        train / test: what the loader returned.

    Raises:
        ValueError: type, sample shape, dtype or class count differ.

    Example:
        >>> check_splits("mydata:load", *build_data(spec))
    """
    if (type(train), train.shape, train.images.dtype, train.num_classes) != (
        type(test),
        test.shape,
        test.images.dtype,
        test.num_classes,
    ):
        raise ValueError(
            f"data.dataset {name!r}: the training set holds {train.describe()} "
            f"({train.num_classes} classes) but the test set {test.describe()} "
            f"({test.num_classes} classes): return the same kind of samples for both splits"
        )


def check_model_input(
    config: RunConfig, train: ImageDataset, model: nn.Module | None = None
) -> None:
    """Check, with one sample on the CPU, that the config's model takes the training set's
    samples and returns `num_classes` logits (`blazefl.models.inputs.check_model_fits`):
    a mismatch is one line here instead of an error inside the first client.

    Args:
        config: the validated config (`RunConfig`).
        train: the training set.
        model: the model to check (default: one built from the config with a throwaway
            generator; nothing the run records is drawn).

    Raises:
        ValueError: the model does not fit the data (or its factory raises): one line.

    Example:
        >>> check_model_input(config, train)  # raises ValueError, or returns None
    """
    name = config.spec.model.name
    if model is None:
        spec = model_spec_for(config.spec, train)
        model = guarded("model.name", name, lambda: spec.build(torch.Generator()))
    check_model_fits(model, train, name, config.spec.data.dataset)
