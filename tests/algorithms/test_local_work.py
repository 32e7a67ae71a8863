"""Heterogeneous local work with one model: `LocalSGD.run` takes its epoch count or a step
cap per call (FedNova-style per-client work), and a partial last batch is a smaller step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from blazefl.algorithms.common import LocalSGD, TrainHParams
from blazefl.core.serialization import flatten_module_
from blazefl.data import synthetic_dataset


def _sgd(local_epochs: int = 2, batch_size: int = 16) -> tuple[LocalSGD, torch.Tensor]:
    data = synthetic_dataset(70, seed=0)
    torch.manual_seed(0)  # the same initial weights for every call (test process only)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    flat = flatten_module_(model)
    hp = TrainHParams(local_epochs=local_epochs, batch_size=batch_size, augment=False)
    return LocalSGD(model, flat, data, hp), flat


def _train(sgd: LocalSGD, **kwargs: int) -> tuple[float, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    loss = sgd.run(torch.arange(50), gen, **kwargs)
    return loss, gen.get_state()


def test_epochs_per_call_equal_the_configured_epochs() -> None:
    configured, flat_a = _sgd(local_epochs=3)
    per_call, flat_b = _sgd(local_epochs=1)
    assert _train(configured)[0] == _train(per_call, epochs=3)[0]
    assert torch.equal(flat_a, flat_b)


def test_a_step_cap_stops_mid_epoch_and_an_epoch_keeps_its_partial_batch() -> None:
    steps: list[int] = []
    sgd, _ = _sgd(local_epochs=1, batch_size=16)
    original = sgd.optimizer.step

    def counted() -> None:
        steps.append(1)
        original()

    sgd.optimizer.step = counted  # type: ignore[method-assign]
    _train(sgd)
    assert len(steps) == 4  # 50 samples in batches of 16: 16, 16, 16 and the 2 left over
    steps.clear()
    _train(sgd, epochs=3, max_steps=6)
    assert len(steps) == 6  # the second epoch stops after its second step


def test_bad_work_is_refused() -> None:
    sgd, _ = _sgd()
    for kwargs in ({"epochs": 0}, {"max_steps": 0}):
        with pytest.raises(ValueError, match="must be >= 1"):
            _train(sgd, **kwargs)
