"""DS-FL through the pipeline: server and client state snapshotted under round-N/state/, same
bytes in every mode, exact resume from disk, and `verify` re-executes stateful rounds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from tests.pipeline.client_data import latest_data

DSFL_SETS = [
    "fl.algorithm=dsfl",
    "data.size=900",
    "dsfl.open_size=300",
    "data.test_size=200",
    "data.clients=6",
    "fl.clients_per_round=3",
    "fl.rounds=3",
    "dsfl.public_size_per_round=100",
    "train.local_epochs=1",
    "train.batch_size=32",
]
ARGS = [arg for item in DSFL_SETS for arg in ("--set", item)]


def _files(snapshot: Callable[[Path], dict[str, str]], root: Path) -> dict[str, str]:
    return {k: v for k, v in snapshot(root).items() if not k.startswith("timings")}


@pytest.fixture(scope="module")
def dsfl_run(tmp_path_factory: pytest.TempPathFactory, blazefl: Callable[..., Result]) -> Path:
    out = tmp_path_factory.mktemp("dsfl") / "run"
    result = blazefl("run", "--out", str(out), "--mode", "sequential", "--quiet", *ARGS)
    assert result.exit_code == 0, result.output
    return out


def test_state_of_server_and_every_seen_client_is_in_each_round(dsfl_run: Path) -> None:
    import json

    seen: set[int] = set()
    for t in range(1, 4):
        manifest = json.loads((dsfl_run / f"round-{t:04d}" / "manifest.json").read_text())
        seen |= set(manifest["clients"])
        state = {p.name for p in (dsfl_run / f"round-{t:04d}" / "state").iterdir()}
        assert state == {"server.safetensors"}
        # every client seen so far has its state in the round the index names
        latest = latest_data(dsfl_run, t)
        assert set(latest) == seen
        assert {c for c, (r, _) in latest.items() if r == t} == set(manifest["clients"])
        assert all(any(k.startswith("state/") for k in ts) for _, ts in latest.values())
    assert (dsfl_run / "round-0000" / "state" / "server.safetensors").exists()


def test_processes_give_the_same_bytes_as_sequential(
    dsfl_run: Path,
    tmp_path: Path,
    blazefl: Callable[..., Result],
    snapshot: Callable[[Path], dict[str, str]],
) -> None:
    out = tmp_path / "run"
    result = blazefl(
        "run", "--out", str(out), "--mode", "processes", "--workers", "2", "--quiet", *ARGS
    )
    assert result.exit_code == 0, result.output
    assert _files(snapshot, out) == _files(snapshot, dsfl_run)


def test_resume_from_disk_restores_client_and_server_state_exactly(
    dsfl_run: Path,
    tmp_path: Path,
    blazefl: Callable[..., Result],
    snapshot: Callable[[Path], dict[str, str]],
) -> None:
    out = tmp_path / "run"
    first = blazefl(
        "run",
        "--out",
        str(out),
        "--mode",
        "threads",
        "--workers",
        "2",
        "--quiet",
        *ARGS,
        "--set",
        "fl.rounds=1",
    )
    assert first.exit_code == 0, first.output
    for t in (2, 3):  # one process per round, as dvc runs them: state comes only from disk
        result = blazefl("stage", "round", "--round", str(t), "--out", str(out), *ARGS)
        assert result.exit_code == 0, result.output
    assert blazefl("stage", "report", "--out", str(out), *ARGS).exit_code == 0
    assert _files(snapshot, out) == _files(snapshot, dsfl_run)


def test_verify_reexecutes_stateful_rounds_and_catches_a_changed_client_state(
    dsfl_run: Path, tmp_path: Path, blazefl: Callable[..., Result]
) -> None:
    import shutil

    result = blazefl("verify", str(dsfl_run), "--mode", "threads", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "round 3: OK" in result.output
    copy = tmp_path / "run"
    shutil.copytree(dsfl_run, copy)
    victim = copy / "round-0002" / "clients.safetensors"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1  # the last tensor: the highest sampled client's state
    victim.chmod(0o644)
    victim.write_bytes(bytes(data))
    result = blazefl("verify", str(copy), "--rounds", "2-3")
    assert result.exit_code == 1
    assert "round 2: clients.safetensors differs from its manifest" in result.output
    assert "round-0002/clients.safetensors does not match the hash" in result.output


def test_dsfl_config_errors_are_one_line(tmp_path: Path, blazefl: Callable[..., Result]) -> None:
    result = blazefl("run", "--out", str(tmp_path / "r"), *ARGS, "--set", "dsfl.open_size=900")
    assert result.exit_code == 2
    assert "dsfl.open_size" in result.output and len(result.output.strip().splitlines()) == 1
