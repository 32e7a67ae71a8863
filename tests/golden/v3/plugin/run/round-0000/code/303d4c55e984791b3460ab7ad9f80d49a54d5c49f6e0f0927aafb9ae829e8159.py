"""A helper module of the plugin: the closure of user code a run records must include it."""

from __future__ import annotations

import torch

__all__ = ["mix_toward"]


def mix_toward(previous: torch.Tensor, average: torch.Tensor, weight: float) -> torch.Tensor:
    """`previous + weight * (average - previous)`, computed in float64 and rounded once.

    Example:
        >>> mix_toward(torch.zeros(2), torch.ones(2), 0.5)
        tensor([0.5000, 0.5000])
    """
    start = previous.double()
    # one float64 expression, then one rounding to the model's dtype: no intermediate float32
    return (start + weight * (average.double() - start)).to(previous.dtype)
