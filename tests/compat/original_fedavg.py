"""A FedAvg experiment written against the original BlazeFL's documented contracts.

This module stands for a user's existing code: the only lines that know which package they run
on are the imports. Everything else follows the original's contracts: a server handler with
`sample_clients` / `downlink_package` / `load` / `global_update(buffer)` / `if_stop`, a sequential
trainer subclassing `BaseClientTrainer` with its own `local_process` / `uplink_package`, a thread
trainer subclassing `ThreadPoolClientTrainer` with `worker(cid, device, payload, stop_event)`,
`progress_fn` and `get_client_device`, flat model vectors from `serialize_model`, per-client
`RNGSuite`s (`torch_cpu` drives the data order), and a round loop owned by the user.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# -- the only package-specific lines ------------------------------------------------------------
from blazefl.core import (
    BaseClientTrainer,
    BaseServerHandler,
    ThreadPoolClientTrainer,
    deserialize_model,
    serialize_model,
)
from blazefl.reproducibility import RNGSuite, create_rng_suite, setup_reproducibility

# -----------------------------------------------------------------------------------------------

FEATURES, CLASSES, SAMPLES_PER_CLIENT = 8, 3, 40


@dataclass
class FedAvgUplinkPackage:
    cid: int
    model_parameters: torch.Tensor
    data_size: int


@dataclass
class FedAvgDownlinkPackage:
    model_parameters: torch.Tensor


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, CLASSES))


def make_client_datasets(num_clients: int, seed: int) -> list[TensorDataset]:
    """Tiny synthetic classification data: labels from a fixed random linear teacher."""
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(FEATURES, CLASSES, generator=generator)
    datasets = []
    for _ in range(num_clients):
        x = torch.randn(SAMPLES_PER_CLIENT, FEATURES, generator=generator)
        datasets.append(TensorDataset(x, (x @ teacher).argmax(dim=1)))
    return datasets


def train_locally(
    model: nn.Module,
    model_parameters: torch.Tensor,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    device: str,
    epochs: int,
    lr: float,
    stop_event: threading.Event | None,
) -> torch.Tensor:
    model.to(device)
    deserialize_model(model, model_parameters)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for data, target in loader:
            if stop_event is not None and stop_event.is_set():
                return serialize_model(model)
            loss = criterion(model(data.to(device)), target.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return serialize_model(model)


class FedAvgServerHandler(BaseServerHandler[FedAvgUplinkPackage, FedAvgDownlinkPackage]):
    def __init__(self, global_round: int, num_clients: int, sample_ratio: float, seed: int) -> None:
        torch.manual_seed(seed)  # the global model's initial weights (main thread only)
        self.model = make_model()
        self.global_round = global_round
        self.num_clients = num_clients
        self.num_clients_per_round = int(num_clients * sample_ratio)
        self.client_buffer_cache: list[FedAvgUplinkPackage] = []
        self.round = 0
        self.rng_suite = create_rng_suite(seed)

    def sample_clients(self) -> list[int]:
        picked = self.rng_suite.python.sample(range(self.num_clients), self.num_clients_per_round)
        return sorted(picked)

    def if_stop(self) -> bool:
        return self.round >= self.global_round

    def load(self, payload: FedAvgUplinkPackage) -> bool:
        self.client_buffer_cache.append(payload)
        if len(self.client_buffer_cache) == self.num_clients_per_round:
            self.global_update(self.client_buffer_cache)
            self.round += 1
            self.client_buffer_cache = []
            return True
        return False

    def global_update(self, buffer: list[FedAvgUplinkPackage]) -> None:  # type: ignore[override]
        total = sum(p.data_size for p in buffer)
        merged = torch.zeros_like(buffer[0].model_parameters)
        for p in buffer:
            merged.add_(p.model_parameters, alpha=p.data_size / total)
        deserialize_model(self.model, merged)

    def downlink_package(self) -> FedAvgDownlinkPackage:
        return FedAvgDownlinkPackage(serialize_model(self.model))


class FedAvgSequentialTrainer(BaseClientTrainer[FedAvgUplinkPackage, FedAvgDownlinkPackage]):
    def __init__(
        self, datasets: list[TensorDataset], epochs: int, batch_size: int, lr: float, seed: int
    ) -> None:
        self.datasets = datasets
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.device = "cpu"
        self.model = make_model()
        self.cache: list[FedAvgUplinkPackage] = []
        self.rng_suite_list = [create_rng_suite(seed + i) for i in range(len(datasets))]

    def local_process(  # type: ignore[override]
        self, payload: FedAvgDownlinkPackage, cid_list: list[int]
    ) -> None:
        for cid in cid_list:
            loader = DataLoader(
                self.datasets[cid],
                batch_size=self.batch_size,
                shuffle=True,
                generator=self.rng_suite_list[cid].torch_cpu,
            )
            params = train_locally(
                self.model,
                payload.model_parameters,
                loader,
                self.device,
                self.epochs,
                self.lr,
                None,
            )
            self.cache.append(FedAvgUplinkPackage(cid, params, len(self.datasets[cid])))

    def uplink_package(self) -> list[FedAvgUplinkPackage]:
        package, self.cache = self.cache, []
        return package


class FedAvgThreadTrainer(ThreadPoolClientTrainer[FedAvgUplinkPackage, FedAvgDownlinkPackage]):
    def __init__(
        self,
        datasets: list[TensorDataset],
        epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
        num_parallels: int,
    ) -> None:
        self.num_parallels = num_parallels
        self.device = "cpu"
        self.device_count = torch.cuda.device_count()
        self.cache: list[FedAvgUplinkPackage] = []
        self.stop_event = threading.Event()
        self.datasets = datasets
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.rng_suite_list: list[RNGSuite] = [
            create_rng_suite(seed + i) for i in range(len(datasets))
        ]
        self.progress_calls = 0
        self.devices: dict[int, str] = {}

    def progress_fn(
        self, it: list[Future[FedAvgUplinkPackage]]
    ) -> Iterable[Future[FedAvgUplinkPackage]]:
        self.progress_calls += 1
        return it

    def get_client_device(self, cid: int) -> str:
        self.devices[cid] = super().get_client_device(cid)
        return self.devices[cid]

    def worker(
        self,
        cid: int,
        device: str,
        payload: FedAvgDownlinkPackage,
        stop_event: threading.Event,
    ) -> FedAvgUplinkPackage:
        loader = DataLoader(
            self.datasets[cid],
            batch_size=self.batch_size,
            shuffle=True,
            generator=self.rng_suite_list[cid].torch_cpu,
        )
        params = train_locally(
            make_model(),
            payload.model_parameters,
            loader,
            device,
            self.epochs,
            self.lr,
            stop_event,
        )
        return FedAvgUplinkPackage(cid, params, len(self.datasets[cid]))

    def uplink_package(self) -> list[FedAvgUplinkPackage]:
        package, self.cache = self.cache, []
        return package


def run_experiment(
    trainer: FedAvgSequentialTrainer | FedAvgThreadTrainer, handler: FedAvgServerHandler
) -> list[list[int]]:
    """The user's own round loop; returns the clients sampled in each round."""
    sampled = []
    while not handler.if_stop():
        cids = handler.sample_clients()
        sampled.append(cids)
        trainer.local_process(handler.downlink_package(), cids)
        for package in trainer.uplink_package():
            handler.load(package)
    return sampled


def main(mode: str, seed: int = 42, rounds: int = 3) -> FedAvgServerHandler:
    """What the user's script does (sequential or thread mode)."""
    setup_reproducibility(seed)
    num_clients = 6
    datasets = make_client_datasets(num_clients, seed)
    handler = FedAvgServerHandler(rounds, num_clients, sample_ratio=0.5, seed=seed)
    trainer: FedAvgSequentialTrainer | FedAvgThreadTrainer
    if mode == "sequential":
        trainer = FedAvgSequentialTrainer(datasets, epochs=2, batch_size=8, lr=0.1, seed=seed)
    else:
        trainer = FedAvgThreadTrainer(
            datasets, epochs=2, batch_size=8, lr=0.1, seed=seed, num_parallels=2
        )
    run_experiment(trainer, handler)
    return handler
