"""Clients the driver trains itself while the Ray actors of a local runtime start.

A local Ray runtime and its actors take seconds to start (Ray's daemons, then one process
per actor that imports torch), and until they are ready the driver would only wait. So the
first clients of the round go to one worker inside the driver instead, one at a time, until
the actors report ready; the rest of the round goes to the actors. A client's bytes depend
only on its task and the round's downlink, never on where it runs (the premise of every
execution mode), so this changes when a round finishes, not what it writes.

Only for a runtime the trainer starts on this machine: a driver that joins a cluster may sit
on a login node that must not train, and there Ray's own start is not on the critical path.
The worker lives in a thread of its own, pinned to `threads_per_client` like a pool thread,
so the driver's main thread keeps its thread count; it is dropped once the actors are ready.
"""

from __future__ import annotations

import threading
from typing import Any

from blazefl.core.client_task import run_client_task, start_worker
from blazefl.core.daemon_pool import DaemonThreadPool
from blazefl.core.devices import init_client_thread, worker_device
from blazefl.core.packages import ClientResult, ClientTask
from blazefl.core.protocols import ClientWorkload

__all__ = ["DRIVER_LABEL", "DriverClients"]

#: How `RayClientTrainer.client_nodes` names the driver, for the clients it trained itself.
DRIVER_LABEL = "driver"


class DriverClients:
    """One client worker inside the driver, in a thread of its own.

    Args:
        workload: the trainer's workload (the worker is built from it on first use).
        threads_per_client: intra-op threads of the worker's thread.
        devices: the run's devices; the worker uses the first (as a pool's worker 0 does).

    Example:
        >>> local = DriverClients(workload, 1, ["cpu"])
        >>> result = local.train(task, downlink, stop_event)
        >>> local.close()
    """

    def __init__(
        self, workload: ClientWorkload[Any, Any], threads_per_client: int, devices: list[str]
    ) -> None:
        self.workload = workload
        self.device = worker_device(devices, 0)
        self._pool: DaemonThreadPool | None = DaemonThreadPool(
            1, "blazefl-driver-client", init_client_thread, (threads_per_client, devices[0])
        )
        self._worker: Any = None

    def _run(self, task: ClientTask, payload: Any, stop: threading.Event) -> ClientResult:
        if self._worker is None:
            self._worker = start_worker(self.workload, self.device, "driver worker")
        return run_client_task(self._worker, task, payload, stop)

    def train(self, task: ClientTask, payload: Any, stop: threading.Event) -> ClientResult:
        """Train one client in the worker's thread and return its result.

        Raises:
            what `run_client_task` raises (`ClientTrainingError` naming the client, ...).
        """
        if self._pool is None:
            raise RuntimeError("the driver's client worker was closed")
        return self._pool.submit(self._run, task, payload, stop).result()

    def close(self) -> None:
        """Stop the thread (a running client stops at its next stop check) and drop the
        worker with its model and optimizer. Idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()
        self._worker = None
