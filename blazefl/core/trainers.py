"""Sequential and thread-pool client trainers.

All trainers share one contract: `train_round(payload, cids)` yields one `ClientResult` per
client in ascending client-id order, and the bytes of every result are the same in every
execution mode and with any worker count. That holds because (1) a client's randomness comes
only from its own RNG state, carried from round to round by the trainer, (2) a worker keeps
nothing between clients that changes a result, and (3) the intra-op thread count is pinned in
every thread that runs client work.
"""

from __future__ import annotations

import os
import queue
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic

import torch

from blazefl.core.packages import ClientResult, ClientTask, DownlinkT, UplinkT, package_sha256
from blazefl.core.protocols import ClientWorker, ClientWorkload
from blazefl.reproducibility import RNGSuite, create_rng_suite, pin_client_threads

__all__ = [
    "BaseClientTrainer",
    "ThreadPoolClientTrainer",
    "ClientTrainingError",
    "run_client_task",
    "PERTURB_ENV",
]

#: Test-only hook: "ROUND:CID" adds 1.0 to the first element of that client's first floating
#: tensor in its uplink, so tests can prove that `verify` names a diverging client.
PERTURB_ENV = "BLAZEFL_TEST_PERTURB_UPLINK"


class ClientTrainingError(RuntimeError):
    """Client work failed; `cid` names the client, `round` the round, `detail` the cause."""

    def __init__(self, cid: int, round: int, message: str) -> None:
        super().__init__(f"client {cid} failed in round {round}: {message}")
        self.cid = cid
        self.round = round
        self.detail = message


def _perturb_if_requested(task: ClientTask, uplink: Any) -> None:
    spec = os.environ.get(PERTURB_ENV)
    if not spec or spec != f"{task.round}:{task.cid}":
        return
    for value in vars(uplink).values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value.view(-1)[0] += 1.0
            return


def run_client_task(worker: ClientWorker[Any, Any], task: ClientTask, payload: Any) -> ClientResult:
    """Run one client on `worker` and package the result (used by every execution mode).

    Args:
        worker: the worker's reusable model/optimizer holder.
        task: client id, round, RNG state and persistent state.
        payload: the round's downlink package (read only).

    Returns:
        The client's result with its new RNG state and uplink hash.
    """
    rng = RNGSuite.from_state_tensors(task.rng)
    try:
        uplink, state = worker.train(task, payload, rng)
    except Exception as exc:  # name the client; keep the original as __cause__
        raise ClientTrainingError(task.cid, task.round, f"{type(exc).__name__}: {exc}") from exc
    _perturb_if_requested(task, uplink)
    return ClientResult(task.cid, uplink, rng.state_tensors(), state, package_sha256(uplink))


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
    ) -> None:
        if threads_per_client <= 0:
            raise ValueError(f"threads_per_client must be >= 1, got {threads_per_client}")
        self.workload = workload
        self.seed = seed
        self.threads_per_client = threads_per_client
        self.rng_states: dict[int, dict[str, torch.Tensor]] = {}
        self.client_states: dict[int, dict[str, torch.Tensor]] = {}
        self._round = 0
        self._cache: list[UplinkT] = []
        self._worker: ClientWorker[UplinkT, DownlinkT] | None = None

    # -- state carried between rounds ---------------------------------------------------
    def client_rng_state(self, cid: int) -> dict[str, torch.Tensor]:
        """The RNG state client `cid` will start its next round from."""
        state = self.rng_states.get(cid)
        if state is None:
            state = create_rng_suite(self.seed, cid).state_tensors()
            self.rng_states[cid] = state
        return state

    def make_tasks(self, cid_list: Sequence[int], round: int) -> list[ClientTask]:
        """Tasks for this round in ascending client-id order."""
        cids = sorted(set(int(c) for c in cid_list))
        if len(cids) != len(cid_list):
            raise ValueError("cid_list contains duplicate client ids")
        return [
            ClientTask(round, cid, self.client_rng_state(cid), self.client_states.get(cid))
            for cid in cids
        ]

    # -- the round ------------------------------------------------------------------------
    def train_round(
        self, payload: DownlinkT, cid_list: Sequence[int], round: int | None = None
    ) -> Iterator[ClientResult]:
        """Train the given clients; yield their results in ascending client-id order.

        Args:
            payload: the downlink package (not modified).
            cid_list: clients to train.
            round: round number recorded in tasks (defaults to an internal counter).

        Returns:
            An iterator of `ClientResult`; each client's new RNG/persistent state is kept
            as its result is yielded.
        """
        self._round = self._round + 1 if round is None else round
        tasks = self.make_tasks(cid_list, self._round)
        for result in self._execute(payload, tasks):
            self.rng_states[result.cid] = result.rng
            if result.state is not None:
                self.client_states[result.cid] = result.state
            yield result

    def _execute(self, payload: DownlinkT, tasks: list[ClientTask]) -> Iterator[ClientResult]:
        if self._worker is None:
            pin_client_threads(self.threads_per_client)
            self._worker = self.workload.make_worker()
        for task in tasks:
            yield run_client_task(self._worker, task, payload)

    def local_process(self, payload: DownlinkT, cid_list: Sequence[int]) -> None:
        """BlazeFL-style API: train the clients and cache their uplinks."""
        self._cache = [r.uplink for r in self.train_round(payload, cid_list)]

    def uplink_package(self) -> list[UplinkT]:
        """BlazeFL-style API: return (and clear) the cached uplinks, sorted by client id."""
        packages, self._cache = self._cache, []
        return packages

    def close(self) -> None:
        """Release workers and IPC resources (idempotent)."""
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
    the futures; client RNG state is committed by the consuming thread only.

    Args:
        workload: picklable client work.
        seed: experiment seed.
        num_workers: worker threads (>= 1).
        threads_per_client: intra-op threads pinned in every worker thread.

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
    ) -> None:
        super().__init__(workload, seed=seed, threads_per_client=threads_per_client)
        if num_workers <= 0:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self._executor: ThreadPoolExecutor | None = None
        self._idle: queue.Queue[ClientWorker[UplinkT, DownlinkT]] = queue.Queue()

    def _start(self) -> ThreadPoolExecutor:
        if self._executor is None:
            pin_client_threads(self.threads_per_client)
            for _ in range(self.num_workers):
                self._idle.put(self.workload.make_worker())
            self._executor = ThreadPoolExecutor(
                self.num_workers,
                thread_name_prefix="blazefl-client",
                initializer=pin_client_threads,
                initargs=(self.threads_per_client,),
            )
        return self._executor

    def _run_on_idle_worker(self, task: ClientTask, payload: DownlinkT) -> ClientResult:
        worker = self._idle.get()
        try:
            return run_client_task(worker, task, payload)
        finally:
            self._idle.put(worker)

    def _execute(self, payload: DownlinkT, tasks: list[ClientTask]) -> Iterator[ClientResult]:
        executor = self._start()

        def submit(task: ClientTask) -> Future[ClientResult]:
            return executor.submit(self._run_on_idle_worker, task, payload)

        yield from ordered_window(submit, tasks, window=4 * self.num_workers)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        while not self._idle.empty():
            self._idle.get_nowait()
