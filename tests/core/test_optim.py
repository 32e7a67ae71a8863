"""FlatSGD: the same update rule as torch.optim.SGD, fused over the flattened model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from blazefl.core.optim import FlatSGD
from blazefl.core.serialization import flatten_module_
from blazefl.models import CNN


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))
        for _ in range(n)
    ]


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.9, 5e-4)])
def test_flat_sgd_follows_torch_sgd(momentum: float, weight_decay: float) -> None:
    torch.manual_seed(0)
    ours, theirs = CNN(), CNN()
    theirs.load_state_dict(ours.state_dict())
    flat = flatten_module_(ours)
    opt = FlatSGD(ours, flat, lr=0.05, momentum=momentum, weight_decay=weight_decay)
    ref = torch.optim.SGD(
        theirs.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay
    )
    for x, y in _batches(5):
        for model, o in ((ours, opt), (theirs, ref)):
            o.zero_grad()
            F.cross_entropy(model(x), y).backward()
            o.step()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_gradients_stay_views_of_the_flat_buffer_and_reset_restarts_momentum() -> None:
    model = CNN()
    flat = flatten_module_(model)
    opt = FlatSGD(model, flat, lr=0.1, momentum=0.9)
    start = flat.clone()
    x, y = _batches(1)[0]

    def one_step() -> torch.Tensor:
        flat.copy_(start)
        opt.reset()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        return flat.clone()

    first = one_step()
    assert all(
        p.grad is not None
        and p.grad.untyped_storage().data_ptr() == opt.grad.untyped_storage().data_ptr()
        for p in model.parameters()
    )
    assert torch.equal(one_step(), first)  # reset: the momentum of step one is forgotten
    assert not torch.equal(first, start)


def test_second_optimizer_shares_the_gradient_buffer() -> None:
    model = CNN()
    flat = flatten_module_(model)
    a = FlatSGD(model, flat, lr=0.1)
    b = FlatSGD(model, flat, lr=0.01, grad=a.grad)
    x, y = _batches(1)[0]
    b.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert a.grad.abs().sum() > 0 and a.grad is b.grad


def test_model_not_flattened_is_refused() -> None:
    model = CNN()
    other = copy.deepcopy(model)
    with pytest.raises(ValueError, match="flatten_module_"):
        FlatSGD(model, flatten_module_(other), lr=0.1)
