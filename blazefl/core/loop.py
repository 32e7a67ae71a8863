"""The FL round loop: one function, readable in a sitting."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from blazefl.core.devices import is_cuda
from blazefl.core.process_pool import IPC_MODES, ProcessPoolClientTrainer
from blazefl.core.protocols import ClientWorkload, ServerHandler
from blazefl.core.trainers import BaseClientTrainer, ThreadPoolClientTrainer

__all__ = ["RoundResult", "run_round", "make_trainer", "ExecutionSettings", "EXECUTION_MODES"]

from blazefl.modes import EXECUTION_MODES, RAY_INSTALL_HINT


@dataclass
class RoundResult:
    """What one round did: the clients, their settings, their uplink hashes, the summary."""

    round: int
    clients: list[int]
    uplink_sha256: dict[int, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    client_settings: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: every client's step trace (`blazefl.core.step_trace`), by client id
    traces: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: clients that ran where the environment differs from the driver's (mixed Ray nodes):
    #: client id -> {"node": label, differing field: the node's value}
    client_environments: dict[int, dict[str, Any]] = field(default_factory=dict)


class SamplingError(ValueError):
    """`sample_clients()` returned something other than sorted distinct client ids."""


def checked_sample(clients: Any, num_clients: int | None) -> list[int]:
    """A server's sample, checked: a list of sorted, distinct client ids in [0, num_clients).

    `sample_clients` is an extension point (power-of-choice, availability traces, ...); what it
    returns is recorded in the round's manifest and fixes the aggregation order, so a sample
    that is unsorted, repeats a client or names one outside the run is refused in one line.

    Raises:
        SamplingError: the sample and what it must be.

    Example:
        >>> checked_sample([1, 4, 7], 10)
        [1, 4, 7]
    """
    ids = list(clients) if isinstance(clients, list | tuple) else None
    ok = (
        ids is not None
        and bool(ids)
        and all(isinstance(c, int) and not isinstance(c, bool) for c in ids)
        and all(a < b for a, b in zip(ids, ids[1:], strict=False))
        and ids[0] >= 0
        and (num_clients is None or ids[-1] < num_clients)
    )
    if not ok:
        shown = " ".join(repr(clients).split())[:80]
        bound = f" in [0, {num_clients})" if num_clients is not None else ""
        raise SamplingError(
            f"sample_clients() returned {shown}: it must return a non-empty list of sorted, "
            f"distinct int client ids{bound}"
        )
    return ids  # type: ignore[return-value]


#: What a client setting may be: JSON scalars (recorded in the manifest as they are).
_SETTING_TYPES = (bool, int, float, str)


def checked_settings(settings: Any, clients: list[int]) -> dict[int, dict[str, Any]]:
    """A server's per-client settings, checked: `{cid: {name: value}}` for sampled clients
    only, names identifiers, values finite JSON numbers, strings (at most 200 characters) or
    booleans; what passes is recorded in the round's manifest and reaches the clients.

    Raises:
        SamplingError: what is wrong, naming the client and the setting.

    Example:
        >>> checked_settings({3: {"local_epochs": 2}}, [1, 3])
        {3: {'local_epochs': 2}}
    """
    if not isinstance(settings, dict):
        raise SamplingError(
            f"client_settings() returned {type(settings).__name__}: it must return a dict "
            "{client id: {name: value}}"
        )
    sampled = set(clients)
    out: dict[int, dict[str, Any]] = {}
    for cid in sorted(settings, key=lambda c: (not isinstance(c, int), str(c))):
        values = settings[cid]
        where = f"client_settings()[{cid!r}]"
        if not isinstance(cid, int) or isinstance(cid, bool) or cid not in sampled:
            raise SamplingError(f"{where}: {cid!r} is not a client sampled this round")
        if not isinstance(values, dict):
            raise SamplingError(f"{where} must be a dict of settings, got {type(values).__name__}")
        for name, value in values.items():
            ok = isinstance(value, _SETTING_TYPES) and (
                not isinstance(value, float) or math.isfinite(value)
            )
            ok = ok and (not isinstance(value, str) or len(value) <= 200)
            if not (isinstance(name, str) and name.isidentifier()) or not ok:
                raise SamplingError(
                    f"{where}[{name!r}] = {value!r:.60}: a setting is an identifier naming a "
                    "finite number, a string of at most 200 characters or a boolean"
                )
        if values:
            out[cid] = dict(values)
    return out


def run_round(
    server: ServerHandler[Any, Any],
    trainer: BaseClientTrainer[Any, Any],
    round: int,
    on_client: Callable[[int, int], None] | None = None,
    evaluate: bool = True,
) -> RoundResult:
    """Run one FL round: sample, broadcast, train, aggregate in ascending client-id order.

    Args:
        server: the server handler.
        trainer: any trainer (sequential, threads, processes).
        round: round number (1-based), recorded in client tasks.
        on_client: progress callback `(done, total)` after each client result.
        evaluate: call `server.summary()` after the update.

    Returns:
        The round's clients, per-client uplink hashes and summary metrics.

    Example:
        >>> for t in range(1, rounds + 1):
        ...     print(run_round(server, trainer, t).summary)
    """
    clients = checked_sample(server.sample_clients(), getattr(server, "num_clients", None))
    give = getattr(server, "client_settings", None)  # original-style servers have none
    settings = checked_settings(give(clients), clients) if callable(give) else {}
    payload = server.downlink_package()
    result = RoundResult(round, clients, client_settings=settings)
    # a trainer of the original's API takes no settings: they are passed only when given
    rounds = (
        trainer.train_round(payload, clients, round, settings)
        if settings
        else trainer.train_round(payload, clients, round)
    )
    for i, client in enumerate(rounds, 1):
        server.load(client.uplink)
        result.uplink_sha256[client.cid] = client.sha256
        if client.trace is not None:
            result.traces[client.cid] = client.trace
        where = getattr(client, "environment", None)  # an original-style result has none
        if where:
            result.client_environments[client.cid] = where
        if on_client is not None:
            on_client(i, len(clients))
    server.global_update()
    if evaluate:
        result.summary = server.summary()
    return result


class RayUnavailableError(ValueError):
    """`ray` mode was asked for and Ray is not installed (one line: what to install)."""


def require_ray() -> None:
    """Refuse `ray` mode, before any work, when Ray is not installed (found without importing
    it: `blazefl --help` and the other modes never pay for Ray's import).

    Raises:
        RayUnavailableError: one line naming what to install.

    Example:
        >>> require_ray()  # silent where Ray is installed
    """
    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # a broken or blocked installation counts as none
        found = False
    if not found:
        raise RayUnavailableError(
            f"runtime.mode ray needs Ray, which is not installed: {RAY_INSTALL_HINT}"
        )


@dataclass(frozen=True)
class ExecutionSettings:
    """How client work executes: mode, worker count, process-pool IPC and, in `ray` mode,
    which Ray cluster. None of these changes result bytes, so they travel together, apart
    from the experiment's settings.

    Attributes:
        mode: one of `EXECUTION_MODES`.
        workers: worker threads, processes or Ray actors.
        ipc: process-pool IPC.
        ray_address: the Ray cluster to join (`ray` mode): None starts a local Ray runtime
            sized by `workers` unless `RAY_ADDRESS` is set; "auto" joins the cluster this
            machine is part of.
        ray_allow_mixed_env: run clients on Ray nodes whose bit-relevant environment differs
            from the driver's (a warning line instead of a refusal; bytes may then differ).

    Example:
        >>> with ExecutionSettings("processes", 2, "storage").make_trainer(w, seed=0) as t: ...
    """

    mode: str = "sequential"
    workers: int = 1
    ipc: str = "shared_memory"
    ray_address: str | None = None
    ray_allow_mixed_env: bool = False
    #: a `RayStart` begun by `started()`, adopted by the trainer these settings make
    ray_start: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in EXECUTION_MODES:
            raise ValueError(f"mode must be one of {', '.join(EXECUTION_MODES)}, got {self.mode!r}")
        if self.mode == "ray":
            require_ray()  # one line before any data is built or anything is written
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers <= 0:
            raise ValueError(f"workers must be an integer >= 1, got {self.workers!r}")
        if self.ipc not in IPC_MODES:  # checked in every mode: a typo must not pass silently
            raise ValueError(f"ipc must be one of {', '.join(IPC_MODES)}, got {self.ipc!r}")

    @classmethod
    def of(
        cls,
        runtime: Any,
        mode: str | None = None,
        workers: int | None = None,
        ipc: str | None = None,
    ) -> ExecutionSettings:
        """Settings from a runtime config section (`mode`, `workers`, `ipc`), with overrides."""
        return cls(mode or runtime.mode, workers or runtime.workers, ipc or runtime.ipc)

    def with_ray(self, address: str | None, allow_mixed_env: bool = False) -> ExecutionSettings:
        """These settings joining the Ray cluster at `address` (see the class attributes).

        Example:
            >>> ExecutionSettings("ray", 2).with_ray("auto").ray_address
            'auto'
        """
        return dataclasses.replace(
            self, ray_address=address, ray_allow_mixed_env=bool(allow_mixed_env)
        )

    @contextlib.contextmanager
    def started(self, threads_per_client: int = 1, device: str = "cpu") -> Iterator[Any]:
        """These settings, with what their trainer needs and can start before the workload
        exists already starting in the background: in `ray` mode, Ray and the actors
        (`blazefl.core.ray_runtime`), so their start-up overlaps the caller's data building.
        The trainer made inside the block adopts it; what no trainer adopted is stopped when
        the block ends. Other modes: the settings as they are.

        Example:
            >>> with ExecutionSettings("ray", 2).started() as how:
            ...     data = build_data()  # while Ray starts
            ...     with how.make_trainer(workload(data), seed=0) as trainer: ...
        """
        if self.mode != "ray" or self.ray_start is not None:
            yield self
            return
        from blazefl.core.devices import run_devices
        from blazefl.core.ray_runtime import RayStart  # lazy: Ray is an optional extra

        start = RayStart(
            num_workers=self.workers,
            threads_per_client=threads_per_client,
            device=device,
            local_gpus=len(run_devices(device)) if is_cuda(device) else 0,
            address=self.ray_address,
            allow_mixed_env=self.ray_allow_mixed_env,
        ).begin()
        try:
            yield dataclasses.replace(self, ray_start=start)
        finally:
            start.close()

    def make_trainer(
        self,
        workload: ClientWorkload[Any, Any],
        *,
        seed: int,
        threads_per_client: int = 1,
        device: str = "cpu",
        storage_dir: str | os.PathLike[str] | None = None,
    ) -> BaseClientTrainer[Any, Any]:
        """The trainer for these settings (see `make_trainer`; `device` changes bytes, so it
        comes from the experiment, not from these settings; `storage_dir` is where storage-mode
        IPC files go, a place rather than a setting)."""
        return make_trainer(
            self.mode,  # type: ignore[arg-type]
            workload,
            seed=seed,
            workers=self.workers,
            ipc=self.ipc,  # type: ignore[arg-type]
            threads_per_client=threads_per_client,
            device=device,
            storage_dir=storage_dir,
            ray_address=self.ray_address,
            ray_allow_mixed_env=self.ray_allow_mixed_env,
            ray_start=self.ray_start,
        )


def make_trainer(
    mode: Literal["sequential", "threads", "processes", "ray"],
    workload: ClientWorkload[Any, Any],
    *,
    seed: int,
    workers: int = 1,
    ipc: Literal["shared_memory", "storage"] = "shared_memory",
    threads_per_client: int = 1,
    device: str = "cpu",
    storage_dir: str | os.PathLike[str] | None = None,
    ray_address: str | None = None,
    ray_allow_mixed_env: bool = False,
    ray_start: Any = None,
) -> BaseClientTrainer[Any, Any]:
    """Build the trainer for an execution mode (all modes give the same bytes).

    Args:
        mode: "sequential", "threads", "processes" or "ray".
        workload: client work.
        seed: experiment seed.
        workers: worker threads/processes/Ray actors (ignored for sequential).
        ipc: process-pool IPC mode.
        threads_per_client: intra-op threads for client work.
        device: `runtime.device` ("cpu", "cuda", "cuda:N"; see `blazefl.core.devices`).
        storage_dir: parent folder of the process pool's storage-mode IPC folder (default:
            the system temp folder); a runner passes a folder it owns, so that a later run can
            remove what a SIGKILL of this one left there.
        ray_address: `ray` mode: the cluster to join (None: `RAY_ADDRESS`, else a local Ray
            runtime started for this trainer and stopped by `close()`).
        ray_allow_mixed_env: `ray` mode: warn about, instead of refusing, nodes whose
            bit-relevant environment differs from this process's.
        ray_start: `ray` mode: a `RayStart` begun earlier for the same settings (adopted).

    Returns:
        A trainer; use it as a context manager so pools are released.

    Raises:
        ValueError: bad mode/workers/ipc, a GPU this machine does not have, or `ray` mode
            without Ray installed (`RayUnavailableError`).

    Example:
        >>> with make_trainer("ray", workload, seed=0, workers=2) as trainer:
        ...     results = list(trainer.train_round(downlink, [0, 3]))
    """
    if mode not in EXECUTION_MODES:
        raise ValueError(f"mode must be one of {', '.join(EXECUTION_MODES)}, got {mode!r}")
    if workers <= 0:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if ipc not in IPC_MODES:  # checked in every mode: a typo must not pass silently
        raise ValueError(f"ipc must be one of {', '.join(IPC_MODES)}, got {ipc!r}")
    if mode == "sequential":
        return BaseClientTrainer(
            workload, seed=seed, threads_per_client=threads_per_client, device=device
        )
    if mode == "threads":
        return ThreadPoolClientTrainer(
            workload,
            seed=seed,
            num_workers=workers,
            threads_per_client=threads_per_client,
            device=device,
        )
    if mode == "processes":
        return ProcessPoolClientTrainer(
            workload,
            seed=seed,
            num_workers=workers,
            ipc_mode=ipc,
            threads_per_client=threads_per_client,
            storage_dir=storage_dir,
            device=device,
        )
    if mode == "ray":
        require_ray()
        from blazefl.core.ray_pool import RayClientTrainer  # lazy: Ray is an optional extra

        return RayClientTrainer(
            workload,
            seed=seed,
            num_workers=workers,
            threads_per_client=threads_per_client,
            device=device,
            address=ray_address,
            allow_mixed_env=ray_allow_mixed_env,
            prestarted=ray_start,
        )
    raise ValueError(f"mode must be one of {', '.join(EXECUTION_MODES)}, got {mode!r}")
