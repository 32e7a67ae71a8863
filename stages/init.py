"""init: round 0 = the initial global model and every RNG stream's starting state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blazefl.data import ImageDataset
from blazefl.reproducibility import create_rng_suite
from blazefl.stages.artifacts import (
    MANIFEST,
    RunDir,
    atomic_dir,
    canonical_json,
    environment,
    sha256_bytes,
)
from blazefl.stages.config import byte_config, config_sha256
from blazefl.stages.snapshot import snapshot_files
from blazefl.stages.stores import build_from_stores


def init(
    config: dict[str, Any], run: RunDir, data: tuple[ImageDataset, ImageDataset] | None = None
) -> Path:
    """Write `RUN/round-0000`: global.safetensors, rng.safetensors (server + every client's
    stream derived from (seed, client id)) and the manifest that starts the chain.

    Args:
        config: validated flat config.
        run: the run directory (dataset and partitions must exist).
        data: the in-memory (train, test) sets equal to the store's, if the caller has them.

    Returns:
        The round-0000 directory.
    """
    exp = build_from_stores(config, run, data)
    server = exp.server()
    clients = {
        cid: create_rng_suite(exp.spec.seed, cid).state_tensors()
        for cid in range(exp.spec.data.clients)
    }
    files = snapshot_files(server, clients, {})
    manifest: dict[str, Any] = {
        "clients": [],
        "config": byte_config(config),
        "config_sha256": config_sha256(config),
        "environment": environment(config["runtime.threads_per_client"]),
        "inputs": {
            "dataset/manifest.json": run.manifest_sha256(run.dataset / MANIFEST),
            "partitions/manifest.json": run.manifest_sha256(run.partitions / MANIFEST),
        },
        "kind": "init",
        "outputs": {name: sha256_bytes(data) for name, data in files.items()},
        "parent": None,
        "round": 0,
        "summary": {},
        "uplinks": {},
    }
    with atomic_dir(run.round_dir(0)) as tmp:
        for name, blob in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(blob)
        (tmp / MANIFEST).write_bytes(canonical_json(manifest))
    return run.round_dir(0)
