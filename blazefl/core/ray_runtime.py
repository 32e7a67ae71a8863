"""Getting Ray ready for the client actors: joining a cluster or starting a local runtime,
and creating the actors, optionally in a background thread.

Ray's start-up is the fixed cost of `ray` mode: a local runtime takes about 2.5 s here (its
daemons are processes that import Ray), and each actor about 1.5 s more (a process that
imports torch). None of it needs the workload, so `RayStart.begin()` runs it in a thread
while the driver builds its datasets and round 0 (`ExecutionSettings.started`), and the
trainer adopts what was started when its first round begins. Started or not in the
background, the same code runs: a trainer without an early start runs it in place.

The thread that called `ray.init` must outlive the connection: when it ends, Ray (2.60)
loses its object-store connection and the next `ray.put` of another thread ends the process
(exit 1, no message). So the start thread parks until the runtime it started is stopped.

`ray.init` cannot be cut short: Ctrl-C while Ray is still starting waits for the start to
finish (up to about 3.5 s here), then stops the runtime, so no Ray process is left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Any

from blazefl.core.devices import is_cuda
from blazefl.core.environment import environment
from blazefl.core.ray_actor import ClientActor

__all__ = ["LOCAL_SYSTEM_CONFIG", "USAGE_STATS_ENV", "RayStart", "stop_local_runtime"]

#: Ray's switch for reporting usage statistics to Ray's servers (on by default in Ray).
USAGE_STATS_ENV = "RAY_USAGE_STATS_ENABLED"

#: Ray settings of a local runtime that blazefl starts (`ray.init(_system_config=...)`). The
#: raylet connects to its own object store as it starts and, when the store is not listening
#: yet, retries after `raylet_client_connect_timeout_milliseconds`: 1,000 ms in Ray 2.60. On 2
#: cores the first try failed in most starts, which then waited a whole second for a store
#: ready 10 ms later (`ray.init` 3.5 s instead of 2.5 s). 50 ms x 200 tries keeps Ray's 10 s
#: of patience for a store that is really slow.
LOCAL_SYSTEM_CONFIG: dict[str, int] = {
    "raylet_client_connect_timeout_milliseconds": 50,
    "raylet_client_num_connect_attempts": 200,
}

#: How long `close()` waits for a background start still in progress (Ctrl-C during the
#: driver's start-up) before stopping what it started.
_JOIN_S = 30.0


def _ray() -> Any:
    import ray  # lazy: an optional extra, and slow to import

    return ray


def _session_open() -> bool:
    return "ray" in sys.modules and bool(_ray().is_initialized())


class RayStart:
    """Ray joined or started, and `num_workers` client actors created.

    Args:
        num_workers: actors (>= 1); also the CPUs of a local runtime (times the threads).
        threads_per_client: intra-op threads; each actor asks Ray for as many CPUs.
        device: `runtime.device`; on CUDA each actor asks for a share of a GPU.
        local_gpus: GPUs a local runtime offers (the driver's, on CUDA).
        address: the cluster to join, or None (`RAY_ADDRESS`, else a local runtime).
        allow_mixed_env: passed to the actors (they train on a differing node).
        max_restarts: Ray's restarts of a lost actor and retries of its call.

    Example:
        >>> start = RayStart(num_workers=2, threads_per_client=1, device="cpu").begin()
        >>> ray, actors, owns_runtime = start.adopt()  # waits for the thread
    """

    def __init__(
        self,
        *,
        num_workers: int,
        threads_per_client: int,
        device: str,
        local_gpus: int = 0,
        address: str | None = None,
        allow_mixed_env: bool = False,
        max_restarts: int = 3,
    ) -> None:
        self.num_workers = num_workers
        self.threads_per_client = threads_per_client
        self.device = device
        self.local_gpus = local_gpus
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.allow_mixed_env = allow_mixed_env
        self.max_restarts = max_restarts
        self.driver_environment = environment(threads_per_client, device)
        #: whether this start will begin a Ray runtime on this machine (no cluster address,
        #: no Ray session of the caller's own): the driver may then train while it starts
        self.starts_local_runtime = self.address is None and not _session_open()
        self.owns_runtime = False
        self._actors: list[Any] = []
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._release = threading.Event()

    def key(self) -> tuple[Any, ...]:
        """What a trainer must ask for to adopt this start."""
        return (self.num_workers, self.threads_per_client, self.device, self.address)

    # -- starting ------------------------------------------------------------------------------
    def begin(self) -> RayStart:
        """Start in a background thread (returns at once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, args=(True,), name="blazefl-ray-start", daemon=True
            )
            self._thread.start()
        return self

    def _run(self, park: bool = False) -> None:
        try:
            self._actors = self.create_actors(self._connect())
        except BaseException as exc:  # raised in the thread that adopts the start
            self._error = exc
        self._ready.set()
        if park:  # see the module docstring: this thread holds Ray's connection
            self._release.wait()

    def _connect(self) -> Any:
        ray = _ray()
        if ray.is_initialized():  # the caller's own Ray session: use it, leave it running
            return ray
        quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
        if self.address:
            try:
                ray.init(address=self.address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                text = " ".join(str(exc).split())[:200]
                raise ValueError(
                    f"cannot join the Ray cluster at {self.address}: {text} (start one with "
                    "`ray start --head`, or leave --ray-address out for a local Ray runtime)"
                ) from None
            return ray
        # the runtime is blazefl's doing, not the user's: it does not report Ray usage to
        # Ray's servers unless the user's environment asks for that (RAY_USAGE_STATS_ENABLED=1)
        os.environ.setdefault(USAGE_STATS_ENV, "0")
        # a start in the background is not in the main thread, where Ray would set a SIGTERM
        # handler; the driver keeps its own, so Ray's warning about it says nothing here
        with _quiet_logger("ray._private.worker"):
            ray.init(
                # "local": a runtime of our own even where `ray start` left the address of a
                # cluster (Ray joins the last one started on this machine when given none,
                # dead or not, and then refuses num_cpus); RAY_ADDRESS was read above
                address="local",
                num_cpus=self.num_workers * self.threads_per_client,
                num_gpus=self.local_gpus,
                include_dashboard=False,
                _system_config=dict(LOCAL_SYSTEM_CONFIG),
                **quiet,
            )
        self.owns_runtime = True
        return ray

    def _gpu_share(self, ray: Any) -> float:
        if not is_cuda(self.device):
            return 0.0
        total = float(ray.cluster_resources().get("GPU", 0))
        if total <= 0:
            raise ValueError(
                "runtime.device is cuda but the Ray cluster has no GPU: start its nodes with "
                "GPUs (ray start --num-gpus=N), or set runtime.device: cpu"
            )
        return min(1.0, total / self.num_workers)

    def create_actors(self, ray: Any) -> list[Any]:
        """`num_workers` new client actors (their processes start in the background)."""
        remote = ray.remote(ClientActor).options(
            num_cpus=self.threads_per_client,
            num_gpus=self._gpu_share(ray),
            max_restarts=self.max_restarts,
            max_task_retries=self.max_restarts,
            scheduling_strategy="SPREAD",  # one actor per node first: less lost per node
        )
        args = (
            self.threads_per_client,
            self.device,
            list(sys.path),
            self.driver_environment,
            self.allow_mixed_env,
        )
        return [remote.remote(*args) for _ in range(self.num_workers)]

    # -- handing over --------------------------------------------------------------------------
    def adopt(self) -> tuple[Any, list[Any], bool]:
        """Wait for the start (or run it here if it was never begun) and take it over.

        Returns:
            (the `ray` module, the actors, whether this start started the local runtime, so
            the adopter must stop it). Actors are handed over once; a later call creates
            new ones (after a round abandoned with its actors killed).

        Raises:
            whatever the start raised (a cluster that cannot be joined, no GPU, ...).
        """
        if self._thread is None:
            self._run()
        else:
            self._ready.wait()
        if self._error is not None:
            error, self._error = self._error, None
            self.close()
            raise error
        ray = _ray()
        actors, self._actors = self._actors, []
        owns, self.owns_runtime = self.owns_runtime, False  # the adopter stops it now
        return ray, actors or self.create_actors(ray), owns

    def close(self) -> None:
        """Stop what was started and not adopted (the run ended before its first round)."""
        if self._thread is not None:
            self._ready.wait(_JOIN_S)
        actors, self._actors = self._actors, []
        if "ray" in sys.modules and _ray().is_initialized():
            for actor in actors:
                with contextlib.suppress(Exception):
                    _ray().kill(actor, no_restart=True)
        if self.owns_runtime:
            self.owns_runtime = False
            self.stop_runtime()

    def stop_runtime(self) -> None:
        """Stop the local runtime this start began (its adopter calls this), then let the
        thread that started it end."""
        stop_local_runtime(_ray())
        self._release.set()


@contextlib.contextmanager
def _quiet_logger(name: str) -> Any:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def stop_local_runtime(ray: Any) -> None:
    """`ray.shutdown()` of the runtime this process started, in about 0.2 s instead of 1.2 s:
    Ray stops its processes one after another, each given a second to exit on SIGTERM, and
    its autoscaler monitor (a Python loop that owns nothing) always takes that whole second,
    which Ctrl-C (exit within 2 s) cannot spare. It is killed first; the rest as Ray does."""
    node = getattr(getattr(ray, "_private", None), "worker", None)
    node = getattr(node, "_global_node", None)
    with contextlib.suppress(Exception):  # Ray's internals moved: the plain shutdown below
        for info in node.all_processes.get("monitor", []):  # type: ignore[union-attr]
            info.process.kill()
    ray.shutdown()
