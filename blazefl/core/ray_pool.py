"""`RayClientTrainer`: clients on Ray actors, on this machine or across a Ray cluster, with
the very same bytes as every other execution mode.

- Ray is started here only if it is not running in this process: with no address (and no
  `RAY_ADDRESS`), a local Ray runtime sized by the worker count, stopped by `close()`; with
  an address (`"auto"`, `"HOST:PORT"`), the existing cluster is joined and left running.
- One actor per worker (`ClientActor`, `blazefl.core.ray_actor`), spread over the nodes,
  builds its model/optimizer once from the workload (put into the object store once per run)
  and trains the clients it is given. The round's downlink goes into the object store once per
  round; each client's task (RNG state, persistent state, settings) travels with the call and
  its uplink, new RNG state, state and step trace come back as the call's value. Results are
  yielded in ascending client-id order, whatever order they complete in.
- The driver alone writes the run directory: actors never see a path of it.
- On a local runtime this trainer starts (no address, no Ray session of the caller's), the
  driver trains the round's first clients itself, on a one-thread `ThreadPoolClientTrainer`,
  until the actors are ready: Ray's start takes seconds (its daemons, then a process per actor
  that imports torch) that the driver would otherwise wait through, and a client's bytes do
  not depend on where it runs. One thread, not one per worker: with more, the driver leaves
  Ray's start no CPU and trains every client itself. Never on a cluster: a driver that joins
  one may sit on a login node that must not train.
- Each actor compares its node's bit-relevant environment with the driver's before it runs a
  client (refused in one line naming the node and the field, or a warning line with
  `allow_mixed_env`; each result of a client that ran on such a node then carries the node
  and its differing fields in `ClientResult.environment`, which the round records, and
  `client_nodes` says which node ran which client).
- Faults: an actor whose node dies is restarted by Ray (on another node if one has room) and
  the client it was training is run again, from the same task: same bytes. When Ray gives
  up, the round stops with `RayWorkerLostError` naming the client; completed rounds are kept.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, cast

import torch

from blazefl.core.cancellation import ClientCancelledError
from blazefl.core.client_task import ClientTrainingError, WorkerStartError, one_line
from blazefl.core.devices import is_cuda
from blazefl.core.packages import ClientResult, ClientTask, DownlinkT, UplinkT, package_layout
from blazefl.core.pool_worker import WorkerCrashedError
from blazefl.core.protocols import ClientWorkload
from blazefl.core.ray_actor import (
    differing_fields,
    pickle_workload,
    read_uplink,
    tensors_from_reply,
)
from blazefl.core.ray_runtime import RayStart
from blazefl.core.trainers import BaseClientTrainer, ThreadPoolClientTrainer

__all__ = ["DRIVER_LABEL", "NodeEnvironmentError", "RayClientTrainer", "RayWorkerLostError"]

#: How `RayClientTrainer.client_nodes` names the driver, for the clients it trained itself.
DRIVER_LABEL = "driver"

#: Seconds to wait for every actor to be placed and started before giving up (a cluster
#: without room for them would otherwise wait forever); override with this variable.
START_TIMEOUT_ENV = "BLAZEFL_RAY_START_TIMEOUT"

#: How often the driver wakes from waiting on Ray, so Ctrl-C is handled at once.
_POLL_S = 0.2
#: Calls in flight per actor: the one it runs and the next one, already delivered.
_CALLS_PER_ACTOR = 2
#: Most clients in one call; fewer where that would leave an actor under 4 calls a round,
#: or where the batch's downlink-sized uplinks would pass `_BATCH_BYTES`.
_MAX_BATCH = 8
_BATCH_BYTES = 32 << 20


class NodeEnvironmentError(ValueError):
    """A Ray node's bit-relevant environment differs from the driver's (one line naming the
    node and the fields); allow it with `allow_mixed_env` (`--ray-allow-mixed-env`)."""


class RayWorkerLostError(WorkerCrashedError):
    """A Ray actor (its process or its node) was lost while training a client and Ray could
    not run the client again; `cid` names it. Completed rounds are kept: run again to resume."""

    def __init__(self, cid: int | None, round: int | None, cause: str) -> None:
        RuntimeError.__init__(
            self,
            f"Ray worker lost while training client {cid} in round {round} ({cause}); "
            "completed rounds are kept: run again to resume",
        )
        self.cid = cid
        self.round = round


def _ray() -> Any:
    import ray  # lazy: an optional extra, and slow to import

    return ray


class RayClientTrainer(BaseClientTrainer[UplinkT, DownlinkT]):
    """Clients on `num_workers` Ray actors (see the module docstring).

    Args:
        workload: picklable client work; its module must import on every node.
        seed: experiment seed.
        num_workers: Ray actors (>= 1); also the CPUs of a local Ray runtime.
        threads_per_client: intra-op threads; each actor asks Ray for as many CPUs.
        device: `runtime.device`; on "cuda"/"cuda:N" each actor asks Ray for a share of a
            GPU (`num_gpus` = the cluster's GPUs / workers, at most 1: workers share GPUs
            when there are fewer GPUs than workers).
        address: Ray cluster to join ("auto", "HOST:PORT", "ray://..."); None: `RAY_ADDRESS`,
            else a local runtime started here and stopped by `close()`.
        allow_mixed_env: warn about (instead of refusing) nodes whose environment differs.
        max_restarts: how often Ray restarts a lost actor and retries its client.
        warn: where warning lines go (default: stderr, prefixed "warning: ").
        prestarted: a `RayStart` begun earlier with the same workers, threads, device and
            address (`ExecutionSettings.started`): adopted instead of starting Ray again.

    Raises:
        DeviceUnavailableError: a GPU is asked for and the driver has none.

    Example:
        >>> with RayClientTrainer(workload, seed=0, num_workers=2) as trainer:
        ...     for result in trainer.train_round(downlink, [0, 3, 7]):
        ...         server.load(result.uplink)
    """

    def __init__(
        self,
        workload: ClientWorkload[UplinkT, DownlinkT],
        *,
        seed: int,
        num_workers: int,
        threads_per_client: int = 1,
        device: str = "cpu",
        address: str | None = None,
        allow_mixed_env: bool = False,
        max_restarts: int = 3,
        warn: Callable[[str], None] | None = None,
        prestarted: RayStart | None = None,
    ) -> None:
        super().__init__(workload, seed=seed, threads_per_client=threads_per_client, device=device)
        if num_workers <= 0:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.allow_mixed_env = allow_mixed_env
        self.max_restarts = max_restarts
        self._warn = warn or (lambda text: print(f"warning: {text}", file=sys.stderr))
        self._owns_runtime = False
        self._launch = prestarted or RayStart(
            num_workers=num_workers,
            threads_per_client=threads_per_client,
            device=device,
            local_gpus=len(self.devices) if is_cuda(device) else 0,
            address=address,
            allow_mixed_env=allow_mixed_env,
            max_restarts=max_restarts,
        )
        if self._launch.key() != (num_workers, threads_per_client, device, self.address):
            raise ValueError(
                f"the Ray start given was begun for {self._launch.key()}, not for this "
                "trainer's (workers, threads per client, device, address)"
            )
        self._actors: list[Any] = []
        self._actors_ready = False  # started and their nodes checked
        #: the start of the actors while the driver trains (`_train_while_starting`)
        self._starter: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self._cancel_start = threading.Event()
        self._local: ThreadPoolClientTrainer[UplinkT, DownlinkT] | None = None
        self._workload_ref: Any = None
        self._version = 0
        self._round_open = False
        #: Ray node id -> label, for every node an actor reported from.
        self.nodes: dict[str, str] = {}
        #: Ray node id -> {"node": label, field: the node's value} for each field in which a
        #: node (allowed with `allow_mixed_env`) differs from the driver.
        self.node_differences: dict[str, dict[str, Any]] = {}
        #: client id -> the label of the node that ran it last (filled in every round;
        #: `DRIVER_LABEL` for a client the driver trained while the actors started).
        self.client_nodes: dict[int, str] = {}
        self._warned: set[str] = set()

    @property
    def driver_environment(self) -> dict[str, Any]:
        """The environment record the actors compare their node's with (the driver's)."""
        return self._launch.driver_environment

    @driver_environment.setter
    def driver_environment(self, env: dict[str, Any]) -> None:
        self._launch.driver_environment = env

    # -- the runtime and the actors ------------------------------------------------------------
    def _start(self) -> Any:
        """Ray and started actors: waits for the start begun by `_begin_start` (raising its
        error here), or starts them in place."""
        if self._actors_ready:
            return _ray()
        try:
            if self._starter is None:
                self._start_actors()
            else:
                while self._starter.is_alive():  # in short waits: Ctrl-C is handled at once
                    self._starter.join(_POLL_S)
                self._starter = None
                self._close_local()
                if self._start_error is not None:
                    error, self._start_error = self._start_error, None
                    raise error
        except BaseException:
            self.close()
            raise
        return _ray()

    def _start_actors(self, workload: bytes | None = None) -> None:
        ray, self._actors, owns = self._launch.adopt()  # waits for an early start
        self._owns_runtime = self._owns_runtime or owns
        workload = pickle_workload(self.workload) if workload is None else workload
        self._workload_ref = ray.put(workload)  # once per run
        box = [self._workload_ref]
        replies = self._wait_started(ray, [a.start.remote(box) for a in self._actors])
        for reply in replies:
            self._check_reply(reply, None)
        self._actors_ready = True

    def _begin_start(self) -> None:
        if self._starter is not None or self._actors_ready:
            return
        self._launch.begin()  # Ray's own start in its parked thread (ray_runtime's docstring)
        workload = pickle_workload(self.workload)  # here, before the driver's worker uses it

        def start() -> None:
            try:
                self._start_actors(workload)
            except BaseException as exc:  # raised by `_start` in the driver's thread
                self._start_error = exc

        self._starter = threading.Thread(target=start, name="blazefl-ray-actors", daemon=True)
        self._starter.start()

    def _train_while_starting(
        self, payload: DownlinkT, tasks: list[ClientTask], stop: threading.Event
    ) -> Generator[ClientResult, None, int]:
        """The round's first clients, trained in the driver until the actors are ready (see
        the module docstring); returns how many it trained."""
        self._begin_start()
        if self._local is None:
            self._local = ThreadPoolClientTrainer(
                self.workload,
                seed=self.seed,
                num_workers=1,
                threads_per_client=self.threads_per_client,
                device=self.device,
            )
        # leaving this generator early (actors ready, or the round abandoned) stops the local
        # one's clients in flight at their next check; the actors run those clients again
        local = cast(Generator[ClientResult, None, None], self._local._execute(payload, tasks))
        trained = 0
        try:
            while trained < len(tasks) and self._starter is not None and self._starter.is_alive():
                if stop.is_set():
                    raise ClientCancelledError("round cancelled: the trainer was closed")
                result = next(local)
                self.client_nodes[result.cid] = DRIVER_LABEL
                yield result
                trained += 1
        finally:
            local.close()
        return trained

    def _close_local(self) -> None:
        local, self._local = self._local, None
        if local is not None:
            local.close()

    def _wait_started(self, ray: Any, refs: list[Any]) -> list[Any]:
        limit = float(os.environ.get(START_TIMEOUT_ENV, "120"))
        deadline = time.monotonic() + limit
        pending = list(refs)
        while pending:
            if self._cancel_start.is_set():
                raise ClientCancelledError("the trainer was closed while its actors started")
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=_POLL_S)
            if pending and time.monotonic() > deadline:
                need = f"{self.threads_per_client} CPU(s)"
                raise ValueError(
                    f"only {len(refs) - len(pending)} of {len(refs)} Ray workers started within "
                    f"{limit:.0f} s: the cluster ({_resources(ray)}) has no room for "
                    f"{len(refs)} actors of {need} each; use fewer --workers or add nodes"
                )
        return [self._get(ray, ref, None) for ref in refs]

    def _get(self, ray: Any, ref: Any, task: ClientTask | None) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:  # actor/node lost, Ray's retries used up
            cid, rnd = (None, None) if task is None else (task.cid, task.round)
            raise RayWorkerLostError(cid, rnd, _first_line(exc)) from None
        except (ray.exceptions.RayTaskError, ray.exceptions.ObjectLostError) as exc:
            if task is None:
                raise WorkerStartError(f"Ray worker failed to start: {_first_line(exc)}") from None
            raise ClientTrainingError(task.cid, task.round, _first_line(exc)) from None

    def _check_reply(self, reply: tuple[Any, ...], task: ClientTask | None) -> None:
        kind = reply[0]
        if kind == "done":
            return
        if kind == "error":  # the client's own code raised: name the client, as pools do
            assert task is not None
            error = ClientTrainingError(reply[1], task.round, reply[2])
            error.add_note(f"worker traceback:\n{reply[3]}")
            raise error
        node = reply[1]
        self.nodes[node["node_id"]] = node["label"]
        fields = differing_fields(self.driver_environment, node["env"])
        if fields:
            self.node_differences[node["node_id"]] = {
                "node": node["label"],
                **{k: node["env"].get(k) for k in fields},
            }
        if kind == "mismatch":
            first = node["differs"][0]
            more = len(node["differs"]) - 1
            raise NodeEnvironmentError(
                f"{node['label']} differs from the driver in {first}"
                + (f" and {more} more field(s)" if more else "")
                + ": bits are only promised for the same environment; make the node match "
                "(same torch build, CPU and variables) or pass --ray-allow-mixed-env"
            )
        if kind == "failed":
            failed = WorkerStartError(f"Ray worker on {node['label']} failed to start: {reply[2]}")
            failed.add_note(f"worker traceback:\n{reply[3]}")
            raise failed
        if node["differs"] and node["node_id"] not in self._warned:  # "ready", mixed allowed
            self._warned.add(node["node_id"])
            self._warn(
                f"{node['label']} differs from the driver in {', '.join(node['differs'])}: "
                "its clients' bytes may differ (--ray-allow-mixed-env)"
            )

    # -- a round -----------------------------------------------------------------------------
    def _execute(self, payload: DownlinkT, tasks: list[ClientTask]) -> Iterator[ClientResult]:
        if self._round_open:  # the previous round was abandoned: its actors may be busy
            self._kill_actors()
        stop = self.stop_event = threading.Event()
        self._version += 1
        if not self._actors_ready and self._launch.starts_local_runtime:
            trained = yield from self._train_while_starting(payload, tasks, stop)
            tasks = tasks[trained:]
            if not tasks:
                return
        ray = self._start()
        self._round_open = True
        layout = package_layout(payload)
        arena = torch.empty(layout.nbytes, dtype=torch.uint8)
        layout.write(payload, arena)
        downlink = [ray.put((layout, arena.numpy()))]  # once per round, read by every actor
        # clients go in batches of consecutive ones (fewer calls: Ray costs milliseconds per
        # call), and each actor holds its next batch while it trains one, so it never waits
        # for the driver's round trip (Ray runs an actor's calls in the order sent)
        # (a batch's uplinks are held until their turn: batches of large models stay small)
        size = min(
            _MAX_BATCH, len(tasks) // (len(self._actors) * 4), _BATCH_BYTES // max(1, layout.nbytes)
        )
        size = max(1, size)
        batches = [(i, min(i + size, len(tasks))) for i in range(0, len(tasks), size)]
        idle = [a for _ in range(_CALLS_PER_ACTOR) for a in range(len(self._actors))]
        inflight: dict[Any, tuple[int, int]] = {}  # object ref -> (batch index, actor)
        done: dict[int, list[Any]] = {}
        window = 3 * len(self._actors)  # batches held for in-order delivery stay bounded
        submitted = yielded = 0
        finished = False
        try:
            while yielded < len(batches):
                while idle and submitted < len(batches) and submitted - yielded < window:
                    a = idle.pop()
                    first, end = batches[submitted]
                    ref = self._actors[a].run_many.remote(
                        tasks[first:end], self._version, downlink, [self._workload_ref]
                    )
                    inflight[ref] = (submitted, a)
                    submitted += 1
                if yielded in done:
                    first, _ = batches[yielded]
                    for i, reply in enumerate(done.pop(yielded)):
                        yield self._result(reply, tasks[first + i])
                    yielded += 1
                    continue
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=_POLL_S)
                for ref in ready:
                    b, a = inflight.pop(ref)
                    first, end = batches[b]
                    replies = self._get(ray, ref, tasks[first])
                    for i, reply in enumerate(replies):
                        self._check_reply(reply, tasks[first + i])
                    done[b] = replies
                    idle.append(a)
            finished = True
        finally:
            self._round_open = False
            if not finished:
                stop.set()
                for ref in inflight:  # not retried on the restarted actor: the round is over
                    with contextlib.suppress(Exception):
                        ray.cancel(ref)
                # abandoned (Ctrl-C, a failing client, `break`): clients still running on the
                # actors cannot see this process's stop event, so the actors go
                self._kill_actors()

    def _result(self, reply: tuple[Any, ...], task: ClientTask) -> ClientResult:
        _, node_id, layout, data, rng, state, sha, trace = reply
        self.client_nodes[task.cid] = self.nodes.get(node_id, f"Ray node id {node_id[:12]}")
        return ClientResult(
            task.cid,
            read_uplink(layout, data),
            tensors_from_reply(rng) or {},
            tensors_from_reply(state),
            sha,
            tensors_from_reply(trace),
            # the round records where such a client ran: its bytes are not promised
            self.node_differences.get(node_id),
        )

    # -- ending ------------------------------------------------------------------------------
    def _kill_actors(self) -> None:
        self._actors_ready = False
        actors, self._actors = self._actors, []
        if actors and "ray" in sys.modules and _ray().is_initialized():
            for actor in actors:
                with contextlib.suppress(Exception):  # already gone with its node
                    _ray().kill(actor, no_restart=True)

    def close(self) -> None:
        """Stop the actors and, if this trainer started the local Ray runtime, stop it too
        (no Ray process is left); a joined cluster keeps running. Idempotent."""
        stop = getattr(self, "stop_event", None)
        if stop is not None:
            stop.set()
        self._cancel_start.set()
        starter, self._starter = self._starter, None
        if starter is not None:  # bounded: Ray's own start (seconds), then one poll
            starter.join()
        error, self._start_error = self._start_error, None
        if error is not None and not isinstance(error, ClientCancelledError):
            # every client ran in the driver: the results stand, but Ray never started
            self._warn(f"Ray did not start, so the driver trained every client: {one_line(error)}")
        self._close_local()
        self._kill_actors()
        self._workload_ref = None
        self._launch.close()  # a start never adopted (the run ended before round 1)
        if self._owns_runtime:
            self._owns_runtime = False
            self._launch.stop_runtime()


def _first_line(exc: BaseException) -> str:
    """A Ray exception in one line: its cause's type and message where Ray wraps one."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        text = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def _resources(ray: Any) -> str:
    total = ray.cluster_resources()
    return ", ".join(f"{k} {v:g}" for k, v in sorted(total.items()) if k in ("CPU", "GPU"))
