"""The fast 2x2 max-pool and the CNNs built on it give exactly the bits of the textbook ops."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blazefl.models.cnn import CNN
from blazefl.models.pooling import max_pool2x2
from blazefl.models.small_cnn import SmallCNN


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Integer view: torch.equal on it also tells -0.0 from +0.0."""
    return t.view(torch.int64 if t.dtype == torch.float64 else torch.int32)


def _inputs(shape: tuple[int, ...], kind: str, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(hash((shape, kind)) % 2**31)
    if kind == "ties":  # few distinct values: many windows with several maxima
        return torch.randint(-2, 3, shape, generator=g).to(dtype)
    x = torch.randn(shape, generator=g, dtype=dtype)
    return F.relu(x) if kind == "relu" else x  # relu: windows of zeros


@pytest.mark.parametrize("shape", [(4, 6, 28, 28), (3, 16, 10, 10), (2, 3, 7, 9), (1, 1, 2, 2)])
@pytest.mark.parametrize("kind", ["randn", "ties", "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_match_native(
    shape: tuple[int, ...], kind: str, dtype: torch.dtype
) -> None:
    x = _inputs(shape, kind, dtype)
    ref_in, fast_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, fast = F.max_pool2d(ref_in, 2, 2), max_pool2x2(fast_in)
    assert torch.equal(_bits(ref), _bits(fast))
    grad = torch.randn(ref.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    ref.backward(grad)
    fast.backward(grad)
    assert ref_in.grad is not None and fast_in.grad is not None
    assert torch.equal(_bits(ref_in.grad), _bits(fast_in.grad))


def test_other_layouts_use_the_native_kernel() -> None:
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    out = max_pool2x2(x)
    assert torch.equal(out, F.max_pool2d(x, 2, 2))
    assert out.is_contiguous(memory_format=torch.channels_last)


def _textbook(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's layers in the textbook order: relu, then nn.MaxPool2d."""
    pool = nn.MaxPool2d(2, 2)

    def forward(x: torch.Tensor) -> torch.Tensor:
        m = model
        x = pool(F.relu(m.conv1(x)))
        x = pool(F.relu(m.conv2(x)))
        x = torch.flatten(x, 1)
        if isinstance(m, SmallCNN):
            return m.fc(x)
        x = F.relu(m.fc1(x))
        return m.fc3(F.relu(m.fc2(x)))

    return forward


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: CNN(), (20, 3, 32, 32)),
        (lambda: SmallCNN(in_channels=1, image_size=8), (16, 1, 8, 8)),
    ],
)
def test_training_is_bit_identical_to_the_textbook_model(
    build: Callable[[], nn.Module], shape: tuple[int, ...]
) -> None:
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(build())
    fast, textbook = models
    runs = [(fast, fast), (textbook, _textbook(textbook))]
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(shape, generator=g), torch.randint(0, 10, (shape[0],), generator=g))]
    batches *= 4
    for model, forward in runs:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        for x, y in batches:
            opt.zero_grad()
            F.cross_entropy(forward(x), y).backward()
            opt.step()
    for (name, a), b in zip(fast.state_dict().items(), textbook.state_dict().values(), strict=True):
        assert torch.equal(_bits(a), _bits(b)), name
