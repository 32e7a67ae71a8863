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

A worker answers "ready" once its workload is loaded and `make_worker()` has returned; a worker
that cannot get there reports why and the pool raises `WorkerStartError` ("worker process
failed to start: <cause>") instead of blaming the first client it would have trained. On Linux
a worker is killed by the kernel when the runner dies (even by SIGKILL), so it never trains on
as an orphan or writes into a storage folder that the next run cleans up.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.multiprocessing  # noqa: F401  (registers tensor reductions for shared arenas)

import blazefl.core.generator_pickling  # noqa: F401  (generators in a workload: by value)
from blazefl.core.client_task import ClientTrainingError, WorkerStartError
from blazefl.core.devices import init_client_thread, is_cuda, worker_device
from blazefl.core.original_pool import (
    IPCMode,
    OriginalProcessContract,
    close_original_pool,
    run_original_round,
)
from blazefl.core.packages import (
    ClientResult,
    ClientTask,
    DownlinkT,
    PackageLayout,
    UplinkT,
    package_layout,
)
from blazefl.core.pool_worker import (
    DownlinkRef,
    PickledForChild,
    WorkerCrashedError,
    how_it_ended,
    map_file,
    tensors_from_wire,
    tensors_to_wire,
    worker_main,
)
from blazefl.core.protocols import ClientWorkload
from blazefl.core.trainers import BaseClientTrainer
from blazefl.modes import IPC_MODES

__all__ = ["ProcessPoolClientTrainer", "WorkerCrashedError", "WorkerStartError", "IPC_MODES"]

IpcMode = Literal["shared_memory", "storage"]


class ProcessPoolClientTrainer(BaseClientTrainer[UplinkT, DownlinkT], OriginalProcessContract):
    """Clients in a persistent pool of worker processes (true parallelism, isolated memory).

    The pool starts on the first round and lives until `close()`; each worker builds one
    model/optimizer once. If a worker dies, the round stops with `WorkerCrashedError` naming
    the client, every other worker is terminated, and no shared-memory segment is left.

    Args:
        workload: picklable client work; its tensors are moved to shared memory once.
        seed: experiment seed.
        num_workers: worker processes (>= 1).
        ipc_mode: "shared_memory" (fastest) or "storage" (files on disk, lower memory); the
            `IPCMode` members name the same modes.
        threads_per_client: intra-op threads pinned in every worker.
        storage_dir: parent folder for storage-mode files (default: system temp dir).
        start_method: "spawn" or "forkserver" (spawn only on a GPU).
        device: `runtime.device`; worker process w runs on `devices[w % len(devices)]`.

    The original BlazeFL contract works too: a subclass that overrides the static
    `worker(config, payload, device, stop_event, *, shm_buffer=None)` and implements
    `get_client_config` (and `prepare_uplink_package_buffer` for shared memory), setting
    `num_parallels`, `share_dir`, `device`, `cache`, `ipc_mode` (`IPCMode`) and `stop_event`
    in its own `__init__`, is driven as the original drives it (`blazefl.core.original_pool`).

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
        ipc_mode: IpcMode | IPCMode = "shared_memory",
        threads_per_client: int = 1,
        storage_dir: str | os.PathLike[str] | None = None,
        start_method: Literal["spawn", "forkserver"] = "spawn",
        device: str = "cpu",
    ) -> None:
        super().__init__(workload, seed=seed, threads_per_client=threads_per_client, device=device)
        if num_workers <= 0:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if isinstance(ipc_mode, IPCMode):  # the original's enum names the same two modes
            ipc_mode = "storage" if ipc_mode is IPCMode.STORAGE else "shared_memory"
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

    def __class_getitem__(cls, params: Any) -> Any:
        # the original is generic in (uplink, downlink, client config): accept its three
        # parameters; the config type is not tracked
        if isinstance(params, tuple) and len(params) == 3:
            params = params[:2]
        return super().__class_getitem__(params)  # type: ignore[misc]

    # -- the original BlazeFL's contract (a subclass overriding the static `worker`) ---------
    def train_round(
        self,
        payload: DownlinkT,
        cid_list: Sequence[int],
        round: int | None = None,
        settings: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> Iterator[ClientResult]:
        """See `BaseClientTrainer.train_round` (workload API only).

        Raises:
            ValueError: the subclass implements the original `worker` instead of a workload.
        """
        if self._uses_original_api():
            raise ValueError(
                "this trainer implements the original worker(config, payload, device, "
                "stop_event, *, shm_buffer): drive it with local_process / uplink_package, "
                "not train_round"
            )
        return super().train_round(payload, cid_list, round, settings)

    def local_process(self, payload: DownlinkT, cid_list: Sequence[int]) -> None:
        """Train the clients and cache their uplinks: sorted by client id for a workload, in
        `cid_list` order for a subclass that implements the original `worker`
        (`blazefl.core.original_pool`)."""
        if self._uses_original_api():
            run_original_round(self, payload, cid_list)
        else:
            super().local_process(payload, cid_list)

    def uplink_package(self) -> list[UplinkT]:
        """Return (and clear) the cached uplinks (see `local_process` for their order)."""
        if self._uses_original_api():
            packages: list[UplinkT] = getattr(self, "cache", [])
            self.cache: list[UplinkT] = []
            return packages
        return super().uplink_package()

    # -- pool lifecycle ----------------------------------------------------------------
    def _start(self) -> None:
        if self._procs:
            return
        init_client_thread(self.threads_per_client, self.devices[0])
        ctx: Any = mp.get_context(self.start_method)
        self.workload.share_memory()
        if self.ipc_mode == "storage":
            self._storage = Path(tempfile.mkdtemp(prefix="blazefl-ipc-", dir=self._storage_parent))
        # the kernel kills a worker when the *thread* that started it exits: only safe to ask
        # for from the main thread, which lives as long as the process
        die_with_parent = threading.current_thread() is threading.main_thread()
        try:
            for _ in range(self.num_workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=worker_main,
                    args=(
                        child,
                        PickledForChild(self.workload),
                        self.threads_per_client,
                        self.ipc_mode,
                        worker_device(self.devices, len(self._procs)),
                        die_with_parent,
                    ),
                    daemon=True,
                    name="blazefl-worker",
                )
                proc.start()
                child.close()
                self._procs.append(proc)
                self._conns.append(parent)
            for w in range(self.num_workers):  # workers build their models in parallel
                self._await_ready(w)
        except BaseException:
            # a failed start or Ctrl-C while workers start: nothing to wait for
            for proc in self._procs:
                if proc.is_alive():
                    proc.kill()
            self.close()
            raise

    def _await_ready(self, w: int) -> None:
        conn, proc = self._conns[w], self._procs[w]
        mpc.wait([conn, proc.sentinel])
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            msg = None
        if msg is not None and msg[0] == "ready":
            return
        if msg is not None and msg[0] == "failed":
            error = WorkerStartError(f"worker process failed to start: {msg[1]}")
            error.add_note(f"worker traceback:\n{msg[2]}")
            raise error
        proc.join(timeout=5)
        how = how_it_ended(proc.exitcode)
        raise WorkerStartError(
            f"worker process failed to start: it died ({how}) before it was ready"
        )

    @property
    def pids(self) -> list[int]:
        """PIDs of the live worker processes (empty before the first round)."""
        return [p.pid for p in self._procs if p.pid is not None]

    def close(self) -> None:
        """Stop the workers (terminate any that hang) and release shared arenas and files.

        If a round was left unfinished (its iterator abandoned), the workers are killed at once
        instead of being waited for: their results would be thrown away anyway.
        """
        if self._uses_original_api():
            close_original_pool(self)
            stop = getattr(self, "stop_event", None)
            if stop is not None:
                stop.set()
            return
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
    def _publish_downlink(self, payload: DownlinkT, round: int) -> DownlinkRef:
        layout = package_layout(payload)
        self._version += 1
        if self.ipc_mode == "storage":
            assert self._storage is not None
            for old in self._storage.glob("downlink-*.bin"):
                old.unlink()
            path = self._storage / f"downlink-{self._version}.bin"
            layout.write_file(payload, path)
            return DownlinkRef(self._version, layout, str(path))
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
        return DownlinkRef(self._version, layout, None)

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
                        tensors_to_wire(task.rng),
                        tensors_to_wire(task.state),
                        task.settings,  # JSON scalars by name: pickled with the message
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
        _, cid, body, rng, state, sha, trace = msg
        if body[0] == "value":
            uplink = body[1].read(torch.from_numpy(body[2]))
            self._slot_nbytes = max(self._slot_nbytes, body[1].nbytes)  # grow slots next round
            self._down_arena = None
        elif self.ipc_mode == "storage":
            path = Path(slot[1])
            layout: PackageLayout = body[1]
            # mapped, not read: the server folds it in from the page cache; the mapping stays
            # valid after the unlink and goes away with the last view
            uplink = layout.read(map_file(str(path), layout.nbytes))
            path.unlink()
        else:
            assert self._up_arena is not None
            uplink = body[1].read(self._up_arena[slot[0]], copy=True)
        return ClientResult(
            cid,
            uplink,
            tensors_from_wire(rng) or {},
            tensors_from_wire(state),
            sha,
            tensors_from_wire(trace),
        )
