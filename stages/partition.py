"""partition: dataset labels + seed -> per-client index arrays (zarr: flat indices + offsets)."""

from __future__ import annotations

from pathlib import Path

from blazefl.experiment import build_partition
from blazefl.stages.artifacts import MANIFEST, RunDir, atomic_dir, canonical_json
from blazefl.stages.config import RunConfig, partition_keys
from blazefl.stages.manifest_schema import MANIFEST_FORMAT
from blazefl.stages.prepare import store_record
from blazefl.stages.provenance import check_dataset_store
from blazefl.stages.stores import load_labels, load_users, partition_features
from blazefl.stages.user_code import config_code


def partition(config: RunConfig, run: RunDir) -> Path:
    """Split the training set among clients and store the index arrays in `RUN/partitions`.

    The manifest records `partition_keys(config)` and the dataset manifest's hash.

    Returns:
        The partitions directory.

    Raises:
        ProvenanceError: the dataset store was made with another config.
    """
    import zarr

    dataset_sha = check_dataset_store(config, run)  # made with this config's data keys
    spec = config.spec
    users = load_users(run)  # None unless the dataset records its users
    part = build_partition(spec, load_labels(run), partition_features(config, run), users)
    keys = partition_keys(spec)
    with atomic_dir(run.partitions, run.root) as tmp:
        group = zarr.open_group(str(tmp), mode="w")
        group.create_array("indices", data=part.indices.numpy())
        group.create_array("offsets", data=part.offsets.numpy())
        group.attrs.update({k: config[k] for k in keys})
        manifest = {
            "config": {k: config[k] for k in keys},
            "format": MANIFEST_FORMAT,
            "inputs": {"dataset/manifest.json": dataset_sha},
            "kind": "partitions",
            "user_code": config_code(config, "partition"),
            **store_record(tmp),
        }
        (tmp / MANIFEST).write_bytes(canonical_json(manifest))
    return run.partitions
