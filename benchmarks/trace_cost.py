"""What the step trace costs: steady-round time with and without it, interleaved in one
process, on workload W and on ResNet-18; and the bytes it adds to a round of W.

    python -m benchmarks.trace_cost                  # W (20 clients of its 100) and ResNet-18
    python -m benchmarks.trace_cost --workload w --repeats 7

The trace is always on in blazefl; "off" here replaces the client task's trace collector with
one that records nothing (a measurement device, not a setting), so both variants run the same
trainer, server and data. Rounds alternate on/off (the order flips every repeat) after one
warm-up round of each; the cost is the median of the ratios of back-to-back rounds (with its
quartiles: the machine's drift cancels within a pair). Bytes: one round of W through `blazefl
run`, `trace.safetensors` against everything else the round writes.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.workloads import W_CONFIG, workloads

#: Workload configs: W with 20 of its 100 clients (the per-client work is W's), ResNet-18's.
CONFIGS: dict[str, dict[str, Any]] = {
    "w": {**W_CONFIG, "data.size": 4000, "data.clients": 20, "fl.clients_per_round": 20},
    "resnet18": workloads()["resnet18"].config,
}


class _NoTrace:
    def tensors(self) -> None:
        return None


@contextlib.contextmanager
def _untraced(generator: Any) -> Iterator[_NoTrace]:
    yield _NoTrace()


def round_seconds(name: str, repeats: int) -> dict[str, Any]:
    """Median steady-round seconds with and without the trace, and their ratio."""
    import torch

    import blazefl.core.client_task as client_task
    from blazefl.core.loop import make_trainer, run_round
    from blazefl.experiment import ExperimentSpec, build_experiment
    from blazefl.reproducibility import pin_client_threads

    spec = ExperimentSpec.from_flat({**CONFIGS[name], "fl.rounds": 2 * repeats + 2})
    torch.set_num_threads(1)
    pin_client_threads(1)
    exp = build_experiment(spec)
    traced = client_task.tracing
    times: dict[str, list[float]] = {"on": [], "off": []}
    servers = {v: exp.server() for v in times}
    with contextlib.ExitStack() as stack:
        trainers = {
            v: stack.enter_context(make_trainer("sequential", exp.workload(), seed=spec.seed))
            for v in times
        }
        order = ["on", "off"]
        for r in range(repeats + 1):
            for v in order if r % 2 == 0 else order[::-1]:
                client_task.tracing = traced if v == "on" else _untraced  # type: ignore[assignment]
                start = time.perf_counter()
                run_round(servers[v], trainers[v], r + 1, evaluate=False)
                if r > 0:  # round 1 of each is the warm-up
                    times[v].append(time.perf_counter() - start)
        client_task.tracing = traced
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    # rounds of a repeat ran back to back: their ratio cancels the machine's slow drifts
    pairs = sorted(a / b for a, b in zip(times["on"], times["off"], strict=True))
    q = statistics.quantiles(pairs, n=4)
    return {
        "workload": name,
        "on_s": on,
        "off_s": off,
        "ratio": statistics.median(pairs),
        "iqr": (q[0], q[2]),
        "rounds": repeats,
    }


def round_bytes() -> dict[str, Any]:
    """Bytes of round 1 of W (20 clients) by `blazefl run`: the trace against the rest."""
    sets = [a for k, v in {**CONFIGS["w"], "fl.rounds": 1}.items() for a in ("--set", f"{k}={v}")]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "blazefl.pipeline.cli", "run", "--out", str(out), "-q"]
        subprocess.run([*cmd, *sets], check=True)
        files = [p for p in (out / "round-0001").rglob("*") if p.is_file()]
        total = sum(p.stat().st_size for p in files)
        trace = (out / "round-0001" / "trace.safetensors").stat().st_size
    return {"round_bytes": total, "trace_bytes": trace, "share": trace / (total - trace)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=[*CONFIGS, "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    names = list(CONFIGS) if args.workload == "all" else [args.workload]
    for name in names:
        r = round_seconds(name, args.repeats)
        lo, hi = (100 * (x - 1) for x in r["iqr"])
        print(
            f"{name}: steady round {r['on_s']:.3f} s with the trace, {r['off_s']:.3f} s without "
            f"(medians of {r['rounds']}); per pair of rounds {100 * (r['ratio'] - 1):+.2f} % "
            f"(quartiles {lo:+.2f} % to {hi:+.2f} %)"
        )
    if "w" in names:
        b = round_bytes()
        print(
            f"w: round 1 writes {b['round_bytes']:,} bytes, of which trace.safetensors "
            f"{b['trace_bytes']:,}: {100 * b['share']:.2f} % more than without it"
        )


if __name__ == "__main__":
    main()
