"""Clients trained concurrently in threads give the same bytes as trained one after another.

A thread pool shares torch's process-global generator between workers; any client code that
draws from it (F.dropout, nn.Dropout, torch.rand without generator=) gets numbers that depend on
scheduling. The FedAvg test below runs every random code path (dropout masks, crop, flip,
shuffling) on four threads; a workload that uses the global generator is refused.
"""

from __future__ import annotations

import pytest
import torch

from blazefl import (
    BaseClientTrainer,
    ProcessPoolClientTrainer,
    ThreadPoolClientTrainer,
    build_experiment,
    make_trainer,
    run_round,
)
from blazefl.core.client_task import ClientTrainingError
from tests.core.workloads import TINY_SPEC, NoiseDownlink, NoiseWorkload

SPEC = TINY_SPEC.updated({"model.dropout": 0.3, "fl.clients_per_round": None, "fl.rounds": 2})


def _fedavg_round_hashes(mode: str, workers: int) -> tuple[list[dict[int, str]], bytes]:
    exp = build_experiment(SPEC)
    server = exp.server()
    with make_trainer(mode, exp.workload(), seed=SPEC.seed, workers=workers) as trainer:  # type: ignore[arg-type]
        rounds = [run_round(server, trainer, t, evaluate=False) for t in (1, 2)]
    return [r.uplink_sha256 for r in rounds], server.flat.numpy().tobytes()


def test_fedavg_with_dropout_and_augmentation_threads_equal_sequential() -> None:
    assert SPEC.model.dropout > 0 and SPEC.train.augment
    seq_hashes, seq_model = _fedavg_round_hashes("sequential", 1)
    thr_hashes, thr_model = _fedavg_round_hashes("threads", 4)
    assert len(seq_hashes[0]) == SPEC.data.clients  # 8 clients on 4 threads, twice
    assert thr_hashes == seq_hashes
    assert thr_model == seq_model


def _noise_hashes(trainer: BaseClientTrainer, cids: list[int]) -> dict[int, str]:
    payload = NoiseDownlink(torch.ones(16, dtype=torch.float64))
    with trainer:
        return {r.cid: r.sha256 for r in trainer.train_round(payload, cids, 1)}


def test_workload_with_explicit_generators_is_schedule_independent() -> None:
    cids = list(range(8))
    workload = NoiseWorkload(use_global_rng=False)
    seq = _noise_hashes(BaseClientTrainer(workload, seed=0), cids)
    for _ in range(2):
        assert _noise_hashes(ThreadPoolClientTrainer(workload, seed=0, num_workers=4), cids) == seq


def test_client_code_that_draws_from_the_global_rng_is_refused() -> None:
    """Such code races in threads, and even in sequence a re-executed round would start the
    generator elsewhere: every trainer refuses it in one line naming a client and the fix."""
    cids = list(range(8))
    workload = NoiseWorkload(use_global_rng=True)
    for trainer in (
        BaseClientTrainer(workload, seed=0),
        ThreadPoolClientTrainer(workload, seed=0, num_workers=4),
        ProcessPoolClientTrainer(workload, seed=0, num_workers=2),
    ):
        with pytest.raises(ClientTrainingError, match="process-global RNG") as info:
            _noise_hashes(trainer, cids)
        assert info.value.cid in cids and "generator=" in str(info.value)
