"""The compute floor on a GPU: FedAvg in plain PyTorch, one process, no framework.

The GPU counterpart of ``benchmarks/reference.py --workers 1``: same model definitions, same
synthetic data and IID partition (blazefl source files loaded by path, the package is never
imported), same rounds / local epochs / batch size / learning rate, the same server evaluation
every round. What a careful hand-written GPU loop does: the whole training set on the GPU once,
the model's float state in one flat vector (loading the global model is one ``copy_``), one
``torch.optim.SGD``, reused uint8/float32 batch buffers on the GPU, ``index_select`` and in-place
normalisation there, per-client shuffling with a CPU ``torch.Generator`` (one index vector to
the GPU per epoch), losses summed on the GPU (no sync per step). It runs under the same
determinism settings blazefl uses on a GPU (deterministic algorithms, cuDNN deterministic,
no benchmarking, ``CUBLAS_WORKSPACE_CONFIG=:4096:8``), so the comparison is at equal
guarantees.

Output: one JSON object on stdout: wall (process start to exit of ``run``), per-round seconds,
steady (mean of rounds 2+), final test metrics, peak GPU memory (``max_memory_allocated``).

Usage:
    python -m benchmarks.gpu_reference --model cnn --clients 100 --size 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from benchmarks.reference import (
    _load_source,
    add_workload_args,
    build_model,
    flatten_,
    process_age,
)


def _determinism() -> None:
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate; return the timings and metrics (see the module docstring)."""
    _determinism()
    import torch
    import torch.nn.functional as F

    dev = torch.device(cfg["device"])
    torch.set_num_threads(cfg["threads"])
    datasets = _load_source("blazefl/data/datasets.py", "_benchref_datasets")
    partitioners = _load_source("blazefl/data/partitioners.py", "_benchref_partitioners")
    train = datasets.synthetic_dataset(cfg["size"], cfg["seed"])
    test = datasets.synthetic_dataset(cfg["test_size"], cfg["seed"], train=False)
    parts = partitioners.partition_indices(train.labels.numpy(), cfg["clients"], "iid", cfg["seed"])
    std = torch.tensor(train.std, dtype=torch.float64)
    mean = torch.tensor(train.mean, dtype=torch.float64)
    scale = (1.0 / (255.0 * std)).to(torch.float32).view(-1, 1, 1).to(dev)
    shift = (-mean / std).to(torch.float32).view(-1, 1, 1).to(dev)
    images, labels = train.images.to(dev), train.labels.to(dev)
    test_x, test_y = test.images.to(dev), test.labels.to(dev)

    server_model = build_model(cfg["model"], cfg["seed"])
    gflat = flatten_(server_model)  # the global model stays on the CPU, as blazefl's does
    model = build_model(cfg["model"], cfg["seed"]).to(dev)
    flat = flatten_(model)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    shape = (cfg["batch"], *images.shape[1:])
    u8 = torch.empty(shape, dtype=torch.uint8, device=dev)
    xbuf = torch.empty(shape, dtype=torch.float32, device=dev)
    clients = [torch.from_numpy(p) for p in parts]
    eval_model = build_model(cfg["model"], cfg["seed"]).to(dev)
    eval_flat = flatten_(eval_model)
    rounds: list[float] = []
    metrics: dict[str, float] = {}
    for rnd in range(1, cfg["rounds"] + 1):
        start = time.perf_counter()
        acc = torch.zeros(gflat.numel(), dtype=torch.float64)
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        for cid, idx in enumerate(clients):
            gen = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + rnd * 100_003 + cid)
            flat.copy_(gflat)
            opt.state.clear()
            model.train()
            n = int(idx.numel())
            for _ in range(cfg["epochs"]):
                order = idx[torch.randperm(n, generator=gen)].to(dev)
                for s in range(0, n, cfg["batch"]):
                    batch = order[s : s + cfg["batch"]]
                    b = int(batch.numel())
                    x = xbuf[:b]
                    x.copy_(torch.index_select(images, 0, batch, out=u8[:b]))
                    x.mul_(scale)
                    x.add_(shift)
                    loss = F.cross_entropy(model(x), labels[batch])
                    opt.zero_grad(set_to_none=False)
                    loss.backward()
                    opt.step()
                    loss_sum.add_(loss.detach())
            acc.add_(flat.cpu(), alpha=n)
        gflat.copy_(acc.div_(sum(int(c.numel()) for c in clients)))
        eval_flat.copy_(gflat)
        eval_model.eval()
        correct, total = 0, 0.0
        with torch.no_grad():
            for s in range(0, len(test_y), 256):
                x = test_x[s : s + 256].to(torch.float32).mul_(scale).add_(shift)
                logits = eval_model(x)
                total += float(F.cross_entropy(logits, test_y[s : s + 256], reduction="sum"))
                correct += int((logits.argmax(1) == test_y[s : s + 256]).sum())
        metrics = {"test_accuracy": correct / len(test_y), "test_loss": total / len(test_y)}
        float(loss_sum)  # the round ends when the GPU is done
        rounds.append(time.perf_counter() - start)
    steady = rounds[1:] or rounds
    return {
        "wall": process_age(),
        "rounds": rounds,
        "steady": sum(steady) / len(steady),
        "peak_gpu_bytes": int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else 0,
        **metrics,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_args(p)
    p.add_argument("--device", default="cuda:0")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    cfg = {k.replace("-", "_"): v for k, v in vars(a).items()}
    print(json.dumps(run(cfg)))


if __name__ == "__main__":
    main()
