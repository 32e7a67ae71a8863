"""GPU check (issue 10): byte identity, verify and speed of `runtime.device=cuda`.

Prints one line per check, ``PASS``/``FAIL``/``INFO`` first, and exits 1 if any check failed.
On a machine without CUDA it prints ``SKIP: no CUDA`` and exits 0. Every check has its own
time limit; the whole check is sized for under 8 minutes on one H200.

- (a) a small CNN run (dropout and augmentation on, so the CUDA and CPU generators are both
  used) gives the same bytes in sequential / threads (2) / processes (2, shared memory) mode:
  every file of the run directory except ``timings/`` is hashed and compared.
- (b) the same for ResNet-18 (tiny sizes; processes with storage IPC).
- (c) ``blazefl verify`` of the sequential CNN run from (a) passes.
- (e) Ray mode on the GPU (`--mode ray --workers 2`, an embedded Ray runtime whose actors
  each ask for half a GPU): the CNN run of (a) again, byte-identical to sequential; an INFO
  line where Ray is not installed.
- (d) workload W and a ResNet-18 workload: wall time, steady round (mean ``round_seconds`` of
  rounds 2+) and peak GPU memory (``torch.cuda.max_memory_allocated`` in the run's process)
  for ``blazefl run`` sequential and threads (4 workers) on the GPU, the same run on the CPU
  (threads, one worker per core up to 16) and the plain-PyTorch GPU reference
  (``benchmarks/gpu_reference.py``); ratios against the targets (sequential steady round
  <= 1.15x the reference; threads-4 >= 1.5x the sequential throughput on W) and the byte
  identity of sequential vs threads-4 on W.

Usage:
    bash benchmarks/gpu_check.sh            # or: python -m benchmarks.gpu_check
    python -m benchmarks.gpu_check --only a,c --keep /tmp/gpu-runs
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.workloads import W_CONFIG

LOCK_NAME = ".blazefl.lock"  # blazefl.stages.run_lock.LOCK_NAME (not imported: no torch here)

ROOT = Path(__file__).resolve().parents[1]

#: A small CNN run that exercises both generators: dropout masks (CUDA) and augmentation (CPU).
CNN_SMALL = {
    "data.size": 1200,
    "data.test_size": 200,
    "data.clients": 8,
    "fl.clients_per_round": 4,
    "fl.rounds": 3,
    "model.dropout": 0.25,
    "train.local_epochs": 1,
    "train.batch_size": 32,
    "train.augment": True,
}
RESNET_TINY = {
    "model.name": "resnet18",
    "data.size": 160,
    "data.test_size": 64,
    "data.clients": 4,
    "fl.clients_per_round": 4,
    "fl.rounds": 2,
    "train.local_epochs": 1,
    "train.batch_size": 20,
}
W_GPU = {**W_CONFIG, "fl.rounds": 3}
RESNET_WORK = {
    **W_CONFIG,
    "model.name": "resnet18",
    "data.size": 800,
    "data.test_size": 200,
    "data.clients": 8,
    "fl.clients_per_round": 8,
    "fl.rounds": 3,
    "train.local_epochs": 1,
    "train.batch_size": 50,
}


class Run:
    """One `blazefl run` in a child process (`--child`), which reports its peak GPU memory."""

    def __init__(self, out: Path, rc: int, wall: float, output: str) -> None:
        self.out, self.rc, self.wall, self.output = out, rc, wall, output
        self.peak = 0
        for line in output.splitlines():
            if line.startswith("GPU_PEAK_BYTES "):
                self.peak = int(line.split()[1])

    def steady(self) -> float | None:
        times = []
        for path in sorted((self.out / "timings").glob("round-*.json")):
            rec = json.loads(path.read_text())
            if rec["round"] >= 2:
                times.append(float(rec["round_seconds"]))
        return sum(times) / len(times) if times else None

    def tail(self) -> str:
        lines = [ln for ln in self.output.strip().splitlines() if ln.strip()]
        return lines[-1][:300] if lines else f"exit code {self.rc}"


def blazefl_run(
    out: Path, sets: dict[str, Any], mode: str, workers: int, timeout: float, ipc: str = ""
) -> Run:
    args = ["run", "--out", str(out), "--quiet", "--mode", mode, "--workers", str(workers)]
    if ipc:
        args += ["--ipc", ipc]
    for key, value in sets.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["--set", f"{key}={text}"]
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--child", *args]
    start = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, output = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, output = 124, f"timed out after {timeout:.0f}s {exc.stderr or ''}"
    return Run(out, rc, time.perf_counter() - start, output)


def tree_hashes(run: Path) -> dict[str, str]:
    """sha256 of every file under `run` except timings/ (wall-clock times) and the run lock
    (it names the process that held it)."""
    out = {}
    for path in sorted(run.rglob("*")):
        rel = path.relative_to(run).as_posix()
        if path.is_file() and not rel.startswith("timings/") and rel != LOCK_NAME:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def differences(a: Path, b: Path) -> list[str]:
    ha, hb = tree_hashes(a), tree_hashes(b)
    return sorted(k for k in set(ha) | set(hb) if ha.get(k) != hb.get(k))


class Checker:
    def __init__(self, work: Path, device: str) -> None:
        self.work, self.device = work, device
        self.failed = 0

    def line(self, status: str, name: str, text: str) -> None:
        if status == "FAIL":
            self.failed += 1
        print(f"{status} {name}: {text}", flush=True)

    def identity(
        self, name: str, sets: dict[str, Any], variants: list[tuple[str, int, str]]
    ) -> None:
        sets = {**sets, "runtime.device": self.device}
        runs = []
        for mode, workers, ipc in variants:
            tag = f"{mode}{workers}{ipc}"
            run = blazefl_run(self.work / f"{name}-{tag}", sets, mode, workers, 150, ipc)
            if run.rc != 0:
                self.line("FAIL", name, f"{tag} run failed: {run.tail()}")
                return
            runs.append((tag, run))
        base_tag, base = runs[0]
        files = len(tree_hashes(base.out))
        for tag, run in runs[1:]:
            diff = differences(base.out, run.out)
            if diff:
                shown = ", ".join(diff[:4])
                self.line(
                    "FAIL", name, f"{tag} differs from {base_tag} in {len(diff)} file(s): {shown}"
                )
                return
        tags = " = ".join(t for t, _ in runs)
        self.line("PASS", name, f"{tags}: {files} files byte-identical ({self.device})")

    def verify(self) -> None:
        run = self.work / "a-sequential1"
        if not run.is_dir():
            self.line("FAIL", "c", "no run from check a to verify")
            return
        cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--child", "verify", str(run)]
        try:
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
            rc, output = p.returncode, (p.stdout + p.stderr).strip()
        except subprocess.TimeoutExpired:
            rc, output = 124, "timed out after 120s"
        lines = [ln for ln in output.splitlines() if not ln.startswith("GPU_PEAK_BYTES")]
        last = lines[-1][:200] if lines else ""
        self.line(
            "PASS" if rc == 0 else "FAIL", "c", f"blazefl verify of the {self.device} run: {last}"
        )

    def workload(self, name: str, sets: dict[str, Any], reference: list[str]) -> None:
        gpu = {**sets, "runtime.device": self.device}
        seq = blazefl_run(self.work / f"d-{name}-seq", gpu, "sequential", 1, 150)
        thr = blazefl_run(self.work / f"d-{name}-thr4", gpu, "threads", 4, 150)
        cores = min(os.cpu_count() or 1, 16)
        cpu = blazefl_run(
            self.work / f"d-{name}-cpu", {**sets, "runtime.device": "cpu"}, "threads", cores, 150
        )
        ref = _reference(reference + ["--device", _first_gpu(self.device)], 150)
        for label, r in (("sequential", seq), ("threads-4", thr), (f"cpu threads-{cores}", cpu)):
            if r.rc != 0:
                self.line("FAIL", f"d {name}", f"{label} run failed: {r.tail()}")
            else:
                steady = r.steady()
                self.line(
                    "INFO",
                    f"d {name}",
                    f"{label}: wall {r.wall:.1f}s, steady round {_s(steady)}, "
                    f"peak GPU memory {r.peak / 2**20:.0f} MiB",
                )
        if "error" in ref:
            self.line("FAIL", f"d {name}", f"gpu reference failed: {ref['error']}")
            return
        self.line(
            "INFO",
            f"d {name}",
            f"plain-PyTorch GPU reference: wall {ref['wall']:.1f}s, steady round "
            f"{_s(ref['steady'])}, peak GPU memory {ref['peak_gpu_bytes'] / 2**20:.0f} MiB",
        )
        if seq.rc or thr.rc or cpu.rc:
            return
        s_seq, s_thr, s_cpu = seq.steady(), thr.steady(), cpu.steady()
        if s_seq and s_thr and s_cpu:
            ratio = s_seq / ref["steady"]
            self.line(
                "INFO",
                f"d {name}",
                f"sequential / reference {ratio:.2f}x (target <= 1.15), threads-4 speed-up over "
                f"sequential {s_seq / s_thr:.2f}x (target >= 1.5 on W), cpu / gpu-sequential "
                f"{s_cpu / s_seq:.2f}x",
            )
        diff = differences(seq.out, thr.out)
        status = "FAIL" if diff else "PASS"
        self.line(status, f"d {name}", f"sequential vs threads-4 bytes: {len(diff)} file(s) differ")


def _first_gpu(device: str) -> str:
    return "cuda:0" if device == "cuda" else device


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}s"


def _reference(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.gpu_reference", *args]
    start = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
    result: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - start  # launch to exit, as for blazefl runs
    return result


def _ref_args(sets: dict[str, Any]) -> list[str]:
    return [
        "--model", str(sets["model.name"]),
        "--size", str(sets["data.size"]),
        "--test-size", str(sets["data.test_size"]),
        "--clients", str(sets["data.clients"]),
        "--rounds", str(sets["fl.rounds"]),
        "--epochs", str(sets["train.local_epochs"]),
        "--batch", str(sets["train.batch_size"]),
        "--lr", str(sets["train.lr"]),
    ]  # fmt: skip


def _child(argv: list[str]) -> None:
    """Run the blazefl CLI in this process, then print its peak GPU memory."""
    import torch

    from blazefl.pipeline.cli import main as cli

    code: Any = 0
    try:
        cli(argv)
    except SystemExit as exc:
        code = exc.code
    peak = 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
    print(f"GPU_PEAK_BYTES {peak}", flush=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="a,b,c,e,d", help="checks to run, e.g. a,c")
    p.add_argument("--device", default="cuda", help="runtime.device of the GPU runs")
    p.add_argument("--keep", default=None, help="keep the run directories under this folder")
    p.add_argument("--force", action="store_true", help="run even without CUDA (tests only)")
    a = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not a.force:
        print("SKIP: no CUDA", flush=True)
        return 0
    only = set(a.only.split(","))
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="blazefl-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(
            f"INFO env: {props.name} x{torch.cuda.device_count()}, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
            flush=True,
        )
    c = Checker(work, a.device)
    start = time.perf_counter()
    steps: list[tuple[str, Callable[[], None]]] = [
        ("a", lambda: c.identity("a", CNN_SMALL, [("sequential", 1, ""), ("threads", 2, ""),
                                                  ("processes", 2, "shared_memory")])),
        ("b", lambda: c.identity("b", RESNET_TINY, [("sequential", 1, ""), ("threads", 2, ""),
                                                    ("processes", 2, "storage")])),
        ("c", c.verify),
        ("e", lambda: c.identity("e", CNN_SMALL, [("sequential", 1, ""), ("ray", 2, "")])
         if importlib.util.find_spec("ray") else c.line("INFO", "e", "ray is not installed")),
        ("d", lambda: c.workload("W", W_GPU, _ref_args(W_GPU))),
        ("d", lambda: c.workload("resnet18", RESNET_WORK, _ref_args(RESNET_WORK))),
    ]  # fmt: skip
    try:
        for name, step in steps:
            if name in only:
                step()
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    verdict = "FAIL" if c.failed else "PASS"
    print(f"{verdict} all: {c.failed} failed check(s) in {time.perf_counter() - start:.0f}s")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
