"""Reading the run's stores: the dataset (zarr, written by `prepare`) and the client
partitions (zarr: flat indices + offsets, written by `partition`), and the experiment built
from them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from blazefl.algorithms.common import ClientPartition
from blazefl.algorithms.fedavg import ModelSpec
from blazefl.data import ImageDataset
from blazefl.experiment import Experiment, model_spec_for
from blazefl.stages.artifacts import MANIFEST, ArtifactError, RunDir
from blazefl.stages.config import to_spec

__all__ = [
    "load_labels",
    "load_dataset_store",
    "load_partition",
    "build_from_stores",
    "model_spec_from_store",
]


def _open_group(path: Any, what: str) -> Any:
    import zarr

    if not (path / "zarr.json").exists() or not (path / MANIFEST).exists():
        raise ArtifactError(f"{what} store {path} is missing: run the '{what}' stage first")
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises many types for a damaged store
        raise ArtifactError(
            f"{what} store {path} is corrupt ({exc}): delete it and rerun"
        ) from None


def _read_array(group: Any, name: str, where: Any) -> np.ndarray:
    try:
        return np.asarray(group[name][...])
    except Exception as exc:
        raise ArtifactError(
            f"{where}/{name} is missing or corrupt ({exc}): delete and rerun"
        ) from None


def load_labels(run: RunDir) -> np.ndarray:
    """Training labels from the dataset store."""
    return _read_array(_open_group(run.dataset, "prepare"), "train_labels", run.dataset)


def load_dataset_store(run: RunDir) -> tuple[ImageDataset, ImageDataset]:
    """Train and test sets from `RUN/dataset`."""
    group = _open_group(run.dataset, "prepare")
    attrs = dict(group.attrs)
    out = []
    for split in ("train", "test"):
        out.append(
            ImageDataset(
                images=torch.from_numpy(_read_array(group, f"{split}_images", run.dataset)),
                labels=torch.from_numpy(_read_array(group, f"{split}_labels", run.dataset)),
                num_classes=int(attrs["num_classes"]),
                mean=tuple(attrs["mean"]),
                std=tuple(attrs["std"]),
                crop_padding=int(attrs["crop_padding"]),
                hflip=bool(attrs["hflip"]),
            )
        )
    return out[0], out[1]


def load_partition(run: RunDir) -> ClientPartition:
    """Per-client index arrays from `RUN/partitions`."""
    group = _open_group(run.partitions, "partition")
    indices = _read_array(group, "indices", run.partitions)
    offsets = _read_array(group, "offsets", run.partitions)
    return ClientPartition(torch.from_numpy(indices), torch.from_numpy(offsets))


def build_from_stores(
    config: dict[str, Any],
    run: RunDir,
    data: tuple[ImageDataset, ImageDataset] | None = None,
) -> Experiment:
    """The experiment with data and partition read from the run's stores.

    Args:
        config: validated flat config.
        run: the run directory.
        data: the (train, test) sets already in memory, equal to the store's (the runner
            passes what `prepare` just wrote, instead of reading it back).
    """
    spec = to_spec(config)
    train, test = data if data is not None else load_dataset_store(run)
    part = load_partition(run)
    if part.num_clients != spec.data.clients:
        raise ArtifactError(
            f"partitions hold {part.num_clients} clients but data.clients is "
            f"{spec.data.clients}: rerun the partition stage or use a new --out"
        )
    return Experiment(spec, train, test, part, model_spec_for(spec, train))


def model_spec_from_store(config: dict[str, Any], run: RunDir) -> ModelSpec:
    """The model spec from the dataset store's metadata, without reading any array."""
    group = _open_group(run.dataset, "prepare")
    try:
        c, h, _ = group["train_images"].shape[1:]
        num_classes = int(group.attrs["num_classes"])
    except Exception as exc:
        raise ArtifactError(f"{run.dataset} is corrupt ({exc}): delete it and rerun") from None
    return ModelSpec(config["model.name"], num_classes, c, h, config["model.dropout"])
