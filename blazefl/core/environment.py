"""The environment a run's bits depend on besides its config, as manifests record it.

Bits are promised for the same torch build and CPU kernels. The ISA torch reports is not
enough to name the kernels: `ONEDNN_MAX_CPU_ISA=AVX2` on an AVX-512 CPU changes convolution
bits from round 1 while torch still reports AVX512, and oneDNN picks blocking by the CPU
model's caches. So the record holds the software versions (Python, torch, numpy, oneDNN,
MKL), the ATen CPU capability in force, the CPU model, every bit-relevant environment
variable that is set, the intra-op threads, and on a GPU run the GPU and CUDA/cuDNN versions.
`verify` and `diff` name the fields that differ when bytes differ.

It lives in the core (not in the stages that write manifests) because a Ray worker node
computes its own with the same function, and the core trainer compares it with the driver's
before the node runs a client (`blazefl.core.ray_pool`); `blazefl.stages.environment`
re-exports it for the manifests.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
from functools import lru_cache
from typing import Any

import torch

from blazefl.core.devices import device_environment

__all__ = ["BIT_ENV_VARS", "environment"]


#: Environment variables known to change CPU bits (kernel ISA, MKL's code path) or the
#: threads of a library; each one set is recorded as `env.NAME` (unset ones are left out).
BIT_ENV_VARS = (
    "ATEN_CPU_CAPABILITY",
    "DNNL_MAX_CPU_ISA",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_NUM_THREADS",
    "OMP_NUM_THREADS",
    "ONEDNN_DEFAULT_FPMATH_MODE",
    "ONEDNN_MAX_CPU_ISA",
)


@lru_cache(maxsize=1)
def _build_environment() -> dict[str, Any]:
    """What does not change within a process: versions, the CPU model, the library builds."""
    import numpy

    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", config)
    onednn = re.search(r"MKL-DNN v([\w.]+)", config)
    return {
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "mkl": mkl.group(1) if mkl else None,
        "numpy": numpy.__version__,
        "onednn": onednn.group(1) if onednn else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _cpu_model() -> str:
    """The CPU's model name (oneDNN picks kernels and blocking by the CPU, not only its ISA)."""
    with (
        contextlib.suppress(OSError),
        open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f,
    ):
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return " ".join(value.split())[:200]
    return platform.processor() or "unknown"


def environment(threads_per_client: int, device: str = "cpu") -> dict[str, Any]:
    """What the bits depend on besides the config. No times.

    Recorded in every manifest: software versions (Python, torch, numpy, oneDNN, MKL), the
    ATen CPU capability in force (`cpu_isa`: it follows ATEN_CPU_CAPABILITY), the CPU model,
    the bit-relevant environment variables that are set (`env.ONEDNN_MAX_CPU_ISA`, ...), the
    intra-op threads, and on a GPU run the GPU model, count, CUDA/cuDNN versions and the device
    rule. `verify` and `diff` name the fields that differ when bytes differ.

    Example:
        >>> environment(1)["cpu_isa"]
        'AVX512'
    """
    env = {f"env.{k}": os.environ[k] for k in BIT_ENV_VARS if k in os.environ}
    return {
        **_build_environment(),
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        **env,
        "threads_per_client": threads_per_client,
        **device_environment(device),  # {} on the CPU: CPU manifests keep their keys
    }
