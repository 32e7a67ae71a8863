"""Per-step micro-benchmark behind the README's model-level claims (one thread, tuned malloc).

    python -m benchmarks.model_step              # 5 interleaved repeats
    python -m benchmarks.model_step --repeats 9 --steps 200

Prints the median milliseconds of (a) forward + backward of a 2x2 max-pool on the CNN's two
activations, PyTorch's kernel vs `blazefl.models.pooling.max_pool2x2`, and (b) a whole SGD step
(forward, loss, backward, `torch.optim.SGD` step) at batch 50 and 20 for the reference's
textbook LeNet (NCHW), blazefl's CNN (same bits) and the textbook LeNet in channels-last.
Variants alternate within every repeat, so load drifts hit all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.reference import TextbookCNN, tune_malloc
from blazefl.models.cnn import CNN
from blazefl.models.pooling import max_pool2x2


def _per_call_ms(fn: Callable[[], object], calls: int) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def _pool(pool: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...]) -> Callable:
    x = torch.randn(shape).requires_grad_()
    grad = torch.ones(shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    return lambda: pool(x).backward(grad)


def _step(model: torch.nn.Module, batch: int, channels_last: bool) -> Callable:
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _conv_share(steps: int) -> None:
    """torch.profiler over blazefl's CNN step (batch 50): convolution ops' share of CPU time."""
    from torch.profiler import profile

    torch.manual_seed(0)
    step = _step(CNN(), 50, False)
    for _ in range(5):
        step()
    with profile() as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    print(f"convolution share of a blazefl CNN step (batch 50): {conv / total:.0%}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.model_step", description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument(
        "--profile", action="store_true", help="also: share of a CNN step spent in convolutions"
    )
    args = p.parse_args(argv)
    tune_malloc()
    torch.set_num_threads(1)
    if args.profile:
        _conv_share(args.steps)
    cases: dict[str, Callable] = {}
    for shape in ((50, 6, 28, 28), (50, 16, 10, 10)):
        cases[f"max-pool {shape} native"] = _pool(lambda t: F.max_pool2d(t, 2, 2), shape)
        cases[f"max-pool {shape} max_pool2x2"] = _pool(max_pool2x2, shape)
    for batch in (50, 20):
        torch.manual_seed(0)
        cases[f"step b{batch} textbook NCHW"] = _step(TextbookCNN(), batch, False)
        torch.manual_seed(0)
        cases[f"step b{batch} blazefl CNN"] = _step(CNN(), batch, False)
        torch.manual_seed(0)
        cases[f"step b{batch} textbook channels-last"] = _step(TextbookCNN(), batch, True)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            times[name].append(_per_call_ms(fn, args.steps))
    for name, ms in times.items():
        print(f"{name:<48} {statistics.median(ms):7.3f} ms  [{min(ms):.3f}-{max(ms):.3f}]")


if __name__ == "__main__":
    main()
