"""The one place that sets torch's determinism flags.

Two functions, two meanings (the first keeps the original BlazeFL meaning of its name):

- :func:`setup_reproducibility` (seed): process-wide environment for a script, ``PYTHONHASHSEED``
  and cuDNN's deterministic / no-benchmark flags. It touches no thread count and no RNG.
- :func:`pin_client_threads` (threads): what every trainer calls in the main thread before any
  pool starts, and again in every worker initializer (thread or process).

The intra-op thread count changes result bits on CPU (conv backward, large reductions and some
GEMMs split work differently), no flag fixes that, and the count is per thread / per process
state: a new worker does not inherit it reliably. The thread count is part of the config and of
the manifest; :func:`determinism_flags` reports what is in effect.
"""

from __future__ import annotations

import os

import torch

__all__ = [
    "CUBLAS_WORKSPACE_CONFIG",
    "determinism_flags",
    "pin_client_threads",
    "setup_reproducibility",
]

CUBLAS_WORKSPACE_CONFIG = ":4096:8"
"""Value set for the ``CUBLAS_WORKSPACE_CONFIG`` env var (deterministic cuBLAS) if unset."""


_MAX_HASH_SEED = 2**32 - 1  # CPython rejects a PYTHONHASHSEED above this


def setup_reproducibility(seed: int = 42) -> None:
    """Set the process environment a reproducible script needs (the original BlazeFL meaning).

    Sets the env var ``PYTHONHASHSEED`` to ``str(seed)`` (inherited by spawned child
    processes, whose ``str`` hashes then agree with each other) and
    ``torch.backends.cudnn.deterministic = True``, ``torch.backends.cudnn.benchmark = False``.
    Seeds no RNG (use :func:`seed_everything` or an :class:`RNGSuite`) and leaves the intra-op
    thread count alone (that is :func:`pin_client_threads`). The running interpreter's own
    hash seed is fixed at start-up, so only child processes see the new ``PYTHONHASHSEED``.

    Args:
        seed: hash seed, an integer in ``[0, 2**32 - 1]``.

    Raises:
        ValueError: ``seed`` is not an integer in that range.

    Example:
        >>> setup_reproducibility(42)
        >>> os.environ["PYTHONHASHSEED"]
        '42'
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_HASH_SEED:
        raise ValueError(
            f"seed must be an integer in [0, {_MAX_HASH_SEED}] (a PYTHONHASHSEED), got {seed!r}"
        )
    os.environ["PYTHONHASHSEED"] = str(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def pin_client_threads(threads: int = 1) -> None:
    """Fix the intra-op thread count and every determinism flag torch offers.

    Sets ``torch.set_num_threads(threads)``,
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` (only when CUDA is available:
    on CPU it changes no result bits but loads ~150 MB per process),
    ``torch.backends.cudnn.deterministic = True``, ``torch.backends.cudnn.benchmark = False`` and
    the env var ``CUBLAS_WORKSPACE_CONFIG=":4096:8"`` when it is not already set (cuBLAS reads it
    when CUDA initialises, so call this before the first CUDA op).

    Must run in the main thread before pools start and in every worker initializer: the thread
    count is per-thread / per-process state, and a different count gives different bits on CPU.
    ``warn_only=True`` keeps ops without a deterministic implementation usable (they warn).

    Args:
        threads: intra-op threads for this thread/process, ``>= 1`` (the default 1 per client).

    Raises:
        ValueError: ``threads < 1`` or not an integer.

    Example:
        >>> pin_client_threads(threads=1)
        >>> determinism_flags()["num_threads"]
        1
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        # On CPU it changes no bits (measured) yet costs ~150 MB RSS per process: CUDA only.
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def determinism_flags() -> dict[str, object]:
    """Report the determinism-relevant settings currently in effect (for tests and manifests).

    Returns:
        ``num_threads`` (int), ``deterministic_algorithms`` (bool),
        ``deterministic_algorithms_warn_only`` (bool), ``cudnn_deterministic`` (bool),
        ``cudnn_benchmark`` (bool), ``cublas_workspace_config`` (str or None). JSON-serialisable.

    Example:
        >>> sorted(determinism_flags())[:2]
        ['cublas_workspace_config', 'cudnn_benchmark']
    """
    return {
        "num_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_algorithms_warn_only": (
            torch.is_deterministic_algorithms_warn_only_enabled()
        ),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
