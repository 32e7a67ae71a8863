"""Faults: a dying worker or a failing client stops the round with an error naming the client,
quickly, leaving no worker process and no shared-memory segment behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blazefl import (
    BaseClientTrainer,
    ClientTrainingError,
    ProcessPoolClientTrainer,
    ThreadPoolClientTrainer,
    WorkerCrashedError,
    build_experiment,
    run_round,
)
from blazefl.core.cancellation import ClientCancelledError
from blazefl.core.process_pool import WorkerStartError
from tests.core.broken_workloads import RELEASE_HANG, misbehaving
from tests.core.workloads import (
    TINY_SPEC,
    all_clients,
    child_processes,
    fast_start,
    faulty,
    leaked_shm,
    orphans,
    run_all_clients,
    shm_entries,
    tiny_experiment,
    wait_until_dead,
)


@pytest.mark.parametrize(("ipc", "start"), [("shared_memory", "spawn"), ("storage", "forkserver")])
def test_worker_killed_mid_round_raises_error_naming_client(
    ipc: str, start: str, tmp_path: Path
) -> None:
    children, shm = child_processes(), shm_entries()
    stamp = tmp_path / "killed-at"
    trainer = ProcessPoolClientTrainer(
        faulty(fault_cid=5, fault="sigkill", stamp_path=str(stamp)),
        seed=0,
        num_workers=2,
        ipc_mode=ipc,
        start_method=fast_start() if start == "forkserver" else "spawn",
    )
    with trainer, pytest.raises(WorkerCrashedError) as info:
        run_all_clients(trainer)
    detected = time.monotonic()
    assert detected - float(stamp.read_text()) < 20  # detection time, pool startup excluded
    assert info.value.cid == 5 and info.value.round == 1
    assert "client 5" in str(info.value) and "SIGKILL" in str(info.value)
    assert trainer.pids == []  # the pool was shut down
    assert orphans(children, []) == []
    assert leaked_shm(shm) == set()


def test_worker_killed_from_outside_raises_error_naming_a_client_of_the_round() -> None:
    # the worker is killed by pid from another thread, as the OOM killer or a user would; after
    # the first result (0.4 s per client, 8 clients on 2 workers) both workers are busy
    children, shm = child_processes(), shm_entries()
    trainer = ProcessPoolClientTrainer(
        faulty(delay_s=0.4), seed=0, num_workers=2, start_method=fast_start()
    )
    payload = tiny_experiment().server().downlink_package()
    killed: list[tuple[int, float]] = []

    def kill(pid: int) -> None:
        time.sleep(0.05)
        killed.append((pid, time.monotonic()))
        os.kill(pid, signal.SIGKILL)

    threads = []
    with trainer, pytest.raises(WorkerCrashedError) as info:
        for result in trainer.train_round(payload, all_clients(), 1):
            if not threads:
                threads.append(threading.Thread(target=kill, args=(trainer.pids[-1],)))
                threads[0].start()
            assert result.cid < 7, "the round finished although a worker was killed"
    detected = time.monotonic()
    threads[0].join()
    pid, kill_time = killed[0]
    assert detected - kill_time < 20
    assert info.value.cid in all_clients()
    assert f"worker process {pid} died (signal SIGKILL)" in str(info.value)
    assert f"client {info.value.cid}" in str(info.value)
    assert orphans(children, [pid]) == []
    assert leaked_shm(shm) == set()


def test_worker_killed_between_rounds_raises_error_naming_client() -> None:
    # an idle worker's death is noticed when the next round hands it a client
    children, shm = child_processes(), shm_entries()
    trainer = ProcessPoolClientTrainer(faulty(), seed=0, num_workers=1, start_method=fast_start())
    with trainer:
        assert run_all_clients(trainer, 1) == all_clients()
        (pid,) = trainer.pids
        os.kill(pid, signal.SIGKILL)
        wait_until_dead(pid)
        time.sleep(0.5)  # the kernel releases a dead process's sockets just after it exits
        with pytest.raises(WorkerCrashedError) as info:
            run_all_clients(trainer, 2)
    assert info.value.cid == 0 and info.value.round == 2
    assert f"worker process {pid} died (signal SIGKILL)" in str(info.value)
    assert orphans(children, [pid]) == []
    assert leaked_shm(shm) == set()


def test_client_exception_in_process_raises_client_training_error() -> None:
    children, shm = child_processes(), shm_entries()
    trainer = ProcessPoolClientTrainer(
        faulty(fault_cid=3), seed=0, num_workers=1, start_method=fast_start()
    )
    with trainer, pytest.raises(ClientTrainingError) as info:
        run_all_clients(trainer)
    assert info.value.cid == 3 and info.value.round == 1
    message = str(info.value)
    assert message.startswith("client 3 failed in round 1: ValueError: injected failure")
    assert message.count("client 3 failed") == 1
    assert any("injected failure" in note for note in info.value.__notes__)  # worker traceback
    assert orphans(children, []) == []
    assert leaked_shm(shm) == set()


@pytest.mark.parametrize("mode", ["sequential", "threads"])
def test_client_exception_in_this_process_raises_client_training_error(mode: str) -> None:
    workload = faulty(fault_cid=6)
    trainer = (
        BaseClientTrainer(workload, seed=0)
        if mode == "sequential"
        else ThreadPoolClientTrainer(workload, seed=0, num_workers=4)
    )
    with trainer, pytest.raises(ClientTrainingError, match=r"^client 6 failed in round 2") as info:
        run_all_clients(trainer, round=2)
    assert info.value.cid == 6
    assert isinstance(info.value.__cause__, ValueError)
    assert not any(t.name.startswith("blazefl-client") for t in threading.enumerate())


def test_thread_pool_is_usable_after_a_client_error() -> None:
    exp = build_experiment(TINY_SPEC)
    server = exp.server()
    with ThreadPoolClientTrainer(faulty(fault_cid=6), seed=0, num_workers=2) as trainer:
        with pytest.raises(ClientTrainingError):
            run_round(server, trainer, 1)
        trainer.workload.fault_cid = -1  # type: ignore[attr-defined]
        server = exp.server()
        result = run_round(server, trainer, 1)
    assert result.clients == sorted(result.uplink_sha256)


def test_hygiene_checks_can_fail() -> None:
    """The leak and orphan detectors used above do see a leaked segment and a live child."""
    from multiprocessing import shared_memory

    children, shm = child_processes(), shm_entries()
    segment = shared_memory.SharedMemory(create=True, size=64)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert leaked_shm(shm, settle_s=0.0) == {segment.name.lstrip("/")}
        assert [o.split()[0] for o in orphans(children, [])] == [str(child.pid)]
    finally:
        child.kill()
        child.wait()
        segment.close()
        segment.unlink()
    assert leaked_shm(shm, settle_s=0.0) == set()
    assert orphans(children, []) == []


# -- start-up failures and client code that raises what it should not ---------------------------
@pytest.mark.parametrize(
    ("misbehave", "start", "cause"),
    [
        ("unloadable", "spawn", "RuntimeError: this workload cannot be loaded"),
        ("make_worker", "forkserver", "ValueError: make_worker could not build the model"),
    ],
)
def test_worker_that_cannot_start_is_a_start_up_failure(
    misbehave: str, start: str, cause: str
) -> None:
    children, shm = child_processes(), shm_entries()
    trainer = ProcessPoolClientTrainer(
        misbehaving(tiny_experiment(), misbehave),
        seed=0,
        num_workers=2,
        start_method=fast_start() if start == "forkserver" else "spawn",
    )
    with trainer, pytest.raises(WorkerStartError) as info:
        run_all_clients(trainer)
    message = str(info.value)
    assert message.startswith(f"worker process failed to start: {cause}"), message
    assert "client" not in message and "\n" not in message
    assert any(cause.split(": ")[1] in note for note in info.value.__notes__)  # child traceback
    assert isinstance(info.value, ValueError)  # the CLI's bad input: exit 2
    assert trainer.pids == []
    assert orphans(children, []) == []
    assert leaked_shm(shm) == set()


@pytest.mark.parametrize("mode", ["sequential", "threads"])
def test_make_worker_raising_in_this_process_is_a_start_up_failure(mode: str) -> None:
    workload = misbehaving(tiny_experiment(), "make_worker")
    trainer = (
        BaseClientTrainer(workload, seed=0)
        if mode == "sequential"
        else ThreadPoolClientTrainer(workload, seed=0, num_workers=2)
    )
    with trainer, pytest.raises(WorkerStartError, match="^worker failed to start: ValueError"):
        run_all_clients(trainer)


@pytest.mark.parametrize(
    ("mode", "misbehave", "cause"),
    [
        ("threads", "system_exit", "SystemExit: 4"),
        ("threads", "keyboard_interrupt", "KeyboardInterrupt"),
        ("processes", "system_exit", "SystemExit: 4"),
        ("processes", "keyboard_interrupt", "KeyboardInterrupt"),
    ],
)
def test_system_exit_or_keyboard_interrupt_in_client_code_is_that_clients_failure(
    mode: str, misbehave: str, cause: str
) -> None:
    # neither may end the process with the client's exit code nor pass for a real Ctrl-C
    workload = misbehaving(tiny_experiment(), misbehave, fault_cid=3)
    trainer = (
        ThreadPoolClientTrainer(workload, seed=0, num_workers=2)
        if mode == "threads"
        else ProcessPoolClientTrainer(workload, seed=0, num_workers=2, start_method=fast_start())
    )
    with trainer, pytest.raises(ClientTrainingError) as info:
        run_all_clients(trainer)
    assert str(info.value) == f"client 3 failed in round 1: {cause}"
    assert info.value.cid == 3


def test_hung_thread_client_does_not_hold_up_close() -> None:
    # a client waiting an hour without checking its stop event: close() gives up on it after a
    # short grace period, and its daemon thread cannot keep the process alive either
    workload = misbehaving(tiny_experiment(), "hang", fault_cid=0)
    trainer = ThreadPoolClientTrainer(workload, seed=0, num_workers=2)
    payload = tiny_experiment().server().downlink_package()
    rounds = trainer.train_round(payload, all_clients(), 1)

    def consume() -> None:
        with contextlib.suppress(ClientCancelledError):  # the round ends cancelled
            list(rounds)

    consumer = threading.Thread(target=consume, daemon=True)
    RELEASE_HANG.clear()
    try:
        consumer.start()
        time.sleep(0.5)
        trainer.close()  # returns although client 0 is still inside its hang
        stuck = [t for t in threading.enumerate() if t.name.startswith("blazefl-client")]
        assert stuck and all(t.daemon for t in stuck)
    finally:
        RELEASE_HANG.set()  # let the abandoned thread end, so later tests see no pool thread
    for thread in [*stuck, consumer]:
        thread.join(timeout=60)
    assert not any(t.name.startswith("blazefl-client") for t in threading.enumerate())
