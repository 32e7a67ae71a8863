"""Checking a run directory against its manifests, without re-executing anything.

`check_run` is what `blazefl pack` runs before writing an archive and `blazefl unpack` runs on
the unpacked files before they are renamed into place: every store file against its
manifest's `files`, every round file against its `outputs`, every `inputs` hash, the
parent-hash chain 0..T, one config hash for all rounds, and the metrics, summary and plot
data against the manifests. (`blazefl verify` does all that and re-executes the rounds.)

Symlinks: an archive publishes the run's own bytes, so nothing is read through a link that
could bring in bytes from elsewhere, with one exception DVC needs.

- A symlinked folder is always refused: a store (`dataset/`, `partitions/`), a
  `round-NNNN/`, `metrics/`, `plots/` and any folder below them.
- `summary.json`, `plots/metrics.json` and `metrics/round-NNNN.json` must be regular files
  (git tracks them in a DVC project, so they are never cache links).
- A file inside a store or round folder may be a symlink (DVC's `symlink` cache type checks
  outputs out as links into its cache) if it resolves to a regular file that is either inside
  the run or a DVC cache file: its resolved path ends in DVC's content address, a folder of 2
  and a file of 30 hex digits (`.dvc/cache/files/md5/ab/cdef...`). Any other link is refused.
  The bytes of an accepted link are still checked against the manifest's sha256.

The run directory itself may be a symlink: it is the path the user chose.

Example:
    >>> check_run(Path("artifacts/default")).digest[:12]
    '3f0c5d2a9b1e'
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blazefl.stages.artifacts import MANIFEST, canonical_json, sha256_file
from blazefl.stages.manifest_schema import (
    MAX_MANIFEST_BYTES,
    parse_manifest_json,
    validate_round_manifest,
    validate_store_manifest,
)
from blazefl.stages.report import run_summary
from blazefl.stages.untrusted import is_safe_relpath

__all__ = ["ArchiveError", "RunContents", "check_run", "in_layout"]

#: Largest metrics / summary / plot-data file read.
MAX_JSON_BYTES = 64 << 20
STORES = ("dataset", "partitions")
DERIVED = ("summary.json", "plots/metrics.json")
_ROUND = re.compile(r"^round-(\d{4,})$")
_METRICS = re.compile(r"^metrics/round-(\d{4,})\.json$")


class ArchiveError(ValueError):
    """A run that cannot be packed, or an archive refused by `unpack_run` (one line)."""


@dataclass(frozen=True)
class RunContents:
    """A run directory checked against its manifests.

    Attributes:
        last_round: the last round T (rounds 0..T are complete and chained).
        digest: sha256 of round T's manifest file: covers the whole chain.
        files: every file of the run that an archive holds, by relative posix path, sorted.
    """

    last_round: int
    digest: str
    files: tuple[str, ...]


def in_layout(rel: str) -> bool:
    """Whether a relative path belongs to a run's archive (stores, rounds, metrics, report)."""
    if not is_safe_relpath(rel):
        return False
    top, _, rest = rel.partition("/")
    if top in STORES or _ROUND.match(top):
        return bool(rest)
    return bool(_METRICS.match(rel)) or rel in DERIVED


# -- checking a run directory against its manifests ------------------------------------------
def _read(path: Path, limit: int, shown: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ArchiveError(f"{shown} is larger than {limit} bytes")
    return data


_LINK_FIX = "replace the link with a copy of what it points to (cp -rL), then pack again"
# DVC's cache names a file by its md5: a folder of the first 2 hex digits, a file of the other 30
_DVC_CACHE_NAME = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{30}$")


def _real_folder(root: Path, top: str) -> bool:
    """Whether `root/top` exists as a folder; a symlink in its place is refused."""
    path = root / top
    if path.is_symlink():
        raise ArchiveError(
            f"{top} is a symlink to a folder, which pack does not follow (it would publish "
            f"bytes from outside the run): {_LINK_FIX}"
        )
    return path.is_dir()


def _plain_file(root: Path, rel: str) -> bool:
    """Whether `root/rel` is a regular file reached through no symlink (False: missing); a
    symlink on the way or at the end is refused."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        try:
            mode = os.lstat(root / sub).st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(mode):
            what = "a file" if i == len(parts) else "a folder"
            raise ArchiveError(
                f"{sub} is a symlink to {what}, which pack does not follow (it would publish "
                f"bytes from outside the run): {_LINK_FIX}"
            )
        if i == len(parts) and not stat.S_ISREG(mode):
            raise ArchiveError(f"{rel} is not a regular file (a device, FIFO, socket or folder)")
    return True


def _accepted_link(root: Path, path: Path) -> bool:
    """Whether a symlinked file in a store or round is one pack may read: it resolves to a
    regular file inside the run, or to a file in DVC's content-addressed cache."""
    target = Path(os.path.realpath(path))
    try:
        if not stat.S_ISREG(target.stat().st_mode):
            return False
    except OSError:  # dangling, or a loop
        return False
    if target.is_relative_to(os.path.realpath(root)):
        return True
    return bool(_DVC_CACHE_NAME.match(f"{target.parent.name}/{target.name}"))


def _files_under(root: Path, top: str) -> dict[str, Path]:
    """Every file below `root/top` by path relative to `root`. A symlinked file counts when
    `_accepted_link` accepts it (DVC's symlink cache type); a symlinked folder, a link out of
    the run that is not a DVC cache file, and anything else that is not a file are refused."""
    out: dict[str, Path] = {}
    if not _real_folder(root, top):
        return out
    for dirpath, dirs, names in os.walk(root / top):
        for name in sorted(dirs):
            if (Path(dirpath) / name).is_symlink():
                _real_folder(root, Path(dirpath, name).relative_to(root).as_posix())
        for name in names:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() and not _accepted_link(root, path):
                raise ArchiveError(
                    f"{rel} is a symlink that leaves the run and is not a DVC cache file (or "
                    f"does not end at a regular file): {_LINK_FIX}"
                )
            if not path.is_file():
                raise ArchiveError(f"{rel} is not a regular file (a device, FIFO or socket)")
            out[rel] = path
    return out


def _manifest(root: Path, rel: str, store: bool) -> dict[str, Any]:
    path = root / rel
    _real_folder(root, rel.split("/")[0])
    if path.is_symlink() and not _accepted_link(root, path):
        raise ArchiveError(
            f"{rel} is a symlink that leaves the run and is not a DVC cache file: {_LINK_FIX}"
        )
    if not path.is_file():
        raise ArchiveError(f"{rel} is missing: the run is incomplete")
    data = parse_manifest_json(_read(path, MAX_MANIFEST_BYTES, rel), rel)
    if store:
        return validate_store_manifest(data, rel)
    return validate_round_manifest(data, rel)


def _compare(
    root: Path, top: str, recorded: dict[str, str], actual: dict[str, Path], problems: list[str]
) -> None:
    """Files under `top` (manifest excepted) must be exactly those recorded, hashes equal."""
    on_disk = {rel.removeprefix(f"{top}/"): p for rel, p in actual.items()}
    on_disk.pop(MANIFEST, None)
    for name in sorted(set(recorded) | set(on_disk)):
        if name not in on_disk:
            problems.append(f"{top}/{name} is missing (listed in {top}/{MANIFEST})")
        elif name not in recorded:
            problems.append(f"{top}/{name} is not listed in {top}/{MANIFEST}")
        elif sha256_file(on_disk[name]) != recorded[name]:
            problems.append(f"{top}/{name} does not match its hash in {top}/{MANIFEST}")


def _inputs(root: Path, where: str, inputs: dict[str, str], problems: list[str]) -> None:
    for rel, sha in sorted(inputs.items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{where}: input {rel} is missing")
        elif sha256_file(path) != sha:
            problems.append(f"{where}: input {rel} does not match its hash")


def _round_numbers(root: Path) -> list[int]:
    rounds = []
    for entry in root.iterdir():
        m = _ROUND.match(entry.name)
        if m and _real_folder(root, entry.name):
            t = int(m.group(1))
            if entry.name != f"round-{t:04d}":
                raise ArchiveError(f"{entry.name} is not a round folder name (round-{t:04d})")
            rounds.append(t)
    rounds.sort()
    if not rounds:
        raise ArchiveError("no round-0000 folder: not a blazefl run directory")
    gap = next((t for i, t in enumerate(rounds) if t != i), None)
    if gap is not None:
        raise ArchiveError(f"round-{gap:04d} is there but round-{rounds.index(gap):04d} is not")
    return rounds


def _derived(root: Path, manifests: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Metrics, summary and plot data that agree with the manifests: (files, problems).

    Their test loss and accuracy are checked by `blazefl verify`, which evaluates again;
    here: round numbers, the train loss the manifests record, and that the summary and plot
    data are made from the metrics files as `blazefl stage report` makes them."""
    files, problems, metrics = [], [], []
    for folder in ("metrics", "plots"):
        _real_folder(root, folder)
    for t in range(1, len(manifests)):
        rel = f"metrics/round-{t:04d}.json"
        if not _plain_file(root, rel):
            continue
        files.append(rel)
        try:
            m = json.loads(_read(root / rel, MAX_JSON_BYTES, rel))
        except ValueError:
            problems.append(f"{rel} is not JSON")
            continue
        recorded = manifests[t]["summary"].items()
        if (
            not isinstance(m, dict)
            or m.get("round") != t
            or any(m.get(k) != v for k, v in recorded)
        ):
            problems.append(f"{rel} does not match round-{t:04d}/{MANIFEST}")
        metrics.append(m)
    plot_rel, summary_rel = "plots/metrics.json", "summary.json"
    summary_there = _plain_file(root, summary_rel)
    if _plain_file(root, plot_rel):
        files.append(plot_rel)
        data = _read(root / plot_rel, MAX_JSON_BYTES, plot_rel)
        try:
            n = len(json.loads(data))
        except (ValueError, TypeError):
            n = -1
        if not 0 <= n <= len(metrics) or data != canonical_json(metrics[:n]):
            problems.append(f"{plot_rel} does not match the metrics files")
        elif summary_there:
            files.append(summary_rel)
            summary = _read(root / summary_rel, MAX_JSON_BYTES, summary_rel)
            if summary != canonical_json(run_summary(metrics[:n])):
                problems.append(f"{summary_rel} does not match the metrics files")
    elif summary_there:
        problems.append(f"{summary_rel} is there without {plot_rel}")
    return files, problems


def check_run(root: Path) -> RunContents:
    """Check every file of a run directory against its manifests (nothing is re-executed).

    Checked: the stores' files against their manifests' `files`, every round's files against
    its `outputs`, every `inputs` hash, the parent-hash chain 0..T, one config hash for all
    rounds, and the metrics / summary / plot data against the manifests. Files outside the
    run layout (timings, the PNG, locks, hidden files) are ignored.

    Args:
        root: the run directory.

    Returns:
        What an archive of the run holds, and the run's digest.

    Raises:
        ArchiveError: the first problems found, in one line.

    Example:
        >>> check_run(Path("artifacts/default")).last_round
        10
    """
    if not root.is_dir():
        raise ArchiveError(f"{root} is not a folder: pass a run directory")
    problems: list[str] = []
    files: list[str] = []
    for store in STORES:
        m = _manifest(root, f"{store}/{MANIFEST}", store=True)
        if m["kind"] != store:
            raise ArchiveError(f"{store}/{MANIFEST} is a {m['kind']} manifest")
        actual = _files_under(root, store)
        _compare(root, store, m["files"], actual, problems)
        _inputs(root, f"{store}/{MANIFEST}", m.get("inputs", {}), problems)
        files += actual
    manifests: list[dict[str, Any]] = []
    parent: str | None = None
    for t in _round_numbers(root):
        top = f"round-{t:04d}"
        m = _manifest(root, f"{top}/{MANIFEST}", store=False)
        if m["round"] != t:
            problems.append(f"{top}/{MANIFEST} says it is round {m['round']}")
        if m["parent"] != parent:
            problems.append(f"{top}/{MANIFEST}: parent hash does not match round {t - 1}")
        if manifests and m["config_sha256"] != manifests[0]["config_sha256"]:
            problems.append(f"{top} was made with another config than round-0000")
        actual = _files_under(root, top)
        _compare(root, top, m["outputs"], actual, problems)
        _inputs(root, f"{top}/{MANIFEST}", m["inputs"], problems)
        files += actual
        manifests.append(m)
        parent = sha256_file(root / top / MANIFEST)
        if len(problems) >= 3:
            break
    derived, more = _derived(root, manifests)
    problems += more
    if problems:
        extra = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ArchiveError("; ".join(problems[:3]) + extra)
    assert parent is not None  # _round_numbers found round 0
    return RunContents(len(manifests) - 1, parent, tuple(sorted([*files, *derived])))
