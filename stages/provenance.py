"""Provenance checks: what a stage reads must have been made with the config it runs.

Every store and round records the byte-relevant config it was made from and the hashes of
its inputs (the chain: dataset -> partitions -> round 0 -> round 1 -> ...):

- the dataset store records `DATA_KEYS`;
- the partitions store records `partition_keys(config)` (the algorithm and its public-set
  keys included) and the dataset manifest's hash;
- each round records the whole byte config and the hashes of both store manifests and of its
  parent round's manifest.

Before a stage uses an artifact it checks that record against the config it was asked to run
with: a mismatch is refused with one line naming the differing keys and the command that
rebuilds, instead of silently training on data the manifests do not describe.
"""

from __future__ import annotations

import os
import re
from typing import Any

from blazefl.stages.artifacts import MANIFEST, ArtifactError, RunDir, code_version
from blazefl.stages.config import (
    DATA_KEYS,
    RunConfig,
    byte_config,
    config_sha256,
    partition_keys,
)
from blazefl.stages.manifest_schema import (
    CURRENT_FORMATS,
    is_current_format,
    manifest_format,
)
from blazefl.stages.untrusted import resolve_inside
from blazefl.stages.user_code import code_differences, config_code

__all__ = [
    "ProvenanceError",
    "OlderFormatError",
    "older_format_message",
    "check_format",
    "check_user_code",
    "differing_keys",
    "check_dataset_store",
    "check_partitions_store",
    "check_stores",
    "check_round_provenance",
    "refuse_upstream_rewrite",
    "DATASET_REF",
    "PARTITIONS_REF",
]

DATASET_REF = f"dataset/{MANIFEST}"
PARTITIONS_REF = f"partitions/{MANIFEST}"


class ProvenanceError(ArtifactError):
    """An artifact was made with another config or from other inputs than those asked for."""


class OlderFormatError(ArtifactError):
    """An artifact of an earlier manifest format: readable, but re-executed only by the
    package version that made it."""


def _shown_version(value: Any) -> str | None:
    """A version string from an (untrusted) manifest, safe to print, or None."""
    if not isinstance(value, str) or not re.fullmatch(r"[\w.+!-]{1,40}", value):
        return None
    return value


def older_format_message(m: dict[str, Any], where: str) -> str:
    """One line: which package version and torch build made an older-format manifest, and how
    to install them to re-execute it (never "corrupt": an older run is not a damaged one).

    Example:
        >>> older_format_message({"code": {"version": "0.1.0"}, ...}, "round-0000")
        "round-0000 was made by blazefl 0.1.0 with torch 2.14.1+cu130 (manifest format 1); ..."
    """
    code: dict[str, Any] = m["code"] if isinstance(m.get("code"), dict) else {}
    env: dict[str, Any] = m["environment"] if isinstance(m.get("environment"), dict) else {}
    version = _shown_version(code.get("version"))
    torch_build = _shown_version(env.get("torch"))
    made = (
        f"blazefl {version}"
        if version
        else "a blazefl from before versioned manifests (no version recorded)"
    )
    torch_pin = f" 'torch=={torch_build.split('+')[0]}'" if torch_build else ""
    if version:
        how = f"pip install 'blazefl=={version}'{torch_pin}"
    else:  # the earliest 0.1.0 runs: only the source of that time reads them
        how = (
            "install the blazefl source that made it (a 0.1.0 from before 2026-12-01; the run's "
            f"timings/round-NNNN.json may name its commit){' and' + torch_pin if torch_pin else ''}"
        )
    return (
        f"{where} was made by {made} with torch {torch_build or 'unknown'} (manifest format "
        f"{manifest_format(m)}); this is blazefl {code_version()['version']}, which re-executes "
        f"formats {CURRENT_FORMATS[0]}-{CURRENT_FORMATS[-1]} only: to re-execute it, {how}; its "
        "files and chain are still checked here"
    )


def check_format(m: dict[str, Any], where: str) -> None:
    """Refuse to compute from an artifact of an earlier format (one line, how to install the
    version that made it).

    Raises:
        OlderFormatError: `m` is of an earlier manifest format.
    """
    if not is_current_format(m):
        raise OlderFormatError(older_format_message(m, where))


def check_user_code(recorded: dict[str, str], current: dict[str, str], what: str) -> None:
    """Refuse an artifact made with other user code than the code that would run now.

    Args:
        recorded: the artifact's `user_code` record.
        current: the closure of the code the config names now (`config_code`).
        what: the artifact, as the message names it ("round-0003 in artifacts/default").

    Raises:
        ProvenanceError: one line naming the differing files and the way out.
    """
    changed = code_differences(recorded, current)
    if changed:
        raise ProvenanceError(
            f"{what} was made with other user code (differs: {_keys(changed)}): restore the "
            "code it was made with (the run keeps a copy in round-0000/code/), or use a new "
            "--out to start a new run with this code"
        )


def differing_keys(recorded: Any, wanted: dict[str, Any]) -> list[str]:
    """Keys whose value differs between a recorded config and the wanted one, sorted."""
    rec = recorded if isinstance(recorded, dict) else {}
    return sorted(k for k in set(rec) | set(wanted) if rec.get(k, object()) != wanted.get(k))


def _keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:6])
    return shown + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


def _check_files_listed(run: RunDir, name: str, manifest: dict[str, Any]) -> None:
    """Every file a store lists is a regular file inside the run (zarr reads them without
    such checks, so a symlink to /dev/zero or a system file is refused here first)."""
    for rel in manifest["files"]:
        resolve_inside(run.root, f"{name}/{rel}")


def check_dataset_store(config: RunConfig, run: RunDir, code_check: bool = True) -> str:
    """Check `RUN/dataset` was made with `config`'s data keys.

    Returns:
        The sha256 of the dataset manifest.

    Raises:
        ProvenanceError: made with other data keys (names them and the rebuild command).
    """
    if not (run.dataset / MANIFEST).exists():
        raise ArtifactError(f"dataset store {run.dataset} is missing: run the 'prepare' stage")
    m = run.store_manifest("dataset")
    check_format(m, f"the dataset store in {run.root}")
    keys = differing_keys(m["config"], {k: config[k] for k in DATA_KEYS})
    if keys:
        raise ProvenanceError(
            f"the dataset store in {run.root} was made with another config (differs in: "
            f"{_keys(keys)}): rebuild it with `blazefl stage prepare --out {run.root}` and this "
            "config (then partition and init), or use a new --out"
        )
    if code_check:
        here = config_code(config, "prepare")
        check_user_code(m["user_code"], here, f"the dataset store in {run.root}")
    _check_files_listed(run, "dataset", m)
    return run.manifest_sha256(run.dataset / MANIFEST)


def check_partitions_store(
    config: RunConfig, run: RunDir, dataset_sha: str, code_check: bool = True
) -> str:
    """Check `RUN/partitions` was made with `config`'s partition keys from this dataset store.

    Returns:
        The sha256 of the partitions manifest.

    Raises:
        ProvenanceError: other partition keys, or made from another dataset store.
    """
    if not (run.partitions / MANIFEST).exists():
        raise ArtifactError(
            f"partitions store {run.partitions} is missing: run the 'partition' stage"
        )
    m = run.store_manifest("partitions")
    check_format(m, f"the partitions store in {run.root}")
    fix = (
        f"rebuild it with `blazefl stage partition --out {run.root}` and this config, or use a "
        "new --out"
    )
    keys = differing_keys(m["config"], {k: config[k] for k in partition_keys(config.spec)})
    if keys:
        raise ProvenanceError(
            f"the partitions store in {run.root} was made with another config (differs in: "
            f"{_keys(keys)}): {fix}"
        )
    if m["inputs"].get(DATASET_REF) != dataset_sha:
        raise ProvenanceError(
            f"the partitions store in {run.root} was made from another dataset store (rebuilt "
            f"since): {fix}"
        )
    if code_check:
        here = config_code(config, "partition")
        check_user_code(m["user_code"], here, f"the partitions store in {run.root}")
    _check_files_listed(run, "partitions", m)
    return run.manifest_sha256(run.partitions / MANIFEST)


def check_stores(config: RunConfig, run: RunDir, code_check: bool = True) -> dict[str, str]:
    """Check both stores against `config`; the hashes of their manifests by relative path.

    Args:
        config / run: the config asked for and the run directory.
        code_check: compare the stores' recorded user code with the current folder's (off
            only for `verify --code-from here`, which re-executes with other code on purpose).
    """
    dataset_sha = check_dataset_store(config, run, code_check)
    return {
        DATASET_REF: dataset_sha,
        PARTITIONS_REF: check_partitions_store(config, run, dataset_sha, code_check),
    }


def check_round_provenance(
    config: RunConfig,
    run: RunDir,
    t: int,
    manifest: dict[str, Any],
    stores: dict[str, str],
    user_code: dict[str, str] | None = None,
) -> None:
    """Check round t (already schema-checked) was made with `config` from these stores.

    Args:
        config / run / t / manifest: the round and the config asked for.
        stores: the hashes of the store manifests (`check_stores`).
        user_code: the closure of the user code that would run now (default: computed).

    Raises:
        OlderFormatError: the round is of an earlier manifest format.
        ProvenanceError: another byte config or user code, or made from stores rebuilt since.
    """
    check_format(manifest, f"round-{t:04d} in {run.root}")
    if manifest["config_sha256"] != config_sha256(config):
        keys = differing_keys(manifest["config"], byte_config(config))
        how = "blazefl stage init" if t == 0 else f"blazefl stage round --round {t}"
        raise ProvenanceError(
            f"round-{t:04d} in {run.root} was made with another config (differs in: "
            f"{_keys(keys)}): recompute it with `{how} --out {run.root}` and this config, or "
            "use a new --out"
        )
    for ref, sha in stores.items():
        if manifest["inputs"].get(ref) != sha:
            store = ref.split("/")[0]
            raise ProvenanceError(
                f"round-{t:04d} in {run.root} was made from another {store} store (rebuilt "
                f"since): its rounds are stale; remove them (rm -r {run.root}/round-*) and run "
                "again, or use a new --out"
            )


def refuse_upstream_rewrite(run: RunDir, stage: str) -> None:
    """Refuse re-running `stage` (prepare / partition / init) over a run with later rounds.

    Under DVC (`DVC_STAGE` set) the rewrite is allowed: DVC reruns and replaces every later
    stage's outputs, and a round left stale would be caught by its recorded input hashes.

    Raises:
        ProvenanceError: later rounds exist and the caller is not DVC.
    """
    if os.environ.get("DVC_STAGE"):
        return
    rounds = run.complete_rounds()
    later = [t for t in rounds if stage != "init" or t > 0]
    if later:
        raise ProvenanceError(
            f"{run.root} holds rounds made from the current {stage} output (up to round "
            f"{later[-1]}): re-running `{stage}` would leave them stale; remove them first "
            f"(rm -r {run.root}/round-*) or use a new --out"
        )
