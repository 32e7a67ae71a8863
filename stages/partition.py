"""partition: dataset labels + seed -> per-client index arrays (zarr: flat indices + offsets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blazefl.pipeline.config import to_spec
from blazefl.pipeline.store import MANIFEST, RunDir, atomic_dir, canonical_json
from blazefl.stages.common import load_labels
from blazefl.stages.prepare import tree_hashes

PARTITION_KEYS = (
    "seed",
    "data.clients",
    "data.partition",
    "data.alpha",
    "data.shards_per_client",
)


def partition(config: dict[str, Any], run: RunDir) -> Path:
    """Split the training set among clients and store the index arrays in `RUN/partitions`.

    Returns:
        The partitions directory.
    """
    import zarr

    from blazefl.experiment import build_partition

    labels = load_labels(run)
    spec = to_spec(config)
    if spec.num_clients > len(labels):
        raise ValueError(
            f"data.clients ({spec.num_clients}) exceeds the {len(labels)} training samples: "
            "lower data.clients"
        )
    part = build_partition(spec, labels)
    dataset_sha = run.manifest_sha256(run.dataset / MANIFEST)
    with atomic_dir(run.partitions) as tmp:
        group = zarr.open_group(str(tmp), mode="w")
        group.create_array("indices", data=part.indices.numpy())
        group.create_array("offsets", data=part.offsets.numpy())
        group.attrs.update({k: config[k] for k in sorted(PARTITION_KEYS)})
        manifest = {
            "config": {k: config[k] for k in PARTITION_KEYS},
            "files": tree_hashes(tmp),
            "inputs": {"dataset/manifest.json": dataset_sha},
            "kind": "partitions",
        }
        (tmp / MANIFEST).write_bytes(canonical_json(manifest))
    return run.partitions
