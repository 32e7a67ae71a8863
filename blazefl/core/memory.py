"""Allocator tuning for training loops that allocate the same activations every step."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def tune_malloc(trim_threshold: int = 1 << 30, mmap_threshold: int = 32 << 20) -> bool:
    """Stop glibc from returning per-step activation memory to the kernel.

    Each training step frees and re-allocates a few MB of activations; with glibc's defaults
    large blocks are mmap'ed and trimmed back every step, which costs page faults and seconds
    of system time per run. Raising both thresholds keeps the memory in the heap. Results are
    unchanged (allocation addresses never affect the arithmetic). No-op off glibc.

    Args:
        trim_threshold: bytes of free heap top kept before trimming.
        mmap_threshold: allocations at least this large use mmap (glibc caps it at 32 MiB).

    Returns:
        True if the allocator was tuned.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
    _done = ok
    return ok
