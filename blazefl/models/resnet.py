"""ResNet-18 (torchvision's architecture and initialisation), adapted for small images.

Defined here rather than imported from torchvision: importing torchvision loads all of it
(datasets, io, ops, transforms) and costs ~1.4 s of start-up per process on this project's
machines, for a model of fifty lines. Module names, construction order and initial weights
are torchvision's, bit for bit (tests/models/test_resnet.py compares them with
`torchvision.models.resnet18` when torchvision is installed).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["resnet18"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class _ResNet18(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, stride=1)
        self.layer2 = self._make_layer(128, stride=2)
        self.layer3 = self._make_layer(256, stride=2)
        self.layer4 = self._make_layer(512, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:  # built before the block, as torchvision
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        first = _BasicBlock(self.inplanes, planes, stride, downsample)
        self.inplanes = planes
        return nn.Sequential(first, _BasicBlock(planes, planes, 1, None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 10, in_channels: int = 3, small_input: bool = True) -> nn.Module:
    """Build ResNet-18 as torchvision does (random init, no pretrained weights).

    With ``small_input`` (images of side <= 64, e.g. CIFAR) the stem is a 3x3 stride-1 conv and
    the max-pool is removed, the usual CIFAR adaptation; otherwise the ImageNet stem is kept
    (with ``in_channels`` input channels).

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        small_input: use the small-image stem.

    Returns:
        The model; construction draws from torch's global RNG exactly as
        ``torchvision.models.resnet18(weights=None)`` followed by the stem change (use
        :func:`blazefl.models.build_model` with a generator to avoid the global RNG).

    Example:
        >>> resnet18()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    model = _ResNet18(num_classes)
    if small_input:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if small_input or in_channels != 3:  # match torchvision's own init for the new stem
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
