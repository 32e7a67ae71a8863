"""Suite-wide fixtures."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C tests send SIGINT to this process: make it raise KeyboardInterrupt as in a
    terminal even when the suite was started in the background (`cmd &` in a script sets
    SIGINT to ignored), and put back whatever handler was there."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session", autouse=True)
def _not_in_the_users_working_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never read the repository's own params.yaml (or dvc.yaml, artifacts/), which the
    README's DVC steps change: a session started in the repository root runs in an empty
    folder of its own instead (session fixtures included). Worker processes still import
    `tests.*` (spawn hands them this process's `sys.path`)."""
    patch = pytest.MonkeyPatch()
    if Path.cwd().resolve() == ROOT:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    patch.undo()
