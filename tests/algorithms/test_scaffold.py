"""SCAFFOLD: it learns, gives the same bytes in every execution mode, carries the client
control variates exactly, checks its server state, and its updates match the paper's formulas
on a softmax-regression model whose gradient is written out by hand."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest
import torch
from torch import nn

from blazefl.algorithms import ALGORITHMS, ClientPartition, TrainHParams
from blazefl.algorithms.fedavg import ModelSpec
from blazefl.algorithms.scaffold import (
    ScaffoldClientWorkload,
    ScaffoldDownlinkPackage,
    ScaffoldHParams,
    ScaffoldServerHandler,
    ScaffoldUplinkPackage,
    ScaffoldWorker,
    effective_steps,
)
from blazefl.core.loop import RoundResult, make_trainer, run_round
from blazefl.core.packages import ClientTask
from blazefl.core.serialization import model_state_dict
from blazefl.core.server import ServerSettings
from blazefl.data import synthetic_dataset
from blazefl.experiment import Experiment, ExperimentSpec, build_experiment, simulate
from blazefl.reproducibility import create_rng_suite
from tests.algorithms.learning import LEARN_FLAT

# Same data and local work as FedAvg's learning test (test_fedavg.py): chance is 0.1.
LEARN_SPEC = ExperimentSpec.from_flat({**LEARN_FLAT, "fl.algorithm": "scaffold"})

# Tiny non-IID run with the default momentum and weight decay: 6 clients, 3 per round.
SMALL_SPEC = ExperimentSpec.from_flat(
    {
        "seed": 0,
        "fl.algorithm": "scaffold",
        "scaffold.server_lr": 0.8,
        "data.size": 600,
        "data.test_size": 200,
        "data.clients": 6,
        "data.partition": "dirichlet",
        "fl.rounds": 3,
        "fl.clients_per_round": 3,
        "train.local_epochs": 1,
        "train.batch_size": 32,
    }
)


def sha(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Record:
    """Everything a run leaves behind, as hashes."""

    clients: list[list[int]] = field(default_factory=list)
    uplinks: list[dict[int, str]] = field(default_factory=list)
    model: str = ""
    server_state: str = ""
    client_states: dict[int, str] = field(default_factory=dict)


@cache
def small_experiment() -> Experiment:
    return build_experiment(SMALL_SPEC)


def run_small(mode: str, workers: int = 1, ipc: str = "shared_memory") -> Record:
    exp = small_experiment()
    server: Any = exp.server()
    with make_trainer(mode, exp.workload(), seed=0, workers=workers, ipc=ipc) as trainer:  # type: ignore[arg-type]
        results: list[RoundResult] = [
            run_round(server, trainer, t, evaluate=False) for t in (1, 2, 3)
        ]
        return Record(
            [r.clients for r in results],
            [r.uplink_sha256 for r in results],
            sha(model_state_dict(server.model)),
            sha(server.state_tensors()),
            {cid: sha(s) for cid, s in sorted(trainer.client_states.items())},
        )


@pytest.fixture(scope="module")
def reference() -> Record:
    return run_small("sequential")


def test_scaffold_is_a_registered_algorithm_with_its_own_section() -> None:
    assert ALGORITHMS.get("scaffold").name == "scaffold"
    assert SMALL_SPEC.hparams == ScaffoldHParams(server_lr=0.8)
    with pytest.raises(ValueError, match="server_lr"):
        ScaffoldHParams(server_lr=0.0)


def test_scaffold_learns_synthetic_dataset_far_above_chance() -> None:
    _, rounds = simulate(LEARN_SPEC, mode="threads", workers=2)
    acc = [r.summary["test_accuracy"] for r in rounds]
    loss = [r.summary["test_loss"] for r in rounds]
    assert acc[-1] >= 0.5, acc  # 0.73 with seed 0 (FedAvg: 0.74); chance: 0.1
    assert acc[-1] > acc[0] + 0.3, acc
    assert loss[-1] < math.log(10) - 0.5, loss


@pytest.mark.parametrize(
    ("mode", "ipc"),
    [("threads", "shared_memory"), ("processes", "shared_memory"), ("processes", "storage")],
)
def test_every_execution_mode_gives_identical_bytes(reference: Record, mode: str, ipc: str) -> None:
    assert run_small(mode, workers=2, ipc=ipc) == reference


def test_reference_run_is_not_trivial(reference: Record) -> None:
    assert all(len(c) == 3 for c in reference.clients)
    assert len({h for round_ in reference.uplinks for h in round_.values()}) == 9
    assert set(reference.client_states) == set().union(*map(set, reference.clients))


def test_client_control_appears_on_first_participation_and_is_carried_exactly() -> None:
    exp = small_experiment()
    server: Any = exp.server()
    n = SMALL_SPEC.data.clients
    stored: dict[int, torch.Tensor] = {}
    resumed = 0
    with make_trainer("sequential", exp.workload(), seed=0) as trainer:
        assert server.state_tensors()["control"].abs().sum() == 0
        for t in (1, 2, 3):
            clients = server.sample_clients()
            payload = server.downlink_package()
            for task in trainer.make_tasks(clients, t):
                if task.cid in stored:  # second participation: starts from its stored c_i
                    assert task.state is not None
                    assert torch.equal(task.state["control"], stored[task.cid])
                    resumed += 1
                else:
                    assert task.state is None
            for result in trainer.train_round(payload, clients, t):
                server.load(result.uplink)
            server.global_update()
            assert set(trainer.client_states) == set(stored) | set(clients)
            for cid in clients:
                control = trainer.client_states[cid]["control"]
                assert control.dtype == torch.float32 and control.abs().sum() > 0
                stored[cid] = control.clone()
            # with every c_i starting at 0, option II keeps c = (1/N) sum_i c_i
            mean = torch.stack(list(stored.values())).double().sum(0) / n
            assert torch.allclose(server.control.double(), mean, atol=1e-5)
    assert resumed > 0, "the sampling never picked a client twice: choose another seed"


def _tiny_server(model: nn.Module, num_clients: int = 4, server_lr: float = 1.0) -> Any:
    settings = ServerSettings(num_clients, 2, 2, create_rng_suite(0, 99))
    return ScaffoldServerHandler(model, settings, ScaffoldHParams(server_lr=server_lr))


def test_server_state_round_trips_and_bad_state_is_refused() -> None:
    server = _tiny_server(nn.Linear(2, 2))  # 6 parameters
    server.control = torch.arange(6, dtype=torch.float32)
    saved = server.state_tensors()
    other = _tiny_server(nn.Linear(2, 2))
    other.load_state_tensors(saved)
    assert torch.equal(other.control, saved["control"]) and other.control is not saved["control"]
    bad: list[dict[str, torch.Tensor]] = [
        {},
        {"control": saved["control"], "extra": saved["control"]},
        {"control": saved["control"].double()},
        {"control": saved["control"][:5]},
        {"control": saved["control"].reshape(2, 3)},
    ]
    for tensors in bad:
        with pytest.raises(ValueError) as info:
            other.load_state_tensors(tensors)
        assert len(str(info.value).splitlines()) == 1
    assert torch.equal(other.control, saved["control"])


def test_global_update_steps_parameters_and_control_and_means_buffers() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))  # 10 parameters, 4 buffers
    server = _tiny_server(model, num_clients=4, server_lr=2.0)
    w = server.flat.clone().double()
    server.control = torch.linspace(-1, 1, 10)
    c = server.control.double()
    gen = torch.Generator().manual_seed(1)
    models = {cid: torch.randn(14, generator=gen) for cid in (1, 3)}
    deltas = {cid: torch.randn(10, generator=gen) for cid in (1, 3)}
    done = [
        server.load(ScaffoldUplinkPackage(cid, models[cid], deltas[cid], 10 * cid, 1.0))
        for cid in (1, 3)
    ]
    assert done == [False, True]
    server.global_update()
    mean = (models[1].double() + models[3].double()) / 2
    expected = torch.cat([w[:10] + 2.0 * (mean[:10] - w[:10]), mean[10:]])
    assert torch.allclose(server.flat.double(), expected, atol=1e-6)
    expected_c = c + (deltas[1].double() + deltas[3].double()) / 4  # sum / N
    assert torch.allclose(server.control.double(), expected_c, atol=1e-6)
    assert server.train_loss == 1.0 and server.round == 1
    with pytest.raises(ValueError, match="ascending"):
        server.load(ScaffoldUplinkPackage(3, models[3], deltas[3], 1, 0.0))
        server.load(ScaffoldUplinkPackage(1, models[1], deltas[1], 1, 0.0))
    with pytest.raises(ValueError, match="float32 \\[10\\]"):
        server.load(ScaffoldUplinkPackage(5, models[1], deltas[1][:9], 1, 0.0))


def test_effective_steps_is_the_plain_sgd_step_count_of_heavy_ball() -> None:
    assert effective_steps(5, 0.0) == 5.0
    assert effective_steps(0, 0.9) == 0.0
    assert effective_steps(3, 0.5) == 1 + 1.5 + 1.75


@dataclass(frozen=True)
class _SoftmaxRegressionSpec(ModelSpec):
    """A `ModelSpec` for a linear model on the flattened 1x2x2 image."""

    def build(self, generator: torch.Generator | None = None) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def test_one_step_client_update_matches_the_paper_by_hand() -> None:
    """One full-batch step (K=1, no momentum/decay): w_i = w - lr (g + c - c_i) and
    c_i+ = c_i - c + (w - w_i) / lr = g, with g the softmax-regression gradient."""
    data = synthetic_dataset(12, seed=0, num_classes=3, shape=(1, 2, 2))
    partition = ClientPartition.from_lists([torch.arange(5).numpy(), torch.arange(5, 12).numpy()])
    hp = TrainHParams(
        local_epochs=1, batch_size=64, lr=0.5, momentum=0.0, weight_decay=0.0, augment=False
    )
    workload = ScaffoldClientWorkload(data, partition, _SoftmaxRegressionSpec(), hp)
    worker = ScaffoldWorker(workload)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(15, generator=gen)  # weight [3, 4] then bias [3]
    c, c_i = torch.randn(15, generator=gen), torch.randn(15, generator=gen)
    cid = 1
    task = ClientTask(1, cid, create_rng_suite(0, cid).state_tensors(), {"control": c_i})
    uplink, state = worker.train(task, ScaffoldDownlinkPackage(w, c), create_rng_suite(0, cid))

    idx = partition.client(cid)
    x = data.normalize(data.images[idx]).reshape(len(idx), 4).double()
    y = torch.nn.functional.one_hot(data.labels[idx], 3).double()
    weight, bias = w[:12].reshape(3, 4).double(), w[12:].double()
    residual = (torch.softmax(x @ weight.T + bias, 1) - y) / len(idx)  # d mean-CE / d logits
    g = torch.cat([(residual.T @ x).reshape(-1), residual.sum(0)])

    assert uplink.cid == cid and uplink.num_samples == 7
    assert torch.allclose(uplink.model.double(), w - 0.5 * (g + c - c_i), atol=1e-5)
    assert torch.allclose(state["control"].double(), g, atol=1e-5)
    assert torch.allclose(uplink.delta_control.double(), g - c_i.double(), atol=1e-5)
    assert torch.equal(uplink.delta_control, state["control"] - c_i)

    # a first participation starts from c_i = 0; a stored state of the wrong size is refused
    first, _ = worker.train(
        ClientTask(1, cid, task.rng, None), ScaffoldDownlinkPackage(w, c), create_rng_suite(0, cid)
    )
    assert torch.allclose(first.model.double(), w - 0.5 * (g + c), atol=1e-5)
    with pytest.raises(ValueError, match="client 1 control variate must be float32 \\[15\\]"):
        worker.train(
            ClientTask(1, cid, task.rng, {"control": c_i[:3]}),
            ScaffoldDownlinkPackage(w, c),
            create_rng_suite(0, cid),
        )
