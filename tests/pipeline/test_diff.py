"""`blazefl diff`: names the first differing round, its tensors and clients, and the config
keys that differ; identical runs (also from different execution modes) are identical."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def lr_run(tmp_path_factory, blazefl, tiny_args) -> Path:
    out = tmp_path_factory.mktemp("lr") / "run"
    result = blazefl(
        "run",
        "--out",
        str(out),
        "--mode",
        "sequential",
        "--quiet",
        *tiny_args,
        "--set",
        "train.lr=0.1",
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def sequential_run(tmp_path_factory, blazefl, tiny_args) -> Path:
    out = tmp_path_factory.mktemp("seq") / "run"
    result = blazefl("run", "--out", str(out), "--mode", "sequential", "--quiet", *tiny_args)
    assert result.exit_code == 0, result.output
    return out


def test_runs_differing_in_lr_differ_first_in_round_1(tiny_run, lr_run, blazefl) -> None:
    result = blazefl("diff", str(tiny_run), str(lr_run))
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert "config differs: train.lr: 0.05 (A) vs 0.1 (B)" in lines
    assert "first difference: round 1 (round 0 identical)" in lines
    assert any(
        line.strip().startswith("global.safetensors differs:") and "max abs diff" in line
        for line in lines
    )
    assert any(line.strip().startswith("uplinks differ for clients") for line in lines)
    assert any(line.strip().startswith("metrics/round-0001.json differs") for line in lines)
    assert "later rounds that differ too: 2-3" in lines


def test_identical_runs_are_identical(tiny_run, blazefl, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    result = blazefl("diff", str(tiny_run), str(copy))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["identical: 3 rounds"]


def test_runs_in_different_modes_are_identical(tiny_run, sequential_run, blazefl) -> None:
    result = blazefl("diff", str(sequential_run), str(tiny_run))
    assert result.exit_code == 0, result.output
    assert "identical: 3 rounds" in result.output.splitlines()


def test_rounds_in_only_one_run_are_reported(tiny_run, blazefl, tmp_path) -> None:
    short = tmp_path / "short"
    shutil.copytree(tiny_run, short)
    shutil.rmtree(short / "round-0003")
    (short / "metrics" / "round-0003.json").unlink()
    result = blazefl("diff", str(tiny_run), str(short))
    assert result.exit_code == 1, result.output
    assert "only in A: round 3" in result.output.splitlines()


def test_changed_tensor_is_named_with_its_difference(tiny_run, blazefl, tmp_path) -> None:
    from safetensors.torch import load_file

    from blazefl.stages.artifacts import safetensors_bytes

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    path = other / "round-0002" / "global.safetensors"
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] += 0.5
    path.write_bytes(safetensors_bytes(tensors))
    result = blazefl("diff", str(tiny_run), str(other))
    assert result.exit_code == 1, result.output
    assert "first difference: round 2 (rounds 0-1 identical)" in result.output
    assert f"1 of {len(tensors)} tensors differ: {name} (max abs diff 0.5)" in result.output


def test_diff_of_a_non_run_directory_exits_2(tiny_run, blazefl, tmp_path) -> None:
    result = blazefl("diff", str(tiny_run), str(tmp_path))
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
