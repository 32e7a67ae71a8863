"""init: round 0 = the initial global model, the server's streams and state, and the client
index with no client stored (every client starts from streams derived from (seed, client id),
which are never written: round 0 writes no per-client file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blazefl.data import ImageDataset
from blazefl.stages.artifacts import (
    MANIFEST,
    RunDir,
    atomic_dir,
    canonical_json,
    environment,
    manifest_code,
    sha256_bytes,
)
from blazefl.stages.client_index import initial_index
from blazefl.stages.config import RunConfig, byte_config, config_sha256
from blazefl.stages.manifest_schema import MANIFEST_FORMAT
from blazefl.stages.preflight import check_model_input
from blazefl.stages.provenance import check_stores
from blazefl.stages.snapshot import CODE, snapshot_files
from blazefl.stages.stores import build_from_stores
from blazefl.stages.user_code import build_code_copies, config_code

__all__ = ["init", "init_outputs"]


def init_outputs(
    config: RunConfig,
    run: RunDir,
    data: tuple[ImageDataset, ImageDataset] | None = None,
    code_check: bool = True,
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Round 0's files and manifest, computed without writing anything (`verify` compares
    them with the recorded ones).

    Args:
        config: the validated config (`RunConfig`).
        run: the run directory (its stores must have been made with `config`).
        data: the in-memory (train, test) sets equal to the store's, if the caller has them.
        code_check: refuse stores made with other user code (off for `verify --code-from
            here`).

    Returns:
        ({relative path: bytes}, manifest).

    Raises:
        ProvenanceError: a store was made with another config.
    """
    stores = check_stores(config, run, code_check)
    exp = build_from_stores(config, run, data)
    # under DVC the model may change after prepare checked it: a mismatch is one line here too
    check_model_input(config, exp.train)
    server = exp.server()
    files = snapshot_files(server, {}, {}, [], initial_index(exp.spec.data.clients))
    user_code = config_code(config)
    # the run carries its user code (content-addressed: a file shared by paths is kept once)
    for name, source in build_code_copies(Path.cwd(), user_code).items():
        files[f"{CODE}/{name}"] = source
    manifest: dict[str, Any] = {
        "clients": [],
        "code": manifest_code(),
        "config": byte_config(config),
        "config_sha256": config_sha256(config),
        "environment": environment(
            config.spec.runtime.threads_per_client, config.spec.runtime.device
        ),
        "format": MANIFEST_FORMAT,
        "inputs": stores,
        "kind": "init",
        "outputs": {name: sha256_bytes(data) for name, data in files.items()},
        "parent": None,
        "round": 0,
        "sizes": {name: len(data) for name, data in files.items()},
        "summary": {},
        "uplinks": {},
        "user_code": user_code,
    }
    return files, manifest


def init(
    config: RunConfig, run: RunDir, data: tuple[ImageDataset, ImageDataset] | None = None
) -> Path:
    """Write `RUN/round-0000`: global.safetensors, rng.safetensors (server), the client index
    (index/chunk-NNNN.safetensors, every entry -1: each client's streams are derived from
    (seed, client id) when it is first sampled) and the manifest that starts the chain, naming
    the hashes of both store manifests.

    Args:
        config: the validated config (`RunConfig`).
        run: the run directory (dataset and partitions must exist, made with `config`).
        data: the in-memory (train, test) sets equal to the store's, if the caller has them.

    Returns:
        The round-0000 directory.

    Example:
        >>> init(load_config("params.yaml"), RunDir("artifacts/default"))
        PosixPath('artifacts/default/round-0000')
    """
    files, manifest = init_outputs(config, run, data)
    with atomic_dir(run.round_dir(0), run.root) as tmp:
        for name, blob in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(blob)
        (tmp / MANIFEST).write_bytes(canonical_json(manifest))
    return run.round_dir(0)
