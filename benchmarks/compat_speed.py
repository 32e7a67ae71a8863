"""The original BlazeFL's code path against the package's own trainers, on the same work.

The experiment has the original quickstart's shape: FedAvg, the quickstart's small CNN,
CIFAR-shaped data (synthetic here), 100 clients with full participation, batch 50, lr 0.1.
Both paths train every client with the same function (`blazefl.contrib.train_client`) on the
same data loaders, so what differs is only the framework around the client:

- ``compat``: `blazefl.contrib`'s `FedAvgThreadPoolClientTrainer` /
  `FedAvgProcessPoolClientTrainer`, the original's contracts (a model built per client, a
  per-client config pickled to the worker, RNG states in files, shared-memory uplink buffers);
- ``own``: the package's `ThreadPoolClientTrainer` / `ProcessPoolClientTrainer` driven by a
  workload (one model per worker, RNG states carried by the trainer, shared arenas).

Both are driven by the original's loop (`sample_clients`, `downlink_package`,
`local_process`, `uplink_package`, `load`) with `FedAvgBaseServerHandler`. Runs alternate
(own, compat, own, compat, ...) so that machine noise hits both alike, and the result is the
ratio of the best runs (compat / own; 1.10 = compat 10 % slower): on a shared machine noise
only ever adds time, so the fastest of N runs is the least disturbed one; the ratio of the
medians is printed too, and the ratio of the CPU seconds used by the process and its workers
(medians), which other jobs on the machine disturb far less. Pool start-up is outside the
timed rounds (a warm-up round runs first).

    python -m benchmarks.compat_speed                 # threads and processes, 3 repeats
    python -m benchmarks.compat_speed --mode processes --repeats 5 --samples 300
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from blazefl.contrib import (
    FedAvgBaseServerHandler,
    FedAvgProcessPoolClientTrainer,
    FedAvgThreadPoolClientTrainer,
    FedAvgUplinkPackage,
)
from blazefl.contrib.fedavg import train_client
from blazefl.core import (
    ClientTask,
    IPCMode,
    ModelSelector,
    ProcessPoolClientTrainer,
    ThreadPoolClientTrainer,
)
from blazefl.data import PartitionedDataset, partition_indices, synthetic_dataset


class QuickstartCNN(nn.Module):
    """The original quickstart's CNN (the PyTorch CIFAR-10 tutorial's)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class Selector(ModelSelector[str]):
    """As in the quickstart: every model starts from the same seeded weights."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def select_model(self, model_name: str) -> nn.Module:
        with torch.random.fork_rng([]):
            torch.manual_seed(self.seed)
            return QuickstartCNN()


@dataclass
class Settings:
    clients: int
    samples: int  # per client
    epochs: int
    batch_size: int
    lr: float
    workers: int
    seed: int


class OwnWorker:
    def __init__(self, workload: OwnWorkload) -> None:
        self.workload = workload
        self.model = workload.selector.select_model("cnn")
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=workload.settings.lr)

    def train(self, task: ClientTask, payload: Any, rng: Any) -> tuple[FedAvgUplinkPackage, None]:
        s = self.workload.settings
        loader = self.workload.data.get_dataloader("train", task.cid, s.batch_size, rng.torch_cpu)
        uplink = train_client(
            self.model,
            payload.model_parameters,
            loader,
            "cpu",
            s.epochs,
            s.lr,
            task.cid,
            optimizer=self.optimizer,
        )
        return uplink, None


@dataclass
class OwnWorkload:
    data: PartitionedDataset
    selector: Selector
    settings: Settings

    def make_worker(self) -> OwnWorker:
        return OwnWorker(self)

    def share_memory(self) -> None:
        self.data.train.images.share_memory_()
        self.data.train.labels.share_memory_()


def make_data(s: Settings) -> PartitionedDataset:
    train = synthetic_dataset(s.clients * s.samples, seed=s.seed)
    test = synthetic_dataset(500, seed=s.seed, train=False)
    parts = partition_indices(train.labels, s.clients, "iid", seed=s.seed)
    return PartitionedDataset(train, parts, test)


def make_trainer(path: str, mode: str, data: PartitionedDataset, s: Settings, tmp: Path) -> Any:
    selector = Selector(s.seed)
    if path == "own":
        workload = OwnWorkload(data, selector, s)
        if mode == "threads":
            return ThreadPoolClientTrainer(workload, seed=s.seed, num_workers=s.workers)
        return ProcessPoolClientTrainer(workload, seed=s.seed, num_workers=s.workers)
    common = (selector, "cnn")
    rest = (s.clients, s.epochs, s.batch_size, s.lr, s.seed, s.workers)
    if mode == "threads":
        return FedAvgThreadPoolClientTrainer(*common, data, "cpu", *rest)
    return FedAvgProcessPoolClientTrainer(
        *common, tmp / "share", tmp / "state", data, "cpu", *rest, IPCMode.SHARED_MEMORY
    )


def cpu_seconds() -> float:
    """CPU time of this process and its live children (the worker processes) so far."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


def timed_rounds(path: str, mode: str, s: Settings, rounds: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) for `rounds` rounds after one warm-up round (pool start-up
    excluded). CPU time counts this process and its workers: other jobs on a shared machine
    stretch the wall time far more than the CPU time."""
    data = make_data(s)
    with tempfile.TemporaryDirectory(prefix="blazefl-compat-speed-") as tmp:
        server = FedAvgBaseServerHandler(
            Selector(s.seed), "cnn", data, rounds + 1, s.clients, 1.0, "cpu", 100, s.seed
        )
        trainer = make_trainer(path, mode, data, s, Path(tmp))
        try:
            start = cpu_start = 0.0
            for r in range(rounds + 1):
                if r == 1:
                    start, cpu_start = time.perf_counter(), cpu_seconds()
                trainer.local_process(server.downlink_package(), server.sample_clients())
                for package in trainer.uplink_package():
                    server.load(package)
            return time.perf_counter() - start, cpu_seconds() - cpu_start
        finally:
            trainer.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["threads", "processes", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--samples", type=int, default=200, help="training samples per client")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    s = Settings(args.clients, args.samples, args.epochs, 50, 0.1, args.workers, 42)
    modes = ["threads", "processes"] if args.mode == "both" else [args.mode]
    report: dict[str, Any] = {"settings": vars(s), "rounds": args.rounds}
    for mode in modes:
        times: dict[str, list[float]] = {"own": [], "compat": []}
        cpu: dict[str, list[float]] = {"own": [], "compat": []}
        for _ in range(args.repeats):
            for path in ("own", "compat"):  # interleaved
                wall, used = timed_rounds(path, mode, s, args.rounds)
                times[path].append(wall)
                cpu[path].append(used)
        own, compat = min(times["own"]), min(times["compat"])
        median = statistics.median(times["compat"]) / statistics.median(times["own"])
        cpu_ratio = statistics.median(cpu["compat"]) / statistics.median(cpu["own"])
        report[mode] = {
            "own_s": times["own"],
            "compat_s": times["compat"],
            "own_cpu_s": cpu["own"],
            "compat_cpu_s": cpu["compat"],
            "ratio": compat / own,
            "median_ratio": median,
            "cpu_ratio": cpu_ratio,
        }
        print(
            f"{mode}: own {own:.2f} s, compat {compat:.2f} s (best of {args.repeats}, "
            f"{args.rounds} rounds of {s.clients} clients): compat/own = {compat / own:.3f} "
            f"(medians: {median:.3f}; CPU seconds, medians: {cpu_ratio:.3f})",
            flush=True,
        )
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
