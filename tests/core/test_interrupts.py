"""Ctrl-C and abandoned rounds: the pool is torn down (no orphans, nothing in /dev/shm), no hang,
and a round never receives results that belong to an abandoned one."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from blazefl import ProcessPoolClientTrainer, ThreadPoolClientTrainer, make_trainer
from tests.core.workloads import (
    all_clients,
    child_processes,
    fast_start,
    faulty,
    leaked_shm,
    orphans,
    shm_entries,
    tiny_experiment,
)


def test_ctrl_c_in_consumer_loop_tears_down_process_pool() -> None:
    children, shm = child_processes(), shm_entries()
    trainer = ProcessPoolClientTrainer(faulty(delay_s=0.2), seed=0, num_workers=2)
    payload = tiny_experiment().server().downlink_package()
    seen: list[int] = []
    pids: list[int] = []
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt), trainer:
        for result in trainer.train_round(payload, all_clients(), 1):
            seen.append(result.cid)
            pids = trainer.pids
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C delivers: KeyboardInterrupt here
    assert seen == [0]
    assert len(pids) == 2
    assert trainer.pids == []
    assert orphans(children, pids) == []
    assert leaked_shm(shm) == set()
    assert time.monotonic() - start < 60


def test_ctrl_c_while_waiting_for_workers_stops_without_waiting_for_clients() -> None:
    # each client sleeps 30 s: if the interrupt waited for the clients the test would take
    # minutes; it must come back at once
    children, shm = child_processes(), shm_entries()
    trainer = ProcessPoolClientTrainer(
        faulty(delay_s=30.0), seed=0, num_workers=2, start_method=fast_start()
    )
    payload = tiny_experiment().server().downlink_package()
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt), trainer:
            timer.start()
            for _ in trainer.train_round(payload, all_clients(), 1):
                pytest.fail("no client can finish before the interrupt")
    finally:
        timer.cancel()
    assert time.monotonic() - start < 20  # not 30 s: nobody waited for a client
    assert trainer.pids == []
    assert orphans(children, []) == []
    assert leaked_shm(shm) == set()


def test_ctrl_c_in_consumer_loop_shuts_thread_pool_down() -> None:
    trainer = ThreadPoolClientTrainer(faulty(delay_s=0.05), seed=0, num_workers=2)
    payload = tiny_experiment().server().downlink_package()
    with pytest.raises(KeyboardInterrupt), trainer:
        for _ in trainer.train_round(payload, all_clients(), 1):
            raise KeyboardInterrupt
    assert not any(t.name.startswith("blazefl-client") for t in threading.enumerate())


@pytest.mark.parametrize("mode", ["processes", "threads"])
def test_round_after_abandoned_round_gets_only_its_own_results(mode: str) -> None:
    """Leaving a round mid-way (break, or an exception caught by the caller) leaves clients in
    flight; the next round must neither mix their results into its own nor hang."""
    workload = faulty(delay_s=0.05)
    children = child_processes()
    payload = tiny_experiment().server().downlink_package()
    with make_trainer("sequential", workload, seed=0) as seq:  # type: ignore[arg-type]
        reference = {r.cid: r.sha256 for r in seq.train_round(payload, all_clients(), 1)}

    trainer = (
        ProcessPoolClientTrainer(workload, seed=0, num_workers=2, start_method=fast_start())
        if mode == "processes"
        else ThreadPoolClientTrainer(workload, seed=0, num_workers=2)
    )
    with trainer:
        abandoned = trainer.train_round(payload, all_clients(), 1)
        first = next(abandoned)  # the others are still being trained
        assert first.cid == 0 and first.sha256 == reference[0]
        trainer.rng_states.clear()  # start every client from round-1 state again
        wanted = [4, 6, 7]
        got = [(r.cid, r.sha256) for r in trainer.train_round(payload, wanted, 1)]
        del abandoned  # finalizing the old iterator must not disturb the trainer
        assert got == [(c, reference[c]) for c in wanted]
        again = [(r.cid, r.sha256) for r in trainer.train_round(payload, [1, 2], 1)]
        assert again == [(1, reference[1]), (2, reference[2])]
    assert orphans(children, []) == []
