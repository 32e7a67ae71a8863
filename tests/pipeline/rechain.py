"""Test helper: edit the manifests of a run and re-seal their hash chain, so the edited run is
internally consistent (only what a test changed on purpose differs from a genuine run).

Every manifest of a run names others by hash: a store or round manifest lists the manifests it
was built from in `inputs` ("dataset/manifest.json": sha256, ...), a round's `parent` is the
sha256 of the previous round's manifest file, and a manifest that records a `config` carries
its `config_sha256`. Editing one manifest therefore means rewriting everything downstream of
it. The helper copies every field as it is and recomputes only `config_sha256`, `parent` and
the manifest hashes in `inputs`, so it keeps working as fields are added to the format.

Example:
    >>> shutil.copytree(tiny_run, run)
    >>> set_config(run, {"fl.algorithm": "evil:f", "model.name": "evil:g"})
    >>> rechain(run, lambda rel, m: m.update(user_code={"evil.py": digest}))
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from blazefl.stages.artifacts import canonical_json, sha256_bytes
from blazefl.stages.manifest_schema import config_digest

__all__ = ["manifest_paths", "rechain", "set_config"]

MANIFEST = "manifest.json"
_ROUND = re.compile(r"^round-(\d{4})/manifest\.json$")

Edit = Callable[[str, dict[str, Any]], None]


def manifest_paths(run: Path) -> list[str]:
    """The run's manifests (relative posix paths), each after every manifest it names.

    Args:
        run: a run folder.

    Returns:
        Paths like "dataset/manifest.json", ..., "round-0003/manifest.json", in an order in
        which a manifest's `inputs` and `parent` are always written before it.

    Example:
        >>> manifest_paths(run)[-1]
        'round-0003/manifest.json'
    """
    found = {p.relative_to(run).as_posix(): p for p in sorted(run.glob(f"*/{MANIFEST}"))}
    needs: dict[str, set[str]] = {}
    for rel, path in found.items():
        m = json.loads(path.read_text())
        deps = {k for k in m.get("inputs", {}) if k in found}
        if (match := _ROUND.match(rel)) and int(match[1]) > 0:
            deps.add(f"round-{int(match[1]) - 1:04d}/{MANIFEST}")
        needs[rel] = deps & set(found)
    order: list[str] = []
    while needs:
        ready = sorted(rel for rel, deps in needs.items() if deps <= set(order))
        assert ready, f"manifests name each other in a cycle: {sorted(needs)}"
        order += ready
        for rel in ready:
            del needs[rel]
    return order


def rechain(run: Path, edit: Edit | None = None) -> dict[str, str]:
    """Apply `edit` to every manifest of `run`, then re-seal the chain.

    Args:
        run: a run folder (a copy: it is rewritten in place).
        edit: called as `edit(relative_path, manifest)` on each parsed manifest, in chain
            order; it changes the dict in place. None only re-seals.

    Returns:
        The new sha256 of every manifest, by relative path.

    Example:
        >>> rechain(run, lambda rel, m: m["config"].update({"seed": 7}) if "config" in m else None)
    """
    hashes: dict[str, str] = {}
    for rel in manifest_paths(run):
        path = run / rel
        m = json.loads(path.read_text())
        if edit is not None:
            edit(rel, m)
        if "config_sha256" in m:
            m["config_sha256"] = config_digest(m["config"])
        inputs = m.get("inputs", {})
        for ref in inputs:
            if ref in hashes:
                inputs[ref] = hashes[ref]
        if m.get("parent") is not None and (match := _ROUND.match(rel)):
            m["parent"] = hashes[f"round-{int(match[1]) - 1:04d}/{MANIFEST}"]
        data = canonical_json(m)
        path.write_bytes(data)
        hashes[rel] = sha256_bytes(data)
    return hashes


def set_config(run: Path, changes: Mapping[str, Any]) -> dict[str, str]:
    """Set config keys in every manifest whose recorded config has them, then re-seal.

    Round manifests record the whole config; a store records the keys it depends on (the
    dataset store `data.dataset`, the partition store `fl.algorithm`), and is changed too.

    Args:
        run: a run folder (a copy: it is rewritten in place).
        changes: dotted keys and their new values.

    Returns:
        The new sha256 of every manifest, by relative path.

    Example:
        >>> set_config(run, {"fl.algorithm": "evil:f"})
    """
    seen: set[str] = set()

    def edit(rel: str, m: dict[str, Any]) -> None:
        config = m.get("config")
        if isinstance(config, dict):
            for key, value in changes.items():
                if key in config:
                    config[key] = value
                    seen.add(key)

    hashes = rechain(run, edit)
    missing = set(changes) - seen
    assert not missing, f"no manifest of {run} records {sorted(missing)}"
    return hashes
