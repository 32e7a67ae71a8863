"""SCAFFOLD through the CLI: the server control variate and every seen client's control
variate are snapshotted under round-N/state/, the run directory has the same bytes in every
execution mode, a run killed mid-round resumes to the same bytes, and `verify` re-executes
its rounds and catches a changed client state."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from safetensors.torch import load_file

from tests.pipeline.client_data import flip_tensor_byte, latest_data, sampled

SCAFFOLD_SETS = [
    "fl.algorithm=scaffold",
    "scaffold.server_lr=0.8",
    "data.size=600",
    "data.test_size=200",
    "data.clients=6",
    "data.partition=dirichlet",
    "fl.clients_per_round=3",
    "fl.rounds=3",
    "train.local_epochs=1",
    "train.batch_size=32",
]
ARGS = [arg for item in SCAFFOLD_SETS for arg in ("--set", item)]


def _files(snapshot: Callable[[Path], dict[str, str]], root: Path) -> dict[str, str]:
    return {k: v for k, v in snapshot(root).items() if not k.startswith("timings")}


@pytest.fixture(scope="module")
def scaffold_run(tmp_path_factory: pytest.TempPathFactory, blazefl: Callable[..., Result]) -> Path:
    out = tmp_path_factory.mktemp("scaffold") / "run"
    result = blazefl("run", "--out", str(out), "--mode", "sequential", "--quiet", *ARGS)
    assert result.exit_code == 0, result.output
    return out


def test_server_and_every_seen_client_control_is_in_each_round(scaffold_run: Path) -> None:
    seen: set[int] = set()
    initial = load_file(scaffold_run / "round-0000" / "state" / "server.safetensors")
    assert set(initial) == {"control"} and not initial["control"].any()
    assert [p.name for p in (scaffold_run / "round-0000" / "state").iterdir()] == [
        "server.safetensors"
    ]
    for t in range(1, 4):
        manifest = json.loads((scaffold_run / f"round-{t:04d}" / "manifest.json").read_text())
        seen |= set(manifest["clients"])
        round_dir = scaffold_run / f"round-{t:04d}"
        assert [p.name for p in (round_dir / "state").iterdir()] == ["server.safetensors"]
        # every client seen so far has its control in the round the index names
        latest = latest_data(scaffold_run, t)
        assert set(latest) == seen
        assert {c for c, (r, _) in latest.items() if r == t} == set(manifest["clients"])
        assert set(manifest["outputs"]) >= {"state/server.safetensors", "clients.safetensors"}
        for _, tensors in latest.values():
            state = {k: v for k, v in tensors.items() if k.startswith("state/")}
            assert set(state) == {"state/control"} and state["state/control"].any()
    assert "scaffold.server_lr" in json.dumps(manifest["config"])


@pytest.mark.parametrize(
    ("mode", "ipc"),
    [("threads", "shared_memory"), ("processes", "shared_memory"), ("processes", "storage")],
)
def test_every_mode_gives_the_same_bytes_as_sequential(
    scaffold_run: Path,
    tmp_path: Path,
    blazefl: Callable[..., Result],
    snapshot: Callable[[Path], dict[str, str]],
    mode: str,
    ipc: str,
) -> None:
    out = tmp_path / "run"
    result = blazefl(
        "run", "--out", str(out), "--mode", mode, "--workers", "2", "--ipc", ipc, "--quiet", *ARGS
    )
    assert result.exit_code == 0, result.output
    assert _files(snapshot, out) == _files(snapshot, scaffold_run)


def test_sigkill_mid_run_then_rerun_resumes_to_the_same_bytes(
    scaffold_run: Path,
    tmp_path: Path,
    blazefl: Callable[..., Result],
    snapshot: Callable[[Path], dict[str, str]],
) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "blazefl.pipeline.cli", "run", "--out", str(out), "--quiet"]
    proc = subprocess.Popen([*cmd, "--mode", "sequential", *ARGS], cwd=Path(__file__).parents[2])
    marker = out / "metrics" / "round-0001.json"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the runner never finished round 1"
    assert not (out / "round-0003").exists(), "killed too late to test a crash mid-run"
    # resumed in another mode: client state comes back from disk, not from the dead process
    result = blazefl("run", "--out", str(out), "--mode", "threads", "--workers", "2", *ARGS)
    assert result.exit_code == 0, result.output
    assert not [p for p in out.rglob("*") if p.name.endswith((".partial", ".old"))]
    assert _files(snapshot, out) == _files(snapshot, scaffold_run)


def test_verify_passes_and_catches_a_changed_client_control(
    scaffold_run: Path, tmp_path: Path, blazefl: Callable[..., Result]
) -> None:
    result = blazefl("verify", str(scaffold_run), "--mode", "threads", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "round 3: OK" in result.output
    copy = tmp_path / "run"
    shutil.copytree(scaffold_run, copy)
    victim = copy / "round-0002" / "clients.safetensors"
    client = sampled(copy / "round-0002")[0]
    flip_tensor_byte(victim, f"{client:05d}/state/control", 0)
    result = blazefl("verify", str(copy), "--rounds", "2-3")
    assert result.exit_code == 1
    assert "round 2: clients.safetensors differs from its manifest" in result.output
    assert (
        "round 3: cannot re-execute: round-0002/clients.safetensors does not match the hash "
        "in its manifest"
    ) in result.output


def test_bad_server_lr_is_a_one_line_error(tmp_path: Path, blazefl: Callable[..., Result]) -> None:
    result = blazefl("run", "--out", str(tmp_path / "r"), *ARGS, "--set", "scaffold.server_lr=0")
    assert result.exit_code == 2
    assert "scaffold.server_lr" in result.output
    assert len(result.output.strip().splitlines()) == 1
