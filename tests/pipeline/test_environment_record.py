"""The environment a run records names what changes CPU bits beyond the ISA torch reports:
the same config run with `ONEDNN_MAX_CPU_ISA=AVX2` on an AVX-512 CPU gives other bytes, and
`diff` names that variable as the difference (both runs once recorded the same environment)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blazefl.stages.environment import BIT_ENV_VARS, environment
from tests.pipeline.conftest import TINY_SETS


def test_environment_names_versions_cpu_and_set_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in BIT_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    env = environment(1)
    assert env["cpu_isa"] == torch.backends.cpu.get_cpu_capability()
    assert {"cpu_model", "onednn", "mkl", "torch", "numpy", "python"} <= env.keys()
    assert not any(k.startswith("env.") for k in env)
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    assert environment(1)["env.MKL_CBWR"] == "COMPATIBLE"


def _run(out: Path, **env: str) -> None:
    args = [sys.executable, "-m", "blazefl.pipeline.cli", "run", "--out", str(out), "-q"]
    for item in [*TINY_SETS, "fl.rounds=1", "runtime.mode=sequential"]:
        args += ["--set", item]
    clean = {k: v for k, v in os.environ.items() if k not in BIT_ENV_VARS}
    proc = subprocess.run(args, env={**clean, **env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() != "AVX512",
    reason="needs a CPU where torch runs AVX-512 kernels (ONEDNN_MAX_CPU_ISA=AVX2 then differs)",
)
def test_onednn_isa_cap_is_recorded_and_named_by_diff(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from blazefl.pipeline.cli import main

    _run(tmp_path / "default")
    _run(tmp_path / "avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    result = CliRunner().invoke(main, ["diff", str(tmp_path / "default"), str(tmp_path / "avx2")])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    env_line = next(line for line in lines if line.startswith("environment differs"))
    assert "env.ONEDNN_MAX_CPU_ISA: '(absent)' (A) vs 'AVX2' (B)" in env_line
    assert "first difference: round 1" in result.output  # the kernels changed the bits
    assert "global.safetensors differs" in result.output
