"""`blazefl verify`: clean runs pass in every mode; a modified file, a diverging client and a
different recorded environment are named; bad input exits 2; the run is never written to."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from blazefl.core.trainers import PERTURB_ENV
from blazefl.stages.artifacts import canonical_json, sha256_file


def ok_lines(rounds: range) -> list[str]:
    return [f"round {t}: OK" for t in rounds]


@pytest.mark.parametrize(
    "mode_args",
    [
        ("--mode", "sequential"),
        ("--mode", "threads", "--workers", "2"),
        ("--mode", "processes", "--workers", "2", "--ipc", "shared_memory"),
        ("--mode", "processes", "--workers", "2", "--ipc", "storage"),
    ],
    ids=["sequential", "threads", "processes-shm", "processes-storage"],
)
def test_verify_passes_on_a_clean_run_in_every_mode(tiny_run, blazefl, mode_args) -> None:
    result = blazefl("verify", str(tiny_run), *mode_args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for line in ok_lines(range(4)):
        assert line in lines
    assert "note:" not in result.output  # same environment: no warning


def test_flipped_byte_in_global_fails_naming_round_and_file(tiny_run, blazefl, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    path = run / "round-0002" / "global.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the tensor data: the file still loads
    path.write_bytes(bytes(data))
    result = blazefl("verify", str(run), "--mode", "sequential")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert "round 2: global.safetensors differs from its manifest (modified on disk)" in lines
    assert "round 1: OK" in lines and "round 2: OK" not in lines
    # round 3's input is round 2: its re-execution refuses the modified file
    assert any(
        line.startswith("round 3:") and "round-0002/global.safetensors" in line for line in lines
    )


def test_perturbed_client_update_is_named_with_its_round(tiny_run, blazefl, monkeypatch) -> None:
    manifest = json.loads((tiny_run / "round-0002" / "manifest.json").read_text())
    cid = manifest["clients"][-1]
    monkeypatch.setenv(PERTURB_ENV, f"2:{cid}")
    result = blazefl("verify", str(tiny_run), "--mode", "sequential")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    differs = [line for line in lines if line.startswith("round 2: DIFFERS")]
    assert len(differs) == 1, result.output
    assert f"uplinks of clients {cid};" in differs[0]
    # the step trace shows the steps were the record's: the upload differs
    note = f"every step of client {cid} equals the record, but its uplink differs"
    assert differs[0].endswith(f"{note}: the code between its last step and its upload")
    assert "global.safetensors" in differs[0]
    for line in ok_lines(range(0, 2)) + ["round 3: OK"]:  # each round starts from the record
        assert line in lines


def test_rounds_spec_selects_rounds_and_nothing_is_written(tiny_run, blazefl, snapshot) -> None:
    before = snapshot(tiny_run)
    result = blazefl("verify", str(tiny_run), "--rounds", "2-3", "--mode", "sequential")
    assert result.exit_code == 0, result.output
    rounds = [line for line in result.output.splitlines() if line.startswith("round ")]
    assert rounds == ["round 2: OK", "round 3: OK"]
    for spec, words in [
        ("2-x", "--rounds"),
        ("3-1", "--rounds"),
        ("", "--rounds"),
        ("1,9", "round 9 is not complete"),
    ]:
        result = blazefl("verify", str(tiny_run), "--rounds", spec)
        assert result.exit_code == 2, (spec, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert words in result.output
    assert snapshot(tiny_run) == before


def test_not_a_run_directory_exits_2(blazefl, tmp_path) -> None:
    for path in (tmp_path / "missing", tmp_path):
        result = blazefl("verify", str(path))
        assert result.exit_code == 2
        assert len(result.output.strip().splitlines()) == 1, result.output


def _edit_environment(run: Path, t: int) -> None:
    path = run / f"round-{t:04d}" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["environment"].update(torch="1.13.0", cpu_isa="AVX2")
    path.write_bytes(canonical_json(manifest))


def test_other_recorded_environment_is_said_plainly(tiny_run, blazefl, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _edit_environment(run, 3)  # the last manifest: no later manifest names its hash
    result = blazefl("verify", str(run), "--rounds", "3", "--mode", "sequential")
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("note: recorded with torch 1.13.0 on AVX2, now torch ")
    assert torch.__version__ in first and "same torch build and CPU ISA" in first
    assert "round 3: OK" in result.output.splitlines()


def test_edited_manifest_breaks_the_chain_of_the_next_round(tiny_run, blazefl, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _edit_environment(run, 1)
    assert sha256_file(run / "round-0001" / "manifest.json") != sha256_file(
        tiny_run / "round-0001" / "manifest.json"
    )
    result = blazefl("verify", str(run), "--rounds", "1-2", "--mode", "sequential")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("note: recorded with torch 1.13.0 on AVX2")
    assert "round 1: OK" in lines  # its outputs still match: only its environment was edited
    assert any(
        line.startswith("round 2: parent hash does not match round-0001/manifest.json")
        for line in lines
    ), result.output
