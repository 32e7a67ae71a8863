"""The process pool behind the original BlazeFL's contract (`blazefl.core.original_pool`).

A small persistent pool of spawned processes, one pipe each, that runs `fn(*args, **kwargs)`
tasks and hands back `Job`s that behave like `multiprocessing.pool.ApplyResult` (`ready`,
`wait`, `get`, `successful`), so a `progress_fn` written for the original keeps working.

Why not `multiprocessing.Pool`: the original's worker gets its whole client config (dataset
and model selector included) and the payload pickled with every task, and every tensor in
shared memory then crosses the process edge as a file descriptor, fetched by the worker from
the parent over a socket: a few milliseconds per tensor per client. Here each worker is sent a
given shared-memory tensor (or numpy array of 1 KB or more) once per round and keeps it until
the round ends; later tasks name it. So the objects a config holds must not change while a
round runs (between rounds they may: every round sends them afresh). `multiprocessing.Pool`
also loses the task of a worker that dies and waits forever; here the job fails with
`WorkerCrashedError` naming the client.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing.connection as mpc
import pickle
import queue
import signal
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as torch_mp

import blazefl.core.generator_pickling  # noqa: F401  (generators in configs: by value)
from blazefl.core.memory import tune_malloc
from blazefl.core.pool_worker import (
    WorkerCrashedError,
    ask_kernel_to_kill_with_parent,
    exit_now,
)

__all__ = ["Job", "OriginalPool"]

_NEW, _SEEN = "blazefl-storage-new", "blazefl-storage-seen"
_DEPTH = 2  # tasks held by a worker at once: the one it runs and the next
_MIN_ARRAY_BYTES = 1024  # smaller arrays are cheaper to copy than to look up


class _TaskPickler(ForkingPickler):
    """Sends each shared-memory storage, and each numpy array of 1 KB or more, once per worker
    and round, then names it: a config's dataset crosses the pipe once, not once per client."""

    def __init__(self, file: io.BytesIO, sent: set[Any], keep: dict[Any, Any]) -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self.sent, self.keep = sent, keep
        self.passthrough: int | None = None

    def persistent_id(self, obj: Any) -> Any:
        if id(obj) == self.passthrough:
            return None  # the object inside the id returned below pickles as usual
        if type(obj) is torch.UntypedStorage:
            if obj.device.type != "cpu" or not obj.is_shared():
                return None  # the usual reduction (which moves it to shared memory first)
            key: Any = (obj.data_ptr(), obj.nbytes())
        elif type(obj) is np.ndarray and obj.nbytes >= _MIN_ARRAY_BYTES:
            key = ("ndarray", id(obj))
        else:
            return None
        if key in self.sent:
            return (_SEEN, key)
        self.sent.add(key)
        self.keep[key] = obj  # alive until the round ends: its address/id cannot be reused
        self.passthrough = id(obj)
        return (_NEW, key, obj)


class _TaskUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, cache: dict[Any, Any]) -> None:
        super().__init__(file)
        self.cache = cache

    def persistent_load(self, pid: Any) -> Any:
        if pid[0] == _NEW:
            self.cache[pid[1]] = pid[2]
            return pid[2]
        return self.cache[pid[1]]


def _serve(conn: mpc.Connection, threads: int, die_with_parent: bool, stop: Any) -> None:
    """Worker process loop: run tasks until told to stop or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process owns Ctrl-C
    if die_with_parent:
        ask_kernel_to_kill_with_parent()
    torch.set_num_threads(threads)
    tune_malloc()  # as in the package's own workers: no page faults per training step
    cache: dict[Any, Any] = {}
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            exit_now()
        if data == b"stop":
            exit_now()
        if data == b"forget":  # the round is over: drop the storages it sent
            cache.clear()
            continue
        try:
            fn, args, kwargs = _TaskUnpickler(io.BytesIO(data), cache).load()
            if kwargs.get("stop_event") is None:  # the trainer's event could not travel
                kwargs["stop_event"] = stop
            reply: tuple[Any, ...] = ("ok", fn(*args, **kwargs))
        except BaseException as exc:  # reported to the parent, which re-raises it
            reply = ("error", exc, traceback.format_exc())
        try:
            conn.send(reply)
        except OSError:
            exit_now(1)
        except Exception as exc:  # the value or the exception does not pickle
            conn.send(("error", RuntimeError(f"the worker's reply could not be sent: {exc}"), ""))


class Job:
    """One task's result, with the methods of `multiprocessing.pool.ApplyResult`."""

    def __init__(self, pool: OriginalPool, task: tuple[Any, ...]) -> None:
        self._pool = pool
        self.task = task
        self.cid: int | None = None  # set by the trainer: a crash names the client it lost
        self._done = False
        self._ok = False
        self._value: Any = None

    def _finish(self, ok: bool, value: Any) -> None:
        self._done, self._ok, self._value = True, ok, value

    def ready(self) -> bool:
        """Whether the task finished (or failed)."""
        if not self._done:
            self._pool.pump(0.0)
        return self._done

    def successful(self) -> bool:
        """Whether the task returned (ValueError while it runs, as in multiprocessing)."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._ok

    def wait(self, timeout: float | None = None) -> None:
        """Block until the task finishes, or `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            self._pool.pump(left)

    def get(self, timeout: float | None = None) -> Any:
        """The task's return value; re-raises its exception.

        Raises:
            TimeoutError: not finished within `timeout` seconds.
        """
        self.wait(timeout)
        if not self._done:
            raise TimeoutError("the task did not finish in time")
        if not self._ok:
            raise self._value
        return self._value


def _send_loop(conn: mpc.Connection, outbox: queue.SimpleQueue[bytes | None]) -> None:
    """Sender thread of one worker: writes queued messages until None (or the worker dies;
    the pool then sees its process sentinel)."""
    while (data := outbox.get()) is not None:
        try:
            conn.send_bytes(data)
        except OSError:
            return


def _kill(procs: list[Any]) -> None:
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.kill()
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.join(timeout=5)


class OriginalPool:
    """A persistent spawn pool running `fn(*args, **kwargs)` tasks; a task whose
    `stop_event` keyword is None gets the pool's own event (`self.stop`).

    Args:
        processes: worker processes.
        threads: intra-op threads pinned in every worker.
    """

    def __init__(self, processes: int, threads: int) -> None:
        ctx = torch_mp.get_context("spawn")
        self.processes, self.threads = processes, threads
        # handed to workers at start (inheritance is the only way an mp.Event travels)
        self.stop = ctx.Event()
        # the kernel kills a worker when the thread that started it exits: main thread only
        die = threading.current_thread() is threading.main_thread()
        self.procs: list[Any] = []
        self.conns: list[mpc.Connection] = []
        self._finalizer = weakref.finalize(self, _kill, self.procs)
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_serve,
                args=(child, threads, die, self.stop),
                daemon=True,
                name="blazefl-worker",
            )
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
        # each worker holds up to _DEPTH tasks: the next one is already in its pipe when it
        # finishes, so it never waits for this process to wake up and pickle the next
        self.inflight: list[deque[Job]] = [deque() for _ in range(processes)]
        self.outboxes: list[queue.SimpleQueue[bytes | None]] = []
        for conn in self.conns:
            outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
            threading.Thread(target=_send_loop, args=(conn, outbox), daemon=True).start()
            self.outboxes.append(outbox)
        self.dead: set[int] = set()
        self.queue: deque[Job] = deque()
        self.sent: list[set[Any]] = [set() for _ in range(processes)]
        self.keep: dict[Any, Any] = {}

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Job:
        """Queue `fn(*args, **kwargs)`; returns its job."""
        job = Job(self, (fn, args, kwargs))
        self.queue.append(job)
        # collect finished tasks too: a caller that submits for a while (building configs)
        # must not leave workers idle until it starts waiting
        self.pump(0.0)
        return job

    def _dispatch(self) -> None:
        for depth in range(1, _DEPTH + 1):  # first one task for every worker, then a second
            for w, held in enumerate(self.inflight):
                if not self.queue:
                    return
                if w in self.dead or len(held) >= depth:
                    continue
                job = self.queue.popleft()
                buffer = io.BytesIO()
                _TaskPickler(buffer, self.sent[w], self.keep).dump(job.task)
                held.append(job)
                # written by the worker's sender thread: a message larger than the pipe's
                # buffer blocks until the worker reads it, i.e. until it finishes its current
                # task, and this thread must keep feeding the other workers meanwhile
                self.outboxes[w].put(buffer.getvalue())

    def _fail_worker(self, w: int, first: Job | None = None) -> None:
        """Worker `w` died: its tasks fail, the first naming the client it was training."""
        self.dead.add(w)
        proc = self.procs[w]
        proc.join(timeout=5)
        lost = ([first] if first is not None else []) + list(self.inflight[w])
        self.inflight[w].clear()
        for job in lost:
            job._finish(False, WorkerCrashedError(job.cid, None, proc.pid, proc.exitcode))

    def pump(self, timeout: float | None) -> None:
        """Wait up to `timeout` seconds for finished tasks, collect them, dispatch more."""
        self._dispatch()
        busy = [w for w, held in enumerate(self.inflight) if held]
        if not busy:
            return
        waitables: list[Any] = [self.conns[w] for w in busy]
        ready = mpc.wait(waitables + [self.procs[w].sentinel for w in busy], timeout)
        for w in busy:
            conn, proc = self.conns[w], self.procs[w]
            if conn not in ready and proc.sentinel not in ready:
                continue
            try:
                while self.inflight[w] and conn.poll():  # every reply waiting, oldest first
                    reply = conn.recv()
                    self._collect(self.inflight[w].popleft(), reply)
            except (EOFError, OSError):  # the worker died: its pipe is at its end
                self._fail_worker(w)
                continue
            if proc.sentinel in ready and self.inflight[w]:  # died with tasks left
                self._fail_worker(w)
        self._dispatch()

    @staticmethod
    def _collect(job: Job, reply: tuple[Any, ...]) -> None:
        status, *rest = reply
        if status == "ok":
            job._finish(True, rest[0])
            return
        error: BaseException = rest[0]
        if rest[1]:
            error.add_note(f"worker traceback:\n{rest[1]}")
        job._finish(False, error)

    def end_round(self) -> None:
        """Workers drop the storages sent this round; so does the parent."""
        for w, outbox in enumerate(self.outboxes):
            if self.sent[w]:
                outbox.put(b"forget")
            self.sent[w] = set()
        self.keep.clear()

    def terminate(self) -> None:
        """Kill the workers now (idempotent)."""
        self._finalizer()
        for outbox in self.outboxes:
            outbox.put(None)
