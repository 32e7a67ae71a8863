"""`ProcessPoolClientTrainer`: clients in a persistent pool of worker processes.

The pool is started once (spawn or forkserver, never fork: forking after torch has started
threads can hang) and reused for every round. Tensors move without pickling:

- ``shared_memory``: the downlink is written once per round into a shared arena that every
  worker reads in place; each in-flight client writes its uplink into a preallocated slot of a
  shared uplink arena. The arenas are torch shared-memory tensors whose files are unlinked
  as soon as they are created, so nothing is left in /dev/shm, even after a crash or kill -9.
- ``storage``: the downlink is written once per round to a file that workers memory-map; each
  client writes its uplink to a file that the main process reads and deletes. Lower memory.

Only small control messages (task ids, RNG state bytes, layouts) cross the pipes.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import numpy as np
import torch
import torch.multiprocessing  # noqa: F401  (registers tensor reductions for shared arenas)

from blazefl.core.devices import build_worker, init_client_thread, is_cuda, worker_device
from blazefl.core.memory import tune_malloc
from blazefl.core.packages import (
    ClientResult,
    ClientTask,
    DownlinkT,
    PackageLayout,
    UplinkT,
    package_layout,
)
from blazefl.core.protocols import ClientWorkload
from blazefl.core.trainers import BaseClientTrainer, ClientTrainingError, run_client_task
from blazefl.modes import IPC_MODES

__all__ = ["ProcessPoolClientTrainer", "WorkerCrashedError", "IPC_MODES"]

IpcMode = Literal["shared_memory", "storage"]


class WorkerCrashedError(RuntimeError):
    """A worker process died; `cid` names the client it was training (None: between rounds)."""

    def __init__(self, cid: int | None, round: int, pid: int | None, exitcode: int | None) -> None:
        if exitcode is not None and exitcode < 0:
            try:
                how = f"signal {signal.Signals(-exitcode).name}"
            except ValueError:
                how = f"signal {-exitcode}"
        else:
            how = f"exit code {exitcode}"
        doing = f"while training client {cid}" if cid is not None else "between rounds, before"
        super().__init__(
            f"worker process {pid} died ({how}) {doing} in round {round}; the pool was shut down"
        )
        self.cid = cid
        self.round = round


# -- wire format: numpy arrays pickle by value; torch tensors would go through fd passing ----
def _tensors_to_wire(d: dict[str, torch.Tensor] | None) -> dict[str, np.ndarray] | None:
    return None if d is None else {k: v.detach().cpu().numpy() for k, v in d.items()}


def _tensors_from_wire(d: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor] | None:
    return None if d is None else {k: torch.from_numpy(v) for k, v in d.items()}


def _uplink_to_wire(uplink: Any) -> Any:
    values = {
        k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v)
        for k, v in vars(uplink).items()
    }
    return type(uplink), values


def _uplink_from_wire(wire: Any) -> Any:
    cls, values = wire
    return cls(
        **{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in values.items()}
    )


@dataclass(frozen=True)
class _DownlinkRef:
    version: int
    layout: PackageLayout
    path: str | None  # storage mode: file holding the arena bytes


def _map_file(path: str, nbytes: int) -> torch.Tensor:
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    # copy-on-write map: zero copy from the page cache, writable so torch does not warn
    return torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", shape=(nbytes,)))


def _exit_now() -> NoReturn:
    """Leave the worker without interpreter finalization.

    Tearing down an interpreter that imported torch takes a second or more of CPU, paid by
    every worker on every `close()`. A worker owns nothing that needs finalizing (results go
    through the pipe, files are closed), so flush the standard streams and exit.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _worker_main(
    conn: mpc.Connection,
    workload: ClientWorkload[Any, Any],
    threads: int,
    ipc_mode: str,
    device: str = "cpu",
) -> None:
    """Worker process loop: pin threads, build one worker, serve tasks until told to stop.

    On a GPU the determinism settings come first (cuBLAS reads its workspace setting when CUDA
    initialises); the worker's model and data then live on `device`, and tensors cross the
    process edge on the CPU: downlink read from the shared arena and uplink written to it,
    one host<->device copy per client each way. GPU memory goes with the process.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process owns Ctrl-C
    init_client_thread(threads, device)
    if is_cuda(device):
        torch.cuda.set_device(torch.device(device))
    tune_malloc()
    worker = build_worker(workload, device)
    down_arena: torch.Tensor | None = None
    up_arena: torch.Tensor | None = None
    cached: tuple[int, Any] = (-1, None)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # parent went away
            _exit_now()
        if msg[0] == "stop":
            _exit_now()
        if msg[0] == "arenas":
            down_arena, up_arena = msg[1], msg[2]
            continue
        _, task_wire, ref, slot = msg
        task = ClientTask(
            task_wire[0],
            task_wire[1],
            _tensors_from_wire(task_wire[2]) or {},
            _tensors_from_wire(task_wire[3]),
        )
        try:
            if cached[0] != ref.version:
                arena = down_arena if ref.path is None else _map_file(ref.path, ref.layout.nbytes)
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
                body = ("value", _uplink_to_wire(result.uplink), layout.nbytes)
            conn.send(
                (
                    "done",
                    task.cid,
                    body,
                    _tensors_to_wire(result.rng),
                    _tensors_to_wire(result.state),
                    result.sha256,
                )
            )
        except ClientTrainingError as exc:  # the main process re-raises it, naming the client
            conn.send(("error", task.cid, exc.detail, traceback.format_exc()))
        except Exception as exc:
            conn.send(("error", task.cid, f"{type(exc).__name__}: {exc}", traceback.format_exc()))


class ProcessPoolClientTrainer(BaseClientTrainer[UplinkT, DownlinkT]):
    """Clients in a persistent pool of worker processes (true parallelism, isolated memory).

    The pool starts on the first round and lives until `close()`; each worker builds one
    model/optimizer once. If a worker dies, the round stops with `WorkerCrashedError` naming
    the client, every other worker is terminated, and no shared-memory segment is left.

    Args:
        workload: picklable client work; its tensors are moved to shared memory once.
        seed: experiment seed.
        num_workers: worker processes (>= 1).
        ipc_mode: "shared_memory" (fastest) or "storage" (files on disk, lower memory).
        threads_per_client: intra-op threads pinned in every worker.
        storage_dir: parent folder for storage-mode files (default: system temp dir).
        start_method: "spawn" or "forkserver" (spawn only on a GPU).
        device: `runtime.device`; worker process w runs on `devices[w % len(devices)]`.

    Example:
        >>> with ProcessPoolClientTrainer(workload, seed=0, num_workers=2) as trainer:
        ...     for result in trainer.train_round(downlink, cids):
        ...         server.load(result.uplink)
    """

    def __init__(
        self,
        workload: ClientWorkload[UplinkT, DownlinkT],
        *,
        seed: int,
        num_workers: int,
        ipc_mode: IpcMode = "shared_memory",
        threads_per_client: int = 1,
        storage_dir: str | os.PathLike[str] | None = None,
        start_method: Literal["spawn", "forkserver"] = "spawn",
        device: str = "cpu",
    ) -> None:
        super().__init__(workload, seed=seed, threads_per_client=threads_per_client, device=device)
        if num_workers <= 0:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if ipc_mode not in IPC_MODES:
            raise ValueError(f"ipc_mode must be one of {', '.join(IPC_MODES)}, got {ipc_mode!r}")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(
                f"start_method must be 'spawn' or 'forkserver' (fork hangs after torch has "
                f"started threads), got {start_method!r}"
            )
        if is_cuda(device) and start_method != "spawn":
            raise ValueError(f"a GPU run needs start_method='spawn', got {start_method!r}")
        self.num_workers = num_workers
        self.ipc_mode = ipc_mode
        self.start_method = start_method
        self._storage_parent = storage_dir
        self._procs: list[Any] = []
        self._conns: list[mpc.Connection] = []
        self._window = 2 * num_workers
        self._down_arena: torch.Tensor | None = None
        self._up_arena: torch.Tensor | None = None
        self._slot_nbytes = 0
        self._version = 0
        self._storage: Path | None = None
        # Identity of the round whose iterator is in flight. A round abandoned mid-way (Ctrl-C,
        # an exception in the consumer, `break`) leaves results in the pipes and workers busy;
        # the next round, or close(), must not mistake them for its own.
        self._round_token: object | None = None

    # -- the original BlazeFL's process-pool contract is not this one ----------------------
    def _refuse_original_contract(self) -> None:
        cls = type(self)
        if hasattr(cls, "worker") or hasattr(cls, "get_client_config"):
            raise ValueError(
                "ProcessPoolClientTrainer does not run the original BlazeFL worker(config, "
                "payload, device, stop_event, *, shm_buffer): move the work into a "
                "ClientWorkload / ClientWorker (see docs/migration.md, 'The process-pool worker')"
            )

    def train_round(
        self, payload: DownlinkT, cid_list: Sequence[int], round: int | None = None
    ) -> Iterator[ClientResult]:
        """See `BaseClientTrainer.train_round`.

        Raises:
            ValueError: a subclass implements the original process-pool `worker` contract.
        """
        self._refuse_original_contract()
        return super().train_round(payload, cid_list, round)

    def local_process(self, payload: DownlinkT, cid_list: Sequence[int]) -> None:
        """BlazeFL-style API: train the clients and cache their uplinks (sorted by client id)."""
        self._refuse_original_contract()
        super().local_process(payload, cid_list)

    # -- pool lifecycle ----------------------------------------------------------------
    def _start(self) -> None:
        if self._procs:
            return
        init_client_thread(self.threads_per_client, self.devices[0])
        ctx: Any = mp.get_context(self.start_method)
        self.workload.share_memory()
        if self.ipc_mode == "storage":
            self._storage = Path(tempfile.mkdtemp(prefix="blazefl-ipc-", dir=self._storage_parent))
        try:
            for _ in range(self.num_workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_worker_main,
                    args=(
                        child,
                        self.workload,
                        self.threads_per_client,
                        self.ipc_mode,
                        worker_device(self.devices, len(self._procs)),
                    ),
                    daemon=True,
                    name="blazefl-worker",
                )
                proc.start()
                child.close()
                self._procs.append(proc)
                self._conns.append(parent)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        """PIDs of the live worker processes (empty before the first round)."""
        return [p.pid for p in self._procs if p.pid is not None]

    def close(self) -> None:
        """Stop the workers (terminate any that hang) and release shared arenas and files.

        If a round was left unfinished (its iterator abandoned), the workers are killed at once
        instead of being waited for: their results would be thrown away anyway.
        """
        if self._round_token is not None:
            self._round_token = None
            for proc in self._procs:
                if proc.is_alive():
                    proc.kill()
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):  # worker already gone
                conn.send(("stop",))
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []
        self._down_arena = self._up_arena = None
        self._slot_nbytes = 0
        if self._storage is not None:
            shutil.rmtree(self._storage, ignore_errors=True)
            self._storage = None

    def _abort(self) -> None:
        """Kill the pool at once (crash, Ctrl-C): no waiting for clients to finish."""
        self._round_token = None
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
        self.close()

    def _crashed(self, w: int, task: ClientTask | None, round: int) -> WorkerCrashedError:
        proc = self._procs[w]
        proc.join(timeout=5)
        cid = None if task is None else task.cid
        return WorkerCrashedError(cid, round, proc.pid, proc.exitcode)

    # -- per-round IPC -------------------------------------------------------------------
    def _publish_downlink(self, payload: DownlinkT, round: int) -> _DownlinkRef:
        layout = package_layout(payload)
        self._version += 1
        if self.ipc_mode == "storage":
            assert self._storage is not None
            for old in self._storage.glob("downlink-*.bin"):
                old.unlink()
            path = self._storage / f"downlink-{self._version}.bin"
            layout.write_file(payload, path)
            return _DownlinkRef(self._version, layout, str(path))
        grow_down = self._down_arena is None or self._down_arena.numel() < layout.nbytes
        want_slot = max(self._slot_nbytes, layout.nbytes)  # uplinks are usually model-sized
        if grow_down or want_slot > self._slot_nbytes:
            self._down_arena = torch.empty(layout.nbytes, dtype=torch.uint8).share_memory_()
            self._slot_nbytes = want_slot
            self._up_arena = torch.empty(
                (self._window, want_slot), dtype=torch.uint8
            ).share_memory_()
            for w, conn in enumerate(self._conns):
                try:
                    conn.send(("arenas", self._down_arena, self._up_arena))
                except OSError:  # the worker died while idle
                    raise self._crashed(w, None, round) from None
        assert self._down_arena is not None
        layout.write(payload, self._down_arena)
        return _DownlinkRef(self._version, layout, None)

    def _execute(self, payload: DownlinkT, tasks: list[ClientTask]) -> Iterator[ClientResult]:
        if self._round_token is not None:  # previous round abandoned: its workers are not idle
            self._abort()
        self._start()
        token = self._round_token = object()
        idle = list(range(self.num_workers))
        free_slots = list(range(self._window))
        inflight: dict[int, tuple[int, ClientTask, Any]] = {}  # worker -> (index, task, slot)
        done: dict[int, tuple[Any, Any]] = {}  # task index -> (message, slot)
        submitted = yielded = 0
        ok = False
        try:
            ref = self._publish_downlink(payload, tasks[0].round if tasks else 0)
            while yielded < len(tasks):
                while idle and free_slots and submitted < len(tasks):
                    w, slot_id = idle.pop(), free_slots.pop()
                    task = tasks[submitted]
                    slot: Any = slot_id
                    if self.ipc_mode == "storage":
                        assert self._storage is not None
                        slot = str(self._storage / f"uplink-{task.cid}.bin")
                    wire = (
                        task.round,
                        task.cid,
                        _tensors_to_wire(task.rng),
                        _tensors_to_wire(task.state),
                    )
                    try:
                        self._conns[w].send(("task", wire, ref, slot))
                    except OSError:  # the worker died while idle
                        raise self._crashed(w, task, task.round) from None
                    inflight[w] = (submitted, task, (slot_id, slot))
                    submitted += 1
                if yielded in done:
                    msg, (slot_id, slot) = done.pop(yielded)
                    result = self._receive(msg, (slot_id, slot))
                    free_slots.append(slot_id)
                    yielded += 1
                    yield result
                    continue
                self._wait(inflight, idle, done)
            ok = True
        finally:
            if self._round_token is token:  # else close() or a newer round already took over
                self._round_token = None
                if not ok:
                    self._abort()

    def _wait(self, inflight: dict[int, Any], idle: list[int], done: dict[int, Any]) -> None:
        busy = list(inflight)
        ready = mpc.wait([self._conns[w] for w in busy] + [self._procs[w].sentinel for w in busy])
        for w in busy:
            conn, proc = self._conns[w], self._procs[w]
            if conn not in ready and proc.sentinel not in ready:
                continue
            index, task, slot = inflight[w]
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                raise self._crashed(w, task, task.round) from None
            if msg[0] == "error":
                error = ClientTrainingError(task.cid, task.round, msg[2])
                error.add_note(f"worker traceback:\n{msg[3]}")
                raise error
            del inflight[w]
            idle.append(w)
            done[index] = (msg, slot)

    def _receive(self, msg: Any, slot: tuple[int, Any]) -> ClientResult:
        _, cid, body, rng, state, sha = msg
        if body[0] == "value":
            uplink = _uplink_from_wire(body[1])
            self._slot_nbytes = max(self._slot_nbytes, body[2])  # grow slots next round
            self._down_arena = None
        elif self.ipc_mode == "storage":
            path = Path(slot[1])
            layout: PackageLayout = body[1]
            # mapped, not read: the server folds it in from the page cache; the mapping stays
            # valid after the unlink and goes away with the last view
            uplink = layout.read(_map_file(str(path), layout.nbytes))
            path.unlink()
        else:
            assert self._up_arena is not None
            uplink = body[1].read(self._up_arena[slot[0]], copy=True)
        return ClientResult(
            cid, uplink, _tensors_from_wire(rng) or {}, _tensors_from_wire(state), sha
        )
