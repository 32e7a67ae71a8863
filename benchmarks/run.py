"""Benchmark blazefl against the plain-PyTorch compute floor (benchmarks/reference.py).

Every variant runs as its own subprocess, interleaved and repeated (the order rotates every
repeat), on the same data and config:

    ref-1            reference loop, 1 process
    ref-2            reference loop, 2 persistent worker processes
    sequential       blazefl run --mode sequential
    threads-1        blazefl run --mode threads --workers 1
    threads-2        blazefl run --mode threads --workers 2
    processes-2-shm  blazefl run --mode processes --workers 2 --ipc shared_memory
    processes-2-sto  blazefl run --mode processes --workers 2 --ipc storage

Measured per run (definitions are also written into the JSON):

- wall: whole-process wall time of the subprocess, launch to exit (start-up, data generation,
  blazefl's prepare/partition/init stages, all rounds, report, interpreter exit).
- steady round: mean seconds of rounds 2+. blazefl: ``round_seconds`` from
  ``RUN/timings/round-NNNN.json`` (client training + aggregation + server evaluation on the
  test set); reference: the same work timed by the reference itself.
- round incl. artifacts (blazefl): the whole period of a round, compute + serialising and
  hashing the snapshot + committing it (+ metrics and timings files): the time between the
  mtimes of consecutive ``RUN/timings/round-NNNN.json`` files, rounds 2+.
- write share: (round incl. artifacts - round_seconds) / round incl. artifacts, i.e. the share of
  the round spent producing and committing its artifacts, rounds 2+. The framework's own
  ``write_seconds / (round_seconds + write_seconds)`` is kept in the JSON as
  ``write_share_timings`` (it does not include serialisation and hashing done before commit).
- start-up: launch to the start of round 1. blazefl: the time the first progress line appeared
  minus the seconds it reports; includes interpreter + imports, prepare (synthetic data ->
  zarr), partition, init and building the session/trainer (a process pool starts lazily, inside
  round 1). ``start-up (prepared)`` measures the same on a run directory whose dataset,
  partitions and round 0 already exist (``blazefl stage prepare/partition/init`` done before),
  so it is imports + loading the stores + session set-up only; the start-up target is checked
  on that. Reference: process start to round 1 (imports, data generation, pool start, building
  its model and optimizer). blazefl builds its workers (and starts a process pool) lazily,
  inside round 1, so that cost shows in the ``round 1`` column, not in start-up.
- round 1: seconds of round 1 (blazefl: incl. its artifacts), to show one-off costs.
- peak RSS-sum: the largest sum of VmRSS over the subprocess and all its descendants, sampled
  every 50 ms from /proc (cheap). Shared pages (torch's libraries, shared-memory tensors)
  count once per process, so multi-process trees are over-counted.
- peak PSS: the largest sum of PSS over the tree (shared pages split between the processes that
  map them), read from /proc/PID/smaps_rollup every 100 ms. Reading smaps_rollup walks the page
  tables (~10 ms per GB of RSS), too costly for timed runs on 2 cores, so by default PSS comes
  from one extra, untimed memory pass per multi-process variant (``--pss pass``); ``--pss
  inline`` samples it during the timed runs instead (quick mode), ``--pss off`` skips it. For a
  single process PSS differs from RSS only by pages shared with unrelated processes on the
  machine, so single-process variants report their RSS in the PSS column.
- CPU: user and system seconds and minor page faults of the whole tree (rusage of waited-for
  children), and ``foreign_cpu_share``: CPU time used by other processes on the machine during
  the run (from /proc/stat) as a share of wall x cores; the report warns above 5 %.

Usage:
    python -m benchmarks.run                       # workload W, 3 repeats
    python -m benchmarks.run --workload resnet18
    python -m benchmarks.run --workload clients1000
    python -m benchmarks.run --quick               # smoke test, well under a minute per workload

Results: benchmarks/results/<workload>.md and .json (``<workload>-quick.*`` with --quick).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"

# -- workloads ---------------------------------------------------------------------------------

#: Workload W: the published BlazeFL benchmark scaled to 2 cores.
W_CONFIG: dict[str, Any] = {
    "seed": 0,
    "data.dataset": "synthetic",
    "data.size": 20000,
    "data.test_size": 2000,
    "data.clients": 100,
    "data.partition": "iid",
    "model.name": "cnn",
    "fl.rounds": 3,
    "fl.clients_per_round": 100,
    "train.local_epochs": 2,
    "train.batch_size": 50,
    "train.lr": 0.1,
    "train.momentum": 0.0,
    "train.weight_decay": 0.0,
    "train.augment": False,
    "runtime.threads_per_client": 1,
}


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # "ref" | "blazefl"
    workers: int = 1
    mode: str = "sequential"
    ipc: str = "shared_memory"
    overrides: tuple[tuple[str, Any], ...] = ()  # config keys that differ from the workload's
    reference: str | None = None  # the variant its ratios are taken against

    @property
    def multiprocess(self) -> bool:
        """More than one process: PSS differs from RSS only then."""
        return (self.kind == "ref" and self.workers > 1) or self.mode == "processes"

    def config(self, base: dict[str, Any]) -> dict[str, Any]:
        cfg = dict(base)
        cfg.update(dict(self.overrides))
        return cfg


def _std_variants(suffix: str = "", overrides: tuple[tuple[str, Any], ...] = ()) -> list[Variant]:
    r1, r2 = f"ref-1{suffix}", f"ref-2{suffix}"
    return [
        Variant(r1, "ref", 1, overrides=overrides),
        Variant(r2, "ref", 2, overrides=overrides),
        Variant(
            f"sequential{suffix}", "blazefl", 1, "sequential", overrides=overrides, reference=r1
        ),
        Variant(f"threads-1{suffix}", "blazefl", 1, "threads", overrides=overrides, reference=r1),
        Variant(f"threads-2{suffix}", "blazefl", 2, "threads", overrides=overrides, reference=r2),
        Variant(
            f"processes-2-shm{suffix}",
            "blazefl",
            2,
            "processes",
            "shared_memory",
            overrides=overrides,
            reference=r2,
        ),
        Variant(
            f"processes-2-sto{suffix}",
            "blazefl",
            2,
            "processes",
            "storage",
            overrides=overrides,
            reference=r2,
        ),
    ]


@dataclass
class Workload:
    name: str
    description: str
    config: dict[str, Any]
    variants: list[Variant]
    prepared_startup: tuple[str, ...] = ("threads-2", "sequential")  # variants timed warm
    quick_config: dict[str, Any] = field(default_factory=dict)
    quick_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


def workloads() -> dict[str, Workload]:
    quick_w = {
        "data.size": 500,
        "data.test_size": 200,
        "data.clients": 10,
        "fl.clients_per_round": 10,
        "fl.rounds": 2,
        "train.local_epochs": 1,
    }
    w = Workload(
        "W",
        "CNN (62,006 params), synthetic CIFAR-shaped data, 100 clients x 200 samples, all "
        "clients every round, 3 rounds, 2 local epochs, batch 50, SGD lr 0.1 (no momentum, "
        "no weight decay, no augmentation), IID, test set 2,000, 1 intra-op thread per client",
        dict(W_CONFIG),
        _std_variants(),
        quick_config=quick_w,
    )
    resnet = Workload(
        "resnet18",
        "ResNet-18 (CIFAR stem, 11.2M params), synthetic CIFAR-shaped data, 4 clients x 25 "
        "samples, all clients every round, 3 rounds, 1 local epoch, batch 25, SGD lr 0.1, "
        "IID, test set 50, 1 intra-op thread per client",
        {
            **W_CONFIG,
            "model.name": "resnet18",
            "data.size": 100,
            "data.test_size": 50,
            "data.clients": 4,
            "fl.clients_per_round": 4,
            "train.local_epochs": 1,
            "train.batch_size": 25,
        },
        _std_variants(),
        prepared_startup=("sequential",),
        quick_config={
            "data.size": 8,
            "data.test_size": 8,
            "data.clients": 2,
            "fl.clients_per_round": 2,
            "fl.rounds": 2,
            "train.batch_size": 4,
        },
    )
    c1000 = (("data.clients", 1000), ("fl.clients_per_round", 1000))
    c100 = (("data.clients", 100), ("fl.clients_per_round", 100))
    clients = Workload(
        "clients1000",
        "Workload W's data (20,000 samples) split over 1,000 clients x 20 samples vs 100 "
        "clients x 200 samples, all clients every round, 2 rounds (memory comparison)",
        {**W_CONFIG, "fl.rounds": 2},
        [
            Variant("ref-1@1000", "ref", 1, overrides=c1000),
            Variant("threads-2@100", "blazefl", 2, "threads", overrides=c100),
            Variant(
                "threads-2@1000",
                "blazefl",
                2,
                "threads",
                overrides=c1000,
                reference="threads-2@100",
            ),
            Variant("processes-2-shm@100", "blazefl", 2, "processes", overrides=c100),
            Variant(
                "processes-2-shm@1000",
                "blazefl",
                2,
                "processes",
                overrides=c1000,
                reference="processes-2-shm@100",
            ),
        ],
        prepared_startup=("threads-2@1000",),
        quick_config={
            "data.size": 1000,
            "data.test_size": 200,
            "fl.rounds": 2,
            "train.local_epochs": 1,
        },
        quick_overrides={
            "@1000": {"data.clients": 100, "fl.clients_per_round": 100},
            "@100": {"data.clients": 10, "fl.clients_per_round": 10},
        },
    )
    return {wl.name: wl for wl in (w, resnet, clients)}


def apply_quick(wl: Workload) -> Workload:
    """Shrink a workload so the whole harness runs in about a minute."""
    variants = []
    for v in wl.variants:
        over = dict(v.overrides)
        for tag, repl in wl.quick_overrides.items():
            if v.name.endswith(tag):
                over.update(repl)
        variants.append(
            Variant(v.name, v.kind, v.workers, v.mode, v.ipc, tuple(over.items()), v.reference)
        )
    shrunk = ", ".join(f"{k}={v}" for k, v in wl.quick_config.items())
    per_variant = "; ".join(
        f"*{tag}: " + ", ".join(f"{k}={v}" for k, v in repl.items())
        for tag, repl in wl.quick_overrides.items()
    )
    note = f" [--quick, shrunk to: {shrunk}{'; ' + per_variant if per_variant else ''}]"
    return Workload(
        wl.name,
        wl.description + note,
        {**wl.config, **wl.quick_config},
        variants,
        wl.prepared_startup,
    )


# -- /proc sampling ------------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(pid: int) -> list[int]:
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _status_kb(pid: int) -> dict[str, int] | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        if line.startswith((b"VmRSS:", b"RssAnon:", b"RssFile:", b"RssShmem:")):
            key, value = line.split(b":", 1)
            out[key.decode()] = int(value.split()[0])
    return out if "VmRSS" in out else None


def _pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class TreeSampler(threading.Thread):
    """Samples the memory of a process tree until stopped.

    Every `interval` s: VmRSS / RssAnon / RssFile / RssShmem of every process in the tree
    (from /proc/PID/status, microseconds per process). Every `pss_interval` s (None: never):
    PSS from /proc/PID/smaps_rollup. The tree is re-listed every `tree_interval` s.
    """

    def __init__(
        self,
        pid: int,
        interval: float = 0.05,
        pss_interval: float | None = None,
        tree_interval: float = 0.25,
    ) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.pss_interval = pss_interval
        self.tree_interval = tree_interval
        self._halt = threading.Event()
        self.peak_rss_kb = 0
        self.peak_unique_kb = 0  # sum of anonymous RSS + largest file RSS + largest shmem RSS
        self.peak_pss_kb = 0
        self.max_processes = 0
        self.seen: set[int] = set()  # every pid of the tree ever seen (pool restarts show here)
        self.samples = 0
        self.pss_samples = 0

    def run(self) -> None:
        pids: list[int] = [self.pid]
        next_tree = next_pss = time.perf_counter()
        while True:
            now = time.perf_counter()
            if now >= next_tree:
                pids = process_tree(self.pid)
                self.seen.update(pids)
                next_tree = now + self.tree_interval
            stats = [s for s in map(_status_kb, pids) if s is not None]
            if stats:
                self.samples += 1
                self.max_processes = max(self.max_processes, len(stats))
                self.peak_rss_kb = max(self.peak_rss_kb, sum(s["VmRSS"] for s in stats))
                unique = sum(s.get("RssAnon", 0) for s in stats)
                unique += max(s.get("RssFile", 0) for s in stats)
                unique += max(s.get("RssShmem", 0) for s in stats)
                self.peak_unique_kb = max(self.peak_unique_kb, unique)
            if self.pss_interval is not None and now >= next_pss:
                values = [v for v in map(_pss_kb, pids) if v is not None]
                if values:
                    self.pss_samples += 1
                    self.peak_pss_kb = max(self.peak_pss_kb, sum(values))
                next_pss = now + self.pss_interval
            if self._halt.wait(self.interval):
                return

    def stop(self) -> dict[str, Any]:
        self._halt.set()
        self.join()
        return {
            "peak_rss_sum_mb": self.peak_rss_kb / 1024,
            "peak_unique_est_mb": self.peak_unique_kb / 1024,
            "peak_pss_mb": self.peak_pss_kb / 1024 if self.pss_samples else None,
            "max_processes": self.max_processes,
            "distinct_processes": len(self.seen),
            "samples": self.samples,
            "pss_samples": self.pss_samples,
        }


# -- running one subprocess ----------------------------------------------------------------------
@dataclass
class Proc:
    rc: int
    wall: float
    stdout: str
    stderr_lines: list[tuple[float, str]]  # (seconds since launch, line)
    memory: dict[str, Any]
    rusage: dict[str, float]
    launched_at: float  # time.time() at launch


def cpu_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all cores, from /proc/stat)."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
    return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")


def run_measured(
    cmd: list[str], cwd: Path, env: dict[str, str], pss_interval: float | None, timeout: float
) -> Proc:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before = cpu_busy_seconds()
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    launched_at = time.time()
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sampler = TreeSampler(p.pid, pss_interval=pss_interval)
    sampler.start()
    lines: list[tuple[float, str]] = []
    out: list[str] = []

    def read_err() -> None:
        assert p.stderr is not None
        for line in p.stderr:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))

    def read_out() -> None:
        assert p.stdout is not None
        out.append(p.stdout.read())

    readers = [
        threading.Thread(target=read_err, daemon=True),
        threading.Thread(target=read_out, daemon=True),
    ]
    for r in readers:
        r.start()
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = p.wait()
        lines.append((time.perf_counter() - t0, f"[benchmark] killed after {timeout:.0f} s"))
    wall = time.perf_counter() - t0
    memory = sampler.stop()
    for r in readers:
        r.join(timeout=5)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    busy_after = cpu_busy_seconds()
    rusage: dict[str, float] = {
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
        "minflt": after.ru_minflt - before.ru_minflt,
        "majflt": after.ru_majflt - before.ru_majflt,
        "harness_cpu_s": (
            self_after.ru_utime - self_before.ru_utime + self_after.ru_stime - self_before.ru_stime
        ),
    }
    if busy_before is not None and busy_after is not None:
        # CPU used by anything else on the machine during the run: a noise indicator
        rusage["foreign_cpu_s"] = max(
            0.0,
            busy_after - busy_before - rusage["user_s"] - rusage["sys_s"] - rusage["harness_cpu_s"],
        )
        rusage["foreign_cpu_share"] = rusage["foreign_cpu_s"] / (wall * (os.cpu_count() or 1))
    return Proc(rc, wall, "".join(out), lines, memory, rusage, launched_at)


_PROGRESS = re.compile(r"^round\s+(\d+)/(\d+)\s.*?\s([0-9.]+)s\s*$")


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


class Bench:
    def __init__(self, args: argparse.Namespace, wl: Workload) -> None:
        self.args = args
        self.wl = wl
        self.workdir = Path(tempfile.mkdtemp(prefix="blazefl-bench-", dir=args.workdir))
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT)] + ([self.env["PYTHONPATH"]] if self.env.get("PYTHONPATH") else [])
        )
        self.env.pop("BLAZEFL_TEST_PERTURB_UPLINK", None)
        script = Path(sys.executable).parent / "blazefl"
        self.blazefl = [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli"]
        self.counter = 0
        self.timeout = args.timeout
        self._stores: dict[str, tuple[Path, Path]] = {}

    # -- config files --
    def write_config(self, cfg: dict[str, Any]) -> Path:
        tree: dict[str, Any] = {}
        for dotted, value in cfg.items():
            node = tree
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        self.counter += 1
        path = self.workdir / f"params-{self.counter}.yaml"
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
        return path

    # -- one run --
    def run_variant(self, v: Variant, pss_interval: float | None) -> dict[str, Any]:
        cfg = v.config(self.wl.config)
        if v.kind == "ref":
            return self._run_reference(v, cfg, pss_interval)
        return self._run_blazefl(v, cfg, pss_interval)

    def _run_reference(self, v: Variant, cfg: dict[str, Any], pss: float | None) -> dict[str, Any]:
        out = self.workdir / f"ref-{self.counter}.json"
        self.counter += 1
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.reference",
            "--model",
            cfg["model.name"],
            "--size",
            str(cfg["data.size"]),
            "--test-size",
            str(cfg["data.test_size"]),
            "--clients",
            str(cfg["data.clients"]),
            "--rounds",
            str(cfg["fl.rounds"]),
            "--epochs",
            str(cfg["train.local_epochs"]),
            "--batch",
            str(cfg["train.batch_size"]),
            "--lr",
            str(cfg["train.lr"]),
            "--momentum",
            str(cfg["train.momentum"]),
            "--weight-decay",
            str(cfg["train.weight_decay"]),
            "--seed",
            str(cfg["seed"]),
            "--workers",
            str(v.workers),
            "--threads",
            str(cfg["runtime.threads_per_client"]),
            "--json",
            str(out),
        ]
        p = run_measured(cmd, self.workdir, self.env, pss, self.timeout)
        rec = self._base_record(v, p)
        if p.rc != 0 or not out.exists():
            return self._failed(rec, p)
        data = json.loads(out.read_text())
        out.unlink()
        rounds = data["rounds"]
        rec.update(
            {
                "round_seconds": [r["seconds"] for r in rounds],
                "steady_round_s": _mean([r["seconds"] for r in rounds[1:]]),
                "steady_total_s": _mean([r["seconds"] for r in rounds[1:]]),
                "startup_s": data["startup_seconds"],
                "round1_s": rounds[0]["seconds"] if rounds else None,
                "self_reported_wall_s": data["wall_seconds"],
                "self_reported_peak_rss_sum_mb": data["peak_rss_sum_mb"],
                "pool_start_s": data["pool_seconds"],
                "final_metrics": data["final_metrics"],
                "malloc_tuned": data["malloc_tuned"],
            }
        )
        return rec

    def _run_blazefl(self, v: Variant, cfg: dict[str, Any], pss: float | None) -> dict[str, Any]:
        params = self.write_config(cfg)
        run_dir = self.workdir / f"run-{self.counter}"
        cmd = self.blazefl + [
            "run",
            "--config",
            str(params),
            "--out",
            str(run_dir),
            "--mode",
            v.mode,
            "--workers",
            str(v.workers),
            "--ipc",
            v.ipc,
        ]
        p = run_measured(cmd, self.workdir, self.env, pss, self.timeout)
        rec = self._base_record(v, p)
        try:
            if p.rc != 0:
                return self._failed(rec, p)
            rec.update(self._parse_blazefl(run_dir, p, cfg["fl.rounds"]))
        finally:
            if not self.args.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
        return rec

    def _parse_blazefl(self, run_dir: Path, p: Proc, rounds: int) -> dict[str, Any]:
        timings = []
        for t in range(1, rounds + 1):
            timings.append(json.loads((run_dir / "timings" / f"round-{t:04d}.json").read_text()))
        progress: dict[int, tuple[float, float]] = {}
        for at, line in p.stderr_lines:
            m = _PROGRESS.match(line)
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
            "steady_round_s": _mean(comp[1:]),
            "steady_total_s": _mean(steady_total) if len(steady_total) == len(comp[1:]) else None,
            "startup_s": progress[1][0] - progress[1][1] if 1 in progress else None,
            "round1_s": total[0],
            "final_metrics": json.loads(
                (run_dir / "metrics" / f"round-{rounds:04d}.json").read_text()
            ),
        }
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

    def _base_record(self, v: Variant, p: Proc) -> dict[str, Any]:
        return {"variant": v.name, "rc": p.rc, "wall_s": p.wall, **p.memory, **p.rusage}

    def _failed(self, rec: dict[str, Any], p: Proc) -> dict[str, Any]:
        tail = [line for _, line in p.stderr_lines][-15:]
        rec["error"] = "\n".join(tail) or p.stdout[-2000:]
        print(
            f"  !! {rec['variant']} failed (rc {p.rc}):\n    " + "\n    ".join(tail),
            file=sys.stderr,
        )
        return rec

    # -- start-up measurements --
    def help_time(self) -> float:
        t0 = time.perf_counter()
        subprocess.run(
            self.blazefl + ["run", "--help"],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        return time.perf_counter() - t0

    def prepare_stores(self, v: Variant) -> tuple[Path, Path]:
        """dataset, partitions and round 0 for the variant's config (`blazefl run` with 0
        rounds runs exactly prepare, partition, init and report); cached per config."""
        cfg = v.config(self.wl.config)
        key = json.dumps(cfg, sort_keys=True)
        if key in self._stores:
            return self._stores[key]
        params = self.write_config(cfg)
        base = self.workdir / f"prepared-{len(self._stores)}"
        subprocess.run(
            self.blazefl
            + [
                "run",
                "--config",
                str(params),
                "--out",
                str(base),
                "--set",
                "fl.rounds=0",
                "--quiet",
            ],
            cwd=self.workdir,
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._stores[key] = (base, params)
        return base, params

    def prepared_startup(self, v: Variant, base: Path, params: Path) -> dict[str, Any]:
        run_dir = self.workdir / f"warm-{self.counter}"
        self.counter += 1
        shutil.copytree(base, run_dir)
        cmd = self.blazefl + [
            "run",
            "--config",
            str(params),
            "--out",
            str(run_dir),
            "--set",
            "fl.rounds=1",
            "--mode",
            v.mode,
            "--workers",
            str(v.workers),
            "--ipc",
            v.ipc,
        ]
        p = run_measured(cmd, self.workdir, self.env, None, self.timeout)
        shutil.rmtree(run_dir, ignore_errors=True)
        rec = {"variant": v.name, "rc": p.rc, "wall_s": p.wall}
        for at, line in p.stderr_lines:
            m = _PROGRESS.match(line)
            if m and m.group(1) == "1":
                rec["startup_s"] = at - float(m.group(3))
                rec["round1_s"] = float(m.group(3))
        if p.rc != 0 or "startup_s" not in rec:
            self._failed(rec, p)
        return rec

    def close(self) -> None:
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


# -- statistics and reporting ----------------------------------------------------------------
def stat(values: list[float | None]) -> dict[str, float] | None:
    xs = [x for x in values if x is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def fmt_stat(s: dict[str, float] | None, unit: str = "", digits: int = 2) -> str:
    if s is None:
        return "n/a"
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}{unit}"
    return f"{s['median']:.{digits}f}{unit} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def summarize(
    runs: dict[str, list[dict[str, Any]]], mem: dict[str, dict[str, Any]], variants: list[Variant]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in variants:
        ok = [r for r in runs.get(v.name, []) if r.get("rc") == 0 and "error" not in r]
        s: dict[str, Any] = {
            "runs_ok": len(ok),
            "runs_failed": len(runs.get(v.name, [])) - len(ok),
            "wall_s": stat([r["wall_s"] for r in ok]),
            "steady_round_s": stat([r.get("steady_round_s") for r in ok]),
            "steady_total_s": stat([r.get("steady_total_s") for r in ok]),
            "startup_s": stat([r.get("startup_s") for r in ok]),
            "round1_s": stat([r.get("round1_s") for r in ok]),
            "peak_rss_sum_mb": stat([r["peak_rss_sum_mb"] for r in ok]),
            "peak_unique_est_mb": stat([r["peak_unique_est_mb"] for r in ok]),
            "peak_pss_mb_inline": stat([r.get("peak_pss_mb") for r in ok]),
            "write_share": stat([r.get("write_share") for r in ok]),
            "write_share_timings": stat([r.get("write_share_timings") for r in ok]),
            "user_s": stat([r["user_s"] for r in ok]),
            "sys_s": stat([r["sys_s"] for r in ok]),
            "minflt": stat([r["minflt"] for r in ok]),
            "foreign_cpu_share": stat([r.get("foreign_cpu_share") for r in ok]),
            "distinct_processes": stat([r.get("distinct_processes") for r in ok]),
        }
        m = mem.get(v.name)
        s["peak_pss_mb"] = (m or {}).get("peak_pss_mb")
        if s["peak_pss_mb"] is None and s["peak_pss_mb_inline"] is not None:
            s["peak_pss_mb"] = s["peak_pss_mb_inline"]["median"]
        if not v.multiprocess and s["peak_rss_sum_mb"] is not None:
            # one process: its PSS differs from its RSS only by pages it happens to share with
            # unrelated processes on the machine, so RSS is the stable number
            s["peak_pss_mb"] = s["peak_rss_sum_mb"]["median"]
        out[v.name] = s
    for v in variants:
        s = out[v.name]
        ref = out.get(v.reference) if v.reference else None
        ratios: dict[str, Any] = {}
        if ref is not None:
            for key in ("steady_round_s", "wall_s", "steady_total_s"):
                a, b = s.get(key), ref.get(key)
                if key == "steady_total_s":
                    b = ref.get("steady_round_s")  # the reference writes nothing
                if a and b:
                    ratios[key] = a["median"] / b["median"]
            # per-repeat ratios: runs of the same repeat ran next to each other
            per = []
            mine = {r["repeat"]: r for r in runs.get(v.name, []) if r.get("steady_round_s")}
            theirs = {
                r["repeat"]: r for r in runs.get(v.reference or "", []) if r.get("steady_round_s")
            }
            for rep in sorted(set(mine) & set(theirs)):
                per.append(mine[rep]["steady_round_s"] / theirs[rep]["steady_round_s"])
            ratios["steady_round_s_per_repeat"] = per
            for key in ("peak_rss_sum_mb",):
                a, b = s.get(key), ref.get(key)
                if a and b:
                    ratios[key] = a["median"] / b["median"]
            if s.get("peak_pss_mb") and ref.get("peak_pss_mb"):
                ratios["peak_pss_mb"] = s["peak_pss_mb"] / ref["peak_pss_mb"]
        s["reference"] = v.reference
        s["ratios"] = ratios
    return out


def _ratio_cell(s: dict[str, Any]) -> str:
    r = s["ratios"]
    if "steady_round_s" not in r:
        return "-"
    wall = f" ({r['wall_s']:.2f}x)" if "wall_s" in r else ""
    return f"{r['steady_round_s']:.3f}x{wall}"


def table(summary: dict[str, Any], variants: list[Variant]) -> str:
    head = (
        "| variant | wall s | steady round s | vs ref: steady (wall) | vs | start-up s | "
        "round 1 s | peak RSS-sum MB | peak PSS MB | write share % |"
    )
    lines = [head, "|" + "---|" * 10]
    for v in variants:
        s = summary[v.name]
        if s["runs_ok"] == 0:
            lines.append(f"| {v.name} | FAILED | | | | | | | | |")
            continue
        ws = s["write_share"]
        ws_cell = (
            fmt_stat({k: (x * 100 if k != "n" else x) for k, x in ws.items()}, "", 2) if ws else "-"
        )
        if s.get("peak_pss_mb"):
            pss = f"{s['peak_pss_mb']:.0f}"
        else:
            pss = "= RSS" if not v.multiprocess else "n/a"
        rss = s["peak_rss_sum_mb"]
        lines.append(
            f"| {v.name} | {fmt_stat(s['wall_s'])} | {fmt_stat(s['steady_round_s'], '', 3)} | "
            f"{_ratio_cell(s)} | {v.reference or '-'} | {fmt_stat(s['startup_s'])} | "
            f"{fmt_stat(s['round1_s'])} | "
            f"{rss['median']:.0f} [{rss['min']:.0f}-{rss['max']:.0f}] | {pss} | {ws_cell} |"
        )
    return "\n".join(lines)


def check_targets(wl: Workload, summary: dict[str, Any], startup: dict[str, Any]) -> list[dict]:
    """The issue's targets that this workload can check."""
    out: list[dict] = []

    def med(name: str, key: str) -> float | None:
        s = summary.get(name, {}).get(key)
        if isinstance(s, dict):
            return s.get("median")
        return s

    def ratio(name: str, key: str) -> float | None:
        return summary.get(name, {}).get("ratios", {}).get(key)

    def add(target: str, value: float | None, limit: float, unit: str = "x") -> None:
        status = "n/a" if value is None else ("PASS" if value <= limit else "FAIL")
        out.append(
            {"target": target, "value": value, "limit": limit, "unit": unit, "status": status}
        )

    if wl.name == "W":
        add("sequential steady round <= 1.03x ref-1", ratio("sequential", "steady_round_s"), 1.03)
        add("threads-2 steady round <= 1.05x ref-2", ratio("threads-2", "steady_round_s"), 1.05)
        add("threads-2 whole run <= 0.85x ref-2", ratio("threads-2", "wall_s"), 0.85)
        add(
            "processes-2-shm steady round <= 1.15x ref-2",
            ratio("processes-2-shm", "steady_round_s"),
            1.15,
        )
        shares: list[tuple[str, float]] = []
        for n in summary:
            share = med(n, "write_share")
            if share is not None:
                shares.append((n, share))
        if shares:
            worst = max(shares, key=lambda x: x[1])
            add(f"write share <= 3% (worst: {worst[0]})", worst[1] * 100, 3.0, "%")
        for name in ("processes-2-shm", "processes-2-sto"):
            # main + 2 workers + multiprocessing's resource tracker; a pool rebuilt every round
            # would show up as more distinct pids (the tree is listed every 250 ms)
            counts = summary.get(name, {}).get("distinct_processes")
            if counts:
                add(
                    f"{name}: pool started once per run (distinct processes in the tree <= 4)",
                    counts["max"],
                    4,
                    " processes",
                )
        ref_mem = med("ref-1", "peak_rss_sum_mb")
        for name in ("threads-1", "threads-2"):
            mem = med(name, "peak_rss_sum_mb")
            add(
                f"{name} peak memory (RSS) <= 1.1x ref-1",
                mem / ref_mem if mem and ref_mem else None,
                1.1,
            )
    if wl.name == "clients1000":
        add(
            "threads-2: 1000 clients peak memory (RSS) <= 1.25x 100 clients",
            ratio("threads-2@1000", "peak_rss_sum_mb"),
            1.25,
        )
        add(
            "processes-2-shm: 1000 clients peak memory (PSS) <= 1.25x 100 clients (informative)",
            ratio("processes-2-shm@1000", "peak_pss_mb"),
            1.25,
        )
    help_s = (startup.get("help") or {}).get("median")
    add("`blazefl run --help` < 2.5 s", help_s, 2.5, "s")
    for name, s in startup.get("prepared", {}).items():
        add(
            f"start-up to round 1, prepared stores ({name}) < 2.5 s",
            (s or {}).get("median"),
            2.5,
            "s",
        )
    return out


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_mb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    versions = subprocess.run(
        [sys.executable, "-c", "import torch, numpy; print(torch.__version__, numpy.__version__)"],
        capture_output=True,
        text=True,
    ).stdout.split()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = "", False
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_mb": mem_mb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "torch": versions[0] if versions else None,
        "numpy": versions[1] if len(versions) > 1 else None,
        "git_commit": commit,
        "git_dirty": dirty,
    }


# -- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workload", default="W", choices=["W", "resnet18", "clients1000", "all"])
    p.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    p.add_argument("--quick", action="store_true", help="shrunk workloads, 1 repeat: smoke test")
    p.add_argument(
        "--variants", default=None, help="comma-separated subset of variant names (default: all)"
    )
    p.add_argument(
        "--pss",
        choices=["pass", "inline", "off"],
        default=None,
        help="PSS measurement: extra untimed pass (default), during timed runs "
        "(default with --quick), or none",
    )
    p.add_argument("--workdir", default=None, help="parent of the scratch dir (default: $TMPDIR)")
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    p.add_argument("--timeout", type=float, default=1800, help="per-run timeout, seconds")
    p.add_argument("--keep", action="store_true", help="keep run directories")
    p.add_argument(
        "--readme",
        default=None,
        help="also replace the section between '<!-- benchmark:WORKLOAD:start -->' "
        "and '<!-- benchmark:WORKLOAD:end -->' in this markdown file",
    )
    a = p.parse_args(argv)
    if a.repeats is None:
        a.repeats = 1 if a.quick else 3
    if a.pss is None:
        a.pss = "inline" if a.quick else "pass"
    return a


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def bench_workload(args: argparse.Namespace, wl: Workload) -> dict[str, Any]:
    if args.quick:
        wl = apply_quick(wl)
    variants = wl.variants
    if args.variants:
        keep = set(args.variants.split(","))
        unknown = keep - {v.name for v in variants}
        if unknown:
            raise SystemExit(
                f"unknown variants {sorted(unknown)}; have {[v.name for v in variants]}"
            )
        variants = [v for v in variants if v.name in keep]
    bench = Bench(args, wl)
    started = _dt.datetime.now(_dt.UTC)
    load_before = loadavg()
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    startup: dict[str, Any] = {"help_runs": [], "prepared_runs": {}}
    pss_inline = 0.1 if args.pss == "inline" else None
    try:
        warm = [v for name in wl.prepared_startup for v in variants if v.name == name]
        if args.quick:
            warm = warm[:1]
        stores = {v.name: bench.prepare_stores(v) for v in warm}
        log(
            f"== workload {wl.name}: {len(variants)} variants x {args.repeats} repeats "
            f"(scratch {bench.workdir})"
        )
        for rep in range(args.repeats):
            order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
            for v in order:
                t0 = time.perf_counter()
                rec = bench.run_variant(v, pss_inline)
                rec["repeat"] = rep
                runs[v.name].append(rec)
                log(
                    f"  [{rep + 1}/{args.repeats}] {v.name:<22} wall {rec['wall_s']:7.2f}s  "
                    f"steady {rec.get('steady_round_s') or float('nan'):7.3f}s  "
                    f"rss {rec['peak_rss_sum_mb']:6.0f}MB  "
                    f"other load {100 * rec.get('foreign_cpu_share', 0):4.1f}%  "
                    f"({time.perf_counter() - t0:.0f}s)"
                )
            startup["help_runs"].extend(bench.help_time() for _ in range(3))
            for v in warm:
                r = bench.prepared_startup(v, *stores[v.name])
                startup["prepared_runs"].setdefault(v.name, []).append(r)
                log(
                    f"  [{rep + 1}/{args.repeats}] start-up (prepared) {v.name}: "
                    f"{r.get('startup_s', float('nan')):.2f}s"
                )
        memory: dict[str, dict[str, Any]] = {}
        if args.pss == "pass":
            log("== memory pass (PSS, untimed)")
            for v in [v for v in variants if v.multiprocess]:
                rec = bench.run_variant(v, 0.1)
                memory[v.name] = {
                    k: rec.get(k)
                    for k in (
                        "peak_pss_mb",
                        "peak_rss_sum_mb",
                        "peak_unique_est_mb",
                        "max_processes",
                        "pss_samples",
                        "rc",
                    )
                }
                log(
                    f"  {v.name:<22} pss {rec.get('peak_pss_mb') or float('nan'):6.0f}MB  "
                    f"rss-sum {rec['peak_rss_sum_mb']:6.0f}MB"
                )
    finally:
        bench.close()
    startup["help"] = stat(startup["help_runs"])
    startup["prepared"] = {
        name: stat([r.get("startup_s") for r in rs if r.get("rc") == 0])
        for name, rs in startup["prepared_runs"].items()
    }
    summary = summarize(runs, memory, variants)
    targets = check_targets(wl, summary, startup)
    finished = _dt.datetime.now(_dt.UTC)
    result = {
        "workload": wl.name,
        "description": wl.description,
        "quick": args.quick,
        "config": wl.config,
        "variants": [
            {
                "name": v.name,
                "kind": v.kind,
                "mode": v.mode,
                "workers": v.workers,
                "ipc": v.ipc,
                "overrides": dict(v.overrides),
                "reference": v.reference,
            }
            for v in variants
        ],
        "repeats": args.repeats,
        "pss_mode": args.pss,
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "machine": machine_info(),
        "definitions": __doc__.split(
            "Measured per run (definitions are also written into the JSON):", 1
        )[-1]
        .split("Usage:")[0]
        .strip(),
        "summary": summary,
        "startup": startup,
        "memory_pass": memory,
        "targets": targets,
        "runs": runs,
    }
    result["markdown"] = render_markdown(result, variants)
    return result


def render_markdown(result: dict[str, Any], variants: list[Variant]) -> str:
    m = result["machine"]
    st = result["startup"]
    lines = [
        f"### Benchmark {result['workload']}{' (quick)' if result['quick'] else ''}: "
        f"{result['started'][:10]}",
        "",
        f"{result['description']}.",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_mb']} MB; Python "
        f"{m['python']}, torch {m['torch']}; commit {m['git_commit'][:10]}"
        f"{' (dirty)' if m['git_dirty'] else ''}; {result['repeats']} repeat(s), interleaved; "
        f"load average before/after {result['loadavg_before']} / {result['loadavg_after']}.",
        "",
        table(result["summary"], variants),
        "",
        "median [min-max] over repeats; steady = mean of rounds 2+ (blazefl: `round_seconds`, "
        "compute incl. server evaluation); ratios are of medians (steady round, and whole-run "
        "wall in parentheses) against the reference named in `vs`; write share = share of the "
        "round (incl. artifacts) spent serialising and writing them; RSS-sum counts shared "
        "pages once per process; PSS (multi-process variants) from "
        + {
            "pass": "an extra untimed run per variant",
            "inline": "the timed runs",
            "off": "nowhere (off)",
        }[result["pss_mode"]]
        + ", single-process variants show their RSS there.",
        "",
        f"`blazefl run --help`: {fmt_stat(st['help'])} s. Start-up to round 1 with prepared "
        "stores: "
        + (", ".join(f"{k} {fmt_stat(v)} s" for k, v in st["prepared"].items()) or "n/a")
        + ".",
        "",
        "Targets:",
        "",
    ]
    for t in result["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}{t['unit']}"
        lines.append(f"- {t['status']}: {t['target']} (measured {value})")
    if result["workload"] == "resnet18":
        s = result["summary"]
        a, b = s.get("processes-2-sto"), s.get("processes-2-shm")
        if a and b and a.get("peak_pss_mb") and b.get("peak_pss_mb"):
            lines.append(
                f"- storage vs shared_memory (ResNet-18): peak PSS {a['peak_pss_mb']:.0f} vs "
                f"{b['peak_pss_mb']:.0f} MB ({b['peak_pss_mb'] - a['peak_pss_mb']:+.0f} MB saved), "
                f"steady round {a['steady_round_s']['median']:.2f} vs "
                f"{b['steady_round_s']['median']:.2f} s"
            )
    noisy = []
    for name, rs in result["runs"].items():
        shares = [r.get("foreign_cpu_share") or 0.0 for r in rs]
        if shares and max(shares) > 0.05:
            noisy.append(f"{name} {100 * max(shares):.0f}%")
    if noisy:
        lines += [
            "",
            "WARNING: other processes used CPU during these runs (share of the "
            "machine's CPU time, worst run): "
            + ", ".join(noisy)
            + ". Ratios are unreliable; rerun on a quiet machine.",
        ]
    consistency = check_consistency(result)
    if consistency:
        lines += ["", consistency]
    return "\n".join(lines) + "\n"


def check_consistency(result: dict[str, Any]) -> str:
    """blazefl promises the same bytes in every mode: same final metrics for a config."""
    groups: dict[str, set[str]] = {}
    for v in result["variants"]:
        if v["kind"] != "blazefl":
            continue
        key = json.dumps(v["overrides"], sort_keys=True)
        for r in result["runs"][v["name"]]:
            if "final_metrics" in r:
                groups.setdefault(key, set()).add(json.dumps(r["final_metrics"], sort_keys=True))
    bad = [k for k, vals in groups.items() if len(vals) > 1]
    if bad:
        return (
            "WARNING: blazefl variants of one config ended with different metrics "
            f"(execution modes should give identical bytes): {bad}"
        )
    return "Final metrics identical across all blazefl variants of each config (as promised)."


def update_readme(path: Path, workload: str, markdown: str) -> bool:
    start, end = f"<!-- benchmark:{workload}:start -->", f"<!-- benchmark:{workload}:end -->"
    text = path.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{markdown}{end}{tail}")
    return True


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names = ["W", "resnet18", "clients1000"] if args.workload == "all" else [args.workload]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        result = bench_workload(args, workloads()[name])
        stem = f"{name}-quick" if args.quick else name
        (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        (out_dir / f"{stem}.md").write_text(result["markdown"])
        print(result["markdown"])
        log(f"wrote {out_dir / (stem + '.md')} and {out_dir / (stem + '.json')}")
        if args.readme and not args.quick:
            if update_readme(Path(args.readme), name, result["markdown"]):
                log(f"updated {args.readme}")
            else:
                log(f"{args.readme} has no benchmark:{name} markers; not updated")


if __name__ == "__main__":
    main()
