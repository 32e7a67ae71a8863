"""FedProx and FedAvgM through `blazefl run`: byte-identical run directories in every mode,
exact resume after SIGKILL, `verify` passes, and FedAvgM's server momentum is snapshotted in
every round's state/ where `verify` catches a changed byte."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from click.testing import Result

ALGORITHM_SETS = {
    "fedprox": ["fl.algorithm=fedprox", "fedprox.mu=0.1"],
    "fedavgm": ["fl.algorithm=fedavgm", "fedavgm.server_momentum=0.5"],
}


class Reference(NamedTuple):
    """One algorithm's 3-round tiny run, made sequentially (read only: copy to modify)."""

    algorithm: str
    args: list[str]  # the tiny `--set` flags plus the algorithm's
    run: Path


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root except timings/ (wall-clock seconds)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "timings"
    }


@pytest.fixture(scope="module", params=sorted(ALGORITHM_SETS))
def reference(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    blazefl: Callable[..., Result],
    tiny_args: list[str],
) -> Reference:
    algorithm: str = request.param
    args = [*tiny_args, *(a for item in ALGORITHM_SETS[algorithm] for a in ("--set", item))]
    out = tmp_path_factory.mktemp(algorithm) / "run"
    result = blazefl("run", "--out", str(out), "--mode", "sequential", "--quiet", *args)
    assert result.exit_code == 0, result.output
    return Reference(algorithm, args, out)


@pytest.mark.parametrize(
    "mode_args",
    [
        ("--mode", "threads", "--workers", "2"),
        ("--mode", "processes", "--workers", "2", "--ipc", "shared_memory"),
        ("--mode", "processes", "--workers", "2", "--ipc", "storage"),
    ],
    ids=["threads2", "processes2-shm", "processes2-storage"],
)
def test_every_mode_gives_byte_identical_run_directories(
    reference: Reference,
    tmp_path: Path,
    blazefl: Callable[..., Result],
    mode_args: tuple[str, ...],
) -> None:
    out = tmp_path / "run"
    result = blazefl("run", "--out", str(out), "--quiet", *mode_args, *reference.args)
    assert result.exit_code == 0, result.output
    assert tree(out) == tree(reference.run)


def test_sigkill_mid_run_then_rerun_resumes_byte_identically(
    reference: Reference, tmp_path: Path, blazefl: Callable[..., Result]
) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "blazefl.pipeline.cli", "run", "--out", str(out), "--quiet"]
    proc = subprocess.Popen([*cmd, *reference.args], cwd=Path(__file__).parents[2])
    marker = out / "metrics" / "round-0001.json"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the runner never finished round 1"
    assert not (out / "round-0003").exists(), "killed too late to test a crash mid-run"
    result = blazefl("run", "--out", str(out), "--quiet", *reference.args)
    assert result.exit_code == 0, result.output
    assert not [p for p in out.rglob("*") if p.name.endswith((".partial", ".old"))]
    assert tree(out) == tree(reference.run)


def test_verify_reexecutes_every_round(
    reference: Reference, blazefl: Callable[..., Result]
) -> None:
    result = blazefl("verify", str(reference.run), "--mode", "threads", "--workers", "2")
    assert result.exit_code == 0, result.output
    for t in range(4):
        assert f"round {t}: OK" in result.output.splitlines()


def test_fedavgm_momentum_is_in_every_round_and_verify_catches_a_changed_byte(
    reference: Reference, tmp_path: Path, blazefl: Callable[..., Result]
) -> None:
    import json

    from safetensors.torch import load_file

    ref = reference.run
    if reference.algorithm != "fedavgm":
        assert not (ref / "round-0001" / "state").exists()  # FedProx keeps no state
        return
    momenta = []
    for t in range(4):
        path = ref / f"round-{t:04d}" / "state" / "server.safetensors"
        manifest = json.loads((path.parents[1] / "manifest.json").read_text())
        assert "state/server.safetensors" in manifest["outputs"]
        momenta.append(load_file(str(path))["momentum"])
    assert not momenta[0].any() and all(m.any() for m in momenta[1:])  # zeros, then moving
    copy = tmp_path / "run"
    shutil.copytree(ref, copy)
    victim = copy / "round-0002" / "state" / "server.safetensors"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1  # inside the tensor data: the file still loads
    victim.write_bytes(bytes(data))
    result = blazefl("verify", str(copy), "--rounds", "2-3", "--mode", "sequential")
    assert result.exit_code == 1, result.output
    assert "round 2" in result.output and "server.safetensors" in result.output
