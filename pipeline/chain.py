"""The chain checks of `blazefl verify`: dataset -> partitions -> round 0 -> round 1 -> ...

Each link is checked against what the next one recorded: store files against the store's
manifest, the partitions' recorded dataset hash, each store's recorded config against the
config of the rounds made from it, each round's recorded input hashes, and the partition
itself re-computed from the stored labels and the recorded config. Every path comes from an
artifact, so every file is opened as untrusted (inside the run, regular, bounded).

A round's unchanged files are hard links to the previous round's: a file damaged in place is
damaged in every round that shares its inode, so its problem line names those rounds (each of
them fails its own check too) and any links outside the run's rounds (a `cp -al` copy).
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import numpy as np

from blazefl.experiment import build_partition
from blazefl.stages.artifacts import MANIFEST, RunDir
from blazefl.stages.config import to_spec
from blazefl.stages.partition import partition_keys
from blazefl.stages.prepare import DATA_KEYS
from blazefl.stages.provenance import DATASET_REF, PARTITIONS_REF, differing_keys
from blazefl.stages.stores import load_labels, load_partition, partition_features

__all__ = [
    "store_problems",
    "chain_problems",
    "provenance_problems",
    "files_of",
    "shared_note",
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


def _inode(path: Path) -> tuple[int, int, int] | None:
    """(st_dev, st_ino, st_nlink) of a regular file (no symlink followed), else None."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_nlink) if stat.S_ISREG(info.st_mode) else None


def _round_span(rounds: list[int]) -> str:
    """[1, 2, 3, 5] -> "round-0001..0003, round-0005"."""
    spans: list[list[int]] = []
    for t in sorted(rounds):
        if spans and spans[-1][-1] == t - 1:
            spans[-1].append(t)
        else:
            spans.append([t])
    return ", ".join(
        f"round-{s[0]:04d}" if len(s) == 1 else f"round-{s[0]:04d}..{s[-1]:04d}" for s in spans
    )


def shared_note(run: RunDir, t: int, name: str, rounds: list[int] | None = None) -> str:
    """Which other rounds hold round t's file `name` as the same file (a hard link): a
    damaged shared file damages every one of them.

    Rounds write an unchanged client's file as a hard link to the previous round's, so one
    in-place write changes the committed bytes of all rounds sharing it.

    Args:
        run: the run.
        t: the round whose file differs.
        name: the file's path inside the round folder (from the manifest).
        rounds: the run's complete rounds (looked up when None).

    Returns:
        "" when the file is not shared, else a clause to append to the problem line.

    Example:
        >>> shared_note(run, 4, "rng/client-00004.safetensors")
        "; it is the same file (hard link) as round-0001..0003's copy, which fail too"
    """
    here = _inode(run.round_dir(t) / name)
    if here is None or here[2] < 2:
        return ""
    others = [
        u
        for u in (run.complete_rounds() if rounds is None else rounds)
        if u != t and (_inode(run.round_dir(u) / name) or (0, 0, 0))[:2] == here[:2]
    ]
    outside = here[2] - 1 - len(others)  # links this run's rounds do not account for
    parts = []
    if others:
        copies = "copy, which fails" if len(others) == 1 else "copies, which fail"
        parts.append(f"the same file (hard link) as {_round_span(others)}'s {copies} too")
    if outside > 0:
        parts.append(f"hard-linked {outside} more time(s) outside this run's rounds")
    return "; it is " + " and ".join(parts) if parts else ""


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
            + _store_links(run.root / name / rel)
        )
        for rel in bad
    ]
    for rel, sha in sorted(manifest.get("inputs", {}).items()):
        if _hash(run, rel) != sha:
            out.append(f"{name}: input {rel} differs from its hash in {name}/{MANIFEST}")
    return out


def _store_links(path: Path) -> str:
    """A store file is never hard-linked by the run itself: other links are copies (cp -al)
    that share the damage."""
    info = _inode(path)
    links = 0 if info is None else info[2] - 1
    return f"; it is hard-linked {links} more time(s), which share the damage" if links else ""


def chain_problems(run: RunDir, t: int, m: dict[str, Any]) -> list[str]:
    """What on disk contradicts round t's (schema-checked) manifest: outputs, parent, inputs."""
    problems = []
    pre = f"round-{t:04d}/"
    outputs = m["outputs"]
    rounds: list[int] | None = None  # listed once, and only when a file differs
    for name, sha in sorted(outputs.items()):
        got = _hash(run, pre + name)
        if got is None:
            problems.append(f"{name} is missing or not a regular file (listed in its manifest)")
        elif got != sha:
            rounds = run.complete_rounds() if rounds is None else rounds
            shared = shared_note(run, t, name, rounds)
            problems.append(f"{name} differs from its manifest (modified on disk){shared}")
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
    fresh = build_partition(spec, labels, partition_features(config, run))
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
