"""runtime.device through the pipeline: refusals, what CPU runs record, GPU runs (skipped
without CUDA): bytes across modes, CUDA RNG state through rng.safetensors, verify."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result

from blazefl.pipeline.verify import environment_note
from blazefl.stages.artifacts import environment

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none on this machine)")


@pytest.mark.skipif(CUDA, reason="checks the CPU-only refusal; this machine has CUDA")
def test_cuda_on_a_cpu_only_machine_is_one_line_exit_2(
    blazefl: Callable[..., Result], tiny_args: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = blazefl(
        "run", "--out", str(out), "--quiet", *tiny_args, "--set", "runtime.device=cuda"
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "CUDA is not available" in lines[0], result.output
    assert "runtime.device: cpu" in lines[0]


@pytest.mark.parametrize("bad", ["gpu", "cuda:x"])
def test_a_bad_device_is_one_line_exit_2(
    blazefl: Callable[..., Result], tiny_args: list[str], tmp_path: Path, bad: str
) -> None:
    result = blazefl(
        "run",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        *tiny_args,
        "--set",
        f"runtime.device={bad}",
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "runtime.device must be" in lines[0], result.output


def test_a_cpu_run_records_the_device_in_its_config_and_no_gpu(tiny_run: Path) -> None:
    manifest = json.loads((tiny_run / "round-0001" / "manifest.json").read_text())
    assert manifest["config"]["runtime.device"] == "cpu"
    assert not {"gpu", "gpu_count", "cuda", "cudnn", "device_rule"} & set(manifest["environment"])
    assert environment(1, "cpu") == environment(1)


def test_verify_names_a_gpu_environment_difference() -> None:
    recorded = {**environment(1), "gpu": "NVIDIA H200", "gpu_count": 1, "cuda": "13.0"}
    current = {**environment(1), "gpu": "NVIDIA A100", "gpu_count": 1, "cuda": "13.0"}
    note = environment_note(recorded, current)
    assert note is not None and "gpu NVIDIA H200" in note and "gpu NVIDIA A100" in note
    assert "not to a bug" in note


# -- on a GPU --------------------------------------------------------------------------------
def _files(run: Path) -> dict[str, bytes]:
    return {
        p.relative_to(run).as_posix(): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file()
        and not p.relative_to(run).as_posix().startswith("timings/")
        and p.name != ".blazefl.lock"  # names the process that held it
    }


@needs_cuda
def test_cuda_runs_are_identical_across_modes_and_verify(
    blazefl: Callable[..., Result], tiny_args: list[str], tmp_path: Path
) -> None:
    gpu = [*tiny_args, "--set", "runtime.device=cuda", "--set", "model.dropout=0.25"]
    runs = {}
    for mode, workers in (("sequential", "1"), ("threads", "2"), ("processes", "2")):
        out = tmp_path / mode
        result = blazefl(
            "run", "--out", str(out), "--quiet", "--mode", mode, "--workers", workers, *gpu
        )
        assert result.exit_code == 0, result.output
        runs[mode] = _files(out)
    assert runs["sequential"] == runs["threads"] == runs["processes"]
    from safetensors.torch import load

    clients = load(runs["sequential"]["round-0001/clients.safetensors"])
    server = load(runs["sequential"]["round-0001/rng.safetensors"])
    assert any(k.endswith("/rng/torch_cuda") for k in clients) and "torch_cuda" not in server
    manifest = json.loads(runs["sequential"]["round-0001/manifest.json"])
    assert manifest["environment"]["gpu_count"] >= 1 and manifest["environment"]["device_rule"]
    # a resumed round restores the clients' CUDA generators from clients.safetensors: verify
    # re-executes
    result = blazefl("verify", str(tmp_path / "sequential"))
    assert result.exit_code == 0, result.output
