"""Running one client: the code path every execution mode shares, and how its failures are
named (`ClientTrainingError` for client work, `WorkerStartError` for a worker that cannot be
built)."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import torch

from blazefl.core.cancellation import ClientCancelledError, bound_stop_event, raise_if_cancelled
from blazefl.core.devices import build_worker, worker_scope
from blazefl.core.packages import ClientResult, ClientTask, package_sha256
from blazefl.core.protocols import ClientWorker, ClientWorkload
from blazefl.core.step_trace import tracing
from blazefl.reproducibility import RNGSuite
from blazefl.reproducibility.global_rng import global_rng_state

__all__ = [
    "GLOBAL_RNG_DRAWN",
    "ClientTrainingError",
    "WorkerStartError",
    "PERTURB_ENV",
    "one_line",
    "run_client_task",
    "start_worker",
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


#: Why a client fails whose code drew from torch's process-global generator.
GLOBAL_RNG_DRAWN = (
    "its code drew from torch's process-global RNG (nn.Dropout, F.dropout, torch.rand/randn/"
    "randperm without generator=, a DataLoader without generator=): threads share that "
    "generator and a re-executed round starts it elsewhere, so the bytes would not reproduce; "
    "draw from the client's RNGSuite instead (rng.torch as generator=)"
)


class WorkerStartError(ValueError):
    """A client worker could not be built (`make_worker()` raised, or a worker process could
    not load the workload or died before it was ready). No client has trained yet.

    It is a ValueError on purpose: the cause is the user's workload or what it needs (an
    unpicklable or unimportable class, a constructor that raises), i.e. bad input to fix before
    anything can run, not a failure of client work in a round (the CLI exits 2, not 1).
    """


def start_worker(workload: ClientWorkload[Any, Any], device: str, what: str = "worker") -> Any:
    """`build_worker`, with any error from user code reported as a `WorkerStartError`.

    Args:
        workload: the user's client work (`make_worker()` is called here).
        device: the device the worker's model lives on.
        what: how the message names the worker.

    Returns:
        The built worker.

    Raises:
        WorkerStartError: "<what> failed to start: <exception type>: <first line>".

    Example:
        >>> worker = start_worker(workload, "cpu")
    """
    try:
        return build_worker(workload, device)
    except Exception as exc:
        raise WorkerStartError(f"{what} failed to start: {one_line(exc)}") from exc


def one_line(exc: BaseException) -> str:
    """`"Type: message"`, first line only (error messages end as one line on stderr).

    Example:
        >>> one_line(ValueError("bad\nmore"))
        'ValueError: bad'
    """
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _interrupt_may_be_real() -> bool:
    # Ctrl-C raises KeyboardInterrupt only in the main thread of a process that does not ignore
    # SIGINT (pool workers ignore it). Anywhere else a KeyboardInterrupt came from client code.
    return (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) != signal.SIG_IGN
    )


def _perturb_if_requested(task: ClientTask, uplink: Any) -> None:
    spec = os.environ.get(PERTURB_ENV)
    if not spec or spec != f"{task.round}:{task.cid}":
        return
    for value in vars(uplink).values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value.view(-1)[0] += 1.0
            return


def run_client_task(
    worker: ClientWorker[Any, Any],
    task: ClientTask,
    payload: Any,
    stop_event: threading.Event | None = None,
) -> ClientResult:
    """Run one client on `worker` and package the result (used by every execution mode).

    Args:
        worker: the worker's reusable model/optimizer holder.
        task: client id, round, RNG state and persistent state.
        payload: the round's downlink package (read only).
        stop_event: the round's stop event, bound for `raise_if_cancelled` in client code.

    Returns:
        The client's result with its new RNG state and uplink hash.

    Raises:
        ClientCancelledError: the round was cancelled before or while this client ran.
        ClientTrainingError: client code raised (the cause is chained).
    """
    try:
        # on a GPU worker: its device and stream are current, so the CUDA generator lands there
        with worker_scope(worker), bound_stop_event(stop_event):
            # deferred: the session validated every state when it loaded the round
            rng = RNGSuite.from_state_tensors(task.rng, deferred=True)
            raise_if_cancelled()  # a queued client of a cancelled round does not start
            global_before = global_rng_state()
            with tracing(rng.torch) as trace:  # the steps the client's loop records
                uplink, state = worker.train(task, payload, rng)
            if not torch.equal(global_before, global_rng_state()):
                raise ClientTrainingError(task.cid, task.round, GLOBAL_RNG_DRAWN)
    except (ClientCancelledError, ClientTrainingError):
        raise  # a cancellation, not a client failure; or already named
    except KeyboardInterrupt as exc:
        if _interrupt_may_be_real():
            raise  # sequential mode: a real Ctrl-C (exit 130)
        raise ClientTrainingError(task.cid, task.round, one_line(exc)) from exc
    except (Exception, SystemExit) as exc:  # name the client; keep the original as __cause__
        # SystemExit too: client code must not end the runner with its own exit code
        raise ClientTrainingError(task.cid, task.round, f"{type(exc).__name__}: {exc}") from exc
    _perturb_if_requested(task, uplink)
    try:
        sha = package_sha256(uplink)
    except (TypeError, ValueError) as exc:  # e.g. a metadata value with no canonical bytes
        raise ClientTrainingError(task.cid, task.round, f"its uplink: {exc}") from exc
    return ClientResult(task.cid, uplink, rng.state_tensors(), state, sha, trace.tensors())
