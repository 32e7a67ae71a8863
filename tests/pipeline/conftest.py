"""Fixtures shared by the pipeline CLI tests: a tiny config, a CLI invoker, one reference run.

The reference run is session-scoped and must not be modified: tests that tamper with a run
copy it first (`shutil.copytree`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from blazefl.pipeline.cli import main

#: A run of this size takes a few seconds on 2 cores.
TINY_SETS = [
    "data.size=600",
    "data.test_size=200",
    "data.clients=6",
    "fl.clients_per_round=3",
    "fl.rounds=3",
    "train.local_epochs=1",
    "train.batch_size=32",
]


@pytest.fixture(scope="session")
def tiny_args() -> list[str]:
    """`--set` arguments of the tiny experiment."""
    return [arg for item in TINY_SETS for arg in ("--set", item)]


@pytest.fixture(scope="session")
def blazefl() -> Callable[..., Result]:
    """Invoke the `blazefl` CLI in-process: `blazefl("verify", str(run))` -> click Result."""

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def tiny_run(
    tmp_path_factory: pytest.TempPathFactory, blazefl: Callable[..., Result], tiny_args: list[str]
) -> Path:
    """A complete 3-round tiny run, made with 2 worker threads (read only: copy to modify)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    result = blazefl(
        "run", "--out", str(out), "--mode", "threads", "--workers", "2", "--quiet", *tiny_args
    )
    assert result.exit_code == 0, result.output
    return out


#: Three index chunks (1,024 clients each), 3 clients sampled per round: the last chunk is
#: named by no sampled client, so every round holds it as a hard link to round 0's.
CHUNKED_SETS = [
    "data.size=2200",
    "data.test_size=200",
    "data.clients=2100",
    "data.partition=iid",
    "fl.clients_per_round=3",
    "fl.rounds=3",
    "train.local_epochs=1",
    "train.batch_size=32",
]


@pytest.fixture(scope="session")
def chunked_args() -> list[str]:
    """`--set` arguments of the chunked experiment."""
    return [arg for item in CHUNKED_SETS for arg in ("--set", item)]


@pytest.fixture(scope="session")
def chunked_run(
    tmp_path_factory: pytest.TempPathFactory,
    blazefl: Callable[..., Result],
    chunked_args: list[str],
) -> Path:
    """A complete 3-round run of 2,100 clients whose rounds share index chunks (read only)."""
    out = tmp_path_factory.mktemp("chunked") / "run"
    result = blazefl("run", "--out", str(out), "--quiet", *chunked_args)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def snapshot() -> Callable[[Path], dict[str, str]]:
    """Every entry under a directory: sha256 for files, "dir" for folders, link targets."""

    def take(root: Path) -> dict[str, str]:
        out = {}
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = f"link:{p.readlink()}"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        return out

    return take
