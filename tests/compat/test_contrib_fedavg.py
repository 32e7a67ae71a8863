"""`blazefl.contrib`: the original BlazeFL's FedAvg names, constructor arguments and behaviour.

One experiment runs through the sequential, thread and process trainers (both IPC modes):
every mode trains the same global model, because every client shuffles with its own stream
`create_rng_suite(seed, cid)` carried between rounds.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import blazefl.contrib
from blazefl.contrib import (
    FedAvgBaseClientTrainer,
    FedAvgBaseServerHandler,
    FedAvgDownlinkPackage,
    FedAvgPartitionedDataset,
    FedAvgPartitionType,
    FedAvgProcessPoolClientTrainer,
    FedAvgThreadPoolClientTrainer,
    FedAvgUplinkPackage,
)
from blazefl.core import IPCMode, PartitionedDataset, serialize_model
from tests.compat.contrib_data import CLASSES, FEATURES, Data, ModelName, Selector

COMMON = ["model_selector", "model_name", "dataset", "device", "num_clients", "epochs"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # process workers run 2 CPUs // 2 processes = 1 thread: the other modes match it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_names_and_constructor_arguments_are_the_originals() -> None:
    assert set(blazefl.contrib.__all__) == {
        "FedAvgUplinkPackage",
        "FedAvgDownlinkPackage",
        "FedAvgPartitionType",
        "FedAvgPartitionedDataset",
        "FedAvgBaseServerHandler",
        "FedAvgBaseClientTrainer",
        "FedAvgThreadPoolClientTrainer",
        "FedAvgProcessPoolClientTrainer",
    }

    def params(cls: type) -> list[str]:
        return list(inspect.signature(cls.__init__).parameters)[1:]

    assert params(FedAvgBaseServerHandler) == [
        "model_selector",
        "model_name",
        "dataset",
        "global_round",
        "num_clients",
        "sample_ratio",
        "device",
        "batch_size",
        "seed",
    ]
    assert params(FedAvgBaseClientTrainer) == [*COMMON, "batch_size", "lr", "seed"]
    assert params(FedAvgThreadPoolClientTrainer) == [
        *COMMON,
        "batch_size",
        "lr",
        "seed",
        "num_parallels",
    ]
    assert params(FedAvgProcessPoolClientTrainer) == [
        "model_selector",
        "model_name",
        "share_dir",
        "state_dir",
        "dataset",
        "device",
        "num_clients",
        "epochs",
        "batch_size",
        "lr",
        "seed",
        "num_parallels",
        "ipc_mode",
    ]
    package = FedAvgUplinkPackage(3, torch.zeros(2), 10)
    assert package.metadata is None and package.cid == 3
    assert FedAvgDownlinkPackage(torch.ones(1)).model_parameters.shape == (1,)
    assert FedAvgPartitionType("train") is FedAvgPartitionType.TRAIN
    assert FedAvgPartitionedDataset == PartitionedDataset[FedAvgPartitionType]


def server(data: Data, rounds: int = 2, ratio: float = 1.0) -> FedAvgBaseServerHandler:
    return FedAvgBaseServerHandler(
        Selector(0), ModelName.LINEAR, data, rounds, data.num_clients, ratio, "cpu", 8, 42
    )


def make_trainer(mode: str, data: Data, tmp: Path) -> Any:
    args: dict[str, Any] = {
        "model_selector": Selector(0),
        "model_name": ModelName.LINEAR,
        "dataset": data,
        "device": "cpu",
        "num_clients": data.num_clients,
        "epochs": 2,
        "batch_size": 4,
        "lr": 0.1,
        "seed": 42,
    }
    if mode == "sequential":
        return FedAvgBaseClientTrainer(**args)
    if mode == "threads":
        return FedAvgThreadPoolClientTrainer(**args, num_parallels=2)
    return FedAvgProcessPoolClientTrainer(
        **args, share_dir=tmp / "share", state_dir=tmp / "state", num_parallels=2, ipc_mode=mode
    )


def run(mode: str, tmp: Path) -> tuple[torch.Tensor, list[int]]:
    data = Data(num_clients=4, size=12, seed=0)
    handler = server(data)
    trainer = make_trainer(mode, data, tmp)
    sizes = []
    try:
        while not handler.if_stop():
            trainer.local_process(handler.downlink_package(), handler.sample_clients())
            uploads = trainer.uplink_package()
            assert [p.cid for p in uploads] == [0, 1, 2, 3]
            sizes = [p.data_size for p in uploads]
            done = [handler.load(p) for p in uploads]
            assert done == [False, False, False, True]
    finally:
        if hasattr(trainer, "close"):
            trainer.close()
    assert handler.round == 2 and handler.is_stopped()
    return serialize_model(handler.model), sizes


def test_every_mode_trains_the_same_global_model(tmp_path: Path) -> None:
    reference, sizes = run("sequential", tmp_path / "s")
    assert sizes == [24, 24, 24, 24]  # samples over both local epochs
    initial = serialize_model(Selector(0).select_model(ModelName.LINEAR))
    assert not torch.equal(reference, initial)
    for mode in ("threads", IPCMode.STORAGE, IPCMode.SHARED_MEMORY):
        model, _ = run(mode, tmp_path / str(mode))
        assert torch.equal(model, reference), mode


def test_server_samples_averages_and_evaluates() -> None:
    data = Data(num_clients=10, size=6, seed=1)
    handler = server(data, rounds=1, ratio=0.3)
    cids = handler.sample_clients()
    assert len(cids) == 3 and cids == sorted(cids) and len(set(cids)) == 3
    merged = FedAvgBaseServerHandler.aggregate([torch.zeros(2), torch.ones(2) * 4], [3, 1])
    assert torch.equal(merged, torch.ones(2))
    with pytest.raises(ValueError, match="one weight per parameter vector"):
        FedAvgBaseServerHandler.aggregate([torch.zeros(2)], [])
    summary = handler.get_summary()
    assert set(summary) == {"server_acc", "server_loss"} and 0.0 <= summary["server_acc"] <= 1.0
    with pytest.raises(ValueError, match="sample_ratio"):
        server(data, ratio=0.0)
    # uplinks arriving out of order aggregate as in client-id order
    vector = serialize_model(handler.model)
    ups = [FedAvgUplinkPackage(c, vector + c, 5 + c) for c in (2, 0, 1)]
    handler.global_update(ups)
    once = serialize_model(handler.model)
    handler.global_update(sorted(ups, key=lambda p: p.cid))
    assert torch.equal(serialize_model(handler.model), once)


class GlobalInitSelector(Selector):
    """A selector as users write them: torch's own init, drawn from the global generator."""

    def select_model(self, model_name: ModelName) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(FEATURES, CLASSES))


def test_thread_clients_leave_the_global_rng_as_they_found_it(tmp_path: Path) -> None:
    """Each thread client builds its model (global draws, then overwritten by the payload)
    under the package's borrow of the generator, which gives the state back."""
    data = Data(num_clients=4, size=12, seed=0)
    handler = server(data)
    trainer = make_trainer("threads", data, tmp_path)
    trainer.model_selector = GlobalInitSelector(0)
    payload, cids = handler.downlink_package(), handler.sample_clients()
    before = torch.get_rng_state()
    try:
        trainer.local_process(payload, cids)
    finally:
        trainer.close()
    assert torch.equal(before, torch.get_rng_state())
