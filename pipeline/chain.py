"""The chain checks of `blazefl verify`: dataset -> partitions -> round 0 -> round 1 -> ...

Each link is checked against what the next one recorded: store files against the store's
manifest, the partitions' recorded dataset hash, each store's recorded config against the
config of the rounds made from it, each round's recorded input hashes, and the partition
itself re-computed from the stored labels and the recorded config. Every path comes from an
artifact, so every file is opened as untrusted (inside the run, regular, bounded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from blazefl.experiment import build_partition
from blazefl.stages.artifacts import MANIFEST, RunDir
from blazefl.stages.config import to_spec
from blazefl.stages.partition import partition_keys
from blazefl.stages.prepare import DATA_KEYS
from blazefl.stages.provenance import DATASET_REF, PARTITIONS_REF, differing_keys
from blazefl.stages.stores import load_labels, load_partition

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
    except ValueError:  # missing, a symlink, a device: reported as a mismatch
        return None


def store_problems(run: RunDir, name: str) -> list[str]:
    """Files of the dataset/partitions store that differ from the store's manifest."""
    manifest = run.store_manifest(name)
    recorded = manifest["files"]
    actual = {rel: _hash(run, f"{name}/{rel}") for rel in files_of(run.root / name)}
    bad = sorted(k for k in set(recorded) | set(actual) if recorded.get(k) != actual.get(k))
    out = [
        f"{name}/{rel} "
        + (
            "is missing (listed in its manifest)"
            if rel not in actual
            else "is not listed in its manifest (added on disk)"
            if rel not in recorded
            else "differs from its manifest (modified on disk, or not a regular file)"
        )
        for rel in bad
    ]
    for rel, sha in sorted(manifest.get("inputs", {}).items()):
        if _hash(run, rel) != sha:
            out.append(f"{name}: input {rel} differs from its hash in {name}/{MANIFEST}")
    return out


def chain_problems(run: RunDir, t: int, m: dict[str, Any]) -> list[str]:
    """What on disk contradicts round t's (schema-checked) manifest: outputs, parent, inputs."""
    problems = []
    pre = f"round-{t:04d}/"
    outputs = m["outputs"]
    for name, sha in sorted(outputs.items()):
        got = _hash(run, pre + name)
        if got is None:
            problems.append(f"{name} is missing or not a regular file (listed in its manifest)")
        elif got != sha:
            problems.append(f"{name} differs from its manifest (modified on disk)")
    for name in sorted(set(files_of(run.round_dir(t))) - set(outputs)):
        problems.append(f"{name} is not listed in its manifest (added on disk)")
    parent_rel = f"round-{t - 1:04d}/{MANIFEST}"
    if t > 0 and _hash(run, parent_rel) != m["parent"]:
        problems.append(
            f"parent hash does not match {parent_rel}: the chain is broken (that manifest "
            "was edited or replaced)"
        )
    for ref in (DATASET_REF, PARTITIONS_REF):
        if ref not in m["inputs"]:
            problems.append(f"names no {ref} among its inputs: the chain to the stores is cut")
    for rel, sha in sorted(m["inputs"].items()):
        if rel == parent_rel:
            continue  # reported by the parent check
        got = _hash(run, rel)
        if got is None:
            problems.append(f"input {rel} is missing or not a regular file")
        elif got != sha:
            problems.append(f"input {rel} differs from its hash in this manifest (modified)")
    return problems


def provenance_problems(run: RunDir, config: dict[str, Any]) -> list[str]:
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
    keys = differing_keys(parts["config"], {k: config[k] for k in partition_keys(config)})
    if keys:
        out.append(
            f"the partitions store was made with another config (differs in: {', '.join(keys)})"
        )
    if parts["inputs"].get(DATASET_REF) != _hash(run, DATASET_REF):
        out.append("the partitions store was made from another dataset store")
    if out:
        return out
    spec = to_spec(config)
    labels = load_labels(run)
    private = len(labels) - spec.algorithm.public_size(spec.hparams)
    try:
        stored = load_partition(run, spec.data.clients, max(private, 0))
    except ValueError as exc:
        return [f"the partitions store is unusable: {exc}"]
    fresh = build_partition(spec, labels)
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
