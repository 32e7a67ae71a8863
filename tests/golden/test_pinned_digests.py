"""Pinned digests: the same version gives the same bytes.

Each reference config (one tiny config per built-in algorithm, `make_golden.REFERENCE`) is run
fresh, in sequential mode and with 2 worker threads (the two must agree: the mode never changes
bytes), and its digest is compared with the one `digests.json` pins for this environment:

- another package version than digests.json's: fail, the digests must be re-recorded for the
  new version (and the change described in CHANGELOG.md);
- no entry for this environment (another torch build, CPU model, bit-relevant variable...):
  skip, naming the environment and how to record it;
- otherwise the digest must be the pinned one: bytes may change only with the version.

The runs are subprocesses of the CLI, as `make_golden --digests` records them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.golden.make_golden import (
    DIGESTS,
    MODES,
    REFERENCE,
    digest_of,
    environment_key,
    installed_version,
    manifest,
    run_config,
)

RECORD = "python -m tests.golden.make_golden --digests"


def pinned() -> dict[str, Any]:
    """digests.json as committed."""
    data: dict[str, Any] = json.loads(DIGESTS.read_text())
    return data


def check_version() -> str:
    """The installed version, failing the test when digests.json pins another one."""
    version, recorded = installed_version(), pinned()["version"]
    if version != recorded:
        pytest.fail(
            f"version changed ({recorded} in digests.json, {version} installed): re-record the "
            f"pinned digests ({RECORD}) and add a CHANGELOG entry"
        )
    return version


def test_digests_file_names_every_reference_config() -> None:
    """Every recorded environment pins exactly the reference configs."""
    check_version()
    for key, digests in pinned()["environments"].items():
        assert set(digests) == set(REFERENCE), f"{key}: re-record with {RECORD}"


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_config_gives_the_pinned_digest(name: str, tmp_path: Path) -> None:
    version = check_version()
    digests = {}
    for mode in MODES:
        work = tmp_path / mode
        work.mkdir()
        run = run_config(REFERENCE[name], work / "run", work, mode)
        digests[mode] = digest_of(run)
    assert digests["threads"] == digests["sequential"], (
        f"{name}: threads (2 workers) and sequential give other bytes: {digests}"
    )
    key = environment_key(manifest(run)["environment"])
    entry = pinned()["environments"].get(key)
    if entry is None:
        pytest.skip(f"no pinned digests for the environment {key!r}: record them with {RECORD}")
    if digests["sequential"] != entry.get(name):
        pytest.fail(
            f"bytes of {name} changed while the version stayed {version}: if on purpose, bump "
            f"the version in pyproject.toml, add a CHANGELOG.md entry and re-record ({RECORD}); "
            f"pinned {entry.get(name)}, now {digests['sequential']}"
        )
