"""Where client work runs: the `runtime.device` setting, the worker -> device rule, CUDA
determinism, and what the manifest records about the GPUs.

`runtime.device` is ``cpu`` (the default), ``cuda`` (every visible GPU) or ``cuda:N`` (GPU N).
It changes result bytes: a GPU run and a CPU run are different experiments.

The device rule (:data:`DEVICE_RULE`): worker ``w`` (thread or process; the sequential trainer
has one, worker 0) runs on ``devices[w % len(devices)]`` and keeps its model, optimizer and
training data there for its whole life. A client's bytes depend only on its inputs and on the
GPU model, driver and software build, never on which of several identical GPUs ran it, so the
bytes are the same across execution modes and worker counts. A rule by client id would have
to move a worker's model between GPUs (or keep one copy per GPU) whenever a thread-pool worker
picks up the next client; by worker it never moves. GPUs of different models would break the
promise, so a run spanning them is refused (pick one with ``cuda:N``).

Example:
    >>> parse_device("cuda:0"), worker_device(["cuda:0", "cuda:1"], 3)
    ('cuda:0', 'cuda:1')
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from blazefl.reproducibility import RNGSuite, pin_client_threads
from blazefl.reproducibility.setup import CUBLAS_WORKSPACE_CONFIG

__all__ = [
    "DEVICE_RULE",
    "DeviceChoices",
    "DeviceUnavailableError",
    "assigned_device",
    "build_worker",
    "configure_cuda_determinism",
    "current_worker_device",
    "device_environment",
    "init_client_thread",
    "is_cuda",
    "model_generator",
    "parse_device",
    "rng_device",
    "run_devices",
    "server_device",
    "worker_device",
    "worker_scope",
]

#: Name of the client -> device rule, recorded in the manifest's environment.
DEVICE_RULE = "worker-index-mod-device-count"

_PATTERN = re.compile(r"cpu|cuda(:(0|[1-9][0-9]{0,3}))?")


class DeviceUnavailableError(ValueError):
    """`runtime.device` asks for a GPU this machine does not have (one-line message)."""


class DeviceChoices:
    """The allowed `runtime.device` values, for the settings validator and the schema."""

    def __iter__(self) -> Iterator[str]:
        return iter(("cpu", "cuda", "cuda:N"))

    @staticmethod
    def valid(value: object) -> bool:
        return isinstance(value, str) and _PATTERN.fullmatch(value) is not None

    @staticmethod
    def choices_text() -> str:
        return "cpu, cuda or cuda:N (N a GPU index)"


def parse_device(device: object) -> str:
    """Normalise a `runtime.device` value.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (a ``torch.device`` is accepted too).

    Returns:
        The normalised text.

    Raises:
        ValueError: anything else (``"gpu"``, ``"cuda:x"``, ``"mps"``).

    Example:
        >>> parse_device(torch.device("cuda", 1))
        'cuda:1'
    """
    text = str(device) if isinstance(device, torch.device) else device
    if not DeviceChoices.valid(text):
        raise ValueError(
            f"runtime.device must be {DeviceChoices.choices_text()}, got {device!r}: "
            "set runtime.device: cpu, or cuda"
        )
    return str(text)


def is_cuda(device: str | torch.device | None) -> bool:
    """True for a CUDA device (``"cuda"``, ``"cuda:N"``)."""
    return device is not None and str(device).startswith("cuda")


def run_devices(device: str) -> list[str]:
    """The devices a run uses, in worker order (see the module docstring for the rule).

    Args:
        device: a `runtime.device` value.

    Returns:
        ``["cpu"]``, ``["cuda:0", ..., "cuda:K-1"]`` for ``"cuda"``, or ``["cuda:N"]``.

    Raises:
        DeviceUnavailableError: CUDA is asked for but not available, GPU N does not exist, or
            ``"cuda"`` spans GPUs of different models.

    Example:
        >>> run_devices("cpu")
        ['cpu']
    """
    device = parse_device(device)
    if device == "cpu":
        return ["cpu"]
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"runtime.device is {device!r} but CUDA is not available on this machine "
            "(torch.cuda.is_available() is False): run it on a machine with an NVIDIA GPU, "
            "or set runtime.device: cpu"
        )
    count = torch.cuda.device_count()
    if device == "cuda":
        devices = [f"cuda:{i}" for i in range(count)]
    else:
        index = int(device.split(":")[1])
        if index >= count:
            raise DeviceUnavailableError(
                f"runtime.device is {device!r} but this machine has {count} GPU(s) "
                f"(cuda:0..cuda:{count - 1}): pick one of them"
            )
        devices = [device]
    names = sorted({torch.cuda.get_device_name(d) for d in devices})
    if len(names) > 1:
        raise DeviceUnavailableError(
            f"runtime.device 'cuda' spans GPUs of different models ({', '.join(names)}): bytes "
            "would depend on which one ran a client; pick one model with cuda:N"
        )
    return devices


def worker_device(devices: Sequence[str], worker_index: int) -> str:
    """The device of worker `worker_index` under :data:`DEVICE_RULE`."""
    if not devices:
        raise ValueError("devices must not be empty")
    return devices[worker_index % len(devices)]


def server_device(devices: Sequence[str]) -> str:
    """Where the server evaluates: the first of the run's devices. It aggregates on the CPU
    (uplinks arrive there; float64 sums give the same bits on either)."""
    return devices[0]


def rng_device(device: str) -> str | None:
    """The device for `create_rng_suite(..., device=)`: None on CPU (a CPU-only suite), else
    the run's first GPU (a CUDA generator's state is the same on any GPU).

    Raises:
        DeviceUnavailableError: see :func:`run_devices`.
    """
    devices = run_devices(device)
    return devices[0] if is_cuda(devices[0]) else None


def configure_cuda_determinism() -> None:
    """Make CUDA work deterministic in this process; call before the first CUDA op.

    Sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when unset (cuBLAS reads it when a handle is
    created), ``torch.use_deterministic_algorithms(True)`` (an op without a deterministic
    implementation raises instead of silently changing bits), cuDNN deterministic on and
    benchmarking off (benchmarking picks algorithms by timing). Filling new memory with NaN
    (``fill_uninitialized_memory``) is turned off: it guards only against reading memory
    before writing it, which no op here does, and costs a write per allocation.

    Example:
        >>> configure_cuda_determinism()
        >>> torch.are_deterministic_algorithms_enabled()
        True
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def init_client_thread(threads: int, device: str = "cpu") -> None:
    """Initializer of every thread/process that runs client work.

    On CPU it is `pin_client_threads(threads)`. On CUDA it sets the intra-op thread count and
    :func:`configure_cuda_determinism` (not `pin_client_threads`, whose warn-only determinism
    would briefly relax the strict mode process-wide while other workers train).
    """
    if not is_cuda(device):
        pin_client_threads(threads)
        return
    configure_cuda_determinism()
    torch.set_num_threads(threads)


# -- placement: the trainer assigns a device, the worker reads it when it is built -----------
_assigned = threading.local()


@contextlib.contextmanager
def assigned_device(device: str) -> Iterator[None]:
    """Within the block, workers being built read `device` from :func:`current_worker_device`.

    Example:
        >>> with assigned_device("cpu"):
        ...     current_worker_device()
        device(type='cpu')
    """
    previous = getattr(_assigned, "device", None)
    _assigned.device = device
    try:
        if is_cuda(device):
            with torch.cuda.device(torch.device(device)):
                yield
        else:
            yield
    finally:
        _assigned.device = previous


def current_worker_device() -> torch.device:
    """The device the trainer assigned to the worker being built (CPU outside a trainer).

    A worker calls this in its constructor, keeps the result as `self.device` and places its
    model, buffers and data there.
    """
    return torch.device(getattr(_assigned, "device", None) or "cpu")


def build_worker(workload: Any, device: str) -> Any:
    """`workload.make_worker()` placed on `device`.

    Raises:
        ValueError: a CUDA device was assigned but the worker does not place itself on it
            (its `device` attribute differs): the workload does not support GPUs.
    """
    with assigned_device(device):
        worker = workload.make_worker()
    got = getattr(worker, "device", torch.device("cpu"))
    if is_cuda(device) and torch.device(got) != torch.device(device):
        raise ValueError(
            f"{type(worker).__name__} does not support runtime.device={device} (its device is "
            f"{got}): set runtime.device: cpu"
        )
    if is_cuda(device):
        # the worker's copies (data, buffers) are complete before its own stream uses them
        torch.cuda.synchronize(torch.device(device))
        if not hasattr(worker, "_blazefl_stream"):
            # its own stream, so workers of a thread pool overlap on one GPU
            worker._blazefl_stream = torch.cuda.Stream(device=torch.device(device))
    return worker


@contextlib.contextmanager
def worker_scope(worker: Any) -> Iterator[None]:
    """Run a client on `worker`: its GPU is the current device and its stream the current
    stream (new CUDA generators land on it); nothing changes for a CPU worker."""
    device = getattr(worker, "device", None)
    if not is_cuda(device):
        yield
        return
    with torch.cuda.device(torch.device(str(device))):
        stream = getattr(worker, "_blazefl_stream", None)
        if stream is None:
            yield
        else:
            with torch.cuda.stream(stream):
                yield


def model_generator(rng: RNGSuite, device: torch.device | str) -> torch.Generator:
    """The generator for random ops on `device` (dropout masks): the suite's CUDA generator
    on a GPU, its CPU generator otherwise.

    Raises:
        ValueError: a CUDA device but the suite has no CUDA generator.
    """
    if not is_cuda(device):
        return rng.torch_cpu
    if rng.torch_cuda is None:
        raise ValueError("the client's RNG suite has no torch_cuda generator for a GPU worker")
    return rng.torch_cuda


def device_environment(device: str) -> dict[str, Any]:
    """What a GPU run's bits depend on, for the manifest's environment (scalars only).

    Returns:
        ``{}`` for ``cpu`` (CPU manifests keep their keys), else ``gpu`` (model name),
        ``gpu_count`` (GPUs the run uses), ``gpu_capability``, ``cuda`` and ``cudnn``
        versions and ``device_rule``. Without CUDA, only ``device_rule`` and the versions torch
        was built with (the session then refuses to start).
    """
    device = parse_device(device)
    if device == "cpu":
        return {}
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    env: dict[str, Any] = {
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "device_rule": DEVICE_RULE,
    }
    try:
        devices = run_devices(device)
    except DeviceUnavailableError:
        return env
    major, minor = torch.cuda.get_device_capability(devices[0])
    env.update(
        gpu=torch.cuda.get_device_name(devices[0]),
        gpu_capability=f"{major}.{minor}",
        gpu_count=len(devices),
    )
    return env
