"""ResNet-18 from torchvision, adapted for small images."""

from __future__ import annotations

from torch import nn

__all__ = ["resnet18"]


def resnet18(num_classes: int = 10, in_channels: int = 3, small_input: bool = True) -> nn.Module:
    """Build torchvision's ResNet-18 (random init, no pretrained weights).

    With ``small_input`` (images of side <= 64, e.g. CIFAR) the stem is a 3x3 stride-1 conv and
    the max-pool is removed, the usual CIFAR adaptation; otherwise the ImageNet stem is kept
    (with ``in_channels`` input channels).

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        small_input: use the small-image stem.

    Returns:
        The model; construction draws from torch's global RNG (use
        :func:`blazefl.models.build_model` with a generator to avoid that).

    Raises:
        ImportError: torchvision is not installed.

    Example:
        >>> resnet18()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    try:
        from torchvision.models import resnet18 as tv_resnet18
    except ImportError as exc:  # optional at import time of blazefl.models
        raise ImportError(
            "resnet18 needs torchvision: pip install torchvision (or pip install blazefl)"
        ) from exc
    model = tv_resnet18(weights=None, num_classes=num_classes)
    if small_input:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if small_input or in_channels != 3:  # match torchvision's own init for the new stem
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
