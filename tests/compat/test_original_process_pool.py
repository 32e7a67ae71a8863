"""The original BlazeFL's process-pool contract runs on `ProcessPoolClientTrainer`.

A subclass with a static `worker(config, payload, device, stop_event, *, shm_buffer=None)`,
`get_client_config`, `prepare_uplink_package_buffer` and its own `__init__` is driven as the
original drives it, in both IPC modes; the workload-based trainer is untouched
(tests/core and tests/golden pin its behaviour and bytes).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from blazefl.core import IPCMode, ProcessPoolClientTrainer, WorkerCrashedError
from tests.compat.original_process import Downlink, OriginalTrainer
from tests.core.nested_workloads import NestedWorkload

ROOT = Path(__file__).resolve().parents[2]


def expected_tensor(cid: int, scale: float) -> torch.Tensor:
    return scale * torch.arange(4, dtype=torch.float32) + cid


@pytest.mark.parametrize("ipc_mode", [IPCMode.STORAGE, IPCMode.SHARED_MEMORY, "shared_memory"])
def test_uplinks_arrive_in_cid_list_order_with_their_tensors(
    tmp_path: Path, ipc_mode: IPCMode | str
) -> None:
    trainer = OriginalTrainer(2, tmp_path / "share", ipc_mode)
    try:
        for round_, cids in enumerate([[], [4], [2, 0, 1, 3]], start=1):
            payload = Downlink("down", torch.tensor(float(round_)))
            trainer.local_process(payload, cids)
            assert trainer.stop_event.is_set()  # set when the round is over, as in the original
            packages = trainer.uplink_package()
            assert [p.cid for p in packages] == cids
            for p in packages:
                assert p.message == f"down<{p.cid}>"
                assert torch.equal(p.tensor, expected_tensor(p.cid, float(round_)))
            assert trainer.uplink_package() == []
        assert trainer.progress_calls == [0, 1, 4]
    finally:
        trainer.close()


def test_the_pool_is_kept_between_rounds_and_closed_on_close(tmp_path: Path) -> None:
    trainer = OriginalTrainer(1, tmp_path, IPCMode.SHARED_MEMORY)
    payload = Downlink("x", torch.ones(()))
    trainer.local_process(payload, [0])
    trainer.local_process(payload, [1])
    pids = {p.extras["pid"] for p in trainer.uplink_package()}
    assert len(pids) == 1  # one worker process served both rounds
    trainer.close()
    trainer.close()  # idempotent
    trainer.local_process(payload, [2])  # a closed trainer starts a fresh pool
    assert [p.cid for p in trainer.uplink_package()] == [2]
    trainer.close()


def test_a_manager_event_is_handed_to_the_worker_itself(tmp_path: Path) -> None:
    manager = multiprocessing.get_context("spawn").Manager()
    try:
        trainer = OriginalTrainer(1, tmp_path, "storage", stop_event=manager.Event())
        trainer.local_process(Downlink("m", torch.ones(())), [0, 1])
        assert trainer.stop_event.is_set()
        assert [p.cid for p in trainer.uplink_package()] == [0, 1]
        trainer.close()
    finally:
        manager.shutdown()


def test_a_failing_client_raises_its_error_naming_the_client(tmp_path: Path) -> None:
    trainer = OriginalTrainer(2, tmp_path, IPCMode.SHARED_MEMORY, {1: "raise"})
    with pytest.raises(ValueError, match="client 1 broke") as info:
        trainer.local_process(Downlink("m", torch.ones(())), [0, 1, 2])
    assert any("client 1" in note for note in getattr(info.value, "__notes__", []))
    assert trainer.stop_event.is_set()
    trainer.behaviour = {}
    trainer.cache = []
    trainer.local_process(Downlink("m", torch.ones(())), [1])  # a new pool after the failure
    assert [p.cid for p in trainer.uplink_package()] == [1]
    trainer.close()


def test_a_dying_worker_process_stops_the_round(tmp_path: Path) -> None:
    trainer = OriginalTrainer(1, tmp_path, IPCMode.STORAGE, {0: "crash"})
    start = time.monotonic()
    with pytest.raises(WorkerCrashedError, match="died \\(exit code 3\\) while training client 0"):
        trainer.local_process(Downlink("m", torch.ones(())), [0])
    assert time.monotonic() - start < 60
    trainer.close()


def test_ctrl_c_ends_a_round_whose_clients_never_finish(tmp_path: Path) -> None:
    code = (
        "import sys; from tests.compat.original_process import interrupted_round; "
        "interrupted_round(sys.argv[1])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(8)  # the pool is up and both clients are waiting for the stop event
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "interrupted" in out


def test_the_workload_api_is_refused_for_an_original_subclass(tmp_path: Path) -> None:
    trainer = OriginalTrainer(1, tmp_path, IPCMode.STORAGE)
    with pytest.raises(ValueError, match="local_process"):
        list(trainer.train_round(Downlink("m", torch.ones(())), [0]))


def test_bad_settings_are_one_line_errors(tmp_path: Path) -> None:
    trainer = OriginalTrainer(0, tmp_path, IPCMode.STORAGE)
    with pytest.raises(ValueError, match="num_parallels"):
        trainer.local_process(Downlink("m", torch.ones(())), [0])
    trainer = OriginalTrainer(1, tmp_path, "pipes")
    with pytest.raises(ValueError, match="ipc_mode must be IPCMode.STORAGE or"):
        trainer.local_process(Downlink("m", torch.ones(())), [0])


def test_ipc_mode_names_and_hooks() -> None:
    assert IPCMode("storage") is IPCMode.STORAGE
    assert IPCMode("SHARED_MEMORY") is IPCMode.SHARED_MEMORY
    assert ProcessPoolClientTrainer[Any, Any, Any] is not None  # the original's three params

    class OnCuda(ProcessPoolClientTrainer[Any, Any]):
        def __init__(self) -> None:
            self.device, self.device_count = "cuda", 2

        @staticmethod
        def worker(config: Any, payload: Any, device: str, stop_event: Any, **_: Any) -> Any:
            return None

    assert OnCuda().get_client_device(3) == "cuda:1"
    assert OnCuda().progress_fn([]) == []


def test_the_thread_compat_event_is_a_threading_event_stand_in(tmp_path: Path) -> None:
    # a threading.Event cannot travel to a process: the pool's own event stands in for it,
    # and the trainer's event still reports the round's end
    event = threading.Event()
    trainer = OriginalTrainer(1, tmp_path, IPCMode.SHARED_MEMORY, stop_event=event)
    event.set()
    trainer.local_process(Downlink("m", torch.ones(())), [0])  # cleared at the start
    assert event.is_set()
    assert len(trainer.uplink_package()) == 1
    trainer.close()


def test_the_workload_trainer_takes_the_original_ipc_names() -> None:
    for mode, name in ((IPCMode.STORAGE, "storage"), (IPCMode.SHARED_MEMORY, "shared_memory")):
        trainer = ProcessPoolClientTrainer(NestedWorkload(), seed=0, num_workers=1, ipc_mode=mode)
        assert trainer.ipc_mode == name  # no process starts before the first round
        trainer.close()


def test_objects_a_config_shares_are_sent_once_per_round_and_afresh_next_round(
    tmp_path: Path,
) -> None:
    trainer = OriginalTrainer(2, tmp_path, IPCMode.SHARED_MEMORY)
    trainer.table = np.arange(1000)  # 8 KB: sent once per worker and round, then named
    payload = Downlink("m", torch.ones(()))
    trainer.local_process(payload, list(range(6)))
    assert {p.extras["table_sum"] for p in trainer.uplink_package()} == {499500}
    trainer.table[:] = 1  # changed between rounds: the next round sees it
    trainer.local_process(payload, list(range(6)))
    assert {p.extras["table_sum"] for p in trainer.uplink_package()} == {1000}
    trainer.close()
