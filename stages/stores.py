"""Reading the run's stores: the dataset (zarr, written by `prepare`) and the client
partitions (zarr: flat indices + offsets, written by `partition`), and the experiment built
from them."""

from __future__ import annotations

import contextlib
import math
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blazefl.algorithms.common import ClientPartition
from blazefl.data import FEATURE_DTYPES, FeatureDataset, ImageDataset
from blazefl.data.partitioners import wants_features
from blazefl.experiment import Experiment, model_spec_for
from blazefl.stages.artifacts import MANIFEST, ArtifactError, RunDir
from blazefl.stages.config import RunConfig
from blazefl.stages.tensor_checks import check_partition_arrays, check_zarr_array_meta

#: Most elements a stored image array may declare (16 Gi): a bound before anything else.
MAX_STORED_ELEMENTS = 1 << 34
#: zarr dtype -> bytes per element of the sample arrays a store may hold.
_ITEMSIZE = {"uint8": 1, **{str(d).removeprefix("torch."): d.itemsize for d in FEATURE_DTYPES}}


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


def _read_array(
    group: Any,
    name: str,
    where: Path,
    max_elements: int | None = None,
    dtype: str | None = None,
    ndim: int | None = None,
) -> np.ndarray:
    """Read a stored array; with `max_elements`, only after checking its declared metadata
    (bounded size, the expected dtype and rank), so nothing is allocated before that."""
    if max_elements is not None:
        check_zarr_array_meta(where / name / "zarr.json", max_elements, dtype=dtype, ndim=ndim)
    try:
        return np.asarray(group[name][...])
    except Exception as exc:
        raise ArtifactError(
            f"{where}/{name} is missing or corrupt ({exc}): delete and rerun"
        ) from None


def _stored_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):  # os.walk does not follow symlinked folders
        for f in files:
            with contextlib.suppress(OSError):
                # a chunk may be a link into DVC's cache (its `symlink` cache type; the run
                # checker accepts only such links): count what it points to if that is a
                # regular file, never a device or FIFO
                st = os.stat(os.path.join(dirpath, f))
                total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def _samples_layout(attrs: dict[str, Any], where: Path) -> tuple[str, str, int]:
    """(array suffix, zarr dtype, rank) of the store's samples: uint8 `[N, C, H, W]` images
    (every store without a "kind", i.e. all stores of earlier versions) or a
    `FeatureDataset`'s samples, as its attrs record them."""
    kind = attrs.get("kind", "images")
    if kind == "images":
        return "images", "uint8", 4
    shape, dtype = attrs.get("sample_shape"), attrs.get("dtype")
    if (
        kind != "features"
        or dtype not in _ITEMSIZE
        or dtype == "uint8"
        or not isinstance(shape, list)
        or not 1 <= len(shape) <= 16
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise ArtifactError(
            f"{where} records samples of kind {str(kind)[:20]!r}, dtype {str(dtype)[:20]!r}, "
            f"shape {str(shape)[:40]}: not a layout this version reads; rebuild it "
            "(blazefl stage prepare)"
        )
    return "features", dtype, len(shape) + 1


def _read_samples(group: Any, name: str, where: Path, dtype: str, ndim: int) -> np.ndarray:
    """Samples are stored uncompressed, so a declared shape must be backed by as many bytes
    on disk: a zarr.json declaring a huge shape is refused before zarr allocates it."""
    meta = check_zarr_array_meta(
        where / name / "zarr.json", MAX_STORED_ELEMENTS, dtype=dtype, ndim=ndim
    )
    declared, on_disk = math.prod(meta.shape) * _ITEMSIZE[dtype], _stored_bytes(where / name)
    if declared > on_disk:
        raise ArtifactError(
            f"{where}/{name} declares shape {list(meta.shape)} ({declared} bytes) but its files "
            f"hold {on_disk} bytes: the store is tampered; rebuild it (blazefl stage prepare)"
        )
    return _read_array(group, name, where)


def load_labels(run: RunDir) -> np.ndarray:
    """Training labels from the dataset store (as many as the stored training samples)."""
    group = _open_group(run.dataset, "prepare")
    rows = _sample_rows(run.dataset, "train", dict(group.attrs))
    return _read_array(group, "train_labels", run.dataset, rows, "int64", 1)


def load_users(run: RunDir) -> np.ndarray | None:
    """The user code of every stored training sample (a federated dataset's writers or
    roles, for `data.partition: natural`), or None when the store records none.

    Raises:
        ArtifactError: codes that do not match the store (length, range, the names it
            records): a tampered store, one line.
    """
    group = _open_group(run.dataset, "prepare")
    attrs = dict(group.attrs)
    if not (run.dataset / "train_users" / "zarr.json").exists() and "users" not in attrs:
        return None
    rows = _sample_rows(run.dataset, "train", attrs)
    codes = _read_array(group, "train_users", run.dataset, rows, "int64", 1)
    names = attrs.get("users")
    if (
        len(codes) != rows
        or not isinstance(names, list)
        or not 0 < len(names) <= max(rows, 1)
        or (len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= len(names)))
    ):
        raise ArtifactError(
            f"{run.dataset}/train_users does not match the store's samples and users: the "
            "store is tampered; rebuild it (blazefl stage prepare)"
        )
    return codes


def _sample_rows(where: Path, split: str, attrs: dict[str, Any]) -> int:
    suffix, dtype, ndim = _samples_layout(attrs, where)
    meta = check_zarr_array_meta(
        where / f"{split}_{suffix}" / "zarr.json", MAX_STORED_ELEMENTS, dtype=dtype, ndim=ndim
    )
    return meta.shape[0]


def load_dataset_store(run: RunDir) -> tuple[ImageDataset, ImageDataset]:
    """Train and test sets from `RUN/dataset`, metadata checked before any array is read:
    `ImageDataset`s (uint8 images, the layout of every version) or `FeatureDataset`s (float32
    / int64 samples of the shape and dtype the store's attrs record)."""
    group = _open_group(run.dataset, "prepare")
    attrs = dict(group.attrs)
    suffix, dtype, ndim = _samples_layout(attrs, run.dataset)
    out: list[ImageDataset] = []
    for split in ("train", "test"):
        images = _read_samples(group, f"{split}_{suffix}", run.dataset, dtype, ndim)
        labels = _read_array(group, f"{split}_labels", run.dataset, len(images), "int64", 1)
        if len(images) != len(labels):
            raise ArtifactError(
                f"{run.dataset}: {split} holds {len(images)} samples but {len(labels)} labels: "
                "the store is tampered; rebuild it (blazefl stage prepare)"
            )
        if suffix == "features" and list(images.shape[1:]) != attrs["sample_shape"]:
            raise ArtifactError(
                f"{run.dataset}: {split} samples have shape {list(images.shape[1:])}, the store "
                f"records {attrs['sample_shape']}: the store is tampered; rebuild it "
                "(blazefl stage prepare)"
            )
        try:
            if suffix == "features":
                out.append(
                    FeatureDataset(
                        torch.from_numpy(images),
                        torch.from_numpy(labels),
                        num_classes=_plain_int(attrs["num_classes"]),
                    )
                )
                continue
            out.append(
                ImageDataset(
                    images=torch.from_numpy(images),
                    labels=torch.from_numpy(labels),
                    num_classes=int(attrs["num_classes"]),
                    mean=tuple(attrs["mean"]),
                    std=tuple(attrs["std"]),
                    crop_padding=int(attrs["crop_padding"]),
                    hflip=bool(attrs["hflip"]),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"{run.dataset} has corrupt attributes ({str(exc)[:80]}): rebuild it "
                "(blazefl stage prepare)"
            ) from None
    return out[0], out[1]


def _plain_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"num_classes {str(value)[:20]!r} is not an int")
    return value


def load_partition(run: RunDir, num_clients: int, num_samples: int) -> ClientPartition:
    """Per-client index arrays from `RUN/partitions`, checked before use.

    Args:
        run: the run directory.
        num_clients: data.clients.
        num_samples: the private training set size (samples clients may own).

    Raises:
        ArtifactError / ArtifactContentError: missing, over-sized, negative or out-of-range
            indices, offsets not monotone, a sample owned twice.
    """
    group = _open_group(run.partitions, "partition")
    where = run.partitions
    indices = _read_array(group, "indices", where, max(num_samples, 1), "int64", 1)
    offsets = _read_array(group, "offsets", where, num_clients + 1, "int64", 1)
    check_partition_arrays(indices, offsets, num_clients, num_samples, run.rel(where))
    return ClientPartition(torch.from_numpy(indices), torch.from_numpy(offsets))


def build_from_stores(
    config: RunConfig,
    run: RunDir,
    data: tuple[ImageDataset, ImageDataset] | None = None,
) -> Experiment:
    """The experiment with data and partition read from the run's stores.

    Args:
        config: the validated config.
        run: the run directory.
        data: the (train, test) sets already in memory, equal to the store's (the runner
            passes what `prepare` just wrote, instead of reading it back).
    """
    spec = config.spec
    train, test = data if data is not None else load_dataset_store(run)
    private = len(train) - spec.algorithm.public_size(spec.hparams)
    part = load_partition(run, spec.data.clients, max(private, 0))
    return Experiment(spec, train, test, part, model_spec_for(spec, train))


def partition_features(config: RunConfig, run: RunDir) -> np.ndarray | None:
    """The stored training samples (images, or a `FeatureDataset`'s features), for a user
    partitioner that declares `features`; else None (nothing is read)."""
    if not wants_features(config.spec.data.partition):
        return None
    return load_dataset_store(run)[0].images.numpy()
