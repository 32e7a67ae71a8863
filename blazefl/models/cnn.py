"""The LeNet-style CNN of the BlazeFL benchmark, with generator-driven dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blazefl.models.pooling import max_pool2x2

__all__ = ["CNN"]


class CNN(nn.Module):
    """conv(5x5,6) -> pool -> conv(5x5,16) -> pool -> fc 120 -> fc 84 -> fc num_classes.

    With ``in_channels=3, image_size=32, num_classes=10`` (CIFAR-10) it has exactly 62,006
    parameters; with ``in_channels=1, image_size=28`` it fits MNIST / Fashion-MNIST.

    Dropout (``dropout > 0``) is applied after fc1 and fc2 in training mode, drawing its masks
    from ``self.generator`` only, never from torch's global RNG (threads share that one and race
    on it: the README's determinism rules). Set ``model.generator = suite.torch`` (a generator
    on the model's device) before training; training with dropout and no generator raises
    RuntimeError.

    Args:
        num_classes: number of output logits.
        in_channels: image channels (3 for CIFAR, 1 for MNIST).
        image_size: square input side length, at least 16.
        dropout: drop probability in ``[0, 1)``; 0 disables dropout.

    Example:
        >>> model = CNN()
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2  # two valid 5x5 convs, each followed by pool 2
        if side < 1:
            raise ValueError(
                f"image_size must be at least 16 for CNN, got {image_size}: "
                "use the 'cnn_small' model for smaller images"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self.generator: torch.Generator | None = None
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``(N, C, H, W)`` batch to ``(N, num_classes)`` logits."""
        # pool before relu: the textbook relu -> pool with the same bits (relu is monotone, so
        # both orders pick the same window element) on a 4x smaller tensor
        x = F.relu(max_pool2x2(self.conv1(x)))
        x = F.relu(max_pool2x2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self._drop(F.relu(self.fc1(x)))
        x = self._drop(F.relu(self.fc2(x)))
        return self.fc3(x)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropout == 0.0:
            return x
        if self.generator is None:
            raise RuntimeError(
                "CNN has dropout > 0 but no generator: set model.generator (e.g. to the client's "
                "RNGSuite.torch) before training; the global RNG is never used"
            )
        keep = 1.0 - self.dropout
        mask = torch.empty_like(x).bernoulli_(keep, generator=self.generator)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}"
