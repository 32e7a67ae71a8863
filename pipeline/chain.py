"""The provenance checks of `blazefl verify`: dataset -> partitions -> round 0 -> round 1 -> ...

Each store's recorded config against the config of the rounds made from it, the partitions'
recorded dataset hash, and the partition itself re-computed from the stored labels and the
recorded config; and the notes on the code that recorded a round. The files of each store and
round against its manifest are checked by `pipeline.run_check` (the one check `pack` and
`unpack` run too); `store_problems` and `chain_problems` are named here as well for the callers
that knew them here. Every path comes from an artifact, so every file is opened as untrusted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from blazefl.experiment import build_partition
from blazefl.pipeline.run_check import chain_problems, store_problems
from blazefl.stages.artifacts import MANIFEST, RunDir
from blazefl.stages.config import DATA_KEYS, RunConfig, partition_keys
from blazefl.stages.provenance import DATASET_REF, differing_keys
from blazefl.stages.stores import load_labels, load_partition, load_users, partition_features

__all__ = [
    "store_problems",
    "chain_problems",
    "provenance_problems",
    "files_of",
    "code_note",
    "recorded_code",
]


def files_of(root: Path) -> dict[str, Path]:
    """Every regular file under root (recursively, no symlink followed) by relative posix
    path, except manifests."""
    if not root.is_dir() or root.is_symlink():
        return {}
    return {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.name != MANIFEST and (p.is_symlink() or p.is_file())
    }


def _hash(run: RunDir, rel: str) -> str | None:
    try:
        return run.hash_file(rel)
    except ValueError:  # missing, a refused link, a device: reported as a mismatch
        return None


def provenance_problems(run: RunDir, config: RunConfig) -> list[str]:
    """How the stores contradict a round config: recorded configs, the dataset hash the
    partitions name, and the partition re-computed from the stored labels."""
    out = []
    dataset = run.store_manifest("dataset")
    keys = differing_keys(dataset["config"], {k: config[k] for k in DATA_KEYS})
    if keys:
        out.append(
            f"the dataset store was made with another config (differs in: {', '.join(keys)})"
        )
    parts = run.store_manifest("partitions")
    keys = differing_keys(parts["config"], {k: config[k] for k in partition_keys(config.spec)})
    if keys:
        out.append(
            f"the partitions store was made with another config (differs in: {', '.join(keys)})"
        )
    if parts["inputs"].get(DATASET_REF) != _hash(run, DATASET_REF):
        out.append("the partitions store was made from another dataset store")
    if out:
        return out
    spec = config.spec
    labels = load_labels(run)
    private = len(labels) - spec.algorithm.public_size(spec.hparams)
    try:
        stored = load_partition(run, spec.data.clients, max(private, 0))
    except ValueError as exc:
        return [f"the partitions store is unusable: {exc}"]
    features = partition_features(config, run)
    fresh = build_partition(spec, labels, features, load_users(run))
    if not (
        np.array_equal(stored.indices.numpy(), fresh.indices.numpy())
        and np.array_equal(stored.offsets.numpy(), fresh.offsets.numpy())
    ):
        out.append("the partitions store differs from the partition re-computed from its config")
    return out


def recorded_code(run: RunDir, t: int, manifest: dict[str, Any]) -> dict[str, Any]:
    """The code that made round t: the manifest's version, and the commit and dirty flag from
    the round's timings file (kept out of the chained manifest bytes) when it is readable."""
    code = {"commit": None, "dirty": None, **manifest.get("code", {})}
    try:
        timings = run.read_json(run.timings_path(t), 1 << 16)
    except ValueError:
        return code
    extra = timings.get("code")
    if isinstance(extra, dict):
        for key in ("commit", "dirty"):
            if isinstance(extra.get(key), str | bool) or extra.get(key) is None:
                code[key] = extra.get(key)
    return code


def code_note(recorded: Any, current: dict[str, Any]) -> str | None:
    """A plain note when the recorded code (version, commit, dirty) differs from this one."""
    rec = recorded if isinstance(recorded, dict) else {}
    keys = ("version", "commit", "dirty") if rec.get("commit") else ("version",)
    if all(rec.get(k) == current.get(k) for k in keys):
        return None

    def text(c: dict[str, Any]) -> str:
        commit = c.get("commit")
        where = f" at commit {str(commit)[:12]}" if commit else ""
        dirty = " with local changes" if c.get("dirty") else ""
        return f"blazefl {c.get('version')}{where}{dirty}"

    return (
        f"note: recorded by {text(rec)}, now {text(current)}: differences below may be due to that"
    )
