"""Helpers of the integrity tests: a tiny config, a CLI invoker that keeps stderr apart, and
re-sealing a tampered store or round (as an adversary would, so only provenance catches it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from blazefl.pipeline.cli import main
from blazefl.stages.artifacts import canonical_json, sha256_file
from blazefl.stages.prepare import tree_hashes

SMALL = [
    "seed=7",
    "data.clients=6",
    "data.size=600",
    "data.test_size=200",
    "fl.rounds=2",
    "fl.clients_per_round=3",
    "train.local_epochs=1",
    "train.batch_size=32",
    "runtime.mode=sequential",
]


def sets(*extra: str) -> list[str]:
    """`--set` arguments of the small config plus `extra` overrides."""
    return [a for item in (*SMALL, *extra) for a in ("--set", item)]


def cli(*args: str) -> Result:
    """Invoke `blazefl` in-process with stderr kept apart from stdout."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_line_error(result: Result, code: int = 2) -> str:
    """Assert `result` ended with exit `code` and exactly one `error:` line; return it."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def reseal_store(store: Path) -> None:
    """Rewrite a store's manifest `files` to match what is on disk now."""
    path = store / "manifest.json"
    m = json.loads(path.read_text())
    m["files"] = tree_hashes(store)
    m["sizes"] = {rel: (store / rel).stat().st_size for rel in m["files"]}
    path.write_bytes(canonical_json(m))


def reseal_round(round_dir: Path, edit: Any = None) -> None:
    """Rewrite a round manifest's `outputs` to match the files on disk (after `edit(m)`)."""
    path = round_dir / "manifest.json"
    m = json.loads(path.read_text())
    m["outputs"] = {name: sha256_file(round_dir / name) for name in m["outputs"]}
    for p in sorted(round_dir.rglob("*.safetensors")):
        m["outputs"][p.relative_to(round_dir).as_posix()] = sha256_file(p)
    m["sizes"] = {name: (round_dir / name).stat().st_size for name in m["outputs"]}
    if edit is not None:
        edit(m)
    path.write_bytes(canonical_json(m))
