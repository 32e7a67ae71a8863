"""Auditing a run directory: `blazefl verify` (diff and show live in `pipeline.compare`).

- `verify_run` checks every chosen round against its manifest (files on disk, the parent-hash
  chain, input hashes), then re-executes it from round t-1's *recorded* artifacts in a scratch
  directory and compares the recomputed outputs and per-client uplink hashes with the manifest.
  The run directory is only read.

Example:
    >>> verify_run(Path("artifacts/default"), "3,5-7", "processes", 2, None, echo=print)
    round 3: OK
    ...
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from blazefl.core.loop import ExecutionSettings
from blazefl.stages.artifacts import (
    MANIFEST,
    ArtifactError,
    RunDir,
    canonical_json,
    environment,
    sha256_bytes,
    sha256_file,
)
from blazefl.stages.config import ConfigError, config_sha256, load_config, to_spec
from blazefl.stages.init import init
from blazefl.stages.session import Session

__all__ = ["verify_run", "parse_rounds", "environment_note"]

Echo = Callable[[str], None]
_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


# -- shared helpers ------------------------------------------------------------------------
def parse_rounds(spec: str) -> list[int]:
    """Parse a round spec like "3,5-7" into sorted round numbers ([3, 5, 6, 7]).

    Raises:
        ConfigError: on anything but comma-separated numbers and ascending ranges.
    """
    rounds: set[int] = set()
    for part in spec.split(","):
        m = _RANGE_RE.match(part.strip())
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ConfigError(f"--rounds expects round numbers and ranges like 3,5-7, got {spec!r}")
        lo = int(m.group(1))
        rounds.update(range(lo, int(m.group(2) or lo) + 1))
    return sorted(rounds)


def _fmt_rounds(rounds: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    parts: list[str] = []
    for t in sorted(rounds):
        if parts and parts[-1].split("-")[-1] == str(t - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{t}"
        else:
            parts.append(str(t))
    return ", ".join(parts)


def _rounds(rounds: list[int]) -> str:
    """[3] -> "round 3"; [0, 1, 2] -> "rounds 0-2"."""
    return f"round {rounds[0]}" if len(rounds) == 1 else f"rounds {_fmt_rounds(rounds)}"


def _open_run(path: Path) -> RunDir:
    run = RunDir(path)
    if not run.root.is_dir():
        raise ArtifactError(f"run directory {run.root} does not exist")
    if not (run.round_dir(0) / MANIFEST).is_file():
        raise ArtifactError(
            f"{run.root} is not a blazefl run directory (no round-0000/{MANIFEST}): pass the "
            "--out of a `blazefl run`"
        )
    return run


def _env_text(env: dict[str, Any], extra: list[str]) -> str:
    labels = {
        "numpy": "numpy",
        "python": "python",
        "machine": "machine",
        "threads_per_client": "threads per client",
    }
    text = f"torch {env.get('torch')} on {env.get('cpu_isa')}"
    more = [f"{labels.get(k, k)} {env.get(k)}" for k in extra if k not in ("torch", "cpu_isa")]
    return text + (f" ({', '.join(more)})" if more else "")


def environment_note(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """A plain note when the recorded environment differs from the current one, else None."""
    keys = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    if not keys:
        return None
    return (
        f"note: recorded with {_env_text(recorded, keys)}, now {_env_text(current, keys)}: "
        "bits are only promised for the same torch build and CPU ISA; differences below may "
        "be due to that, not to a bug"
    )


def _files(root: Path) -> dict[str, Path]:
    """Every file under root (recursively) by relative posix path, except manifests."""
    if not root.is_dir():
        return {}
    return {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def _store_problems(run: RunDir, name: str) -> list[str]:
    """Files of the dataset/partitions store that differ from the store's manifest."""
    root = run.root / name
    manifest = run.read_json(root / MANIFEST)
    recorded = manifest.get("files", {})
    actual = {rel: sha256_file(p) for rel, p in _files(root).items()}
    bad = sorted(k for k in set(recorded) | set(actual) if recorded.get(k) != actual.get(k))
    out = [
        f"{name}/{rel} "
        + (
            "is missing (listed in its manifest)"
            if rel not in actual
            else "is not listed in its manifest (added on disk)"
            if rel not in recorded
            else "differs from its manifest (modified on disk)"
        )
        for rel in bad
    ]
    for rel, sha in sorted(manifest.get("inputs", {}).items()):
        p = run.root / rel
        if not p.is_file() or sha256_file(p) != sha:
            out.append(f"{name}: input {rel} differs from its hash in {name}/{MANIFEST}")
    return out


# -- verify --------------------------------------------------------------------------------
def _chain_problems(run: RunDir, t: int, m: dict[str, Any]) -> list[str]:
    """What on disk contradicts round t's manifest: outputs, parent hash, inputs, config hash."""
    problems = []
    if m.get("round") != t:
        problems.append(f"manifest says it is round {m.get('round')}")
    d = run.round_dir(t)
    outputs = m.get("outputs", {})
    for name, sha in sorted(outputs.items()):
        p = d / name
        if not p.is_file():
            problems.append(f"{name} is missing (listed in its manifest)")
        elif sha256_file(p) != sha:
            problems.append(f"{name} differs from its manifest (modified on disk)")
    for name in sorted(set(_files(d)) - set(outputs)):
        problems.append(f"{name} is not listed in its manifest (added on disk)")
    parent_rel = f"round-{t - 1:04d}/{MANIFEST}"
    if t == 0:
        if m.get("parent") is not None:
            problems.append("round 0 names a parent manifest (the chain starts at round 0)")
    elif sha256_file(run.root / parent_rel) != m.get("parent"):
        problems.append(
            f"parent hash does not match {parent_rel}: the chain is broken (that manifest "
            "was edited or replaced)"
        )
    for rel, sha in sorted(m.get("inputs", {}).items()):
        p = run.root / rel
        if rel == parent_rel:
            continue  # reported by the parent check
        if not p.is_file():
            problems.append(f"input {rel} is missing")
        elif sha256_file(p) != sha:
            problems.append(f"input {rel} differs from its hash in this manifest (modified)")
    if config_sha256(m.get("config", {})) != m.get("config_sha256"):
        problems.append("config_sha256 does not match the config in the manifest (edited)")
    return problems


def _recomputed_diffs(
    run: RunDir,
    t: int,
    m: dict[str, Any],
    files: dict[str, bytes],
    new: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> list[str]:
    """How a re-executed round differs from the recorded one (empty list: identical)."""
    outputs = m.get("outputs", {})
    new_hashes = {name: sha256_bytes(data) for name, data in files.items()}
    bad = [n for n in sorted(set(outputs) | set(new_hashes)) if outputs.get(n) != new_hashes.get(n)]
    path = run.metrics_path(t)
    if metrics is not None and path.is_file() and path.read_bytes() != canonical_json(metrics):
        bad.append(run.rel(path))
    if new is not None and new.get("summary") != m.get("summary"):
        bad.append(f"{MANIFEST} (summary)")
    out = [", ".join(bad)] if bad else []
    if new is None:
        return out
    if new.get("clients") != m.get("clients"):
        out.append(
            f"sampled clients {_ids(new.get('clients', []))} instead of recorded "
            f"{_ids(m.get('clients', []))}"
        )
    cids = differing_uplinks(m, new)
    if cids:
        out.append(f"uplinks of clients {_ids(cids)}")
    return out


def differing_uplinks(a: dict[str, Any], b: dict[str, Any]) -> list[int]:
    """Client ids whose uplink hash differs (or exists in only one) of two manifests."""
    ua, ub = a.get("uplinks", {}), b.get("uplinks", {})
    return sorted(int(k) for k in set(ua) | set(ub) if ua.get(k) != ub.get(k))


def _ids(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids) or "none"


class _Scratch:
    """A throwaway run directory whose stores and round dirs are symlinks into the real run,
    plus one warm `Session` reused while the config stays the same. Nothing is committed."""

    def __init__(
        self, run: RunDir, tmp: Path, mode: str | None, workers: int | None, ipc: str | None
    ) -> None:
        self.run, self.tmp = run, tmp
        self.mode, self.workers, self.ipc = mode, workers, ipc
        self.session: Any = None
        self.session_key: str | None = None

    def _link(self, root: Path, rel: str) -> None:
        dst, src = root / rel, (self.run.root / rel).resolve()
        if dst.exists() or dst.is_symlink():
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            dst.symlink_to(src, target_is_directory=True)
        except OSError:  # no symlinks on this file system: copy instead
            shutil.copytree(src, dst)

    def _root(self, name: str) -> RunDir:
        root = self.tmp / name
        for store in ("dataset", "partitions"):
            self._link(root, store)
        return RunDir(root)

    def init(self, config: dict[str, Any]) -> dict[str, bytes]:
        """Re-run the init stage into a fresh scratch run; its output files by name."""
        scratch = self._root(f"init-{len(list(self.tmp.glob('init-*')))}")
        d = init(config, scratch)
        return {name: p.read_bytes() for name, p in _files(d).items()}

    def round(self, t: int, config: dict[str, Any]) -> Any:
        """Compute round t from the recorded round t-1 (never from a recomputed one)."""
        scratch = self._root("rounds")
        self._link(scratch.root, f"round-{t - 1:04d}")
        key = config_sha256(config)
        if self.session is None or self.session_key != key:
            self.close()
            runtime = to_spec(config).runtime
            execution = ExecutionSettings.of(runtime, self.mode, self.workers, self.ipc)
            self.session = Session(config, scratch, execution)
            self.session_key = key
        self.session.load(t - 1)
        return self.session.compute(t)

    def unscratch(self, text: str) -> str:
        """Name the real run instead of the scratch copy in a message."""
        return re.sub(re.escape(str(self.tmp)) + r"/(init-\d+|rounds)", str(self.run.root), text)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


@contextlib.contextmanager
def _scratch(
    run: RunDir, mode: str | None, workers: int | None, ipc: str | None
) -> Iterator[_Scratch]:
    with tempfile.TemporaryDirectory(prefix="blazefl-verify-") as tmp:
        s = _Scratch(run, Path(tmp), mode, workers, ipc)
        try:
            yield s
        finally:
            s.close()


def _config_of(m: dict[str, Any], t: int) -> dict[str, Any]:
    if not isinstance(m.get("config"), dict):
        raise ArtifactError(f"round-{t:04d}/{MANIFEST} has no config: the manifest is corrupt")
    return load_config(None, m["config"])


def verify_run(
    run_dir: Path,
    rounds: str | None,
    mode: str | None,
    workers: int | None,
    ipc: str | None,
    echo: Echo,
) -> bool:
    """Re-execute rounds from their recorded inputs and compare with their manifests.

    Args:
        run_dir: the run directory (only read; re-execution happens in a temporary directory).
        rounds: spec like "3,5-7"; None means every complete round (0 = the init stage).
        mode / workers / ipc: execution mode of the re-execution (never changes bytes).
        echo: where report lines go.

    Returns:
        True iff every chosen round and the stores match their manifests.

    Raises:
        ConfigError: a bad round spec.
        ArtifactError: not a run directory, or a chosen round that is not complete.
    """
    run = _open_run(run_dir)
    last = run.last_complete_round()
    assert last is not None  # _open_run checked round 0
    chosen = parse_rounds(rounds) if rounds is not None else list(range(last + 1))
    beyond = [t for t in chosen if t > last]
    if beyond:
        raise ArtifactError(
            f"round {beyond[0]} is not complete in {run.root} (rounds 0-{last} are): choose "
            f"rounds between 0 and {last}"
        )
    manifests = {t: run.manifest(t) for t in chosen}
    configs = {t: _config_of(m, t) for t, m in manifests.items()}

    seen: list[dict[str, Any]] = []
    for t, m in manifests.items():
        rec = m.get("environment", {})
        if rec in seen:
            continue
        seen.append(rec)
        note = environment_note(rec, environment(configs[t]["runtime.threads_per_client"]))
        if note:
            echo(note)

    cfg0 = configs[chosen[0]]
    how = mode or cfg0["runtime.mode"]
    if how != "sequential":
        how += f", {workers or cfg0['runtime.workers']} workers"
    if (mode or cfg0["runtime.mode"]) == "processes":
        how += f", ipc {ipc or cfg0['runtime.ipc']}"
    echo(f"verifying {_rounds(chosen)} of {run.root} ({how})")

    ok = True
    for store in ("dataset", "partitions"):
        for problem in _store_problems(run, store):
            echo(problem)
            ok = False
    failed = []
    with _scratch(run, mode, workers, ipc) as scratch:
        for t in chosen:
            m, config = manifests[t], configs[t]
            problems = _chain_problems(run, t, m)
            for problem in problems:
                echo(f"round {t}: {problem}")
            reexecuted = True
            try:
                if t == 0:
                    diffs = _recomputed_diffs(run, t, m, scratch.init(config))
                else:
                    out = scratch.round(t, config)
                    diffs = _recomputed_diffs(run, t, m, out.files, out.manifest, out.metrics)
            except ArtifactError as exc:
                echo(f"round {t}: cannot re-execute: {scratch.unscratch(str(exc))}")
                diffs, reexecuted = [], False
            if diffs:
                echo(f"round {t}: DIFFERS: {'; '.join(diffs)}")
            elif problems and reexecuted:
                echo(f"round {t}: re-executed outputs match the manifest")
            if problems or diffs or not reexecuted:
                failed.append(t)
            else:
                echo(f"round {t}: OK")
    if failed or not ok:
        what = [] if ok else ["the stores"]
        if failed:
            what.append(f"{len(failed)} of {len(chosen)} rounds ({_fmt_rounds(failed)})")
        echo(f"FAILED: {', '.join(what)}")
    else:
        echo(f"{_rounds(chosen)}: all OK")
    return ok and not failed
