"""Scale of the per-client data (issue 18, section 3): what a round writes and how long a
round takes as the number of clients grows.

    python -m benchmarks.scale [--clients 100000] [--sampled 10] [--rounds 4] [--repeats 6]

Two measurements, in one process (imports and interpreter start-up excluded: they are the
same for every run size):

- sparse: `--clients` clients (100,000), `--sampled` (10) per round, `cnn_small` on the
  synthetic dataset with an iid partition: start-up (prepare + partition + init, the stores
  and round 0 written) and, per round, the bytes of every file the round adds on disk
  (files whose inode the previous round does not hold: the manifest included, index chunks
  shared as hard links excluded) and the manifest's size. Targets: start-up <= 10 s, <= 0.5 MB
  per round.
- dense: 1,000 clients x 20 samples, every client sampled, against 100 clients x 200 samples
  (same data, same batch of 20: 1,000 local steps per round in both), threads mode with 2
  workers, rounds interleaved A, B, A, B ... in one process; per-round time is compute +
  commit. Target: ratio of medians <= 1.15.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _config(sets: dict[str, Any]) -> Any:
    from blazefl.stages.config import RunConfig, load_config

    return RunConfig.of(load_config(None, sets))


def _start(config: Any, root: Path) -> tuple[Any, Any, float]:
    """prepare + partition + init, as `blazefl run` does them: (run, data, seconds)."""
    from blazefl.stages.artifacts import RunDir
    from blazefl.stages.data_files import data_file_hashes
    from blazefl.stages.init import init
    from blazefl.stages.partition import partition
    from blazefl.stages.preflight import preflight
    from blazefl.stages.prepare import build_datasets, write_dataset_store

    run = RunDir(root)
    start = time.perf_counter()
    data = build_datasets(config)
    preflight(config, *data)
    write_dataset_store(config, run, *data, data_files=data_file_hashes(config.spec.data.root))
    partition(config, run)
    init(config, run, data)
    return run, data, time.perf_counter() - start


def _new_bytes(run: Any, t: int) -> int:
    prev = {p.stat().st_ino for p in run.round_dir(t - 1).rglob("*") if p.is_file()}
    return sum(
        p.stat().st_size
        for p in run.round_dir(t).rglob("*")
        if p.is_file() and p.stat().st_ino not in prev
    )


def sparse(clients: int, sampled: int, rounds: int, workdir: Path) -> dict[str, Any]:
    """Start-up and bytes per round with `clients` clients, `sampled` per round."""
    from blazefl.stages.session import Session

    config = _config(
        {
            "data.size": clients,
            "data.test_size": 200,
            "data.clients": clients,
            "data.partition": "iid",
            "model.name": "cnn_small",
            "fl.clients_per_round": sampled,
            "fl.rounds": rounds,
            "train.local_epochs": 1,
            "train.batch_size": 32,
            "runtime.mode": "sequential",
        }
    )
    run, data, startup = _start(config, workdir / f"sparse-{clients}")
    per_round = []
    with Session(config, run, data=data) as session:
        session.load(0)
        for t in range(1, rounds + 1):
            start = time.perf_counter()
            out = session.compute(t)
            write = session.commit(out)
            per_round.append(
                {
                    "round": t,
                    "seconds": time.perf_counter() - start,
                    "write_seconds": write,
                    "new_bytes": _new_bytes(run, t),
                    "manifest_bytes": (run.round_dir(t) / "manifest.json").stat().st_size,
                    "files": len(out.files) + 1,
                    "new_files": len(out.files) + 1 - len(out.unchanged),
                }
            )
    return {
        "clients": clients,
        "sampled": sampled,
        "startup_seconds": startup,
        "round0_bytes": sum(p.stat().st_size for p in run.round_dir(0).rglob("*") if p.is_file()),
        "rounds": per_round,
        "max_new_mb": max(r["new_bytes"] for r in per_round) / 1e6,
    }


def dense(rounds: int, workdir: Path) -> dict[str, Any]:
    """1,000 clients x 20 samples vs 100 x 200, every client sampled, rounds interleaved."""
    from blazefl.core.loop import ExecutionSettings
    from blazefl.stages.session import Session

    sessions = {}
    times: dict[int, list[float]] = {}
    for clients in (1000, 100):
        config = _config(
            {
                "data.size": 20_000,
                "data.test_size": 200,
                "data.clients": clients,
                "data.partition": "iid",
                "model.name": "cnn_small",
                "fl.clients_per_round": clients,
                "fl.rounds": rounds,
                "train.local_epochs": 1,
                "train.batch_size": 20,
                "runtime.mode": "threads",
                "runtime.workers": 2,
            }
        )
        run, data, _ = _start(config, workdir / f"dense-{clients}")
        execution = ExecutionSettings.of(config.spec.runtime)
        sessions[clients] = Session(config, run, execution, data=data)
        sessions[clients].load(0)
        times[clients] = []
    try:
        for t in range(1, rounds + 1):
            for clients, session in sessions.items():
                start = time.perf_counter()
                session.commit(session.compute(t))
                times[clients].append(time.perf_counter() - start)
    finally:
        for session in sessions.values():
            session.close()
    steady = {c: ts[1:] or ts for c, ts in times.items()}  # round 1 warms the pool
    medians = {c: statistics.median(ts) for c, ts in steady.items()}
    return {
        "seconds": times,
        "median_1000": medians[1000],
        "median_100": medians[100],
        "ratio": medians[1000] / medians[100],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--sampled", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the sparse run")
    parser.add_argument("--repeats", type=int, default=6, help="rounds of each dense run")
    parser.add_argument("--skip", choices=["sparse", "dense"], default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="blazefl-scale-") as tmp:
        if args.skip != "sparse":
            s = sparse(args.clients, args.sampled, args.rounds, Path(tmp))
            results["sparse"] = s
            print(
                f"{s['clients']:,} clients, {s['sampled']} sampled per round: start-up "
                f"{s['startup_seconds']:.2f} s (round 0: {s['round0_bytes'] / 1e6:.2f} MB), "
                f"at most {s['max_new_mb']:.3f} MB written per round"
            )
            for r in s["rounds"]:
                print(
                    f"  round {r['round']}: {r['new_bytes'] / 1e6:.3f} MB new "
                    f"(manifest {r['manifest_bytes'] / 1e3:.1f} kB, {r['new_files']} of "
                    f"{r['files']} files new), {r['seconds']:.2f} s"
                )
        if args.skip != "dense":
            d = dense(args.repeats, Path(tmp))
            results["dense"] = d
            print(
                f"every client sampled, 1,000 x 20 samples vs 100 x 200: median round "
                f"{d['median_1000']:.3f} s vs {d['median_100']:.3f} s = {d['ratio']:.2f}x"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
