"""The worker side of `RayClientTrainer`: one Ray actor per worker, on any node of a Ray
cluster, built once and reused for every client it is given (like a process-pool worker).

Nothing here imports Ray: the trainer wraps `ClientActor` with `ray.remote` when it starts,
so this module is importable (and testable) without the optional extra. The actor never
touches the run directory: everything it needs arrives through Ray's object store (the
workload once per run, the round's downlink once per round, each client's task) and
everything it produces goes back as the value of the call.

Before it runs a client, an actor compares the bit-relevant environment of its node
(`blazefl.core.environment.environment`: torch build, CPU ISA and model, oneDNN/MKL,
`env.*` variables, threads, GPU) with the driver's, and refuses to train on a node that
differs unless mixed nodes are allowed. It checks itself, so an actor that Ray restarts on
another node after a failure is checked there too.
"""

from __future__ import annotations

import copyreg
import hashlib
import io
import json
import os
import pickle
import signal
import sys
import traceback
from typing import Any

import numpy as np
import torch

from blazefl.core.client_task import ClientTrainingError, one_line, run_client_task, start_worker
from blazefl.core.devices import init_client_thread, is_cuda
from blazefl.core.environment import environment
from blazefl.core.generator_pickling import reduce_generator
from blazefl.core.packages import ClientTask, PackageLayout, package_layout
from blazefl.core.pool_worker import tensors_to_wire

__all__ = [
    "NODE_IGNORED_FIELDS",
    "ClientActor",
    "differing_fields",
    "environment_differences",
    "environment_digest",
    "node_label",
    "pickle_workload",
    "read_uplink",
    "tensors_from_reply",
]

#: Fields of the environment record that legitimately differ between the driver and a Ray
#: worker and are not compared: Ray sets `OMP_NUM_THREADS` in every worker it starts (the
#: intra-op thread count itself is pinned to `threads_per_client`, which is compared), and
#: a GPU actor sees only the GPU share Ray gave it (`gpu_count`), while the GPU model, its
#: capability and the CUDA/cuDNN versions are compared.
NODE_IGNORED_FIELDS = frozenset({"env.OMP_NUM_THREADS", "gpu_count"})


def environment_differences(driver: dict[str, Any], node: dict[str, Any]) -> list[str]:
    """The compared fields in which a node's environment differs from the driver's, as
    `"field 'node value' (driver 'driver value')"`, sorted by field.

    Example:
        >>> environment_differences({"cpu_isa": "AVX512"}, {"cpu_isa": "AVX2"})
        ["cpu_isa 'AVX2' (driver 'AVX512')"]
    """
    absent = "(absent)"
    return [
        f"{k} {node.get(k, absent)!r} (driver {driver.get(k, absent)!r})"
        for k in differing_fields(driver, node)
    ]


def differing_fields(driver: dict[str, Any], node: dict[str, Any]) -> list[str]:
    """The compared fields (sorted) whose values differ between two environment records.

    Example:
        >>> differing_fields({"cpu_isa": "AVX512", "pid": 1}, {"cpu_isa": "AVX2", "pid": 2})
        ['cpu_isa']
    """
    keys = sorted((set(driver) | set(node)) - NODE_IGNORED_FIELDS)
    return [k for k in keys if driver.get(k) != node.get(k)]


def environment_digest(env: dict[str, Any]) -> str:
    """A short sha256 of an environment record (compared fields only), to name it in a line.

    Example:
        >>> len(environment_digest({"torch": "2.4.0"}))
        12
    """
    kept = {k: v for k, v in env.items() if k not in NODE_IGNORED_FIELDS}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def node_label(ip: str, node_id: str) -> str:
    """How a line names a Ray node: its IP and the start of its id (several nodes of a test
    cluster share one IP).

    Example:
        >>> node_label("10.0.0.5", "8f2c1d0e9b7a6c5d4e3f")
        'Ray node 10.0.0.5 (id 8f2c1d0e9b7a)'
    """
    return f"Ray node {ip} (id {node_id[:12]})"


def pickle_workload(workload: Any) -> bytes:
    """The workload as bytes, tensors by value (a worker node shares no memory with the
    driver), `torch.Generator`s by their state (`blazefl.core.generator_pickling`).

    Example:
        >>> data = pickle_workload(workload)
    """
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    table = copyreg.dispatch_table.copy()
    table[torch.Generator] = reduce_generator
    pickler.dispatch_table = table  # type: ignore[misc]
    pickler.dump(workload)
    return buffer.getvalue()


class ClientActor:
    """One Ray worker: builds the client worker from the pickled workload once, then trains
    the clients it is given, one at a time, in the order the driver submits them.

    Args:
        threads: intra-op threads (`runtime.threads_per_client`).
        device: "cpu", or "cuda" for a GPU actor (it uses the GPU share Ray gave it).
        sys_path: the driver's `sys.path`; entries missing here and present on this node are
            appended, so the user's code (the same folder on every node) imports.
        driver_env: the driver's environment record, compared before any client runs.
        allow_mixed_env: train on a differing node (the driver warns) instead of refusing.

    Example:
        >>> actor = ray.remote(ClientActor).remote(1, "cpu", sys.path, env, False)
        >>> ray.get(actor.start.remote([ray.put(pickle_workload(workload))]))[0]
        'ready'
    """

    def __init__(
        self,
        threads: int,
        device: str,
        sys_path: list[str],
        driver_env: dict[str, Any],
        allow_mixed_env: bool,
    ) -> None:
        # the driver owns Ctrl-C; an actor ends when the driver kills it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self._threads = threads
        self._device = "cuda:0" if is_cuda(device) else "cpu"  # Ray's share is GPU 0 here
        self._sys_path = sys_path
        self._driver_env = driver_env
        self._allow_mixed = allow_mixed_env
        self._worker: Any = None
        self._node: dict[str, Any] | None = None
        self._downlink: tuple[int, Any] = (-1, None)

    # -- where this actor runs --------------------------------------------------------------
    def node(self) -> dict[str, Any]:
        """This actor's node: `ip`, `node_id`, `label`, its environment record (`env`), the
        compared fields that differ from the driver's (`differs`) and `digest`."""
        if self._node is None:
            import ray  # present wherever this runs as an actor

            ip = ray.util.get_node_ip_address()
            node_id = ray.get_runtime_context().get_node_id()
            env = environment(self._threads, self._device)
            self._node = {
                "ip": ip,
                "node_id": node_id,
                "label": node_label(ip, node_id),
                "env": env,
                "differs": environment_differences(self._driver_env, env),
                "digest": environment_digest(env),
                "pid": os.getpid(),
            }
        return self._node

    def start(self, workload_box: list[Any]) -> tuple[Any, ...]:
        """Check the node, load the workload and build the worker (once).

        The workload comes with every call rather than with the constructor: Ray re-runs the
        constructor of a restarted actor with its original arguments, which it would have to
        keep for the actor's whole life.

        Args:
            workload_box: `[ObjectRef]` of `pickle_workload(workload)` (in a list, so Ray
                hands the reference over unresolved and it is fetched only when needed).

        Returns:
            ("ready", node), ("mismatch", node) on a differing node where mixed nodes are not
            allowed, or ("failed", node, one-line cause, traceback).
        """
        node = self.node()
        if node["differs"] and not self._allow_mixed:
            return ("mismatch", node)
        if self._worker is not None:
            return ("ready", node)
        try:
            for entry in self._sys_path:
                if entry not in sys.path and os.path.isdir(entry):
                    sys.path.append(entry)
            import ray

            workload = pickle.loads(ray.get(workload_box[0]))
            init_client_thread(self._threads, self._device)
            if is_cuda(self._device):
                torch.cuda.set_device(torch.device(self._device))
            self._worker = start_worker(workload, self._device, "Ray worker")
        except BaseException as exc:  # SystemExit from user code too: reported, not raised
            return ("failed", node, one_line(exc), traceback.format_exc())
        return ("ready", node)

    # -- one client ---------------------------------------------------------------------------
    def run(
        self, task: ClientTask, version: int, downlink_box: list[Any], workload_box: list[Any]
    ) -> tuple[Any, ...]:
        """Train one client on this actor's worker.

        Args:
            task: the client's task (round, id, RNG state, persistent state, settings).
            version: the downlink's version (the actor reads each version once).
            downlink_box: `[ObjectRef]` of `(PackageLayout, uint8 array)`: the round's
                downlink, put once per round by the driver.
            workload_box: as for `start` (used when this actor was restarted).

        Returns:
            ("done", node id, layout, uplink bytes, rng, state, sha256, trace) with tensors
            as numpy arrays, or what `start` returns when the actor cannot train (a restart
            on a differing node, a workload that fails there), or ("error", cid, detail,
            traceback) when the client's code raised.
        """
        started = self.start(workload_box)
        if started[0] != "ready":
            return started
        try:
            if self._downlink[0] != version:
                import ray

                layout, data = ray.get(downlink_box[0])
                # an own, writable copy: the object store's buffer is read-only
                self._downlink = (version, layout.read(torch.from_numpy(np.array(data))))
            result = run_client_task(self._worker, task, self._downlink[1])
            up_layout = package_layout(result.uplink)
            arena = torch.empty(up_layout.nbytes, dtype=torch.uint8)
            up_layout.write(result.uplink, arena)  # GPU tensors land on the CPU here
        except ClientTrainingError as exc:
            return ("error", task.cid, exc.detail, traceback.format_exc())
        except Exception as exc:
            return ("error", task.cid, one_line(exc), traceback.format_exc())
        return (
            "done",
            self.node()["node_id"],
            up_layout,
            arena.numpy(),
            tensors_to_wire(result.rng),
            tensors_to_wire(result.state),
            result.sha256,
            tensors_to_wire(result.trace),
        )

    def run_many(
        self,
        tasks: list[ClientTask],
        version: int,
        downlink_box: list[Any],
        workload_box: list[Any],
    ) -> list[tuple[Any, ...]]:
        """Train consecutive clients in one call (fewer calls: less of Ray's per-call cost).

        Returns:
            One reply per client as `run` gives it, ending at the first that is not
            "done" (the driver stops the round there).
        """
        replies = []
        for task in tasks:
            replies.append(self.run(task, version, downlink_box, workload_box))
            if replies[-1][0] != "done":
                break
        return replies


def read_uplink(layout: PackageLayout, data: np.ndarray) -> Any:
    """The uplink package from an actor's reply, in memory of its own (the object store's
    buffer is read-only and would stay pinned while a view of it lives)."""
    return layout.read(torch.from_numpy(np.array(data)))


def tensors_from_reply(d: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor] | None:
    """Tensors from an actor's reply, copied out of the object store's read-only buffers."""
    return None if d is None else {k: torch.from_numpy(np.array(v)) for k, v in d.items()}
