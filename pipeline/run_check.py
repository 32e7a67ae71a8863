"""The one check of a run directory against its manifests, shared by `verify`, `pack` and
`unpack` (nothing is re-executed here).

- `check_layout`: the run's folders: `dataset/`, `partitions/` and `round-0000` ...
  `round-T` each with its manifest, no gap, no other round folder name, and no symlinked
  folder (a store, a round, `metrics/`, `plots/`). A layout that fails is refused with one line
  (`RunCheckError`) by every verb.
- `store_problems` / `chain_problems`: a store's or a round's files against its manifest
  (recorded sizes, then sha256; missing, added, linked or special files), its recorded input
  hashes, and for a round the parent-hash chain and the links to both stores. One line per
  problem; `verify` prints them (`round 3: ...`), `pack` and `unpack` refuse with the first ones.
- `check_run`: all of that for every round, one config hash for all rounds, and the metrics,
  summary and plot data against the manifests: what `pack` runs before writing an archive and
  `unpack` runs on the unpacked files before they are renamed into place.

Symlinks follow the one rule of `stages.untrusted`: a symlinked folder is never followed; a
file of a store or round may be a symlink only if it ends at a regular file inside the run or at
a file of DVC's content-addressed cache (DVC's `symlink` cache type), and its bytes are still
checked against the manifest; `summary.json`, `plots/metrics.json` and `metrics/round-NNNN.json`
must be regular files (git tracks them in a DVC project, so they are never cache links).

A round's unchanged files are hard links to the previous round's: a file damaged in place is
damaged in every round that shares its inode, so its problem line names those rounds (each of
them fails its own check too) and any links outside the run's rounds (a `cp -al` copy).

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

from blazefl.stages.artifacts import MANIFEST, ArtifactError, RunDir, canonical_json
from blazefl.stages.provenance import DATASET_REF, PARTITIONS_REF
from blazefl.stages.report import run_summary
from blazefl.stages.untrusted import LINK_REFUSED, is_safe_relpath, linked_file_target

__all__ = [
    "ArchiveError",
    "RunCheckError",
    "RunContents",
    "check_layout",
    "store_problems",
    "chain_problems",
    "differs",
    "shared_note",
    "check_run",
    "in_layout",
]

#: Largest metrics / summary / plot-data file read.
MAX_JSON_BYTES = 64 << 20
STORES = ("dataset", "partitions")
DERIVED = ("summary.json", "plots/metrics.json")
_ROUND = re.compile(r"^round-(\d{4,})$")
_METRICS = re.compile(r"^metrics/round-(\d{4,})\.json$")
_LINK_FIX = "replace the link with a copy of what it points to (cp -L)"
_DIFFERS = "differs from its manifest (modified on disk)"


class RunCheckError(ArtifactError):
    """A run whose layout cannot be checked (a symlinked folder, a missing manifest, a gap in
    the rounds), or one `pack` / `unpack` refuses; the message is one line."""


class ArchiveError(RunCheckError):
    """An archive refused by `unpack_run`, or a run `pack_run` cannot pack (one line)."""


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


# -- layout ----------------------------------------------------------------------------------
def _real_folder(root: Path, rel: str) -> bool:
    """Whether `root/rel` exists as a folder; a symlink in its place is refused."""
    path = root / rel
    if path.is_symlink():
        raise RunCheckError(
            f"{rel} is a symlink to a folder, which blazefl does not follow (it would read "
            f"bytes from outside the run): {_LINK_FIX.replace('cp -L', 'cp -rL')}"
        )
    return path.is_dir()


def check_layout(run: RunDir) -> int:
    """Refuse a run whose folders cannot be checked; return its last round T.

    Raises:
        RunCheckError: a symlinked store, round, `metrics/` or `plots/` folder; a store or
            round without its manifest; a round folder named otherwise than `round-NNNN`; a
            gap in rounds 0..T.
    """
    root = run.root
    if not root.is_dir():
        raise RunCheckError(f"{root} is not a folder: pass a run directory")
    for top in (*STORES, "metrics", "plots"):
        _real_folder(root, top)
    rounds = []
    for entry in sorted(root.iterdir()):
        m = _ROUND.match(entry.name)
        if m and _real_folder(root, entry.name):
            t = int(m.group(1))
            if entry.name != f"round-{t:04d}":
                raise RunCheckError(f"{entry.name} is not a round folder name (round-{t:04d})")
            rounds.append(t)
    rounds.sort()
    if not rounds:
        raise RunCheckError(f"{root} has no round-0000 folder: not a blazefl run directory")
    gap = next((t for i, t in enumerate(rounds) if t != i), None)
    if gap is not None:
        raise RunCheckError(f"round-{gap:04d} is there but round-{rounds.index(gap):04d} is not")
    for top in [*STORES, *(f"round-{t:04d}" for t in rounds)]:
        path = root / top / MANIFEST
        if not (path.exists() or path.is_symlink()):
            raise RunCheckError(f"{top}/{MANIFEST} is missing: the run is incomplete")
    return rounds[-1]


# -- a store's or a round's files against its manifest ----------------------------------------
def _files_under(root: Path, top: str) -> dict[str, Path]:
    """Every entry below `root/top` that is not a folder (manifest excepted), by path relative
    to `top`; a symlinked folder below it is refused."""
    out: dict[str, Path] = {}
    if not _real_folder(root, top):
        return out
    for dirpath, dirs, names in os.walk(root / top):  # never descends into a symlinked folder
        for name in dirs:
            if (Path(dirpath) / name).is_symlink():
                _real_folder(root, Path(dirpath, name).relative_to(root).as_posix())
        for name in names:
            path = Path(dirpath) / name
            out[path.relative_to(root / top).as_posix()] = path
    out.pop(MANIFEST, None)
    return out


def differs(rel: str, note: str = "") -> str:
    """The problem line of a run file whose bytes are not those its manifest records (the
    same words whether `verify` finds it on disk or `unpack` in an archive).

    Example:
        >>> differs("round-0002/global.safetensors")
        'round 2: global.safetensors differs from its manifest (modified on disk)'
    """
    top, _, name = rel.partition("/")
    m = _ROUND.match(top)
    shown = f"round {int(m.group(1))}: {name}" if m else rel
    return f"{shown} {_DIFFERS}{note}"


def _file_problem(run: RunDir, rel: str, sha: str, size: Any) -> str | None:
    """Why the run file `rel` is not the one its manifest records (None: it is); the line
    names the file by `rel`'s last part relative to its store or round (the caller's prefix).
    Recorded sizes are compared first, so a damaged large file is not hashed."""
    path = run.root / rel
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "is missing (listed in its manifest)"
    if stat.S_ISLNK(mode):
        if linked_file_target(run.root, rel) is None:
            return f"{LINK_REFUSED}: {_LINK_FIX}"
    elif not stat.S_ISREG(mode):
        return "is not a regular file (a device, FIFO or socket)"
    if isinstance(size, int) and path.stat().st_size != size:
        return "differs"
    try:
        return None if run.hash_file(rel) == sha else "differs"
    except ValueError:  # replaced while being checked
        return "differs"


def store_problems(run: RunDir, name: str) -> list[str]:
    """Files of the dataset/partitions store that differ from the store's manifest, and its
    recorded inputs that differ from their hashes (one line each, naming `name/...`).

    Raises:
        RunCheckError / ArtifactError: a symlinked folder in the store, or an unreadable
            manifest.
    """
    manifest = run.store_manifest(name)
    recorded, sizes = manifest["files"], manifest.get("sizes") or {}
    on_disk = _files_under(run.root, name)
    out = []
    for rel in sorted(set(recorded) | set(on_disk)):
        if rel not in recorded:
            out.append(f"{name}/{rel} is not listed in its manifest (added on disk)")
            continue
        problem = _file_problem(run, f"{name}/{rel}", recorded[rel], sizes.get(rel))
        if problem == "differs":
            out.append(differs(f"{name}/{rel}", _store_links(run.root / name / rel)))
        elif problem is not None:
            out.append(f"{name}/{rel} {problem}")
    for rel, sha in sorted(manifest.get("inputs", {}).items()):
        if _hash(run, rel) != sha:
            out.append(f"{name}: input {rel} differs from its hash in {name}/{MANIFEST}")
    return out


def chain_problems(run: RunDir, t: int, m: dict[str, Any]) -> list[str]:
    """What on disk contradicts round t's (schema-checked) manifest: its files (outputs), the
    parent hash, the links to both stores and the recorded input hashes (one line each,
    naming files relative to the round folder).

    Raises:
        RunCheckError: a symlinked folder in the round.
    """
    problems = []
    top = f"round-{t:04d}"
    outputs, sizes = m["outputs"], m.get("sizes") or {}
    on_disk = _files_under(run.root, top)
    rounds: list[int] | None = None  # listed once, and only when a file differs
    for name in sorted(set(outputs) | set(on_disk)):
        if name not in outputs:
            problems.append(f"{name} is not listed in its manifest (added on disk)")
            continue
        problem = _file_problem(run, f"{top}/{name}", outputs[name], sizes.get(name))
        if problem == "differs":
            rounds = run.complete_rounds() if rounds is None else rounds
            note = shared_note(run, t, name, rounds)
            problems.append(f"{name} {_DIFFERS}{note}")
        elif problem is not None:
            problems.append(f"{name} {problem}")
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


def _hash(run: RunDir, rel: str) -> str | None:
    try:
        return run.hash_file(rel)
    except ValueError:  # missing, a refused link, a device: reported as a mismatch
        return None


# -- hard links --------------------------------------------------------------------------------
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

    Rounds write an unchanged index chunk (formats 1-2: an unchanged client's file) as a hard
    link to the previous round's, so one in-place write changes the committed bytes of all
    rounds sharing it.

    Args:
        run: the run.
        t: the round whose file differs.
        name: the file's path inside the round folder (from the manifest).
        rounds: the run's complete rounds (looked up when None).

    Returns:
        "" when the file is not shared, else a clause to append to the problem line.

    Example:
        >>> shared_note(run, 4, "index/chunk-0000.safetensors")
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


def _store_links(path: Path) -> str:
    """A store file is never hard-linked by the run itself: other links are copies (cp -al)
    that share the damage."""
    info = _inode(path)
    links = 0 if info is None else info[2] - 1
    return f"; it is hard-linked {links} more time(s), which share the damage" if links else ""


# -- the whole run: what pack and unpack check ------------------------------------------------
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
            raise RunCheckError(
                f"{sub} is a symlink to {what}, which blazefl does not follow (git tracks it "
                f"in a DVC project, so it is never a cache link): {_LINK_FIX}"
            )
        if i == len(parts) and not stat.S_ISREG(mode):
            raise RunCheckError(f"{rel} is not a regular file (a device, FIFO, socket or folder)")
    return True


def _read(path: Path, limit: int, shown: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise RunCheckError(f"{shown} is larger than {limit} bytes")
    return data


def _derived(root: Path, manifests: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Metrics, summary and plot data that agree with the manifests: (files, problems).

    Their test loss and accuracy are checked by `blazefl verify`, which evaluates again;
    here: round numbers, the train loss the manifests record, and that the summary and plot
    data are made from the metrics files as `blazefl stage report` makes them."""
    files, problems, metrics = [], [], []
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

    Checked: the layout (`check_layout`), the stores (`store_problems`), every round
    (`chain_problems`), one config hash for all rounds, and the metrics / summary / plot data
    against the manifests. Files outside the run layout (timings, the PNG, locks, hidden
    files) are ignored.

    Args:
        root: the run directory.

    Returns:
        What an archive of the run holds, and the run's digest.

    Raises:
        RunCheckError: the first problems found, in one line.

    Example:
        >>> check_run(Path("artifacts/default")).last_round
        10
    """
    run = RunDir(root)
    last = check_layout(run)
    problems: list[str] = []
    files: list[str] = []
    for store in STORES:
        problems += store_problems(run, store)
        listed = run.store_manifest(store)["files"]
        files += [f"{store}/{rel}" for rel in [*listed, MANIFEST]]
    manifests: list[dict[str, Any]] = []
    for t in range(last + 1):
        top = f"round-{t:04d}"
        m = run.manifest(t)
        problems += [f"round {t}: {p}" for p in chain_problems(run, t, m)]
        if manifests and m["config_sha256"] != manifests[0]["config_sha256"]:
            problems.append(f"round {t}: made with another config than round-0000")
        files += [f"{top}/{name}" for name in [*m["outputs"], MANIFEST]]
        manifests.append(m)
        if len(problems) >= 3:
            break
    derived, more = _derived(root, manifests)
    problems += more
    if problems:
        extra = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise RunCheckError("; ".join(problems[:3]) + extra)
    digest = run.manifest_sha256(run.round_dir(last) / MANIFEST)
    return RunContents(last, digest, tuple(sorted([*files, *derived])))
