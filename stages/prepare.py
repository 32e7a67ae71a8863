"""prepare: dataset -> zarr store (once per run). Later stages read the store, never the source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from blazefl.data import FeatureDataset, ImageDataset, sample_users
from blazefl.experiment import build_data
from blazefl.stages.artifacts import MANIFEST, RunDir, atomic_dir, canonical_json, sha256_file
from blazefl.stages.config import DATA_KEYS, RunConfig
from blazefl.stages.data_files import data_file_hashes
from blazefl.stages.manifest_schema import MANIFEST_FORMAT
from blazefl.stages.preflight import check_model_input, check_splits, guarded
from blazefl.stages.user_code import config_code


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` except the manifest, by relative posix path."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def store_record(root: Path) -> dict[str, Any]:
    """The `files` and `sizes` fields of a store manifest for the files under `root`."""
    files = tree_hashes(root)
    return {"files": files, "sizes": {rel: (root / rel).stat().st_size for rel in files}}


def prepare(config: RunConfig, run: RunDir) -> Path:
    """Write the train and test sets of the config into `RUN/dataset` (zarr: uint8 images,
    or a `FeatureDataset`'s float32 / int64 samples).

    Args:
        config: validated flat config.
        run: the run directory.

    Returns:
        The dataset directory.
    """
    data = build_datasets(config)
    # a model that cannot take these samples fails here, not in the first round's clients
    check_model_input(config, data[0])
    write_dataset_store(config, run, *data, data_files=data_file_hashes(config.spec.data.root))
    return run.dataset


def build_datasets(config: RunConfig) -> tuple[ImageDataset, ImageDataset]:
    """The train and test sets the config names (generated or read from data.root)."""
    spec = config.spec
    train, test = guarded("data.dataset", spec.data.dataset, lambda: build_data(spec))
    check_splits(spec.data.dataset, train, test)
    return train, test


def write_dataset_store(
    config: RunConfig,
    run: RunDir,
    train: ImageDataset,
    test: ImageDataset,
    data_files: dict[str, str],
) -> None:
    """Commit `train` / `test` as the run's dataset store (atomically).

    Args:
        config: validated flat config.
        run: the run directory.
        train / test: the loaded sets.
        data_files: the hashes of the files under data.root the sets were loaded from
            (`data_file_hashes`, taken right after loading).
    """
    import zarr

    # images keep the layout of every earlier version (`{split}_images`, no "kind"), byte for
    # byte; other samples are `{split}_features` with their kind, dtype and shape in attrs
    kind = "features" if isinstance(train, FeatureDataset) else "images"
    with atomic_dir(run.dataset, run.root) as tmp:
        group = zarr.open_group(str(tmp), mode="w")
        for split, ds in (("train", train), ("test", test)):
            images = ds.images.numpy()
            chunk = (max(1, min(len(images), 4096)), *images.shape[1:])
            # uncompressed: image noise does not compress, and reads stay a plain copy
            group.create_array(f"{split}_{kind}", data=images, chunks=chunk, compressors=None)
            group.create_array(f"{split}_labels", data=ds.labels.numpy().astype(np.int64))
        # a federated dataset's user per training sample (`data.partition: natural` reads it
        # from here); only when there is one, so every other store keeps its bytes
        users = sample_users(train)
        if users is not None:
            group.create_array("train_users", data=users.codes)
            group.attrs["users"] = list(users.names)
        if kind == "features":
            group.attrs.update(
                {
                    "dtype": str(train.images.dtype).removeprefix("torch."),
                    "kind": kind,
                    "num_classes": train.num_classes,
                    "sample_shape": list(train.shape),
                }
            )
        else:
            group.attrs.update(
                {
                    "crop_padding": train.crop_padding,
                    "hflip": train.hflip,
                    "mean": list(train.mean),
                    "num_classes": train.num_classes,
                    "std": list(train.std),
                }
            )
        manifest = {
            "config": {k: config[k] for k in DATA_KEYS},
            "data_files": data_files,
            "format": MANIFEST_FORMAT,
            "kind": "dataset",
            "user_code": config_code(config, "prepare"),
            **store_record(tmp),
        }
        (tmp / MANIFEST).write_bytes(canonical_json(manifest))
