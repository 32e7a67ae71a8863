"""Same seed and config: identical bytes in every execution mode, IPC mode and worker count.

The config uses everything that draws random numbers: partial participation (server sampling),
augmentation (crop + flip), dropout, plus momentum and weight decay. Process pools are slow to
start, so each process configuration runs exactly once against one shared sequential reference.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pytest

from blazefl import BaseClientTrainer, ExperimentSpec, ProcessPoolClientTrainer, simulate
from blazefl.core.trainers import PERTURB_ENV
from tests.core.workloads import TINY_SPEC, all_clients, fast_start, faulty, tiny_experiment

SPEC = TINY_SPEC.updated({"model.dropout": 0.25})


@dataclass(frozen=True)
class Outcome:
    model_sha256: str
    clients: list[list[int]]
    uplink_sha256: list[dict[int, str]]
    summaries: list[dict[str, Any]]


def run(
    spec: ExperimentSpec, mode: str = "sequential", workers: int = 1, ipc: str = "shared_memory"
):
    server, rounds = simulate(spec, mode=mode, workers=workers, ipc=ipc)  # type: ignore[arg-type]
    return Outcome(
        hashlib.sha256(server.flat.numpy().tobytes()).hexdigest(),
        [r.clients for r in rounds],
        [dict(r.uplink_sha256) for r in rounds],
        [r.summary for r in rounds],
    )


@pytest.fixture(scope="module")
def reference() -> Outcome:
    return run(SPEC)


def test_reference_config_uses_partial_participation(reference: Outcome) -> None:
    assert SPEC.train.augment and SPEC.train.momentum > 0 and SPEC.train.weight_decay > 0
    assert SPEC.model.dropout > 0
    assert all(len(c) == SPEC.fl.clients_per_round < SPEC.data.clients for c in reference.clients)
    assert reference.clients[0] != reference.clients[1]  # the server's generator really samples
    assert [sorted(h) for h in reference.uplink_sha256] == reference.clients


MODES = [
    pytest.param("sequential", 1, "shared_memory", id="sequential-again"),
    pytest.param("threads", 1, "shared_memory", id="threads-1"),
    pytest.param("threads", 2, "shared_memory", id="threads-2"),
    pytest.param("threads", 4, "shared_memory", id="threads-4"),
    pytest.param("processes", 1, "shared_memory", id="processes-1-shm"),
    pytest.param("processes", 2, "shared_memory", id="processes-2-shm"),
    pytest.param("processes", 1, "storage", id="processes-1-storage"),
    pytest.param("processes", 2, "storage", id="processes-2-storage"),
]


@pytest.mark.parametrize(("mode", "workers", "ipc"), MODES)
def test_final_model_bytes_identical_in_every_mode(
    reference: Outcome, mode: str, workers: int, ipc: str
) -> None:
    got = run(SPEC, mode, workers, ipc)
    assert got.clients == reference.clients
    assert got.uplink_sha256 == reference.uplink_sha256  # per client, per round
    assert got.model_sha256 == reference.model_sha256
    assert got.summaries == reference.summaries


def test_another_seed_gives_different_bytes(reference: Outcome) -> None:
    other = run(SPEC.updated({"seed": SPEC.seed + 1}))
    assert other.model_sha256 != reference.model_sha256


def test_augmentation_changes_the_bytes(reference: Outcome) -> None:
    # guards the test above: if augmentation were a no-op the modes would agree trivially
    plain = run(SPEC.updated({"train.augment": False}))
    assert plain.clients == reference.clients
    assert plain.model_sha256 != reference.model_sha256


def test_uplink_hashes_name_a_perturbed_client(
    reference: Outcome, monkeypatch: pytest.MonkeyPatch
) -> None:
    # negative control for the hash comparison: one changed uplink shows up in exactly that
    # client's hash and in the final model
    cid = reference.clients[1][2]
    monkeypatch.setenv(PERTURB_ENV, f"2:{cid}")
    got = run(SPEC, "threads", 2)
    assert got.uplink_sha256[0] == reference.uplink_sha256[0]
    differing = [
        c for c in reference.clients[1] if got.uplink_sha256[1][c] != reference.uplink_sha256[1][c]
    ]
    assert differing == [cid]
    assert got.model_sha256 != reference.model_sha256


def test_process_pool_keeps_client_order_when_clients_finish_out_of_order() -> None:
    # client 0 finishes last: later results wait in their shared-memory slots (4 slots for
    # 8 clients, so slots are reused while client 0 is still running)
    exp = tiny_experiment()
    payload = exp.server().downlink_package()
    cids = all_clients()
    with BaseClientTrainer(exp.workload(), seed=0) as seq:
        reference = [(r.cid, r.sha256) for r in seq.train_round(payload, cids, 1)]
    with ProcessPoolClientTrainer(
        faulty(slow={0: 0.6}), seed=0, num_workers=2, start_method=fast_start()
    ) as pool:
        got = [(r.cid, r.sha256) for r in pool.train_round(payload, cids, 1)]
    assert got == reference
