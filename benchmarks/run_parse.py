"""Building the command line of a benchmark variant, and reading what a run left behind."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from benchmarks.measure import Proc
from benchmarks.workloads import Variant

PROGRESS = re.compile(r"^round\s+(\d+)/(\d+)\s.*?\s([0-9.]+)s\s*$")


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def mode_args(v: Variant) -> list[str]:
    """The `blazefl run` options that select the variant's execution mode (ray: no address,
    so blazefl starts a local Ray runtime sized by --workers)."""
    args = ["--mode", v.mode, "--workers", str(v.workers)]
    return args + (["--ipc", v.ipc] if v.mode == "processes" else [])


def floor_flags(cfg: dict[str, Any], v: Variant) -> list[str]:
    """The experiment as flags of benchmarks.reference and benchmarks.flower_sim."""
    flags = [
        ("--model", cfg["model.name"]),
        ("--size", cfg["data.size"]),
        ("--test-size", cfg["data.test_size"]),
        ("--clients", cfg["data.clients"]),
        ("--rounds", cfg["fl.rounds"]),
        ("--epochs", cfg["train.local_epochs"]),
        ("--batch", cfg["train.batch_size"]),
        ("--lr", cfg["train.lr"]),
        ("--momentum", cfg["train.momentum"]),
        ("--weight-decay", cfg["train.weight_decay"]),
        ("--seed", cfg["seed"]),
        ("--workers", v.workers),
        ("--threads", cfg["runtime.threads_per_client"]),
    ]
    return [arg for flag, value in flags for arg in (flag, str(value))]


def parse_blazefl(run_dir: Path, p: Proc, rounds: int) -> dict[str, Any]:
    """Per-round timings, write share, start-up and stage times of one `blazefl run`."""
    timings = []
    for t in range(1, rounds + 1):
        timings.append(json.loads((run_dir / "timings" / f"round-{t:04d}.json").read_text()))
    progress: dict[int, tuple[float, float]] = {}
    for at, line in p.stderr_lines:
        m = PROGRESS.match(line)
        if m:
            progress[int(m.group(1))] = (at, float(m.group(3)))
    # Whole round period incl. serialising, hashing and committing the snapshot: the time
    # between consecutive timings files (written last in every round; ns mtimes) for
    # rounds 2+, the progress line's seconds (10 ms resolution) for round 1.
    mtimes = [
        (run_dir / "timings" / f"round-{t:04d}.json").stat().st_mtime_ns
        for t in range(1, rounds + 1)
    ]
    total: list[float | None] = [progress[1][1] if 1 in progress else None]
    total += [(mtimes[i] - mtimes[i - 1]) / 1e9 for i in range(1, rounds)]
    comp = [x["round_seconds"] for x in timings]
    write = [x["write_seconds"] for x in timings]
    steady_total = [x for x in total[1:] if x is not None]
    rec: dict[str, Any] = {
        "round_seconds": comp,
        "write_seconds": write,
        "round_total_seconds": total,
        "steady_round_s": mean(comp[1:]),
        "steady_total_s": mean(steady_total) if len(steady_total) == len(comp[1:]) else None,
        "startup_s": progress[1][0] - progress[1][1] if 1 in progress else None,
        "round1_s": total[0],
        "final_metrics": json.loads((run_dir / "metrics" / f"round-{rounds:04d}.json").read_text()),
    }
    if any("driver_clients" in x for x in timings):  # ray mode: trained by the driver
        done = sum(x.get("driver_clients", 0) for x in timings)
        rec["driver_clients"] = [x.get("driver_clients") for x in timings]
        rec["driver_share"] = done / max(1, sum(x["clients"] for x in timings))
        # a round the driver helped in is still Ray's start-up, not its steady state
        steady = [c for c, x in zip(comp[1:], timings[1:], strict=True) if not x["driver_clients"]]
        rec["steady_round_s"] = mean(steady)
    steady_c, steady_w = sum(comp[1:]), sum(write[1:])
    rec["write_share_timings"] = steady_w / (steady_c + steady_w) if comp[1:] else None
    if rec["steady_total_s"] is not None and comp[1:]:
        rec["write_share"] = 1.0 - steady_c / sum(steady_total)
    else:
        rec["write_share"] = None
    # stage completion times (launch-relative) from manifest mtimes
    stages = {}
    for name, rel in (
        ("prepare", "dataset/manifest.json"),
        ("partition", "partitions/manifest.json"),
        ("init", "round-0000/manifest.json"),
    ):
        f = run_dir / rel
        if f.exists():
            stages[name] = f.stat().st_mtime - p.launched_at
    rec["stage_done_at_s"] = stages
    return rec
