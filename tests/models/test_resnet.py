"""The built-in ResNet-18 is torchvision's: same names, same initial bits, same outputs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from blazefl.models.resnet import resnet18

tv_models = pytest.importorskip("torchvision.models")


def _torchvision(num_classes: int, in_channels: int, small_input: bool) -> nn.Module:
    """torchvision's ResNet-18 with the stem change `resnet18` documents."""
    model = tv_models.resnet18(weights=None, num_classes=num_classes)
    if small_input:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if small_input or in_channels != 3:
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


@pytest.mark.parametrize("num_classes, in_channels, small_input", [(10, 3, True), (7, 1, False)])
def test_same_weights_and_outputs_as_torchvision(
    num_classes: int, in_channels: int, small_input: bool
) -> None:
    torch.manual_seed(0)
    ours = resnet18(num_classes, in_channels, small_input)
    torch.manual_seed(0)
    theirs = _torchvision(num_classes, in_channels, small_input)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    x = torch.randn(2, in_channels, 32, 32)
    for mode in ("train", "eval"):
        getattr(ours, mode)()
        getattr(theirs, mode)()
        assert torch.equal(ours(x), theirs(x)), mode


def test_building_it_does_not_import_torchvision() -> None:
    code = (
        "import sys; from blazefl.models import build_model; "
        "build_model('resnet18', num_classes=10); print('torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
