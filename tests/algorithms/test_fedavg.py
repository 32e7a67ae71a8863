"""FedAvg: it learns the synthetic task, and the server's average is the weighted mean."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from blazefl import (
    ExperimentSpec,
    FedAvgServerHandler,
    FedAvgUplink,
    ServerSettings,
    create_rng_suite,
    simulate,
)
from tests.algorithms.learning import LEARN_FLAT

# 1200 samples on 8 IID clients, 4 rounds of 2 local epochs (~1.5 s of CPU): test accuracy
# 0.74 with seed 0 and 0.55-0.74 on seeds 0-8. Chance is 0.1.
LEARN_SPEC = ExperimentSpec.from_flat(LEARN_FLAT)


def test_fedavg_learns_synthetic_dataset_far_above_chance() -> None:
    _, rounds = simulate(LEARN_SPEC, mode="threads", workers=2)
    acc = [r.summary["test_accuracy"] for r in rounds]
    loss = [r.summary["test_loss"] for r in rounds]
    assert acc[-1] >= 0.5, acc  # chance: 0.1
    assert acc[-1] > acc[0] + 0.3, acc
    assert loss[-1] < math.log(10) - 0.5, loss  # ln(10): an uninformed classifier
    assert all(r.summary["train_loss"] > 0 for r in rounds)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)  # 6 floats


def _server(num_clients: int = 4, clients_per_round: int = 3) -> FedAvgServerHandler:
    settings = ServerSettings(num_clients, clients_per_round, 2, create_rng_suite(0, 99))
    return FedAvgServerHandler(_Tiny(), settings)


def test_global_update_is_sample_weighted_average() -> None:
    server = _server()
    models = {
        0: torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        2: torch.tensor([0.5, -1.0, 0.0, 2.0, 1.0, -3.0]),
        3: torch.tensor([10.0, 0.0, 1.0, 1.0, 1.0, 0.25]),
    }
    samples = {0: 3, 2: 1, 3: 4}
    losses = {0: 1.0, 2: 2.0, 3: 0.5}
    complete = [
        server.load(FedAvgUplink(cid, models[cid], samples[cid], losses[cid]))
        for cid in sorted(models)
    ]
    assert complete == [False, False, True]
    server.global_update()

    total = sum(samples.values())
    expected = [sum(samples[c] * float(models[c][i]) for c in models) / total for i in range(6)]
    assert server.flat.tolist() == pytest.approx(expected, rel=1e-6)
    # the model's own parameters are views of `flat`
    assert server.model.fc.weight.flatten().tolist() + server.model.fc.bias.tolist() == (
        server.flat.tolist()
    )
    assert server.train_loss == pytest.approx((3 * 1.0 + 2.0 + 4 * 0.5) / 8)
    assert server.round == 1 and not server.is_stopped()


def test_load_refuses_out_of_order_uplinks() -> None:
    server = _server()
    server.load(FedAvgUplink(2, torch.zeros(6), 1, 0.0))
    with pytest.raises(ValueError, match="ascending client-id order"):
        server.load(FedAvgUplink(1, torch.zeros(6), 1, 0.0))


def test_global_update_without_uplinks_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before any uplink"):
        _server().global_update()
