"""The dataset registry: built-in datasets by name, a user's own loader by import path."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from blazefl.data.datasets import ImageDataset, synthetic_dataset
from blazefl.data.leaf import LEAF_DATASETS
from blazefl.data.torchvision_data import TORCHVISION_DATASETS, load_torchvision_dataset
from blazefl.registry import Registry, function_accepting

__all__ = ["DATASETS", "DatasetLoader", "load_dataset"]

DatasetLoader = Callable[..., ImageDataset]
"""`loader(*, root, size, seed, train) -> ImageDataset | FeatureDataset`: `size` and `seed`
matter to generated datasets, `root` to datasets read from files; a loader ignores what it
does not use. uint8 images are an `ImageDataset`; float32 vectors (tabular) and int64 token
sequences a `FeatureDataset` (its subclass)."""

DATASETS: Registry[DatasetLoader] = Registry(
    "dataset", adapt=function_accepting("root", "size", "seed", "train")
)
"""Datasets by config name (`data.dataset`); a user's own loader is given as
'pkg.module:loader' (a plain function) and called with the keyword arguments of
:data:`DatasetLoader`; anything else is refused on import, before it is called."""


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    size: int = 20000,
    seed: int = 0,
    train: bool = True,
) -> ImageDataset:
    """Load a dataset by name: the built-in synthetic one, scikit-learn's bundled digits
    (optional extra ``blazefl[digits]``), a local torchvision one or LEAF's FEMNIST and
    Shakespeare (JSON under ``root``, `blazefl.data.leaf`).

    Args:
        name: a name in ``DATASETS`` or an import path 'pkg.module:loader'.
        root: local folder for the torchvision datasets (config key ``data.root``); unused for
            ``"synthetic"`` and ``"digits"``.
        size: number of samples of the synthetic dataset (> 0); real datasets load whole.
        seed: seed of the synthetic dataset; real datasets ignore it (digits has a fixed split).
        train: train split (True) or test split (False).

    Returns:
        The ``ImageDataset`` (or ``FeatureDataset``, its subclass, from a user's loader).

    Example:
        >>> load_dataset("synthetic", size=500, seed=1, train=False).shape
        (3, 32, 32)
    """
    if size <= 0:
        raise ValueError(f"size must be > 0, got {size}")
    loader = DATASETS.get(name)  # RegistryError (a ValueError) for an unknown name
    data = loader(root=root, size=size, seed=seed, train=train)
    if not isinstance(data, ImageDataset):
        raise ValueError(
            f"dataset loader {name!r} returned {type(data).__name__}: return an ImageDataset "
            "(uint8 images) or a FeatureDataset (float32 vectors, int64 token ids)"
        )
    return data


def _load_digits(*, train: bool, **_: Any) -> ImageDataset:
    # Imported here: digits.py builds on this module's ImageDataset.
    from blazefl.data.digits import load_digits_dataset

    return load_digits_dataset(train=train)


def _torchvision_loader(name: str) -> DatasetLoader:
    def load(*, root: str | os.PathLike[str] | None, train: bool, **_: Any) -> ImageDataset:
        if root is None:
            raise ValueError(
                f"dataset {name!r} is read from a local folder: set data.root to the folder "
                "holding the torchvision files (downloads are disabled)"
            )
        return load_torchvision_dataset(name, root, train=train)

    return load


DATASETS.register(
    "synthetic", lambda *, size, seed, train, **_: synthetic_dataset(size, seed, train=train)
)
for _name in TORCHVISION_DATASETS:
    DATASETS.register(_name, _torchvision_loader(_name))
DATASETS.register("digits", _load_digits)
for _name, _load in LEAF_DATASETS.items():  # LEAF's JSON under data.root; see leaf.py
    DATASETS.register(_name, lambda *, root, train, _load=_load, **_: _load(root, train=train))
