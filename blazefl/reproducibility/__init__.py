"""Reproducibility: explicit RNG suites, exact state capture, global seeding, determinism flags.

- :class:`RNGSuite` / :func:`create_rng_suite`: per-stream generators for client and server work.
- :func:`seed_everything` / :class:`RandomStateSnapshot`: the global-RNG strategy for scripts.
- :func:`setup_reproducibility`: ``PYTHONHASHSEED`` and cuDNN flags (the original BlazeFL meaning).
- :func:`pin_client_threads` / :func:`determinism_flags`: thread count and torch flags.
"""

from blazefl.reproducibility.rng import SERVER_STREAM_ID, RNGSuite, create_rng_suite
from blazefl.reproducibility.setup import (
    determinism_flags,
    pin_client_threads,
    setup_reproducibility,
)
from blazefl.reproducibility.snapshot import RandomStateSnapshot, seed_everything

__all__ = [
    "SERVER_STREAM_ID",
    "RNGSuite",
    "RandomStateSnapshot",
    "create_rng_suite",
    "determinism_flags",
    "pin_client_threads",
    "seed_everything",
    "setup_reproducibility",
]
