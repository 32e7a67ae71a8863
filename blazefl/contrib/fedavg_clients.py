"""The original BlazeFL's FedAvg client trainers: sequential, thread pool and process pool.

All three train a client the same way (`train_client`) from the same per-client RNG stream,
`create_rng_suite(seed, cid)`, carried from round to round: the sequential trainer keeps the
suites in memory, the thread trainer in `rng_suite_list`, the process trainer in
`state_dir/<cid>.pt` (the suite's state tensors in safetensors format: no pickled generators).
So a client's data order does not depend on which other clients ran or in which mode. Uplinks
are cached in `cid_list` order.
"""

from __future__ import annotations

import os
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from blazefl.contrib.fedavg_packages import (
    FedAvgDownlinkPackage,
    FedAvgPartitionedDataset,
    FedAvgPartitionType,
    FedAvgUplinkPackage,
)
from blazefl.core import (
    BaseClientTrainer,
    IPCMode,
    ModelSelector,
    ProcessPoolClientTrainer,
    SHMHandle,
    ThreadPoolClientTrainer,
    deserialize_model,
    serialize_model,
)
from blazefl.core.original_pool import load_package, private_round_file
from blazefl.reproducibility import RNGSuite, create_rng_suite, setup_reproducibility
from blazefl.reproducibility.global_rng import global_rng_borrowed

__all__ = [
    "FedAvgBaseClientTrainer",
    "FedAvgClientConfig",
    "FedAvgProcessPoolClientTrainer",
    "FedAvgThreadPoolClientTrainer",
    "train_client",
]


def train_client(
    model: torch.nn.Module,
    model_parameters: torch.Tensor,
    train_loader: DataLoader[Any],
    device: str,
    epochs: int,
    lr: float,
    cid: int,
    stop_event: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> FedAvgUplinkPackage:
    """Local SGD from the global model: `epochs` passes over `train_loader`.

    Args:
        model: a model of the global model's architecture (its weights are overwritten).
        model_parameters: the global model as one flat vector.
        train_loader: the client's training batches `(inputs, labels)`.
        device: where to train.
        epochs: local epochs; the stop event is checked before each.
        lr: SGD learning rate.
        cid: the client id recorded in the uplink.
        stop_event: anything with `is_set()`; once set, no further epoch starts.
        optimizer: an SGD optimizer over `model`'s parameters to reuse (a new one otherwise).

    Returns:
        The uplink: the trained model's vector and the samples seen (over all epochs).
    """
    model.to(device)
    deserialize_model(model, model_parameters)
    model.train()
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=lr)
    criterion = torch.nn.CrossEntropyLoss()
    data_size = 0
    for _ in range(epochs):
        if stop_event is not None and stop_event.is_set():
            break
        for data, target in train_loader:
            data, target = data.to(device), target.to(device)
            loss = criterion(model(data), target)
            data_size += len(target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return FedAvgUplinkPackage(cid, serialize_model(model), data_size)


class FedAvgBaseClientTrainer(BaseClientTrainer[FedAvgUplinkPackage, FedAvgDownlinkPackage]):
    """FedAvg clients one after another in the calling thread (the original's constructor).

    Args:
        model_selector: builds the local model (once).
        model_name: the model to build.
        dataset: the partitioned dataset (its "train" split per client).
        device: where to train.
        num_clients: clients in the federation.
        epochs: local epochs per round.
        batch_size: local batch size.
        lr: SGD learning rate.
        seed: client `cid` shuffles with `create_rng_suite(seed, cid)`.

    Example:
        >>> trainer = FedAvgBaseClientTrainer(selector, "cnn", data, "cpu", 100, 5, 50, 0.1, 42)
        >>> trainer.local_process(server.downlink_package(), server.sample_clients())
        >>> packages = trainer.uplink_package()
    """

    def __init__(
        self,
        model_selector: ModelSelector[Any],
        model_name: str,
        dataset: FedAvgPartitionedDataset,
        device: str,
        num_clients: int,
        epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
    ) -> None:
        self.model = model_selector.select_model(model_name)
        self.dataset = dataset
        self.device = device
        self.num_clients = num_clients
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.model.to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.cache: list[FedAvgUplinkPackage] = []
        self.rng_suites: dict[int, RNGSuite] = {}

    def local_process(self, payload: FedAvgDownlinkPackage, cid_list: list[int]) -> None:  # type: ignore[override]
        """Train every client in `cid_list` and cache its uplink."""
        for cid in cid_list:
            suite = self.rng_suites.get(cid)
            if suite is None:
                suite = self.rng_suites[cid] = create_rng_suite(self.seed, cid)
            loader = self.dataset.get_dataloader(
                FedAvgPartitionType.TRAIN, cid, self.batch_size, suite.torch_cpu
            )
            self.cache.append(
                train_client(
                    self.model,
                    payload.model_parameters,
                    loader,
                    self.device,
                    self.epochs,
                    self.lr,
                    cid,
                    optimizer=self.optimizer,
                )
            )

    def uplink_package(self) -> list[FedAvgUplinkPackage]:
        """Return and clear the cached uplinks (in `cid_list` order)."""
        packages, self.cache = self.cache, []
        return packages


class FedAvgThreadPoolClientTrainer(
    ThreadPoolClientTrainer[FedAvgUplinkPackage, FedAvgDownlinkPackage]
):
    """FedAvg clients on `num_parallels` threads (the original's constructor).

    Each client builds its own model with `model_selector` (threads share nothing mutable)
    and shuffles with `rng_suite_list[cid]`. Every pool thread runs with its share of the CPUs
    as intra-op threads (`cpus // num_parallels`, at least 1; set `threads_per_client` to
    change it), as the process trainer's workers do: `num_parallels` clients with one thread
    per CPU each would oversubscribe the machine.

    Args:
        model_selector, model_name, dataset, device, num_clients, epochs, batch_size, lr,
            seed: as for `FedAvgBaseClientTrainer`.
        num_parallels: worker threads.
    """

    def __init__(
        self,
        model_selector: ModelSelector[Any],
        model_name: str,
        dataset: FedAvgPartitionedDataset,
        device: str,
        num_clients: int,
        epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
        num_parallels: int,
    ) -> None:
        self.num_parallels = num_parallels
        self.device = device
        if device == "cuda":
            self.device_count = torch.cuda.device_count()
        self.cache: list[FedAvgUplinkPackage] = []
        self.model_selector = model_selector
        self.model_name = model_name
        self.dataset = dataset
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.num_clients = num_clients
        self.seed = seed
        self.stop_event = threading.Event()
        self.rng_suite_list = [create_rng_suite(seed, cid) for cid in range(num_clients)]
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.threads_per_client = max(1, (cpus or 1) // num_parallels)

    def worker(
        self,
        cid: int,
        device: str,
        payload: FedAvgDownlinkPackage,
        stop_event: threading.Event,
    ) -> FedAvgUplinkPackage:
        """Train client `cid` in a pool thread."""
        loader = self.dataset.get_dataloader(
            FedAvgPartitionType.TRAIN, cid, self.batch_size, self.rng_suite_list[cid].torch_cpu
        )
        # the payload overwrites every weight: the constructor's global draws are borrowed and
        # given back, so threads leave torch's global generator as they found it
        with global_rng_borrowed():
            model = self.model_selector.select_model(self.model_name)
        return train_client(
            model, payload.model_parameters, loader, device, self.epochs, self.lr, cid, stop_event
        )


@dataclass
class FedAvgClientConfig:
    """Everything a process-pool worker needs for one client (pickled per client).

    Attributes:
        model_selector: builds the local model in the worker.
        model_name: the model to build.
        dataset: the partitioned dataset.
        epochs: local epochs.
        batch_size: local batch size.
        lr: SGD learning rate.
        cid: the client.
        seed: the experiment seed (the client's stream is `create_rng_suite(seed, cid)`).
        state_path: where the client's RNG state is kept between rounds.
    """

    model_selector: ModelSelector[Any]
    model_name: str
    dataset: FedAvgPartitionedDataset
    epochs: int
    batch_size: int
    lr: float
    cid: int
    seed: int
    state_path: Path


_MODELS: dict[tuple[str, bytes], torch.nn.Module] = {}  # this worker process's models


def _model_for(config: FedAvgClientConfig) -> torch.nn.Module:
    """The model for `config`, built once per worker process and selector.

    `train_client` overwrites every `state_dict` entry from the payload, so a model reused
    across clients trains exactly as a fresh one; building it per client cost ~4 % of a
    quickstart-sized client.
    """
    try:
        key = (str(config.model_name), pickle.dumps(config.model_selector))
    except Exception:  # a selector that does not pickle here: build every time
        return config.model_selector.select_model(config.model_name)
    model = _MODELS.get(key)
    if model is None:
        if len(_MODELS) >= 4:  # a few selectors at most; do not grow without bound
            _MODELS.clear()
        model = _MODELS[key] = config.model_selector.select_model(config.model_name)
    return model


def _run_config(
    config: FedAvgClientConfig, payload: FedAvgDownlinkPackage, device: str, stop_event: Any
) -> FedAvgUplinkPackage:
    setup_reproducibility(config.seed)
    if config.state_path.exists():
        suite = RNGSuite.from_state_tensors(load_file(config.state_path))
    else:
        suite = create_rng_suite(config.seed, config.cid)
    loader = config.dataset.get_dataloader(
        FedAvgPartitionType.TRAIN, config.cid, config.batch_size, suite.torch_cpu
    )
    model = _model_for(config)
    package = train_client(
        model,
        payload.model_parameters,
        loader,
        device,
        config.epochs,
        config.lr,
        config.cid,
        stop_event,
    )
    save_file(suite.state_tensors(), config.state_path)  # ~10x faster than torch.save
    # the original stores the client's dataset back (e.g. a file-backed one with stateful
    # transforms); a dataset without the optional hook is left alone
    set_dataset = getattr(config.dataset, "set_dataset", None)
    if set_dataset is not None:
        set_dataset(FedAvgPartitionType.TRAIN, config.cid, loader.dataset)
    return package


class FedAvgProcessPoolClientTrainer(
    ProcessPoolClientTrainer[FedAvgUplinkPackage, FedAvgDownlinkPackage]
):
    """FedAvg clients in `num_parallels` worker processes (the original's constructor).

    Runs the original process-pool contract (`blazefl.core.original_pool`): each client's
    `FedAvgClientConfig` goes to the static `worker`, through files in `share_dir`
    (`IPCMode.STORAGE`) or with the uplink's vector written into a shared-memory buffer
    (`IPCMode.SHARED_MEMORY`). Client RNG states live in `state_dir`.

    Args:
        model_selector, model_name, dataset, device, num_clients, epochs, batch_size, lr,
            seed: as for `FedAvgBaseClientTrainer` (picklable: they travel to the workers).
        share_dir: folder for storage-mode files (created).
        state_dir: folder for the clients' RNG states (created).
        num_parallels: worker processes.
        ipc_mode: `IPCMode` (or its name, any case).

    Example:
        >>> trainer = FedAvgProcessPoolClientTrainer(selector, "cnn", Path("share"),
        ...     Path("state"), data, "cpu", 100, 5, 50, 0.1, 42, 4, IPCMode.SHARED_MEMORY)
        >>> trainer.local_process(server.downlink_package(), server.sample_clients())
    """

    def __init__(
        self,
        model_selector: ModelSelector[Any],
        model_name: str,
        share_dir: Path,
        state_dir: Path,
        dataset: FedAvgPartitionedDataset,
        device: str,
        num_clients: int,
        epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
        num_parallels: int,
        ipc_mode: IPCMode | str,
    ) -> None:
        self.num_parallels = num_parallels
        self.share_dir = Path(share_dir)
        self.share_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        if device == "cuda":
            self.device_count = torch.cuda.device_count()
        self.cache: list[FedAvgUplinkPackage] = []
        self.model_selector = model_selector
        self.model_name = model_name
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.dataset = dataset
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.num_clients = num_clients
        self.seed = seed
        self.ipc_mode = IPCMode(ipc_mode)  # type: ignore[assignment]
        # the pool hands workers an event of its own for a threading.Event (no Manager process)
        self.stop_event = threading.Event()
        self.model_parameters_buffer = serialize_model(model_selector.select_model(model_name))

    def prepare_uplink_package_buffer(self) -> FedAvgUplinkPackage:
        """An uplink whose vector has the model's size (moved to shared memory per client)."""
        return FedAvgUplinkPackage(-1, self.model_parameters_buffer.clone(), 0)

    def get_client_config(self, cid: int) -> FedAvgClientConfig:
        """Client `cid`'s config (its RNG state file is `state_dir/<cid>.pt`)."""
        return FedAvgClientConfig(
            self.model_selector,
            self.model_name,
            self.dataset,
            self.epochs,
            self.batch_size,
            self.lr,
            cid,
            self.seed,
            self.state_dir / f"{cid}.pt",
        )

    @staticmethod
    def worker(
        config: FedAvgClientConfig | Path,
        payload: FedAvgDownlinkPackage | Path,
        device: str,
        stop_event: Any,
        *,
        shm_buffer: FedAvgUplinkPackage | None = None,
    ) -> FedAvgUplinkPackage | Path:
        """Train one client in a worker process (see `OriginalProcessContract.worker`)."""
        if isinstance(config, Path) and isinstance(payload, Path):
            # the config holds the user's model selector and dataset: a full pickle, read only
            # from the round's private folder that this user's own process just wrote
            loaded = torch.load(private_round_file(config), weights_only=False)
            downlink = load_package(payload, {FedAvgDownlinkPackage})
            package = _run_config(loaded, downlink, device, stop_event)
            torch.save(package, config)  # the uplink replaces the config file
            return config
        if isinstance(config, FedAvgClientConfig) and isinstance(payload, FedAvgDownlinkPackage):
            if shm_buffer is None:
                raise ValueError("IPCMode.SHARED_MEMORY workers need shm_buffer=")
            package = _run_config(config, payload, device, stop_event)
            shm_buffer.model_parameters.copy_(package.model_parameters)
            package.model_parameters = SHMHandle()  # type: ignore[assignment]
            return package
        raise TypeError(
            f"worker takes (FedAvgClientConfig, FedAvgDownlinkPackage) or two Paths, got "
            f"({type(config).__name__}, {type(payload).__name__})"
        )

    def uplink_package(self) -> list[FedAvgUplinkPackage]:
        """Return and clear the cached uplinks (in `cid_list` order)."""
        packages, self.cache = self.cache, []
        return packages
