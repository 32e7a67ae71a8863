"""A FedAvg experiment written for the original BlazeFL runs here with only its imports changed.

`tests/compat/original_fedavg.py` is that experiment (server handler, sequential and thread
trainers, the user's own round loop); these tests run it in both modes and check the contracts it
relies on.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
import torch

from blazefl.core import ThreadPoolClientTrainer, serialize_model
from tests.compat import original_fedavg as user
from tests.compat.original_fedavg import (
    FedAvgDownlinkPackage,
    FedAvgServerHandler,
    FedAvgThreadTrainer,
    FedAvgUplinkPackage,
    make_client_datasets,
)


@pytest.fixture(autouse=True)
def keep_process_settings() -> Any:
    """The user's script sets the global seed, PYTHONHASHSEED and cuDNN flags: undo them."""
    rng = torch.get_rng_state()
    env = dict(os.environ)
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.set_rng_state(rng)
    os.environ.clear()
    os.environ.update(env)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def accuracy(handler: FedAvgServerHandler, seed: int = 42) -> float:
    datasets = make_client_datasets(6, seed)
    x = torch.cat([d.tensors[0] for d in datasets])
    y = torch.cat([d.tensors[1] for d in datasets])
    with torch.no_grad():
        return float((handler.model(x).argmax(1) == y).float().mean())


def test_sequential_and_thread_modes_train_the_same_global_model() -> None:
    threads_before = torch.get_num_threads()
    initial = FedAvgServerHandler(3, 6, 0.5, seed=42)
    sequential = user.main("sequential")
    threaded = user.main("threads")
    assert sequential.round == threaded.round == 3
    assert sequential.if_stop() and sequential.is_stopped()
    assert torch.equal(serialize_model(sequential.model), serialize_model(threaded.model))
    assert not torch.equal(serialize_model(initial.model), serialize_model(sequential.model))
    assert accuracy(sequential) > accuracy(initial)
    # setup_reproducibility(42) is the original's: it does not pin 42 intra-op threads
    assert torch.get_num_threads() == threads_before


def test_thread_trainer_uses_the_original_hooks_and_caches_in_cid_order() -> None:
    datasets = make_client_datasets(6, 0)
    handler = FedAvgServerHandler(1, 6, 0.5, seed=0)
    trainer = FedAvgThreadTrainer(datasets, epochs=1, batch_size=8, lr=0.1, seed=0, num_parallels=3)
    cids = [5, 0, 3]
    trainer.local_process(handler.downlink_package(), cids)
    assert trainer.progress_calls == 1
    assert trainer.devices == {5: "cpu", 0: "cpu", 3: "cpu"}
    assert trainer.stop_event.is_set()  # the original sets it when the round is over
    packages = trainer.uplink_package()
    assert [p.cid for p in packages] == cids
    assert trainer.uplink_package() == []


def test_base_uplink_package_and_devices_follow_the_original() -> None:
    class Minimal(ThreadPoolClientTrainer[Any, Any]):
        def __init__(self) -> None:
            self.num_parallels = 2
            self.device = "cuda"
            self.device_count = 2
            self.cache: list[Any] = []
            self.stop_event = threading.Event()

        def get_client_device(self, cid: int) -> str:
            return "cpu"

        def worker(self, cid: int, device: str, payload: Any, stop_event: threading.Event) -> Any:
            return (cid, payload)

    trainer = Minimal()
    assert ThreadPoolClientTrainer.get_client_device(trainer, 3) == "cuda:1"
    trainer.local_process("p", [2, 1])
    assert trainer.uplink_package() == [(2, "p"), (1, "p")]
    assert trainer.uplink_package() == []
    with pytest.raises(ValueError, match="local_process"):
        trainer.train_round("p", [0])


def test_a_failing_client_stops_the_others_through_the_stop_event() -> None:
    long_s = 30.0
    started = threading.Barrier(2)

    class Failing(FedAvgThreadTrainer):
        def worker(
            self,
            cid: int,
            device: str,
            payload: FedAvgDownlinkPackage,
            stop_event: threading.Event,
        ) -> FedAvgUplinkPackage:
            started.wait(long_s)
            if cid == 0:
                raise ValueError("client 0 broke")
            deadline = time.monotonic() + long_s
            while not stop_event.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
            return FedAvgUplinkPackage(cid, payload.model_parameters, 1)

    datasets = make_client_datasets(2, 0)
    trainer = Failing(datasets, epochs=1, batch_size=8, lr=0.1, seed=0, num_parallels=2)
    handler = FedAvgServerHandler(1, 2, 1.0, seed=0)
    start = time.monotonic()
    with pytest.raises(ValueError, match="client 0 broke"):
        trainer.local_process(handler.downlink_package(), [0, 1])
    assert time.monotonic() - start < long_s / 3  # client 1 saw the stop event


def test_if_stop_and_is_stopped_answer_for_each_other() -> None:
    handler = FedAvgServerHandler(2, 6, 0.5, seed=0)
    assert handler.is_stopped() is handler.if_stop() is False
    handler.round = 2
    assert handler.is_stopped() is handler.if_stop() is True
