"""Auditing a run directory: `blazefl verify` (diff and show live in `pipeline.compare`).

- `verify_run` checks every chosen round against its manifest (files on disk, the parent-hash
  chain, input hashes), then re-executes it from round t-1's *recorded* artifacts in a scratch
  in memory and compares the recomputed outputs and per-client uplink hashes with the manifest.
  The files and chain are checked by `pipeline.run_check` (the one check `pack` and `unpack`
  run too, so the three verbs agree on a damaged run); the provenance checks (recorded
  configs, the re-computed partition) live in `pipeline.chain`. The run directory is only
  read, every file as untrusted.
- What the re-execution raises is sorted in two (`pipeline.code_failures`): the run's own
  files being damaged (a round that "cannot re-execute": verify's finding, like a difference)
  and the user code here failing (`CodeCannotRunError`: it cannot be imported, parsed, or it
  raised while re-executing). The second tells nothing about the run, so the CLI exits 125,
  which `git bisect run` reads as "skip this commit" (docs/auditing.md).

Example:
    >>> verify_run(Path("artifacts/default"), "3,5-7", "processes", 2, None, echo=print)
    round 3: OK
    ...
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from blazefl.core.loop import ExecutionSettings, require_ray
from blazefl.pipeline.chain import code_note, provenance_problems, recorded_code
from blazefl.pipeline.code_failures import (
    CodeCannotRunError,
    code_must_run,
    import_algorithms,
    listed_code_notes,
)
from blazefl.pipeline.divergence import mixed_environments, reexecution_notes
from blazefl.pipeline.run_check import chain_problems, check_layout, store_problems
from blazefl.pipeline.trust import code_root, require_consent
from blazefl.stages.artifacts import (
    MANIFEST,
    ArtifactError,
    RunDir,
    canonical_json,
    code_version,
    environment,
    sha256_bytes,
)
from blazefl.stages.config import ConfigError, RunConfig, config_sha256, load_config
from blazefl.stages.data_files import data_differences, data_file_hashes
from blazefl.stages.init import init_outputs
from blazefl.stages.manifest_schema import is_current_format, validate_round_manifest
from blazefl.stages.provenance import OlderFormatError, older_format_message
from blazefl.stages.session import Session
from blazefl.stages.snapshot import TRACE

__all__ = ["CodeCannotRunError", "verify_run", "parse_rounds", "environment_note"]

Echo = Callable[[str], None]
_RANGE_RE = re.compile(r"^(\d{1,12})(?:-(\d{1,12}))?$")


# -- shared helpers ------------------------------------------------------------------------
def parse_rounds(spec: str, last: int | None = None) -> list[int]:
    """Parse a round spec like "3,5-7" into sorted round numbers ([3, 5, 6, 7]).

    Args:
        spec: the spec.
        last: the run's last complete round: a range past it is refused before it is
            expanded (so `0-999999999` allocates nothing).

    Raises:
        ConfigError: on anything but comma-separated numbers and ascending ranges.
        ArtifactError: a round past `last`.
    """
    if len(spec) > 10_000:
        raise ConfigError("--rounds is longer than 10000 characters: give ranges like 3,5-7")
    rounds: set[int] = set()
    for part in spec.split(","):
        m = _RANGE_RE.match(part.strip())
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ConfigError(f"--rounds expects round numbers and ranges like 3,5-7, got {spec!r}")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if last is not None and hi > last:
            raise ArtifactError(
                f"round {max(lo, last + 1)} is not complete (rounds 0-{last} are): choose "
                f"rounds between 0 and {last}"
            )
        rounds.update(range(lo, hi + 1))
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


# -- verify --------------------------------------------------------------------------------
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
    if metrics is not None and path.is_file() and _read(run, path) != canonical_json(metrics):
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
    got, recorded = new.get("client_settings", {}), m.get("client_settings", {})
    if got != recorded:
        which = sorted(int(c) for c in set(got) | set(recorded) if got.get(c) != recorded.get(c))
        out.append(f"per-client settings of clients {_ids(which)} instead of the recorded ones")
    cids = differing_uplinks(m, new)
    if cids:
        out.append(f"uplinks of clients {_ids(cids)}")
    recorded_trace = _read(run, run.round_dir(t) / TRACE) if TRACE in outputs else None
    recorded = lambda name: _read(run, run.round_dir(t) / name)  # noqa: E731
    out.extend(reexecution_notes(t, outputs, recorded_trace, files, cids, recorded))
    return out


def _read(run: RunDir, path: Path) -> bytes | None:
    try:  # a clients file of thousands of sampled clients is megabytes
        return run.read_file(run.rel(path), 256 << 20)
    except ValueError:
        return None


def differing_uplinks(a: dict[str, Any], b: dict[str, Any]) -> list[int]:
    """Client ids whose uplink hash differs (or exists in only one) of two manifests."""
    ua, ub = a.get("uplinks", {}), b.get("uplinks", {})
    return sorted(int(k) for k in set(ua) | set(ub) if ua.get(k) != ub.get(k))


def _ids(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids) or "none"


class _Reexecutor:
    """Re-executes rounds of a run in memory: round 0 through `init_outputs`, later rounds
    through one warm `Session` (reused while the config stays the same). Nothing is written."""

    def __init__(
        self,
        run: RunDir,
        mode: str | None,
        workers: int | None,
        ipc: str | None,
        code_check: bool = True,
        ray: tuple[str | None, bool] = (None, False),
    ):
        self.run = run
        self.mode, self.workers, self.ipc = mode, workers, ipc
        self.ray = ray  # (address, allow mixed environments): ray mode only
        self.code_check = code_check
        self.session: Any = None
        self.session_key: str | None = None

    def init(self, config: RunConfig) -> dict[str, bytes]:
        return init_outputs(config, self.run, code_check=self.code_check)[0]

    def round(self, t: int, config: RunConfig) -> Any:
        """Compute round t from the recorded round t-1 (never from a recomputed one)."""
        key = config_sha256(config)
        if self.session is None or self.session_key != key:
            self.close()
            runtime = config.spec.runtime
            execution = ExecutionSettings.of(runtime, self.mode, self.workers, self.ipc)
            execution = execution.with_ray(*self.ray)
            self.session = Session(config, self.run, execution, code_check=self.code_check)
            self.session_key = key
        self.session.load(t - 1)
        return self.session.compute(t)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


@contextlib.contextmanager
def _reexecutor(
    run: RunDir,
    mode: str | None,
    workers: int | None,
    ipc: str | None,
    code_check: bool,
    ray: tuple[str | None, bool] = (None, False),
) -> Iterator[_Reexecutor]:
    r = _Reexecutor(run, mode, workers, ipc, code_check, ray)
    try:
        yield r
    finally:
        r.close()


def _config_of(m: dict[str, Any], t: int) -> RunConfig:
    try:
        return RunConfig.of(load_config(None, m["config"]))
    except ConfigError as exc:
        raise ArtifactError(
            f"round-{t:04d}/{MANIFEST} records an invalid config ({exc}): the run is tampered"
        ) from None


def _integrity_only(
    run: RunDir, chosen: list[int], manifests: dict[int, dict[str, Any]], echo: Echo
) -> bool:
    """Check the stores' files and every chosen round's files and chain against the manifests
    (any format), without re-executing anything. True iff all match."""
    echo(f"checking the files and chain of {_rounds(chosen)} of {run.root} (no re-execution)")
    ok = True
    for store in ("dataset", "partitions"):
        for problem in store_problems(run, store):
            echo(problem)
            ok = False
    for t in chosen:
        problems = chain_problems(run, t, manifests[t])
        for problem in problems:
            echo(f"round {t}: {problem}")
        if not problems:
            echo(f"round {t}: files and chain OK")
        ok = ok and not problems
    return ok


def _older_format(run: RunDir, manifests: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The first manifest of an earlier format, rounds first (they name the code version and
    the environment that made them), or None."""
    stores = [run.store_manifest(name) for name in ("dataset", "partitions")]
    older = [m for m in [*manifests.values(), *stores] if not is_current_format(m)]
    return older[0] if older else None


def _data_notes(run: RunDir, config: RunConfig) -> tuple[list[str], list[str]]:
    """The dataset store's recorded data files against data.root here: (notes, problems)."""
    root = config.spec.data.root
    recorded = run.store_manifest("dataset").get("data_files", {})
    if root is None or not recorded:
        return [], []
    if not Path(root).exists():
        return [f"note: data.root {root} is not here: its files are not compared"], []
    try:
        changed = data_differences(recorded, data_file_hashes(root))
    except ValueError as exc:
        return [], [f"data.root cannot be checked: {exc}"]
    if not changed:
        return [], []
    shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
    return [], [f"data differs under data.root {root}: {shown} (vs dataset/{MANIFEST})"]


def verify_run(
    run_dir: Path,
    rounds: str | None,
    mode: str | None,
    workers: int | None,
    ipc: str | None,
    echo: Echo,
    trust_code: bool = False,
    code_from: str = "auto",
    ray: tuple[str | None, bool] = (None, False),
) -> bool:
    """Re-execute rounds from their recorded inputs and compare with their manifests.

    Args:
        run_dir: the run directory (only read; re-execution happens in a temporary directory).
        rounds: spec like "3,5-7"; None means every complete round (0 = the init stage).
        mode / workers / ipc: execution mode of the re-execution (never changes bytes).
        echo: where report lines go.
        trust_code: the reader consents to importing the user code the run names.
        code_from: "run" (the run's own copy of its user code), "here" (the current folder's),
            or "auto" (here when this folder holds every recorded file, else the run's copy).
        ray: `--mode ray`: (cluster address or None, allow nodes of another environment).

    Returns:
        True iff every chosen round and the stores match their manifests.

    Raises:
        ConfigError: a bad round spec.
        ArtifactError: not a run directory, or a chosen round that is not complete.
        OlderFormatError: the run is of an earlier format (after its files and chain were
            checked): names the version that re-executes it.
        ConsentError: the run names user code and `trust_code` is False.
        CodeCannotRunError: the user code here cannot be parsed or imported, or it raised
            while re-executing a round (a failing client included): nothing is judged.
    """
    if mode == "ray":
        require_ray()  # one line before anything is read
    run = _open_run(Path(os.path.abspath(run_dir)))
    last = check_layout(run)  # symlinked folders, gaps, missing manifests: one line
    chosen = parse_rounds(rounds, last) if rounds is not None else list(range(last + 1))
    manifests = {t: run.manifest(t) for t in chosen}
    older = _older_format(run, manifests)
    if older is not None:  # readable, checkable, but re-executed by the version that made it
        if not _integrity_only(run, chosen, manifests, echo):
            echo(f"note: {older_format_message(older, 'this run')}")
            echo("FAILED: files or chain do not match the manifests")
            return False
        raise OlderFormatError(older_format_message(older, "this run"))
    require_consent(run, manifests, trust_code)  # before anything a run names is imported
    m0 = manifests[0] if 0 in manifests else run.manifest(0)
    record = m0["user_code"]
    notes = listed_code_notes(record, m0["config"])  # parses this folder's code
    if code_from == "auto":
        code_from = "run" if notes or not record else "here"
    with code_root(run, m0, code_from):
        if record:
            where = "this folder's" if code_from == "here" else "the run's own copy of its"
            notes.append(f"re-executing with {where} user code")
        return _verify(run, chosen, manifests, (mode, workers, ipc), code_from, notes, echo, ray)


def _verify(
    run: RunDir,
    chosen: list[int],
    manifests: dict[int, dict[str, Any]],
    how_args: tuple[str | None, int | None, str | None],
    code_from: str,
    notes: list[str],
    echo: Echo,
    ray: tuple[str | None, bool] = (None, False),
) -> bool:
    mode, workers, ipc = how_args
    import_algorithms(manifests)
    configs = {t: _config_of(m, t) for t, m in manifests.items()}
    for t, m in manifests.items():  # client ids below the run's data.clients
        validate_round_manifest(m, f"round-{t:04d}/{MANIFEST}", configs[t].spec.data.clients)

    seen: list[dict[str, Any]] = []
    for t, m in manifests.items():
        rec = m.get("environment", {})
        if rec in seen:
            continue
        seen.append(rec)
        runtime = configs[t].spec.runtime
        current = environment(runtime.threads_per_client, runtime.device)
        note = environment_note(rec, current)
        if note:
            echo(note)
    for t, m in manifests.items():  # the run never claimed one environment for these
        for line in mixed_environments(m):
            echo(
                f"note: round {t}: {line}; bits are only promised within one environment, "
                "so a re-execution here may differ there"
            )
    more = {code_note(recorded_code(run, t, m), code_version()) for t, m in manifests.items()}
    more -= {None}
    for note in [*sorted(more), *notes]:  # type: ignore[list-item]
        echo(note)  # type: ignore[arg-type]

    cfg0 = configs[chosen[0]]
    runtime0 = cfg0.spec.runtime
    how = mode or runtime0.mode
    if how != "sequential":
        how += f", {workers or runtime0.workers} workers"
    if (mode or runtime0.mode) == "processes":
        how += f", ipc {ipc or runtime0.ipc}"
    echo(f"verifying {_rounds(chosen)} of {run.root} ({how})")

    ok = True
    data_notes, data_problems = _data_notes(run, cfg0)
    for line in data_notes:
        echo(line)
    store_lines = [
        *store_problems(run, "dataset"),
        *store_problems(run, "partitions"),
        *data_problems,
    ]
    for problem in store_lines:
        echo(problem)
        ok = False
    seen_configs: dict[str, list[str]] = {}
    failed = []
    with _reexecutor(run, mode, workers, ipc, code_from == "run", ray) as scratch:
        for t in chosen:
            m, config = manifests[t], configs[t]
            key = m["config_sha256"]
            if key not in seen_configs:  # the stores against each config rounds were made with
                with code_must_run(t):  # re-computes the partition: a user partitioner runs
                    seen_configs[key] = provenance_problems(run, config)
            problems = seen_configs[key] + chain_problems(run, t, m)
            for problem in problems:
                echo(f"round {t}: {problem}")
            reexecuted = True
            try:
                with code_must_run(t):  # only the re-execution runs user code
                    out: Any = scratch.init(config) if t == 0 else scratch.round(t, config)
                if t == 0:
                    diffs = _recomputed_diffs(run, t, m, out)
                else:
                    diffs = _recomputed_diffs(run, t, m, out.files, out.manifest, out.metrics)
            except CodeCannotRunError:
                raise
            except ValueError as exc:  # ArtifactError, ProvenanceError, ManifestError, ...
                echo(f"round {t}: cannot re-execute: {exc}")
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
