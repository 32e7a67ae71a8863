"""A stop event reaches running clients: Ctrl-C, close() or stop_event.set() in thread mode do not
wait for slow clients to finish.

The clients here would run for ~30 s each (3000 steps of 10 ms, checking for cancellation between
steps); every test stops them within a fraction of that. No tight wall-clock bound is asserted: the
machine is shared and noisy, and the margin (one step vs. thousands) makes the point.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from blazefl.algorithms.common import LocalSGD, TrainHParams
from blazefl.core import (
    BaseClientTrainer,
    ClientTask,
    DownlinkPackage,
    ThreadPoolClientTrainer,
    UplinkPackage,
    flatten_module_,
)
from blazefl.core.cancellation import (
    ClientCancelledError,
    bound_stop_event,
    current_stop_event,
    raise_if_cancelled,
)
from blazefl.core.trainers import run_client_task
from blazefl.data import synthetic_dataset
from blazefl.reproducibility import RNGSuite, create_rng_suite

STEP_S = 0.01
STEPS = 3000  # ~30 s per client if nothing stops it
FULL_CLIENT_S = STEP_S * STEPS


@dataclass
class Down(DownlinkPackage):
    value: torch.Tensor


@dataclass
class Up(UplinkPackage):
    value: torch.Tensor
    steps: int


class SlowWorker:
    """Sleeps in small steps, checking for cancellation between them (like a training loop)."""

    def __init__(self, started: threading.Event) -> None:
        self.started = started

    def train(self, task: ClientTask, payload: Down, rng: RNGSuite) -> tuple[Up, None]:
        self.started.set()
        for _ in range(STEPS):
            raise_if_cancelled()
            time.sleep(STEP_S)
        return Up(payload.value + torch.rand(1, generator=rng.torch_cpu), STEPS), None


@dataclass
class SlowWorkload:
    started: threading.Event

    def make_worker(self) -> SlowWorker:
        return SlowWorker(self.started)

    def share_memory(self) -> None:
        pass


def payload() -> Down:
    return Down(torch.zeros(1))


def run_round_in_background(
    trainer: BaseClientTrainer[Any, Any], cids: list[int]
) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for _ in trainer.train_round(payload(), cids, 1):
                pass
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    return thread, errors


def test_raise_if_cancelled_is_a_no_op_outside_a_trainer() -> None:
    assert current_stop_event() is None
    raise_if_cancelled()
    event = threading.Event()
    with bound_stop_event(event):
        assert current_stop_event() is event
        raise_if_cancelled()
        event.set()
        with pytest.raises(ClientCancelledError):
            raise_if_cancelled()
    assert current_stop_event() is None


def test_ctrl_c_in_thread_mode_stops_running_clients() -> None:
    started = threading.Event()
    trainer = ThreadPoolClientTrainer(SlowWorkload(started), seed=0, num_workers=2)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt), trainer:
            timer.start()
            for _ in trainer.train_round(payload(), [0, 1, 2, 3], 1):
                pytest.fail("no client can finish before the interrupt")
    finally:
        timer.cancel()
    elapsed = time.monotonic() - start
    assert started.is_set()
    assert elapsed < FULL_CLIENT_S / 3  # not ~30 s: running clients stopped at their next step
    assert not any(t.name.startswith("blazefl-client") for t in threading.enumerate())


@pytest.mark.parametrize("how", ["stop_event", "close"])
def test_stop_from_another_thread_cancels_the_round(how: str) -> None:
    started = threading.Event()
    trainer = ThreadPoolClientTrainer(SlowWorkload(started), seed=0, num_workers=2)
    thread, errors = run_round_in_background(trainer, [0, 1, 2])
    assert started.wait(FULL_CLIENT_S)
    start = time.monotonic()
    if how == "close":
        trainer.close()
    else:
        trainer.stop_event.set()
    thread.join(FULL_CLIENT_S)
    trainer.close()
    assert not thread.is_alive()
    assert time.monotonic() - start < FULL_CLIENT_S / 3
    assert len(errors) == 1 and isinstance(errors[0], ClientCancelledError)
    for cid, state in trainer.rng_states.items():  # a cancelled client's state is not committed
        initial = create_rng_suite(0, cid).state_tensors()
        assert all(torch.equal(state[key], initial[key]) for key in initial)


def test_sequential_round_is_cancelled_by_its_stop_event() -> None:
    started = threading.Event()
    trainer = BaseClientTrainer(SlowWorkload(started), seed=0)
    thread, errors = run_round_in_background(trainer, [0, 1])
    assert started.wait(FULL_CLIENT_S)
    trainer.stop_event.set()
    thread.join(FULL_CLIENT_S)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ClientCancelledError)


def test_next_round_starts_with_a_clear_stop_event() -> None:
    class QuickWorker:
        def train(self, task: ClientTask, payload: Down, rng: RNGSuite) -> tuple[Up, None]:
            raise_if_cancelled()
            return Up(payload.value.clone(), task.cid), None

    @dataclass
    class QuickWorkload:
        def make_worker(self) -> QuickWorker:
            return QuickWorker()

        def share_memory(self) -> None:
            pass

    with ThreadPoolClientTrainer(QuickWorkload(), seed=0, num_workers=2) as trainer:
        abandoned = trainer.train_round(payload(), [0, 1, 2], 1)
        next(abandoned)
        abandoned.close()  # abandoning sets that round's event only
        got = [r.cid for r in trainer.train_round(payload(), [3, 4], 1)]
        assert got == [3, 4]


def test_a_cancelled_client_is_not_reported_as_a_client_failure() -> None:
    event = threading.Event()
    event.set()
    task = ClientTask(1, 0, create_rng_suite(0, 0).state_tensors())
    with pytest.raises(ClientCancelledError):
        run_client_task(SlowWorker(threading.Event()), task, payload(), event)


def test_local_sgd_checks_the_stop_event_between_batches() -> None:
    data = synthetic_dataset(64, seed=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    flat = flatten_module_(model)
    hp = TrainHParams(local_epochs=1, batch_size=16, augment=False)
    sgd = LocalSGD(model, flat, data, hp)
    indices = torch.arange(64)
    before = flat.clone()
    event = threading.Event()
    event.set()
    with bound_stop_event(event), pytest.raises(ClientCancelledError):
        sgd.run(indices, torch.Generator().manual_seed(0))
    assert torch.equal(flat, before)  # stopped before the first step
    sgd.run(indices, torch.Generator().manual_seed(0))  # nothing bound: trains normally
    assert not torch.equal(flat, before)
