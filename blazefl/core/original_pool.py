"""The original BlazeFL's process-pool contract, run by `ProcessPoolClientTrainer`.

A subclass that implements the original's static `worker(config, payload, device, stop_event,
*, shm_buffer=None)`, `get_client_config(cid)` and (for shared memory)
`prepare_uplink_package_buffer()`, and sets `num_parallels`, `share_dir`, `device`, `cache`,
`ipc_mode` and `stop_event` in its own `__init__`, is driven as the original drives it:

- ``IPCMode.STORAGE``: the payload goes to ``share_dir/payload.pkl`` and each client's config to
  ``share_dir/<cid>.pkl`` (`torch.save`); `worker` gets the two paths and returns the path of
  the file holding its uplink, which is loaded with `torch.load`.
- ``IPCMode.SHARED_MEMORY``: the payload's tensors are moved to shared memory, each client gets
  a buffer from `prepare_uplink_package_buffer()` (moved too: the round's buffers share one
  shared-memory segment, as creating one costs milliseconds), `worker` gets the objects and
  `shm_buffer=`, and returns a receipt (tensors replaced by `SHMHandle`) that is put back
  together with the buffer (`reconstruct_from_shared_memory`).

Uplinks are cached in `cid_list` order, whatever order workers finish in, and
`progress_fn(jobs)` sees the jobs in that order. `stop_event` is cleared when a
round starts and set when it ends, fails or is interrupted.

Differences from the original, none of which changes what `worker` sees:

- The pool is started once (spawn, never fork) and reused for every round until `close()`;
  each worker receives a given shared-memory tensor (the dataset in a config, the payload) once
  per round instead of once per client (`blazefl.core.original_workers`). The jobs
  `progress_fn` sees have `ApplyResult`'s methods (`ready`, `wait`, `get`, `successful`).
- A worker process pins its intra-op threads to `threads_per_client` when the trainer sets it,
  else to its share of the CPUs (`cpus // num_parallels`, at least 1), so that
  `num_parallels` processes do not each start one thread per CPU.
- Ctrl-C (or any exception) terminates the workers at once instead of waiting for them, and a
  worker process that dies is reported as `WorkerCrashedError` instead of hanging the round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Sequence
from enum import Enum, StrEnum
from multiprocessing.managers import BaseProxy
from pathlib import Path
from typing import Any

import torch

import blazefl.core.generator_pickling  # noqa: F401  (generators in configs: by value)
from blazefl.core.original_workers import Job, OriginalPool
from blazefl.core.pool_worker import WorkerCrashedError
from blazefl.core.shared_memory import (
    process_tensors_in_object,
    reconstruct_from_shared_memory,
    share_in_one_segment,
)

__all__ = [
    "IPCMode",
    "OriginalPool",
    "OriginalProcessContract",
    "client_device",
    "close_original_pool",
    "run_original_round",
]


class IPCMode(StrEnum):
    """How an original-style process pool moves data (the original BlazeFL's `IPCMode`).

    Lookup ignores case, so the package's own spellings work too:
    `IPCMode("storage") is IPCMode.STORAGE`.
    """

    STORAGE = "STORAGE"
    SHARED_MEMORY = "SHARED_MEMORY"

    @classmethod
    def _missing_(cls, value: object) -> IPCMode | None:
        if isinstance(value, str):
            return cls.__members__.get(value.upper())
        return None


# -- the main process side ----------------------------------------------------------------------
def _default_threads(num_parallels: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) // num_parallels)


def _pool_for(trainer: Any, num_parallels: int) -> OriginalPool:
    threads = getattr(trainer, "threads_per_client", None) or _default_threads(num_parallels)
    pool: OriginalPool | None = trainer.__dict__.get("_original_pool")
    if pool is not None and (pool.processes, pool.threads) != (num_parallels, threads):
        pool.terminate()
        pool = None
    if pool is None:
        pool = OriginalPool(num_parallels, threads)
        trainer.__dict__["_original_pool"] = pool
    return pool


def close_original_pool(trainer: Any) -> None:
    """Stop the trainer's pool, if it has one (idempotent)."""
    pool: OriginalPool | None = trainer.__dict__.pop("_original_pool", None)
    if pool is not None:
        pool.terminate()


def _wait(job: Any, cid: int) -> Any:
    try:
        return job.get()
    except Exception as exc:
        if not isinstance(exc, WorkerCrashedError):
            exc.add_note(f"raised by worker(...) for client {cid}")
        raise


def _check_num_parallels(trainer: Any) -> int:
    num_parallels = getattr(trainer, "num_parallels", None)
    if not isinstance(num_parallels, int) or num_parallels < 1:
        raise ValueError(
            f"set self.num_parallels to an integer >= 1 in __init__, got {num_parallels!r}"
        )
    return num_parallels


def run_original_round(trainer: Any, payload: Any, cid_list: Sequence[int]) -> None:
    """Run `trainer.worker` for every client in `cid_list`; append the uplinks to its cache.

    Args:
        trainer: a `ProcessPoolClientTrainer` subclass implementing the original contract.
        payload: the round's downlink package.
        cid_list: the clients, in the order their uplinks are cached.

    Raises:
        ValueError: bad `num_parallels`, `ipc_mode` or `share_dir` (one line naming the fix).
        WorkerCrashedError: a worker process died (it may not be the one training the client
            named: a dead process's task is lost, the round stops at the first client waited for).
    """
    num_parallels = _check_num_parallels(trainer)
    mode = _ipc_mode(trainer)
    if not isinstance(getattr(trainer, "cache", None), list):
        trainer.cache = []
    user_stop = getattr(trainer, "stop_event", None)
    if user_stop is None:
        user_stop = trainer.stop_event = threading.Event()
    # a Manager event (the original's examples) travels with every task; anything else
    # (threading.Event, mp.Event) cannot, and the pool's own event stands in for it
    stop_arg = user_stop if isinstance(user_stop, BaseProxy) else None
    pool = _pool_for(trainer, num_parallels)
    user_stop.clear()
    pool.stop.clear()
    folder: Path | None = None
    try:
        make_jobs = _storage_jobs if mode is IPCMode.STORAGE else _shared_memory_jobs
        jobs, folder = make_jobs(trainer, pool, payload, cid_list, stop_arg)
        # by job, not by position: a progress_fn may hand the jobs back in another order
        by_job = {id(job): (i, cid, finish) for i, (cid, job, finish) in enumerate(jobs)}
        results = []
        for job in trainer.progress_fn([job for _, job, _ in jobs]):
            index, cid, finish = by_job[id(job)]
            results.append((index, finish(_wait(job, cid))))
        trainer.cache.extend(package for _, package in sorted(results, key=lambda r: r[0]))
    except BaseException:
        # Ctrl-C, a failing client, a crash: the round is over, nobody waits for the rest
        pool.stop.set()
        with contextlib.suppress(Exception):
            user_stop.set()
        close_original_pool(trainer)
        raise
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    pool.stop.set()
    user_stop.set()
    pool.end_round()


def _ipc_mode(trainer: Any) -> IPCMode:
    raw = getattr(trainer, "ipc_mode", IPCMode.STORAGE)  # the original's default
    try:
        return IPCMode(raw)
    except ValueError:
        raise ValueError(
            f"ipc_mode must be IPCMode.STORAGE or IPCMode.SHARED_MEMORY, got {raw!r}"
        ) from None


def _submit(
    pool: OriginalPool, trainer: Any, cid: int, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Job:
    job = pool.submit(trainer.worker, args, kwargs)
    job.cid = cid
    return job


#: Prefix of the folder a storage-mode round keeps its files in (inside `share_dir`).
ROUND_DIR_PREFIX = ".blazefl-round-"


def private_round_file(path: str | os.PathLike[str]) -> Path:
    """`path`, checked to lie directly in a storage-mode round folder this user alone can
    write (mode 0700, made by `tempfile.mkdtemp`): the only files the original contract's
    pickles are ever read from.

    Raises:
        ValueError: anywhere else (one line: a worker must return the path it was given).
    """
    file = Path(path)
    folder = file.parent
    st = folder.lstat() if folder.name.startswith(ROUND_DIR_PREFIX) else None
    if (
        st is None
        or not stat.S_ISDIR(st.st_mode)
        or st.st_mode & 0o077
        or st.st_uid != os.getuid()
        or file.is_symlink()
    ):
        raise ValueError(
            f"{file} is not a file of this round's private folder: in IPCMode.STORAGE a worker "
            "returns the config path it was given, with its uplink saved there"
        )
    return file


def _package_types(obj: Any, seen: set[type] | None = None) -> set[type]:
    """The dataclass (and enum) types inside an uplink-shaped object: what reading an uplink
    file may construct, and nothing else."""
    seen = set() if seen is None else seen
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if type(obj) not in seen:
            seen.add(type(obj))
            for f in dataclasses.fields(obj):
                _package_types(getattr(obj, f.name), seen)
    elif isinstance(obj, list | tuple | set):
        for item in obj:
            _package_types(item, seen)
    elif isinstance(obj, dict):
        for item in obj.values():
            _package_types(item, seen)
    elif isinstance(obj, Enum):
        seen.add(type(obj))
    return seen


def load_package(path: str | os.PathLike[str], allowed: set[type]) -> Any:
    """An uplink or downlink file of a storage-mode round, read without running pickled code:
    `torch.load(weights_only=True)` constructs tensors, containers and the `allowed` types
    only.

    Raises:
        ValueError: the file names another type (one line naming it and the fix).
    """
    types: list[Any] = sorted(allowed, key=lambda t: t.__qualname__)
    with torch.serialization.safe_globals(types):
        try:
            return torch.load(private_round_file(path), weights_only=True)
        except pickle.UnpicklingError as exc:
            detail = " ".join(str(exc).split())[:160]
            raise ValueError(
                f"{path} cannot be read as a package ({detail}): in IPCMode.STORAGE uplinks are "
                "read without unpickling code; prepare_uplink_package_buffer() must return one "
                "of the uplink's shape, whose dataclass types are the ones allowed"
            ) from None


def _storage_jobs(
    trainer: Any, pool: OriginalPool, payload: Any, cid_list: Sequence[int], stop: Any
) -> tuple[list[tuple[int, Job, Callable[[Any], Any]]], Path]:
    share_dir = getattr(trainer, "share_dir", None)
    if share_dir is None:
        raise ValueError("IPCMode.STORAGE needs self.share_dir (a folder) set in __init__")
    Path(share_dir).mkdir(parents=True, exist_ok=True)
    # the contract's files are pickles (its workers torch.load them): they live in a folder
    # only this user can write, are read back only from there, and go with the round
    folder = Path(tempfile.mkdtemp(prefix=ROUND_DIR_PREFIX, dir=share_dir))
    payload_path = folder / "payload.pt"
    torch.save(payload, payload_path)
    try:
        allowed = _package_types(trainer.prepare_uplink_package_buffer())
    except NotImplementedError:
        allowed = set()

    def finish(result: Any) -> Any:
        if not isinstance(result, str | os.PathLike):
            raise TypeError(
                f"in IPCMode.STORAGE worker must return the path of its saved uplink, got "
                f"{type(result).__name__}"
            )
        return load_package(result, allowed)

    jobs: list[tuple[int, Job, Callable[[Any], Any]]] = []
    for cid in cid_list:
        config_path = folder / f"{cid}.pt"
        torch.save(trainer.get_client_config(cid), config_path)
        args = (config_path, payload_path, trainer.get_client_device(cid))
        jobs.append((cid, _submit(pool, trainer, cid, args, {"stop_event": stop}), finish))
    return jobs, folder


def _shared_memory_jobs(
    trainer: Any, pool: OriginalPool, payload: Any, cid_list: Sequence[int], stop: Any
) -> tuple[list[tuple[int, Job, Callable[[Any], Any]]], Path | None]:
    process_tensors_in_object(payload, mode="move")
    buffers = [trainer.prepare_uplink_package_buffer() for _ in cid_list]
    share_in_one_segment(buffers)  # one shared-memory segment per round, not one per client
    jobs: list[tuple[int, Job, Callable[[Any], Any]]] = []
    for cid, buffer in zip(cid_list, buffers, strict=True):

        def finish(result: Any, buffer: Any = buffer) -> Any:
            return reconstruct_from_shared_memory(result, buffer)

        config = trainer.get_client_config(cid)
        args = (config, payload, trainer.get_client_device(cid))
        kwargs = {"stop_event": stop, "shm_buffer": buffer}
        jobs.append((cid, _submit(pool, trainer, cid, args, kwargs), finish))
    return jobs, None


def client_device(trainer: Any, cid: int) -> str:
    """The original's `get_client_device`: `cuda:{cid % device_count}` on "cuda", else
    `trainer.device` ("cpu" when the trainer sets none)."""
    device = str(getattr(trainer, "device", "cpu"))
    if device == "cuda":
        count = int(getattr(trainer, "device_count", 0) or torch.cuda.device_count())
        return f"cuda:{cid % count}" if count else device
    return device


class OriginalProcessContract:
    """The hooks of the original BlazeFL's process-pool trainer (see the module docstring).

    Mixed into `ProcessPoolClientTrainer`; a subclass that overrides `worker` is driven by
    `run_original_round` instead of the workload machinery.
    """

    @staticmethod
    def worker(
        config: Any,
        payload: Any,
        device: str,
        stop_event: Any,
        *,
        shm_buffer: Any = None,
    ) -> Any:
        """Original BlazeFL contract: train one client in a worker process.

        Override it as a `@staticmethod` in a module-level class (workers import it by name).

        Args:
            config: `get_client_config(cid)`, or the `Path` of its `torch.save` file in
                `IPCMode.STORAGE`.
            payload: the downlink package, or the `Path` of its file in `IPCMode.STORAGE`.
            device: `get_client_device(cid)`.
            stop_event: set when the round is over or abandoned; poll it between steps.
            shm_buffer: `IPCMode.SHARED_MEMORY` only: this client's buffer from
                `prepare_uplink_package_buffer()`, its tensors in shared memory.

        Returns:
            The uplink with its tensors copied into `shm_buffer` and replaced by `SHMHandle`
            (shared memory), or the `Path` of the file the uplink was saved to (storage).

        Raises:
            NotImplementedError: not overridden.
        """
        raise NotImplementedError(
            "ProcessPoolClientTrainer.worker is the original BlazeFL API: override it as a "
            "@staticmethod, or pass a workload to the constructor"
        )

    def get_client_config(self, cid: int) -> Any:
        """Original BlazeFL hook: the picklable per-client config handed to `worker`."""
        raise NotImplementedError("implement get_client_config(cid) for the original worker API")

    def prepare_uplink_package_buffer(self) -> Any:
        """Original BlazeFL hook: an uplink-shaped buffer (`IPCMode.SHARED_MEMORY` only); the
        trainer moves its tensors to shared memory and hands one to each client's `worker`."""
        raise NotImplementedError(
            "IPCMode.SHARED_MEMORY needs prepare_uplink_package_buffer() returning an "
            "uplink-shaped package whose tensors have the result's shapes"
        )

    def progress_fn(self, it: list[Job]) -> Any:
        """Original BlazeFL hook: wrap the round's jobs (e.g. in `tqdm`); no-op by default."""
        return it

    def get_client_device(self, cid: int) -> str:
        """Original BlazeFL hook: the device for client `cid` (see `client_device`)."""
        return client_device(self, cid)

    def _uses_original_api(self) -> bool:
        return getattr(type(self), "worker", None) is not OriginalProcessContract.worker
