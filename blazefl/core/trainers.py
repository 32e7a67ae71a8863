"""Sequential and thread-pool client trainers.

All trainers share one contract: `train_round(payload, cids)` yields one `ClientResult` per
client in ascending client-id order, and the bytes of every result are the same in every
execution mode and with any worker count. That holds because (1) a client's randomness comes
only from its own RNG state, carried from round to round by the trainer, (2) a worker keeps
nothing between clients that changes a result, and (3) the intra-op thread count is pinned in
every thread that runs client work.

Each round has a stop event (`trainer.stop_event`); abandoning the round (Ctrl-C, an exception,
`close()`) sets it and running clients stop at their next check (see `blazefl.core.cancellation`).

`ThreadPoolClientTrainer` also runs the original BlazeFL contract: a subclass that implements
`worker(cid, device, payload, stop_event)` (and sets `num_parallels`, `device`, `device_count`,
`cache`, `stop_event` in its own `__init__`) is driven exactly as the original drives it.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Generic

import torch

from blazefl.core.cancellation import ClientCancelledError, bound_stop_event
from blazefl.core.client_task import (
    PERTURB_ENV,
    ClientTrainingError,
    WorkerStartError,
    run_client_task,
    start_worker,
)
from blazefl.core.daemon_pool import DaemonThreadPool
from blazefl.core.devices import (
    init_client_thread,
    rng_device,
    run_devices,
    worker_device,
)
from blazefl.core.packages import ClientResult, ClientTask, DownlinkT, UplinkT
from blazefl.core.protocols import ClientWorker, ClientWorkload
from blazefl.reproducibility import create_rng_suite, pin_client_threads

__all__ = [
    "BaseClientTrainer",
    "ThreadPoolClientTrainer",
    "ClientTrainingError",
    "WorkerStartError",
    "start_worker",
    "run_client_task",
    "PERTURB_ENV",
]


def ordered_window(
    submit: Callable[[ClientTask], Future[ClientResult]],
    tasks: Iterable[ClientTask],
    window: int,
) -> Iterator[ClientResult]:
    """Run tasks with at most `window` in flight; yield results in task order.

    Completion order never leaks into the output, and memory stays bounded by the window.
    """
    pending: deque[Future[ClientResult]] = deque()
    it = iter(tasks)
    try:
        for task in it:
            pending.append(submit(task))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(submit(nxt))
            yield result
    finally:
        for fut in pending:
            fut.cancel()


class BaseClientTrainer(Generic[UplinkT, DownlinkT]):
    """Sequential trainer: clients run one after another in the calling thread.

    It also owns what every trainer tracks between rounds: each client's RNG state (created
    from `(seed, cid)` the first time, then carried from the previous round) and, for
    stateful algorithms, each client's persistent state.

    Args:
        workload: picklable client work (builds the reusable worker).
        seed: experiment seed; client `cid` starts from `create_rng_suite(seed, cid)`.
        threads_per_client: intra-op threads for client work (changes result bits).
        device: `runtime.device` ("cpu", "cuda", "cuda:N"); worker w runs on
            `devices[w % len(devices)]` (`blazefl.core.devices`), client RNG suites then carry
            a CUDA generator. Changes result bits.

    Raises:
        DeviceUnavailableError: a GPU is asked for and this machine has none (a ValueError).

    Example:
        >>> trainer = BaseClientTrainer(workload, seed=42)
        >>> trainer.local_process(server.downlink_package(), server.sample_clients())
        >>> for pkg in trainer.uplink_package(): server.load(pkg)
    """

    def __init__(
        self,
        workload: ClientWorkload[UplinkT, DownlinkT],
        *,
        seed: int,
        threads_per_client: int = 1,
        device: str = "cpu",
    ) -> None:
        if threads_per_client <= 0:
            raise ValueError(f"threads_per_client must be >= 1, got {threads_per_client}")
        self.device = device
        self.devices = run_devices(device)  # refuses a GPU this machine lacks, before any work
        self._rng_device = rng_device(device)
        self.workload = workload
        self.seed = seed
        self.threads_per_client = threads_per_client
        self.rng_states: dict[int, dict[str, torch.Tensor]] = {}
        self.client_states: dict[int, dict[str, torch.Tensor]] = {}
        self._round = 0
        self._cache: list[UplinkT] = []
        self._worker: ClientWorker[UplinkT, DownlinkT] | None = None
        #: Set to cancel the round in flight; every round starts with a fresh, clear event.
        self.stop_event = threading.Event()

    # -- state carried between rounds ---------------------------------------------------
    def client_rng_state(self, cid: int) -> dict[str, torch.Tensor]:
        """The RNG state client `cid` will start its next round from."""
        state = self.rng_states.get(cid)
        if state is None:
            state = create_rng_suite(self.seed, cid, device=self._rng_device).state_tensors()
            self.rng_states[cid] = state
        return state

    def make_tasks(
        self,
        cid_list: Sequence[int],
        round: int,
        settings: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> list[ClientTask]:
        """Tasks for this round in ascending client-id order (with each client's settings)."""
        cids = sorted(set(int(c) for c in cid_list))
        if len(cids) != len(cid_list):
            raise ValueError("cid_list contains duplicate client ids")
        given = settings or {}
        return [
            ClientTask(
                round,
                cid,
                self.client_rng_state(cid),
                self.client_states.get(cid),
                dict(given.get(cid, {})),
            )
            for cid in cids
        ]

    # -- the round ------------------------------------------------------------------------
    def train_round(
        self,
        payload: DownlinkT,
        cid_list: Sequence[int],
        round: int | None = None,
        settings: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> Iterator[ClientResult]:
        """Train the given clients; yield their results in ascending client-id order.

        Args:
            payload: the downlink package (not modified).
            cid_list: clients to train.
            round: round number recorded in tasks (defaults to an internal counter).
            settings: per-client settings by client id (`ClientTask.settings`).

        Returns:
            An iterator of `ClientResult`; each client's new RNG/persistent state is kept
            as its result is yielded.
        """
        self._round = self._round + 1 if round is None else round
        tasks = self.make_tasks(cid_list, self._round, settings)
        for result in self._execute(payload, tasks):
            self.rng_states[result.cid] = result.rng
            if result.state is not None:
                self.client_states[result.cid] = result.state
            yield result

    def _execute(self, payload: DownlinkT, tasks: list[ClientTask]) -> Iterator[ClientResult]:
        if self._worker is None:
            init_client_thread(self.threads_per_client, self.devices[0])
            self._worker = start_worker(self.workload, worker_device(self.devices, 0))
        stop = self.stop_event = threading.Event()
        for task in tasks:
            yield run_client_task(self._worker, task, payload, stop)

    def local_process(self, payload: DownlinkT, cid_list: Sequence[int]) -> None:
        """BlazeFL-style API: train the clients and cache their uplinks."""
        self._cache = [r.uplink for r in self.train_round(payload, cid_list)]

    def uplink_package(self) -> list[UplinkT]:
        """BlazeFL-style API: return (and clear) the cached uplinks, sorted by client id."""
        packages, self._cache = self._cache, []
        return packages

    def close(self) -> None:
        """Cancel the round in flight, release workers and IPC resources (idempotent)."""
        stop = getattr(self, "stop_event", None)
        if stop is not None:
            stop.set()
        self._worker = None

    def __enter__(self) -> BaseClientTrainer[UplinkT, DownlinkT]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ThreadPoolClientTrainer(BaseClientTrainer[UplinkT, DownlinkT]):
    """Clients in parallel threads of this process, sharing memory.

    The downlink is read in place by every thread (zero copy). Each worker thread borrows one
    of `num_workers` workers (model, optimizer, batch buffers) built once in the calling
    thread, so module construction never races on the global RNG. The pool lives as long as
    the trainer. torch kernels release the GIL; on a free-threaded CPython the Python parts run
    in parallel too. The only shared mutable objects are a `queue.Queue` of idle workers and
    the futures; client RNG state is committed by the consuming thread only. Abandoning a
    round (Ctrl-C, an exception, `close()`) sets its `stop_event`: running clients stop at
    their next check instead of training to the end.

    The original BlazeFL contract works too: a subclass that implements
    `worker(cid, device, payload, stop_event)` and sets `num_parallels`, `device`,
    `device_count`, `cache` and `stop_event` in its own `__init__` (no `super().__init__`)
    gets the original `local_process` / `uplink_package`, `progress_fn` and
    `get_client_device`; see `docs/migration.md`.

    Args:
        workload: picklable client work.
        seed: experiment seed.
        num_workers: worker threads (>= 1).
        threads_per_client: intra-op threads pinned in every worker thread.
        device: `runtime.device`; worker w holds its model on `devices[w % len(devices)]`
            and runs on its own CUDA stream there, so workers overlap on one GPU.

    Example:
        >>> with ThreadPoolClientTrainer(workload, seed=0, num_workers=2) as trainer:
        ...     results = list(trainer.train_round(downlink, [0, 3, 7]))
    """

    def __init__(
        self,
        workload: ClientWorkload[UplinkT, DownlinkT],
        *,
        seed: int,
        num_workers: int,
        threads_per_client: int = 1,
        device: str = "cpu",
    ) -> None:
        super().__init__(workload, seed=seed, threads_per_client=threads_per_client, device=device)
        if num_workers <= 0:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self._executor: DaemonThreadPool | None = None
        # a fresh queue per pool: a hung thread abandoned by close() returns its worker to the
        # old queue, never to a pool started later
        self._idle: queue.Queue[ClientWorker[UplinkT, DownlinkT]] = queue.Queue()

    # -- the original BlazeFL contract ----------------------------------------------------
    def worker(
        self, cid: int, device: str, payload: DownlinkT, stop_event: threading.Event
    ) -> UplinkT:
        """Original BlazeFL contract: train client `cid` in a pool thread, return its uplink.

        Not used by the workload API. Override it (in a subclass whose `__init__` sets
        `num_parallels`, `device`, `device_count`, `cache` and `stop_event`) and
        `local_process` runs `worker` for every client on `num_parallels` threads.

        Args:
            cid: client id.
            device: from `get_client_device(cid)`.
            payload: the round's downlink package (shared, read only).
            stop_event: set when the round is abandoned; poll it between steps.

        Returns:
            The client's uplink package.

        Raises:
            NotImplementedError: not overridden.
        """
        raise NotImplementedError(
            "ThreadPoolClientTrainer.worker is the original BlazeFL API: override it, "
            "or pass a workload to the constructor"
        )

    def progress_fn(self, it: list[Future[UplinkT]]) -> Iterable[Future[UplinkT]]:
        """Original BlazeFL hook: wrap the round's futures (e.g. in `tqdm`); no-op by default."""
        return it

    def get_client_device(self, cid: int) -> str:
        """Original BlazeFL hook: the device for client `cid`.

        Returns:
            `f"cuda:{cid % device_count}"` when `device == "cuda"`, else `device`
            (`"cpu"` when the subclass sets none).
        """
        device = str(getattr(self, "device", "cpu"))
        if device == "cuda":
            count = int(getattr(self, "device_count", 0) or torch.cuda.device_count())
            return f"cuda:{cid % count}" if count else device
        return device

    def _uses_original_api(self) -> bool:
        return type(self).worker is not ThreadPoolClientTrainer.worker

    def _run_original_worker(
        self, cid: int, device: str, payload: DownlinkT, stop: threading.Event
    ) -> UplinkT:
        with bound_stop_event(stop):  # package helpers called by `worker` see it too
            return self.worker(cid, device, payload, stop)

    def _original_local_process(self, payload: DownlinkT, cid_list: Sequence[int]) -> None:
        num_parallels = getattr(self, "num_parallels", None)
        if not isinstance(num_parallels, int) or num_parallels < 1:
            raise ValueError(
                f"set self.num_parallels to an integer >= 1 in __init__, got {num_parallels!r}"
            )
        stop = getattr(self, "stop_event", None)
        if stop is None:
            stop = self.stop_event = threading.Event()
        if not isinstance(getattr(self, "cache", None), list):
            self.cache: list[UplinkT] = []
        threads = getattr(self, "threads_per_client", None)
        stop.clear()
        # the original leaves the intra-op thread count alone; pin it only when asked to
        executor = (
            DaemonThreadPool(num_parallels, "blazefl-client", pin_client_threads, (threads,))
            if threads
            else DaemonThreadPool(num_parallels, "blazefl-client")
        )
        try:
            futures = [
                executor.submit(
                    self._run_original_worker, cid, self.get_client_device(cid), payload, stop
                )
                for cid in cid_list
            ]
            for future in self.progress_fn(futures):
                self.cache.append(future.result())
        finally:
            stop.set()  # running clients stop at their next check; queued ones never start
            executor.shutdown()  # bounded: a client that never checks is abandoned

    def local_process(self, payload: DownlinkT, cid_list: Sequence[int]) -> None:
        """Train the clients and cache their uplinks (both APIs; see the class docstring)."""
        if self._uses_original_api():
            self._original_local_process(payload, cid_list)
        else:
            super().local_process(payload, cid_list)

    def uplink_package(self) -> list[UplinkT]:
        """Return (and clear) the cached uplinks: sorted by client id, or in `cid_list` order
        for a subclass that implements the original `worker`."""
        if self._uses_original_api():
            packages: list[UplinkT] = getattr(self, "cache", [])
            self.cache = []
            return packages
        return super().uplink_package()

    # -- the workload API -----------------------------------------------------------------
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
                "this trainer implements the original worker(cid, device, payload, stop_event): "
                "drive it with local_process / uplink_package, not train_round"
            )
        return super().train_round(payload, cid_list, round, settings)

    def _start(self) -> DaemonThreadPool:
        if self._executor is None:
            init_client_thread(self.threads_per_client, self.devices[0])
            self._idle = queue.Queue()
            for w in range(self.num_workers):  # built here: no race on the global RNG
                self._idle.put(start_worker(self.workload, worker_device(self.devices, w)))
            self._executor = DaemonThreadPool(
                self.num_workers,
                "blazefl-client",
                init_client_thread,
                (self.threads_per_client, self.devices[0]),
            )
        return self._executor

    @staticmethod
    def _run_on_idle_worker(
        idle: queue.Queue[ClientWorker[Any, Any]],
        task: ClientTask,
        payload: Any,
        stop: threading.Event,
    ) -> ClientResult:
        worker = idle.get()
        try:
            return run_client_task(worker, task, payload, stop)
        finally:
            idle.put(worker)

    def _execute(self, payload: DownlinkT, tasks: list[ClientTask]) -> Iterator[ClientResult]:
        executor = self._start()
        idle = self._idle
        stop = self.stop_event = threading.Event()

        def submit(task: ClientTask) -> Future[ClientResult]:
            try:
                return executor.submit(self._run_on_idle_worker, idle, task, payload, stop)
            except RuntimeError:
                if stop.is_set():  # close() from another thread shut the pool down mid-round
                    raise ClientCancelledError("round cancelled: the trainer was closed") from None
                raise

        finished = False
        try:
            yield from ordered_window(submit, tasks, window=4 * self.num_workers)
            finished = True
        finally:
            if not finished:
                # abandoned (Ctrl-C, an exception, a failing client, `break`): clients still
                # running stop at their next check instead of training to the end
                stop.set()

    def close(self) -> None:
        """Cancel the round in flight and stop the pool; a client that never checks its stop
        event is abandoned after a short grace period (`blazefl.core.daemon_pool`)."""
        stop = getattr(self, "stop_event", None)
        if stop is not None:
            stop.set()  # shutdown below waits only for the running clients' next check
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown()
            self._executor = None
        idle = getattr(self, "_idle", None)
        while idle is not None and not idle.empty():
            idle.get_nowait()
