"""A researcher's own model: a two-layer perceptron with generator-driven dropout.

The pipeline calls the factory named in the config (`model.name: mymodel:mlp`) with keyword
arguments `num_classes`, `in_channels`, `image_size` and `dropout` (read from the dataset and
the `model` section). The initial weights need no care here: the pipeline seeds them from the
experiment seed.

Example:
    >>> model = mlp(num_classes=4, in_channels=1, image_size=12, dropout=0.0)
    >>> model(torch.zeros(2, 1, 12, 12)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blazefl.data import dropout as generator_dropout

__all__ = ["MLP", "mlp"]

HIDDEN = 32


class MLP(nn.Module):
    """flatten -> linear(HIDDEN) -> relu -> dropout -> linear(num_classes).

    Dropout draws its masks from `self.generator`, never from torch's global RNG (clients
    train in parallel threads that would race on it). The built-in client workers set
    `model.generator` to the client's own generator before training, for any model that has
    the attribute.
    """

    def __init__(self, num_classes: int, in_channels: int, image_size: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.generator: torch.Generator | None = None
        self.hidden = nn.Linear(in_channels * image_size * image_size, HIDDEN)
        self.out = nn.Linear(HIDDEN, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.hidden(torch.flatten(x, 1)))
        if self.training and self.dropout > 0.0:
            if self.generator is None:
                raise RuntimeError("MLP with dropout needs model.generator set before training")
            h = generator_dropout(h, self.dropout, self.generator)
        return self.out(h)


def mlp(*, num_classes: int, in_channels: int, image_size: int, dropout: float) -> MLP:
    """The factory the config names (`model.name: mymodel:mlp`)."""
    return MLP(num_classes, in_channels, image_size, dropout)
