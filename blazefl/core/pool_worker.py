"""The worker side of `ProcessPoolClientTrainer`: the process loop, its start-up handshake,
and the wire format of the small control messages (tensors themselves go through shared
arenas or files, see `blazefl.core.process_pool`)."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing.connection as mpc
import os
import pickle
import signal
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from typing import Any, NoReturn

import numpy as np
import torch

from blazefl.core.client_task import ClientTrainingError, one_line, run_client_task
from blazefl.core.devices import build_worker, init_client_thread, is_cuda
from blazefl.core.memory import tune_malloc
from blazefl.core.packages import ClientTask, PackageLayout, package_layout

__all__ = [
    "DownlinkRef",
    "PickledForChild",
    "WorkerCrashedError",
    "how_it_ended",
    "map_file",
    "tensors_from_wire",
    "tensors_to_wire",
    "worker_main",
]


def how_it_ended(exitcode: int | None) -> str:
    """A process's end in words: "signal SIGKILL" or "exit code 1"."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class WorkerCrashedError(RuntimeError):
    """A worker process died; `cid` names the client it was training (None: between rounds)."""

    def __init__(
        self, cid: int | None, round: int | None, pid: int | None, exitcode: int | None
    ) -> None:
        how = how_it_ended(exitcode)
        doing = f"while training client {cid}" if cid is not None else "between rounds, before"
        when = "" if round is None else f" in round {round}"
        super().__init__(f"worker process {pid} died ({how}) {doing}{when}; the pool was shut down")
        self.cid = cid
        self.round = round


class PickledForChild:
    """Carries an object to a worker as bytes, unpickled by the worker's own code.

    Spawn unpickles a process's arguments before the target runs, where a failure (a class the
    child cannot import, a `__setstate__` that raises) prints a traceback and exits with code
    1, saying nothing to the parent. Pickled here instead, while the process is being started
    (so torch's shared-memory handles travel with it exactly as before), the worker unpickles
    it inside its start-up handshake and reports the exception.
    """

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (PickledBytes, (bytes(ForkingPickler.dumps(self.obj)),))


class PickledBytes:
    """What `PickledForChild` becomes in the worker: the bytes, until `load()`."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def load(self) -> Any:
        return pickle.loads(self.data)


def ask_kernel_to_kill_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the thread that started it exits."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # best effort: without it an orphan ends at EOF
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# -- wire format: numpy arrays pickle by value; torch tensors would go through fd passing ----
def tensors_to_wire(d: dict[str, torch.Tensor] | None) -> dict[str, np.ndarray] | None:
    return None if d is None else {k: v.detach().cpu().numpy() for k, v in d.items()}


def tensors_from_wire(d: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor] | None:
    return None if d is None else {k: torch.from_numpy(v) for k, v in d.items()}


@dataclass(frozen=True)
class DownlinkRef:
    version: int
    layout: PackageLayout
    path: str | None  # storage mode: file holding the arena bytes


def map_file(path: str, nbytes: int) -> torch.Tensor:
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    # copy-on-write map: zero copy from the page cache, writable so torch does not warn
    return torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", shape=(nbytes,)))


def exit_now(code: int = 0) -> NoReturn:
    """Leave the worker without interpreter finalization.

    Tearing down an interpreter that imported torch takes a second or more of CPU, paid by
    every worker on every `close()`. A worker owns nothing that needs finalizing (results go
    through the pipe, files are closed), so flush the standard streams and exit.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def send_or_exit(conn: mpc.Connection, msg: Any) -> None:
    try:
        conn.send(msg)
    except OSError:  # the parent is gone: nobody to report to
        exit_now(1)
    except Exception as exc:  # the reply does not pickle: report that instead
        text = f"the worker's reply could not be sent: {one_line(exc)}"
        send_or_exit(conn, ("error", msg[1] if len(msg) > 1 else None, text, ""))


def worker_main(
    conn: mpc.Connection,
    workload_box: PickledBytes,
    threads: int,
    ipc_mode: str,
    device: str = "cpu",
    die_with_parent: bool = False,
) -> None:
    """Worker process loop: pin threads, build one worker, serve tasks until told to stop.

    On a GPU the determinism settings come first (cuBLAS reads its workspace setting when CUDA
    initialises); the worker's model and data then live on `device`, and tensors cross the
    process edge on the CPU: downlink read from the shared arena and uplink written to it,
    one host<->device copy per client each way. GPU memory goes with the process.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process owns Ctrl-C
    if die_with_parent:
        ask_kernel_to_kill_with_parent()
    try:
        workload = workload_box.load()
        init_client_thread(threads, device)
        if is_cuda(device):
            torch.cuda.set_device(torch.device(device))
        tune_malloc()
        worker = build_worker(workload, device)
    except BaseException as exc:  # SystemExit from user code too: report it, no traceback here
        send_or_exit(conn, ("failed", one_line(exc), traceback.format_exc()))
        exit_now(1)
    send_or_exit(conn, ("ready",))
    down_arena: torch.Tensor | None = None
    up_arena: torch.Tensor | None = None
    cached: tuple[int, Any] = (-1, None)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # parent went away
            exit_now()
        if msg[0] == "stop":
            exit_now()
        if msg[0] == "arenas":
            down_arena, up_arena = msg[1], msg[2]
            continue
        _, task_wire, ref, slot = msg
        task = ClientTask(
            task_wire[0],
            task_wire[1],
            tensors_from_wire(task_wire[2]) or {},
            tensors_from_wire(task_wire[3]),
            task_wire[4],
        )
        try:
            if cached[0] != ref.version:
                arena = down_arena if ref.path is None else map_file(ref.path, ref.layout.nbytes)
                assert arena is not None
                cached = (ref.version, ref.layout.read(arena))
            result = run_client_task(worker, task, cached[1])
            layout = package_layout(result.uplink)
            if ipc_mode == "storage":  # straight from the model's memory to the file
                layout.write_file(result.uplink, slot)
                body: Any = ("layout", layout)
            elif up_arena is not None and layout.nbytes <= up_arena.shape[1]:
                layout.write(result.uplink, up_arena[slot])
                body = ("layout", layout)
            else:  # larger than a slot: slow path by value; the pool grows its slots next round
                arena = torch.empty(layout.nbytes, dtype=torch.uint8)
                layout.write(result.uplink, arena)
                # a numpy array pickles by value: a freed tensor's shared-memory handle would
                # not outlive this message
                body = ("value", layout, arena.numpy())
            reply: Any = (
                "done",
                task.cid,
                body,
                tensors_to_wire(result.rng),
                tensors_to_wire(result.state),
                result.sha256,
                tensors_to_wire(result.trace),
            )
        except ClientTrainingError as exc:  # the main process re-raises it, naming the client
            reply = ("error", task.cid, exc.detail, traceback.format_exc())
        except Exception as exc:
            reply = ("error", task.cid, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        send_or_exit(conn, reply)
