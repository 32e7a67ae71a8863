"""Workloads that break in ways user code can: at start-up, by hanging, by raising SystemExit
or KeyboardInterrupt inside a client; and FedAvg variants using them, so the CLI can run them
as `fl.algorithm=tests.core.broken_workloads:NAME`.

Module level (importable by reference) because spawned workers unpickle them.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from blazefl.algorithms.base import NoHParams
from blazefl.algorithms.fedavg import FedAvg, FedAvgWorker
from blazefl.core.packages import ClientTask
from tests.core.workloads import FaultyWorker, FaultyWorkload

#: File a hanging client touches just before it hangs (set by the test that waits for it).
HANG_MARKER_ENV = "BLAZEFL_TEST_HANG_MARKER"

ALL_CLIENTS = -2  # `fault_cid` value: every client misbehaves

#: Ends a hang early, for tests whose hanging clients run in the test process (thread mode).
RELEASE_HANG = threading.Event()


@dataclass
class MisbehavingWorkload(FaultyWorkload):
    """FedAvg work whose client `fault_cid` (or every client) does `misbehave`:

    "hang" (sleeps an hour without checking its stop event), "system_exit" (SystemExit(4)),
    "keyboard_interrupt" (KeyboardInterrupt raised by client code), "make_worker"
    (`make_worker()` raises) or "unloadable" (cannot be unpickled in a worker process).
    """

    misbehave: str = "hang"

    def make_worker(self) -> FaultyWorker:
        if self.misbehave == "make_worker":
            raise ValueError("make_worker could not build the model (injected)")
        return MisbehavingWorker(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("misbehave") == "unloadable":
            raise RuntimeError("this workload cannot be loaded in a worker process (injected)")
        self.__dict__.update(state)


class MisbehavingWorker(FaultyWorker):
    workload: MisbehavingWorkload

    def train(self, task: ClientTask, payload, rng):  # type: ignore[no-untyped-def]
        w = self.workload
        if w.fault_cid in (ALL_CLIENTS, task.cid):
            if w.misbehave == "hang":
                marker = os.environ.get(HANG_MARKER_ENV)
                if marker:
                    with open(marker, "a") as f:
                        f.write(f"{task.cid}\n")
                RELEASE_HANG.wait(3600)  # never checks the stop event
            if w.misbehave == "system_exit":
                raise SystemExit(4)
            if w.misbehave == "keyboard_interrupt":
                raise KeyboardInterrupt
        return FedAvgWorker.train(self, task, payload, rng)  # not FaultyWorker's own faults


def misbehaving(exp: Any, misbehave: str, fault_cid: int = ALL_CLIENTS) -> MisbehavingWorkload:
    """A MisbehavingWorkload over an experiment's data."""
    base = exp.workload()
    return MisbehavingWorkload(
        base.train,
        base.partition,
        base.model,
        base.hparams,
        fault_cid=fault_cid,
        misbehave=misbehave,
    )


class _BrokenFedAvg(FedAvg):
    HParams = NoHParams
    misbehave = ""

    def workload(self, exp: Any) -> MisbehavingWorkload:
        return misbehaving_from_spec(exp, self.misbehave)


def misbehaving_from_spec(exp: Any, misbehave: str) -> MisbehavingWorkload:
    return MisbehavingWorkload(
        exp.train,
        exp.partition,
        exp.model_spec,
        exp.spec.train,
        fault_cid=ALL_CLIENTS,
        misbehave=misbehave,
    )


class HangingFedAvg(_BrokenFedAvg):
    name = "hanging_fedavg"
    misbehave = "hang"


class SystemExitFedAvg(_BrokenFedAvg):
    name = "system_exit_fedavg"
    misbehave = "system_exit"


class KeyboardInterruptFedAvg(_BrokenFedAvg):
    name = "keyboard_interrupt_fedavg"
    misbehave = "keyboard_interrupt"


class MakeWorkerFailsFedAvg(_BrokenFedAvg):
    name = "make_worker_fails_fedavg"
    misbehave = "make_worker"


class UnloadableFedAvg(_BrokenFedAvg):
    name = "unloadable_fedavg"
    misbehave = "unloadable"
