"""Test workloads and process helpers shared by the core tests.

Process-pool workers unpickle their workload by reference (spawn), so every class used there
must live at module level in an importable module: this one (`tests.core.workloads`).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
import signal
import time
from dataclasses import dataclass, field

import psutil
import torch

from blazefl import (
    BaseClientTrainer,
    DownlinkPackage,
    Experiment,
    ExperimentSpec,
    FedAvgClientWorkload,
    TrainHParams,
    UplinkPackage,
    build_experiment,
)
from blazefl.algorithms.fedavg import FedAvgWorker
from blazefl.core.packages import ClientTask

#: The tiny FedAvg config most core tests share (640 samples, 8 clients, batch 32).
TINY_HPARAMS = TrainHParams(
    local_epochs=1, batch_size=32, lr=0.05, momentum=0.9, weight_decay=5e-4, augment=True
)
TINY_SPEC = ExperimentSpec.from_flat(
    {
        "seed": 7,
        "data.size": 640,
        "data.test_size": 100,
        "data.clients": 8,
        "data.partition": "iid",
        "fl.clients_per_round": 5,
        "fl.rounds": 2,
        "train.local_epochs": 1,
        "train.batch_size": 32,
    }
)


# -- FedAvg with injected faults ----------------------------------------------------------------
@dataclass
class FaultyWorkload(FedAvgClientWorkload):
    """FedAvg client work that misbehaves for one client.

    Args:
        fault_cid: the client that fails (-1: none).
        fault: "raise" (ValueError from client code) or "sigkill" (the worker process kills
            itself; refused in the test process itself, so a thread trainer cannot kill pytest).
        delay_s: sleep before each client, to keep a round in flight long enough.
        slow: extra seconds of sleep for some clients (to make them finish last).
        stamp_path: file that receives `time.monotonic()` (system-wide clock) just before a
            "sigkill", so a test can measure how fast the crash was detected.
    """

    fault_cid: int = -1
    fault: str = "raise"
    delay_s: float = 0.0
    stamp_path: str | None = None  # "sigkill": time.monotonic() of the kill is written here
    slow: dict[int, float] = field(default_factory=dict)  # extra sleep for these clients
    owner_pid: int = field(default_factory=os.getpid)

    def make_worker(self) -> FaultyWorker:
        return FaultyWorker(self)


class FaultyWorker(FedAvgWorker):
    workload: FaultyWorkload

    def train(self, task: ClientTask, payload, rng):  # type: ignore[no-untyped-def]
        w = self.workload
        if w.delay_s or task.cid in w.slow:
            time.sleep(w.delay_s + w.slow.get(task.cid, 0.0))
        if task.cid == w.fault_cid:
            if w.fault == "sigkill":
                if os.getpid() == w.owner_pid:
                    raise RuntimeError("refusing to SIGKILL the test process itself")
                if w.stamp_path is not None:
                    with open(w.stamp_path, "w") as f:
                        f.write(repr(time.monotonic()))
                os.kill(os.getpid(), signal.SIGKILL)
            raise ValueError(f"injected failure for client {task.cid}")
        return super().train(task, payload, rng)


# -- helpers for fault tests ---------------------------------------------------------------------
@functools.cache
def tiny_experiment() -> Experiment:
    """The built TINY_SPEC experiment (built once, on first use: workers never need it)."""
    return build_experiment(TINY_SPEC)


def faulty(**kwargs) -> FaultyWorkload:  # type: ignore[no-untyped-def]
    """A FaultyWorkload over the tiny experiment's data."""
    base = tiny_experiment().workload()
    return FaultyWorkload(base.train, base.partition, base.model, base.hparams, **kwargs)


def wait_until_dead(pid: int, timeout: float = 10.0) -> None:
    """Wait until a process is a zombie or gone (a fork server reaps its own children)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        assert time.monotonic() < deadline, f"process {pid} did not die"
        time.sleep(0.01)


def all_clients() -> list[int]:
    return list(range(TINY_SPEC.data.clients))


def run_all_clients(trainer: BaseClientTrainer, round: int = 1) -> list[int]:
    """Train every client of the tiny experiment from its initial model; their ids in order."""
    payload = tiny_experiment().server().downlink_package()
    return [r.cid for r in trainer.train_round(payload, all_clients(), round)]


# -- a workload that draws from the global torch RNG (negative control for race tests) ----------
@dataclass
class NoiseDownlink(DownlinkPackage):
    scale: torch.Tensor


@dataclass
class NoiseUplink(UplinkPackage):
    cid: int
    noise: torch.Tensor


@dataclass
class NoiseWorkload:
    """Each client sums `draws` random vectors, from the global RNG or its own generator.

    With `use_global_rng=True` this is exactly the bug the determinism rules forbid (global RNG
    in client work): threads share torch's global generator, so which draws a client gets
    depends on scheduling.
    """

    use_global_rng: bool
    draws: int = 60
    pause_s: float = 0.0005  # lets other threads draw in between (GIL released while sleeping)

    def make_worker(self) -> NoiseWorker:
        return NoiseWorker(self)

    def share_memory(self) -> None:
        pass


class NoiseWorker:
    def __init__(self, workload: NoiseWorkload) -> None:
        self.workload = workload

    def train(self, task: ClientTask, payload: NoiseDownlink, rng) -> tuple[NoiseUplink, None]:  # type: ignore[no-untyped-def]
        gen = None if self.workload.use_global_rng else rng.torch
        acc = torch.zeros(16, dtype=torch.float64)
        for _ in range(self.workload.draws):
            acc += torch.rand(16, dtype=torch.float64, generator=gen)
            time.sleep(self.workload.pause_s)
        return NoiseUplink(task.cid, acc * payload.scale), None


# -- process start -------------------------------------------------------------------------------
def fast_start() -> str:
    """Start method for pools in tests that are about faults, not about start-up: "forkserver"
    with torch, torch._dynamo (imported by the first optimizer) and this module preloaded, so
    a pool starts in milliseconds instead of re-importing torch in every worker. The default
    "spawn" is used by the execution-mode tests and by one crash and one Ctrl-C test.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["blazefl", "torch._dynamo", "tests.core.workloads"])
    return "forkserver"


# -- process hygiene ------------------------------------------------------------------------------
def shm_entries() -> set[str]:
    """Names in /dev/shm (POSIX shared-memory segments and torch's shm files)."""
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:  # pragma: no cover - not Linux
        return set()


def leaked_shm(before: set[str], settle_s: float = 1.0) -> set[str]:
    """Entries that appeared since `before`, are still there after `settle_s`, and are not
    owned by some other live process.

    /dev/shm is machine-wide: something short-lived from another process may come and go, and
    torch names its files ``torch_<pid>_...``: one whose pid is alive and outside this process
    tree belongs to someone else. A leak from this process or its (dead) workers stays.
    """
    new = shm_entries() - before
    if new:
        time.sleep(settle_s)
        new &= shm_entries()
    return {name for name in new if not _owned_by_stranger(name)}


def _owned_by_stranger(name: str) -> bool:
    match = re.match(r"torch_(\d+)_", name)
    if match is None:
        return False
    pid = int(match.group(1))
    ours = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
    return pid not in ours and psutil.pid_exists(pid)


def child_processes() -> list[psutil.Process]:
    """Live (or zombie) descendants of this process, except multiprocessing's resource tracker
    and fork server, which the standard library keeps for the life of the interpreter."""
    out = []
    me = os.getpid()
    for p in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(p.cmdline())
            if "resource_tracker" in cmdline:
                continue
            # the fork server (not the workers it forks, which share its command line)
            if "multiprocessing.forkserver" in cmdline and p.ppid() == me:
                continue
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
        except psutil.AccessDenied:  # pragma: no cover
            pass
        out.append(p)
    return out


def orphans(before: list[psutil.Process], pids: list[int]) -> list[str]:
    """Descriptions of child processes that appeared since `before`, or worker `pids` still
    alive (a zombie counts: nobody reaped it)."""
    known = {(p.pid, _create_time(p)) for p in before}
    left = [
        f"{p.pid} {_status(p)}"
        for p in child_processes()
        if (p.pid, _create_time(p)) not in known and _status(p) != "gone"
    ]
    for pid in pids:
        if psutil.pid_exists(pid):
            try:
                proc = psutil.Process(pid)
                if proc.ppid() == os.getpid():
                    left.append(f"worker {pid} {proc.status()}")
            except psutil.NoSuchProcess:
                pass
    return sorted(set(left))


def _create_time(p: psutil.Process) -> float:
    try:
        return p.create_time()
    except psutil.NoSuchProcess:
        return -1.0


def _status(p: psutil.Process) -> str:
    try:
        return p.status()
    except psutil.NoSuchProcess:
        return "gone"
