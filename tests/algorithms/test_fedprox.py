"""FedProx: it learns the synthetic task, mu = 0 is FedAvg to the byte, mu > 0 pulls the
local models toward the global one, and its settings are validated."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from blazefl.algorithms import ALGORITHMS, FedProxHParams, GradHook, LocalSGD
from blazefl.algorithms.fedavg import FedAvgClientWorkload, FedAvgServerHandler
from blazefl.algorithms.fedprox import FedProxWorker
from blazefl.experiment import ExperimentSpec, build_experiment, simulate
from blazefl.hparams import HParamError
from tests.algorithms.learning import LEARN_FLAT

# FedAvg's learning spec (tests/algorithms/test_fedavg.py) with the proximal term: 1200
# samples on 8 IID clients, 4 rounds of 2 local epochs. Test accuracy 0.76 with seed 0 and
# mu = 0.01 (FedAvg: 0.74); chance is 0.1.
LEARN = {**LEARN_FLAT, "fl.algorithm": "fedprox", "fedprox.mu": 0.01}

# A small non-IID run for byte comparisons (weight decay, momentum and augmentation on).
SMALL = {
    "seed": 3,
    "data.size": 300,
    "data.test_size": 100,
    "data.clients": 4,
    "fl.clients_per_round": 2,
    "fl.rounds": 2,
    "train.local_epochs": 1,
    "train.batch_size": 32,
}


def _final_bytes(flat: dict[str, Any], mode: str = "sequential") -> bytes:
    server, _ = simulate(ExperimentSpec.from_flat(flat), mode=mode, workers=2)  # type: ignore[arg-type]
    return bytes(server.flat.numpy().tobytes())


def test_fedprox_learns_synthetic_dataset_far_above_chance() -> None:
    _, rounds = simulate(ExperimentSpec.from_flat(LEARN), mode="threads", workers=2)
    acc = [r.summary["test_accuracy"] for r in rounds]
    loss = [r.summary["test_loss"] for r in rounds]
    assert acc[-1] >= 0.5, acc  # chance: 0.1
    assert acc[-1] > acc[0] + 0.3, acc
    assert loss[-1] < math.log(10) - 0.5, loss


def test_mu_zero_gives_exactly_fedavg_bytes_and_mu_above_zero_differs() -> None:
    fedavg = _final_bytes({**SMALL, "fl.algorithm": "fedavg"})
    assert _final_bytes({**SMALL, "fl.algorithm": "fedprox", "fedprox.mu": 0.0}) == fedavg
    assert _final_bytes({**SMALL, "fl.algorithm": "fedprox", "fedprox.mu": 0.1}) != fedavg


def test_threads_give_the_same_bytes_as_sequential() -> None:
    flat = {**SMALL, "fl.algorithm": "fedprox", "fedprox.mu": 0.5}
    assert _final_bytes(flat, "threads") == _final_bytes(flat, "sequential")


def test_a_large_mu_keeps_the_round_closer_to_the_global_model() -> None:
    def moved(mu: float) -> float:
        flat: dict[str, Any] = {**SMALL, "fl.rounds": 1, "train.local_epochs": 4}
        flat.update({"fl.algorithm": "fedprox", "fedprox.mu": mu})
        spec = ExperimentSpec.from_flat(flat)
        start = build_experiment(spec).server()
        server, _ = simulate(spec, mode="sequential")
        assert isinstance(server, FedAvgServerHandler)
        return float((server.flat - start.flat).norm())  # type: ignore[attr-defined]

    # seed 3: 0.11 with mu = 5 against 0.64 with mu = 0
    assert moved(5.0) < 0.5 * moved(0.0)


def test_grad_hook_receives_the_flat_gradient_and_parameters() -> None:
    spec = ExperimentSpec.from_flat({**SMALL, "fl.algorithm": "fedprox"})
    exp = build_experiment(spec)
    workload = exp.workload()
    assert isinstance(workload, FedAvgClientWorkload) and workload.algorithm_hparams.mu == 0.01
    worker = workload.make_worker()
    assert isinstance(worker, FedProxWorker)
    sgd: LocalSGD = worker.sgd
    seen: list[tuple[int, int, bool]] = []

    def hook(grad: torch.Tensor, params: torch.Tensor) -> None:
        seen.append((grad.data_ptr(), params.data_ptr(), torch.is_grad_enabled()))

    typed: GradHook = hook
    sgd.run(exp.partition.client(0), torch.Generator().manual_seed(0), grad_hook=typed)
    steps = math.ceil(len(exp.partition.client(0)) / spec.train.batch_size)
    assert seen == [(sgd.optimizer.grad.data_ptr(), sgd.optimizer.params.data_ptr(), False)] * (
        steps
    )


def test_proximal_gradient_is_mu_times_distance_to_the_global_model() -> None:
    exp = build_experiment(ExperimentSpec.from_flat({**SMALL, "fl.algorithm": "fedprox"}))
    worker = exp.workload().make_worker()
    assert isinstance(worker, FedProxWorker)
    n = worker.sgd.optimizer.params.numel()
    worker._center.copy_(torch.linspace(-1, 1, n))
    params = torch.linspace(0, 2, n)
    grad = torch.full((n,), 0.5)
    worker._proximal_gradient(grad, params)
    expected = 0.5 + 0.01 * (torch.linspace(0, 2, n) - torch.linspace(-1, 1, n))
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize(
    ("flat", "needle"),
    [
        ({"fedprox.mu": -0.1}, "fedprox.mu must be >= 0.0"),
        ({"fedprox.mu": math.nan}, "fedprox.mu must be a finite number"),
        ({"fedprox.mu": "big"}, "fedprox.mu must be a number"),
        ({"fedprox.muu": 0.1}, "unknown config key fedprox.muu"),
    ],
)
def test_bad_hparams_are_one_line_errors_naming_the_key(flat: dict[str, Any], needle: str) -> None:
    with pytest.raises(HParamError, match=needle) as info:
        ExperimentSpec.from_flat({"fl.algorithm": "fedprox", **flat})
    assert "\n" not in str(info.value)


def test_registered_with_its_section_and_defaults() -> None:
    algo = ALGORITHMS.get("fedprox")
    assert algo.name == "fedprox" and algo.HParams is FedProxHParams
    spec = ExperimentSpec.from_flat({"fl.algorithm": "fedprox"})
    assert spec.hparams == FedProxHParams(mu=0.01)
    assert spec.to_flat()["fedprox.mu"] == 0.01
    with pytest.raises(HParamError):
        FedProxHParams(mu=-1.0)
