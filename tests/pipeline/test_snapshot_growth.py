"""Rounds write what they changed: per-client RNG and state files of clients a round did not
sample are hard links to the previous round's identical file, while every round directory
still holds (and verifies as) a complete state."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

SETS = {
    "data.size": 800,
    "data.test_size": 100,
    "data.clients": 40,
    "data.partition": "iid",
    "fl.clients_per_round": 3,
    "fl.rounds": 3,
    "train.local_epochs": 1,
    "train.batch_size": 32,
}
DSFL = {"fl.algorithm": "dsfl", "dsfl.open_size": 200, "dsfl.public_size_per_round": 50}


def _args(sets: dict[str, object]) -> list[str]:
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


def _new_bytes(run: Path, t: int) -> int:
    """Bytes of round t's files whose inode round t-1 does not already hold."""
    before = {p.stat().st_ino for p in (run / f"round-{t - 1:04d}").rglob("*") if p.is_file()}
    return sum(
        p.stat().st_size
        for p in (run / f"round-{t:04d}").rglob("*")
        if p.is_file() and p.stat().st_ino not in before
    )


@pytest.fixture(scope="module", params=["fedavg", "dsfl"])
def grown(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    blazefl: Callable[..., Result],
) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(request.param) / "run"
    sets = {**SETS, **(DSFL if request.param == "dsfl" else {})}
    result = blazefl("run", "--out", str(out), "--mode", "sequential", "-q", *_args(sets))
    assert result.exit_code == 0, result.output
    return request.param, out


def test_unsampled_clients_files_are_links_to_the_previous_round(grown: tuple[str, Path]) -> None:
    _, run = grown
    for t in (2, 3):
        manifest = json.loads((run / f"round-{t:04d}" / "manifest.json").read_text())
        sampled = {f"client-{c:05d}.safetensors" for c in manifest["clients"]}
        files = [p for p in (run / f"round-{t:04d}").rglob("client-*.safetensors")]
        assert len([p for p in files if p.parent.name == "rng"]) == SETS["data.clients"]
        for path in files:
            prev = run / f"round-{t - 1:04d}" / path.relative_to(run / f"round-{t:04d}")
            linked = prev.exists() and prev.stat().st_ino == path.stat().st_ino
            assert linked == (path.name not in sampled), path


def test_bytes_per_round_grow_with_the_sampled_clients_only(grown: tuple[str, Path]) -> None:
    algorithm, run = grown
    round_dir = run / "round-0002"
    manifest = json.loads((round_dir / "manifest.json").read_text())
    per_client = [round_dir / "rng" / f"client-{c:05d}.safetensors" for c in manifest["clients"]]
    if algorithm == "dsfl":
        per_client += [
            round_dir / "state" / f"client-{c:05d}.safetensors" for c in manifest["clients"]
        ]
    shared = [round_dir / "global.safetensors", round_dir / "rng.safetensors"]
    shared += [round_dir / "manifest.json", *(round_dir / "state").glob("server.safetensors")]
    expected = sum(p.stat().st_size for p in [*per_client, *shared])
    assert _new_bytes(run, 2) == expected
    if algorithm == "fedavg":  # every client has an RNG file; 3 of 40 were sampled
        everything = sum(p.stat().st_size for p in round_dir.rglob("*") if p.is_file())
        assert _new_bytes(run, 2) < everything / 2


def test_a_grown_run_verifies_and_resumes_to_the_same_bytes(
    grown: tuple[str, Path],
    tmp_path: Path,
    blazefl: Callable[..., Result],
    snapshot: Callable[[Path], dict[str, str]],
) -> None:
    algorithm, run = grown
    assert blazefl("verify", str(run), "--mode", "sequential").exit_code == 0
    sets = {**SETS, **(DSFL if algorithm == "dsfl" else {})}
    part = tmp_path / "run"
    first = blazefl("run", "--out", str(part), "-q", *_args({**sets, "fl.rounds": 1}))
    assert first.exit_code == 0, first.output
    rest = blazefl("run", "--out", str(part), "-q", "--mode", "threads", *_args(sets))
    assert rest.exit_code == 0, rest.output

    def files(root: Path) -> dict[str, str]:
        return {k: v for k, v in snapshot(root).items() if not k.startswith("timings")}

    assert files(part) == files(run)
