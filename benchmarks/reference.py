"""The compute floor: FedAvg in plain PyTorch, no framework.

Same model, same data (the built-in synthetic set, same seed), same clients (IID partition),
same rounds / local epochs / batch size / learning rate as the blazefl run it is compared with,
and the same server evaluation on the test set every round, so its per-round time is comparable
with blazefl's ``round_seconds``. What it leaves out is everything the framework adds: RNG
snapshots, per-client uplink packages and hashes, artifacts, manifests.

- ``--workers 1``: one process loops over the clients.
- ``--workers N``: N persistent worker processes (spawn, started once before round 1), each
  owning a contiguous block of clients. The training data lives in shared memory (passed once
  at start); every round the server publishes the global model in one shared float32 vector,
  each worker trains its clients and folds their models (weighted by sample count) into its own
  shared float64 accumulator, and only the round number and a (loss, steps, samples) triple
  cross the pipes. The server sums the N accumulators, divides, and evaluates.

Hot loop (per worker, reused across clients and rounds): one model whose float state is one
flat vector (loading the global model is one ``copy_``), one SGD optimizer, one uint8 and one
float32 batch buffer; each batch is ``index_select`` into the uint8 buffer and normalised in
place; per-client shuffling with an explicit ``torch.Generator``. ``torch.set_num_threads``
(default 1) in every process. glibc's malloc trim/mmap thresholds are raised (``mallopt``) as
the issue's hint describes, unless ``--no-tune-malloc``.

The model is plain eager PyTorch as a user writes it (NCHW, ``torch.optim.SGD`` over
``model.parameters()``): the CNN is the textbook LeNet defined in this file (``TextbookCNN``; same
module order as ``blazefl.models.cnn.CNN``, so the same seed gives the same initial weights),
never the framework's class, so a faster model implementation inside blazefl cannot speed up the
floor too. Only the data generator, the partitioner and ResNet-18 are taken from the blazefl
source tree, loaded by file path, so the framework package (and its imports) is never imported.

Output: one JSON object (``--json PATH``, else stdout) with whole-process wall time, start-up
time (process start to the start of round 1), per-round seconds, the steady-state mean
(rounds 2+), final test metrics and the peak RSS of the main process and of every worker.

Usage:
    python -m benchmarks.reference --workers 2 --clients 100 --size 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import importlib.util
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

_T_IMPORT = time.perf_counter()


# -- process clock -----------------------------------------------------------------------------
def process_age() -> float:
    """Seconds since this process was created (from /proc, 10 ms resolution); falls back to the
    time since this module was imported."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 overall; fields[0] is field 3 (state)
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _T_IMPORT


def tune_malloc() -> bool:
    """Raise glibc's trim and mmap thresholds (same values as the issue's hint)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, 32 << 20)) and bool(libc.mallopt(-1, 1 << 30))
    except (OSError, AttributeError):
        return False


def _load_source(relpath: str, name: str) -> Any:
    """Import one blazefl source file by path, without importing the blazefl package."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


class TextbookCNN(nn.Module):
    """LeNet for 3x32x32 images as the PyTorch CIFAR-10 tutorial writes it (62,006 params).

    Modules are created in the same order as ``blazefl.models.cnn.CNN``'s, so after the same
    ``torch.manual_seed`` both start from the same weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def build_model(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if name == "cnn":
        return TextbookCNN()
    if name == "resnet18":
        return _load_source("blazefl/models/resnet.py", "_benchref_resnet").resnet18(10)
    raise ValueError(f"unknown model {name!r}")


def flatten_(model: nn.Module) -> torch.Tensor:
    """Point every float parameter and buffer of `model` into one flat float32 vector, so that
    copying the global model in (and folding a client's model into the sum) is one op."""
    tensors: list[torch.Tensor] = list(model.parameters())
    tensors += [b for b in model.buffers() if b.is_floating_point()]
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    offset = 0
    for t in tensors:
        n = t.numel()
        t.data = flat[offset : offset + n].view_as(t)
        offset += n
    return flat


# -- the hot loop ---------------------------------------------------------------------------
class LocalTrainer:
    """One process's model, optimizer and batch buffers, reused for every client and round."""

    def __init__(self, cfg: dict[str, Any], images: Any, labels: Any, scale: Any, shift: Any):
        self.cfg = cfg
        self.images, self.labels = images, labels
        self.scale, self.shift = scale, shift
        self.model = build_model(cfg["model"], cfg["seed"])
        self.flat = flatten_(self.model)
        self.opt = torch.optim.SGD(
            self.model.parameters(),
            lr=cfg["lr"],
            momentum=cfg["momentum"],
            weight_decay=cfg["weight_decay"],
        )
        shape = (cfg["batch"], *images.shape[1:])
        self.u8 = torch.empty(shape, dtype=torch.uint8)
        self.x = torch.empty(shape, dtype=torch.float32)

    def train_client(self, global_flat: Any, idx: Any, gen: Any) -> tuple[float, int]:
        self.flat.copy_(global_flat)
        self.opt.state.clear()
        self.model.train()
        n, bs = int(idx.numel()), self.cfg["batch"]
        loss_sum, steps = 0.0, 0
        for _ in range(self.cfg["epochs"]):
            order = idx[torch.randperm(n, generator=gen)]
            for start in range(0, n, bs):
                batch = order[start : start + bs]
                b = int(batch.numel())
                u8 = torch.index_select(self.images, 0, batch, out=self.u8[:b])
                x = self.x[:b]
                x.copy_(u8)
                x.mul_(self.scale)
                x.add_(self.shift)
                loss = F.cross_entropy(self.model(x), self.labels[batch])
                self.opt.zero_grad(set_to_none=False)
                loss.backward()
                self.opt.step()
                loss_sum += loss.item()
                steps += 1
        return loss_sum, steps


def client_generator(seed: int, rnd: int, cid: int) -> Any:
    return torch.Generator().manual_seed(seed * 1_000_003 + rnd * 100_003 + cid)


def run_clients(
    trainer: LocalTrainer,
    global_flat: Any,
    acc: Any,
    clients: list[tuple[int, Any]],
    cfg: dict,
    rnd: int,
) -> tuple[float, int, int]:
    """Train `clients` from `global_flat`; fold n_k * model_k into `acc` (float64)."""
    acc.zero_()
    loss_sum, steps, samples = 0.0, 0, 0
    for cid, idx in clients:
        ls, st = trainer.train_client(global_flat, idx, client_generator(cfg["seed"], rnd, cid))
        n = int(idx.numel())
        acc.add_(trainer.flat, alpha=n)
        loss_sum, steps, samples = loss_sum + ls, steps + st, samples + n
    return loss_sum, steps, samples


def evaluate(model: Any, images: Any, labels: Any, scale: Any, shift: Any) -> dict[str, float]:
    """Test loss/accuracy in batches of 1000 (as blazefl's server evaluation does)."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, int(labels.numel())
    with torch.no_grad():
        for start in range(0, n, 1000):
            x = images[start : start + 1000].to(torch.float32)
            x.mul_(scale)
            x.add_(shift)
            y = labels[start : start + 1000]
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum").double())
            correct += int((logits.argmax(1) == y).sum())
    model.train()
    return {"test_loss": loss_sum / max(n, 1), "test_accuracy": correct / max(n, 1)}


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- worker processes -------------------------------------------------------------------------
def _worker_main(
    w: int,
    conn: Any,
    cfg: dict,
    images: Any,
    labels: Any,
    scale: Any,
    shift: Any,
    down: Any,
    up: Any,
    my_clients: list[tuple[int, Any]],
) -> None:
    torch.set_num_threads(cfg["threads"])
    if cfg["tune_malloc"]:
        tune_malloc()
    clients = [(cid, torch.from_numpy(idx)) for cid, idx in my_clients]
    trainer = LocalTrainer(cfg, images, labels, scale, shift)
    conn.send("ready")
    while True:
        rnd = conn.recv()
        if rnd is None:
            break
        conn.send(run_clients(trainer, down, up[w], clients, cfg, rnd))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    conn.send(
        {
            "maxrss_mb": usage.ru_maxrss / 1024.0,
            "user_s": usage.ru_utime,
            "sys_s": usage.ru_stime,
            "minflt": usage.ru_minflt,
        }
    )
    conn.close()


# -- main ------------------------------------------------------------------------------------
def run(cfg: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(cfg["threads"])
    malloc_tuned = tune_malloc() if cfg["tune_malloc"] else False
    datasets = _load_source("blazefl/data/datasets.py", "_benchref_datasets")
    partitioners = _load_source("blazefl/data/partitioners.py", "_benchref_partitioners")

    t_data = time.perf_counter()
    train = datasets.synthetic_dataset(cfg["size"], cfg["seed"])
    test = datasets.synthetic_dataset(cfg["test_size"], cfg["seed"], train=False)
    parts = partitioners.partition_indices(train.labels.numpy(), cfg["clients"], "iid", cfg["seed"])
    images, labels = train.images, train.labels
    std = torch.tensor(train.std, dtype=torch.float64)  # x * scale + shift, as blazefl does
    mean = torch.tensor(train.mean, dtype=torch.float64)
    scale = (1.0 / (255.0 * std)).to(torch.float32).view(-1, 1, 1)
    shift = (-mean / std).to(torch.float32).view(-1, 1, 1)
    data_seconds = time.perf_counter() - t_data

    server_model = build_model(cfg["model"], cfg["seed"])
    gflat = flatten_(server_model)
    total_samples = sum(len(p) for p in parts)
    workers = cfg["workers"]
    rounds: list[dict[str, float]] = []
    worker_stats: list[dict[str, float]] = []
    t_pool = time.perf_counter()
    if workers == 1:
        trainer = LocalTrainer(cfg, images, labels, scale, shift)
        clients = [(cid, torch.from_numpy(p)) for cid, p in enumerate(parts)]
        acc = torch.zeros(gflat.numel(), dtype=torch.float64)
        conns: list[Any] = []
        procs: list[Any] = []
    else:
        import torch.multiprocessing as tmp

        ctx = tmp.get_context("spawn")
        images.share_memory_()
        labels.share_memory_()
        down = torch.zeros_like(gflat).share_memory_()
        up = torch.zeros(workers, gflat.numel(), dtype=torch.float64).share_memory_()
        bounds = np.linspace(0, len(parts), workers + 1).round().astype(int)
        conns, procs = [], []
        for w in range(workers):
            mine = [(cid, parts[cid]) for cid in range(bounds[w], bounds[w + 1])]
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main,
                args=(w, child, cfg, images, labels, scale, shift, down, up, mine),
                daemon=True,
            )
            proc.start()
            child.close()
            conns.append(parent)
            procs.append(proc)
        for c in conns:
            assert c.recv() == "ready"
    pool_seconds = time.perf_counter() - t_pool

    startup = process_age()
    metrics: dict[str, float] = {}
    for rnd in range(1, cfg["rounds"] + 1):
        t0 = time.perf_counter()
        if workers == 1:
            loss_sum, steps, samples = run_clients(trainer, gflat, acc, clients, cfg, rnd)
            gflat.copy_(acc.div_(samples))
        else:
            down.copy_(gflat)
            for c in conns:
                c.send(rnd)
            outs = [c.recv() for c in conns]
            loss_sum = sum(o[0] for o in outs)
            steps = sum(o[1] for o in outs)
            samples = sum(o[2] for o in outs)
            gflat.copy_(up.sum(0).div_(samples))
        t_train = time.perf_counter() - t0
        metrics = evaluate(server_model, test.images, test.labels, scale, shift)
        metrics["train_loss"] = loss_sum / max(steps, 1)
        rounds.append({"round": rnd, "seconds": time.perf_counter() - t0, "train_seconds": t_train})
        assert samples == total_samples
        if not cfg["quiet"]:
            round_line(rnd, cfg["rounds"], metrics["test_accuracy"], rounds[-1]["seconds"])
    for c in conns:
        c.send(None)
        worker_stats.append(c.recv())
    for p in procs:
        p.join()
    steady = [r["seconds"] for r in rounds[1:]]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "kind": "reference",
        "config": cfg,
        "malloc_tuned": malloc_tuned,
        "torch": torch.__version__,
        "startup_seconds": startup,
        "data_seconds": data_seconds,
        "pool_seconds": pool_seconds,
        "rounds": rounds,
        "steady_round_seconds": sum(steady) / len(steady) if steady else None,
        "final_metrics": metrics,
        "main": {
            "maxrss_mb": _maxrss_mb(),
            "user_s": usage.ru_utime,
            "sys_s": usage.ru_stime,
            "minflt": usage.ru_minflt,
        },
        "workers": worker_stats,
        "peak_rss_sum_mb": _maxrss_mb() + sum(s["maxrss_mb"] for s in worker_stats),
        "wall_seconds": process_age(),
    }


def add_workload_args(p: argparse.ArgumentParser) -> None:
    """The experiment flags every reference loop takes (CPU and GPU)."""
    p.add_argument("--model", default="cnn", choices=["cnn", "resnet18"])
    p.add_argument("--size", type=int, default=20000, help="training samples")
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_args(p, 1, "1: one process; N: N worker processes")
    return p.parse_args(argv)


def add_run_args(p: argparse.ArgumentParser, workers: int, workers_help: str) -> None:
    """The workload's arguments and the run's (shared with `benchmarks.flower_sim`)."""
    add_workload_args(p)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=workers, help=workers_help)
    p.add_argument("--no-tune-malloc", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no per-round lines on stderr")
    p.add_argument("--json", default=None, help="write the result here (default: stdout)")


def run_config(a: argparse.Namespace) -> dict[str, Any]:
    """The run's settings from the parsed arguments (shared with `benchmarks.flower_sim`)."""
    if a.workers < 1 or a.clients < a.workers or a.threads < 1:
        raise SystemExit("need 1 <= workers <= clients and threads >= 1")
    return {
        "model": a.model,
        "size": a.size,
        "test_size": a.test_size,
        "clients": a.clients,
        "rounds": a.rounds,
        "epochs": a.epochs,
        "batch": a.batch,
        "lr": a.lr,
        "momentum": a.momentum,
        "weight_decay": a.weight_decay,
        "seed": a.seed,
        "workers": a.workers,
        "threads": a.threads,
        "tune_malloc": not a.no_tune_malloc,
        "quiet": a.quiet,
    }


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    emit(run(run_config(a)), a.json)


def round_line(rnd: int, rounds: int, accuracy: float, seconds: float) -> None:
    """A round's progress line on stderr (shared with `benchmarks.flower_sim`)."""
    print(f"round {rnd:>3}/{rounds}  test_acc {accuracy:.4f}  {seconds:.2f}s", file=sys.stderr)


def emit(result: dict[str, Any], path: str | None) -> None:
    """The result as JSON, into `path` or on stdout (what the harness reads)."""
    text = json.dumps(result, indent=1)
    if path:
        Path(path).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
