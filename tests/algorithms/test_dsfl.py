"""DS-FL: same bytes in every execution mode, persistent client state, exact snapshot/restore,
learning on the synthetic data, and ERA sharpening.

Sizes are tiny (16x16 images, a few hundred samples) so the whole file runs in seconds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import cache

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from blazefl.algorithms.common import ClientPartition, TrainHParams
from blazefl.algorithms.dsfl import (
    DSFLClientWorkload,
    DSFLHParams,
    DSFLServerHandler,
    DSFLUplinkPackage,
    DSFLWorker,
    entropy_reduction_aggregation,
    split_open_set,
)
from blazefl.algorithms.fedavg import ModelSpec
from blazefl.core.loop import RoundResult, make_trainer, run_round
from blazefl.core.packages import ClientTask, package_sha256
from blazefl.core.serialization import flatten_module_, load_model_state_dict, model_state_dict
from blazefl.core.server import ServerSettings
from blazefl.core.trainers import BaseClientTrainer
from blazefl.data import ImageDataset, partition_indices, synthetic_dataset
from blazefl.reproducibility import SERVER_STREAM_ID, RNGSuite, create_rng_suite

SEED = 0
SIDE = 16
NUM_CLIENTS = 6
SPEC = ModelSpec("cnn", 10, 3, SIDE)
SMALL = DSFLHParams(public_size_per_round=100, kd_epochs=1, kd_batch_size=50, kd_lr=0.1)
SMALL_TRAIN = TrainHParams(
    local_epochs=1, batch_size=50, lr=0.05, momentum=0.0, weight_decay=0.0, augment=False
)


@dataclass
class Setup:
    train: ImageDataset
    open_set: ImageDataset
    test: ImageDataset
    partition: ClientPartition
    dsfl: DSFLHParams
    hparams: TrainHParams
    clients_per_round: int
    rounds: int


@cache
def small_setup() -> Setup:
    """600 private, 300 open, 200 test samples; 6 clients, 3 per round, 3 rounds."""
    return _setup(600, 300, SMALL, SMALL_TRAIN, clients_per_round=3, rounds=3)


@cache
def learning_setup() -> Setup:
    """A bit more data and local work, so the global model clearly beats chance."""
    dsfl = DSFLHParams(public_size_per_round=150, kd_epochs=3, kd_batch_size=20, kd_lr=0.3)
    hp = TrainHParams(
        local_epochs=3, batch_size=20, lr=0.05, momentum=0.9, weight_decay=0.0, augment=False
    )
    return _setup(900, 300, dsfl, hp, clients_per_round=NUM_CLIENTS, rounds=5)


def _setup(n_train: int, n_open: int, dsfl: DSFLHParams, hp: TrainHParams, **kw: int) -> Setup:
    full = synthetic_dataset(n_train + n_open, seed=SEED, shape=(3, SIDE, SIDE))
    train, open_set = split_open_set(full, n_open)
    test = synthetic_dataset(200, seed=SEED, train=False, shape=(3, SIDE, SIDE))
    parts = partition_indices(train.labels.numpy(), NUM_CLIENTS, "iid", SEED)
    return Setup(train, open_set, test, ClientPartition.from_lists(parts), dsfl, hp, **kw)


def build(setup: Setup) -> tuple[DSFLServerHandler, DSFLClientWorkload]:
    """A round-0 server and the matching workload (clients start from the global init)."""
    model = SPEC.build(create_rng_suite(SEED, SERVER_STREAM_ID + 1).torch)
    init = flatten_module_(model).clone()
    suite = create_rng_suite(SEED, SERVER_STREAM_ID)
    settings = ServerSettings(
        NUM_CLIENTS, setup.clients_per_round, setup.rounds, suite, test_set=setup.test
    )
    server = DSFLServerHandler(model, settings, setup.dsfl, open_set=setup.open_set)
    workload = DSFLClientWorkload(
        setup.train, setup.open_set, setup.partition, SPEC, setup.hparams, setup.dsfl, init
    )
    return server, workload


def sha(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Record:
    """Everything a round leaves behind, as hashes."""

    clients: list[list[int]] = field(default_factory=list)
    uplinks: list[dict[int, str]] = field(default_factory=list)
    model: str = ""
    server_state: str = ""
    client_states: dict[int, str] = field(default_factory=dict)


def record_of(
    server: DSFLServerHandler, trainer: BaseClientTrainer, results: list[RoundResult]
) -> Record:
    return Record(
        [r.clients for r in results],
        [r.uplink_sha256 for r in results],
        sha(model_state_dict(server.model)),
        sha(server.state_tensors()),
        {cid: sha(s) for cid, s in sorted(trainer.client_states.items())},
    )


def run_small(mode: str, workers: int = 1, ipc: str = "shared_memory") -> Record:
    setup = small_setup()
    server, workload = build(setup)
    with make_trainer(mode, workload, seed=SEED, workers=workers, ipc=ipc) as trainer:  # type: ignore[arg-type]
        results = [run_round(server, trainer, t, evaluate=False) for t in (1, 2, 3)]
        return record_of(server, trainer, results)


@pytest.fixture(scope="module")
def reference() -> Record:
    return run_small("sequential")


@pytest.mark.parametrize(
    ("mode", "ipc"),
    [("threads", "shared_memory"), ("processes", "shared_memory"), ("processes", "storage")],
)
def test_every_execution_mode_gives_identical_bytes(reference: Record, mode: str, ipc: str) -> None:
    assert run_small(mode, workers=2, ipc=ipc) == reference


def test_reference_run_is_not_trivial(reference: Record) -> None:
    assert all(len(c) == 3 for c in reference.clients)
    assert len({h for round_ in reference.uplinks for h in round_.values()}) == 9
    assert len(reference.client_states) == len(set().union(*map(set, reference.clients)))


def test_client_resumes_from_its_stored_model() -> None:
    setup = small_setup()
    server, workload = build(setup)
    assert workload.init_model is not None
    last_state: dict[int, torch.Tensor] = {}
    resumed = 0
    with make_trainer("sequential", workload, seed=SEED) as trainer:
        for t in (1, 2, 3):
            clients = server.sample_clients()
            payload = server.downlink_package()
            tasks = {task.cid: task for task in trainer.make_tasks(clients, t)}
            for cid, task in tasks.items():
                if cid in last_state:  # second participation: starts from its stored model
                    assert task.state is not None
                    assert torch.equal(task.state["model"], last_state[cid])
                    assert not torch.equal(task.state["model"], workload.init_model)
                    resumed += 1
                else:
                    assert task.state is None
            replay = {
                cid: DSFLWorker(workload).train(
                    task, payload, RNGSuite.from_state_tensors(task.rng)
                )[0]
                for cid, task in tasks.items()
            }
            for result in trainer.train_round(payload, clients, t):
                assert result.sha256 == package_sha256(replay[result.cid])
                server.load(result.uplink)
            server.global_update()
            for cid in clients:
                state = trainer.client_states[cid]["model"]
                assert state.shape == workload.init_model.shape and state.dtype == torch.float32
                last_state[cid] = state.clone()
    assert resumed > 0, "the sampling never picked a client twice: choose another seed"


def test_restored_snapshot_reexecutes_round_three_byte_identically(reference: Record) -> None:
    setup = small_setup()
    server, workload = build(setup)
    with make_trainer("sequential", workload, seed=SEED) as trainer:
        for t in (1, 2):
            run_round(server, trainer, t, evaluate=False)
        assert server.rng is not None
        # what a pipeline writes for round 2, through safetensors bytes
        blobs = {
            "global": st_save(model_state_dict(server.model)),
            "server_state": st_save(server.state_tensors()),
            "server_rng": st_save(server.rng.state_tensors()),
            **{f"rng-{c}": st_save(s) for c, s in trainer.rng_states.items()},
            **{f"state-{c}": st_save(s) for c, s in trainer.client_states.items()},
        }
    assert st_load(blobs["server_state"])["soft_labels"].shape == (100, 10)

    fresh_server, fresh_workload = build(setup)
    load_model_state_dict(fresh_server.model, st_load(blobs["global"]))
    fresh_server.load_state_tensors(st_load(blobs["server_state"]))
    assert fresh_server.rng is not None
    fresh_server.rng.load_state_tensors(st_load(blobs["server_rng"]))
    fresh_server.round = 2
    with make_trainer("threads", fresh_workload, seed=SEED, workers=2) as trainer:
        for name, blob in blobs.items():
            kind, _, cid = name.partition("-")
            if kind == "rng":
                trainer.rng_states[int(cid)] = st_load(blob)
            elif kind == "state":
                trainer.client_states[int(cid)] = st_load(blob)
        result = run_round(fresh_server, trainer, 3, evaluate=False)
        assert result.clients == reference.clients[2]
        assert result.uplink_sha256 == reference.uplinks[2]
        assert sha(model_state_dict(fresh_server.model)) == reference.model
        assert sha(fresh_server.state_tensors()) == reference.server_state
        states = {cid: sha(s) for cid, s in sorted(trainer.client_states.items())}
        assert states == reference.client_states


def test_global_model_learns_and_era_sharpens_the_mean() -> None:
    setup = learning_setup()
    server, workload = build(setup)
    with make_trainer("sequential", workload, seed=SEED) as trainer:
        for t in range(1, setup.rounds + 1):
            summary = run_round(server, trainer, t).summary
        assert summary["test_accuracy"] >= 0.25  # chance is 0.10
        truth = setup.open_set.labels[server.soft_indices]
        assert (server.soft_labels.argmax(1) == truth).float().mean() >= 0.4

        # one more round by hand: the server's aggregate is ERA(plain mean of the uplinks)
        clients, payload = server.sample_clients(), server.downlink_package()
        uplinks: list[DSFLUplinkPackage] = [
            r.uplink for r in trainer.train_round(payload, clients, setup.rounds + 1)
        ]
    mean = torch.stack([u.soft_labels.double() for u in uplinks]).sum(0) / len(uplinks)
    era = entropy_reduction_aggregation(mean, setup.dsfl.era_temperature)
    for u in uplinks:
        server.load(u)
    server.global_update()
    assert torch.equal(server.soft_labels, era)
    assert torch.equal(server.soft_indices, payload.next_indices)

    def entropy(p: torch.Tensor) -> float:
        return float(-(p * p.clamp_min(1e-30).log()).sum(1).mean())

    assert entropy(era.double()) < entropy(mean) - 0.1
    assert torch.allclose(era.sum(1), torch.ones(len(era)), atol=1e-5)


def test_era_sharpens_a_hand_made_mean() -> None:
    mean = torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.35, 0.25]])
    era = entropy_reduction_aggregation(mean, 0.1)
    assert era.dtype == torch.float32
    assert torch.equal(era.argmax(1), mean.argmax(1))
    assert bool((era.max(1).values > mean.max(1).values).all())


def test_downlink_indices_are_drawn_once_per_round_and_sorted() -> None:
    server, _ = build(small_setup())
    first = server.downlink_package()
    again = server.downlink_package()
    assert first.next_indices is again.next_indices
    assert first.soft_labels.shape == (0, 10) and first.indices.numel() == 0
    idx = first.next_indices
    assert idx.dtype == torch.int64 and idx.numel() == 100
    assert torch.equal(idx, idx.sort().values) and idx.unique().numel() == 100


def test_first_participation_without_init_model_uses_the_client_generator() -> None:
    setup = small_setup()
    server, workload = build(setup)
    workload = replace(workload, init_model=None)
    payload = server.downlink_package()
    rng = create_rng_suite(SEED, 4).state_tensors()
    task = ClientTask(1, 4, rng, None)
    outs = [
        DSFLWorker(workload).train(task, payload, RNGSuite.from_state_tensors(rng))
        for _ in range(2)
    ]
    assert package_sha256(outs[0][0]) == package_sha256(outs[1][0])
    assert torch.equal(outs[0][1]["model"], outs[1][1]["model"])


def test_load_state_tensors_rejects_bad_shapes() -> None:
    server, _ = build(small_setup())
    good = {"indices": torch.arange(3), "soft_labels": torch.full((3, 10), 0.1)}
    server.load_state_tensors(good)
    assert torch.equal(server.state_tensors()["indices"], good["indices"])
    with pytest.raises(ValueError, match="soft_labels"):
        server.load_state_tensors({"indices": torch.arange(3), "soft_labels": torch.zeros(2, 10)})
    with pytest.raises(ValueError, match="lacks keys"):
        server.load_state_tensors({"indices": torch.arange(3)})
    with pytest.raises(ValueError, match="indices must lie"):
        server.load_state_tensors(
            {"indices": torch.tensor([300]), "soft_labels": torch.ones(1, 10)}
        )


def test_hparams_are_validated() -> None:
    with pytest.raises(ValueError, match="era_temperature"):
        DSFLHParams(era_temperature=0.0)
    with pytest.raises(ValueError, match="public_size_per_round"):
        DSFLHParams(public_size_per_round=0)
    with pytest.raises(ValueError, match="exceeds the open set"):
        build(_setup(60, 30, SMALL, SMALL_TRAIN, clients_per_round=3, rounds=1))
