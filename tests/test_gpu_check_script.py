"""benchmarks/gpu_check.sh on a machine without CUDA: one line, "SKIP: no CUDA", exit 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="this machine has CUDA: the check would run for minutes"
)
def test_gpu_check_skips_without_cuda() -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "SKIP: no CUDA"
