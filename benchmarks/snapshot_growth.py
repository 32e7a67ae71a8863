"""Bytes a round adds to a run directory and to a content-addressed cache (what DVC stores),
and the time spent writing it, as the number of clients grows with 10 sampled per round.

    python -m benchmarks.snapshot_growth [--clients 100,1000,10000] [--rounds 3]

Per round t >= 1 it reports:
- new inode bytes: files of round-t whose inode is not already in round t-1 (hard links to
  unchanged files cost nothing on disk);
- new content bytes: files whose sha256 is not among round t-1's (what DVC's cache adds);
- write seconds: from the round's timings file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def _files(root: Path) -> dict[str, os.stat_result]:
    return {p.relative_to(root).as_posix(): p.stat() for p in root.rglob("*") if p.is_file()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def measure(clients: int, rounds: int, workdir: Path, algorithm: str = "fedavg") -> dict[str, Any]:
    """Run one experiment with `clients` clients and measure its rounds' growth."""
    out = workdir / f"run-{algorithm}-{clients}"
    sets: dict[str, Any] = {
        "data.size": max(2 * clients, 2000),
        "data.test_size": 200,
        "data.clients": clients,
        "data.partition": "iid",
        "fl.clients_per_round": 10,
        "fl.rounds": rounds,
        "train.local_epochs": 1,
        "train.batch_size": 32,
        "runtime.mode": "sequential",
        "fl.algorithm": algorithm,
    }
    if algorithm == "dsfl":  # the open set comes out of the training data
        sets.update({"data.size": max(2 * clients, 2000) + 500, "dsfl.open_size": 500})
        sets.update({"dsfl.public_size_per_round": 100})
    cmd = [sys.executable, "-m", "blazefl.pipeline.cli", "run", "--out", str(out), "--quiet"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    subprocess.run(cmd, check=True)
    per_round = []
    for t in range(1, rounds + 1):
        prev, cur = out / f"round-{t - 1:04d}", out / f"round-{t:04d}"
        prev_inodes = {s.st_ino for s in _files(prev).values()}
        prev_shas = {_sha(prev / name) for name in _files(prev)}
        inode_bytes = content_bytes = 0
        for name, st in _files(cur).items():
            if st.st_ino not in prev_inodes:
                inode_bytes += st.st_size
            if _sha(cur / name) not in prev_shas:
                content_bytes += st.st_size
        timings = json.loads((out / "timings" / f"round-{t:04d}.json").read_text())
        per_round.append(
            {
                "round": t,
                "new_inode_bytes": inode_bytes,
                "new_content_bytes": content_bytes,
                "write_seconds": timings["write_seconds"],
            }
        )
    # what the sampled clients' data cost (RNG streams and, for DS-FL, each one's own model)
    clients_file = out / f"round-{rounds:04d}" / "clients.safetensors"
    state_bytes = clients_file.stat().st_size / 10 if clients_file.exists() else 0
    steady = per_round[1:] or per_round
    return {
        "algorithm": algorithm,
        "clients": clients,
        "rounds": per_round,
        "state_of_sampled_mb": 10 * state_bytes / 1e6,  # the round's clients file
        "mean_new_inode_mb": sum(r["new_inode_bytes"] for r in steady) / len(steady) / 1e6,
        "mean_new_content_mb": sum(r["new_content_bytes"] for r in steady) / len(steady) / 1e6,
        "mean_write_s": sum(r["write_seconds"] for r in steady) / len(steady),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.snapshot_growth")
    parser.add_argument("--clients", default="100,1000,10000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--algorithm", default="fedavg", help="fedavg or dsfl (or any other)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="blazefl-growth-") as tmp:
        for n in (int(x) for x in args.clients.split(",")):
            results.append(measure(n, args.rounds, Path(tmp), args.algorithm))
    print(
        "| algorithm | clients | MB per round on disk | MB per round in a content cache "
        "| state of 10 clients, MB | write s |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['algorithm']} | {r['clients']:,} | {r['mean_new_inode_mb']:.3f} | "
            f"{r['mean_new_content_mb']:.3f} | {r['state_of_sampled_mb']:.3f} | "
            f"{r['mean_write_s']:.3f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
