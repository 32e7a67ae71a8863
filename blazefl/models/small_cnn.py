"""A small CNN for tiny images (8x8 digits and up), where the LeNet-style CNN cannot fit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blazefl.models.pooling import max_pool2x2

__all__ = ["SmallCNN"]

_MIN_SIDE = 4  # two 2x2 max-pools must leave at least one pixel


class SmallCNN(nn.Module):
    """conv(3x3,16) -> pool -> conv(3x3,32) -> pool -> fc num_classes.

    Both convolutions are padded ("same"), so only the two 2x2 max-pools shrink the image: an
    8x8 digit ends as 32 maps of 2x2. The LeNet-style ``CNN``'s two valid 5x5 convolutions need
    at least 16x16 input. With ``in_channels=1, image_size=8, num_classes=10`` it has 6,090
    parameters. It has no dropout and no randomness of its own.

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        image_size: square input side length, at least 4.

    Example:
        >>> model = SmallCNN(num_classes=10, in_channels=1, image_size=8)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8) -> None:
        super().__init__()
        if image_size < _MIN_SIDE:
            raise ValueError(
                f"image_size must be at least {_MIN_SIDE} for cnn_small, got {image_size}"
            )
        side = image_size // 4
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(N, C, H, W)`` batch to ``(N, num_classes)`` logits."""
        # pool before relu: the textbook relu -> pool with the same bits (relu is monotone, so
        # both orders pick the same window element) on a 4x smaller tensor
        x = F.relu(max_pool2x2(self.conv1(x)))
        x = F.relu(max_pool2x2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))
