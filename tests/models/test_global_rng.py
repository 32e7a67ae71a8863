"""torch's process-global RNG is never used by client work, and model construction (the one
place the package touches it) is safe from several threads at once."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from blazefl import simulate
from blazefl.models import build_model
from tests.core.workloads import TINY_SPEC


def interleaving_factory(
    *, num_classes: int, in_channels: int, image_size: int, dropout: float
) -> nn.Module:
    """A user's factory whose default init draws from the global RNG, yielding the GIL between
    layers so that concurrent builds interleave unless construction is serialised."""
    del in_channels, image_size, dropout
    layers = []
    for _ in range(20):
        layers.append(nn.Linear(8, 8))
        time.sleep(0)
    return nn.Sequential(*layers, nn.Linear(8, num_classes))


FACTORY = f"{__name__}:interleaving_factory"


def _seeded_build() -> nn.Module:
    return build_model(FACTORY, num_classes=3, generator=torch.Generator().manual_seed(5))


def test_seeded_user_models_built_in_threads_equal_a_lone_build() -> None:
    expected = _seeded_build().state_dict()
    results: list[dict[str, torch.Tensor]] = []

    def worker() -> None:
        for _ in range(5):
            results.append(_seeded_build().state_dict())
            build_model(FACTORY, num_classes=3)  # unseeded draws racing with the seeded ones

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 30
    for got in results:
        assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox", "fedavgm", "scaffold", "dsfl"])
@pytest.mark.parametrize("mode", ["sequential", "threads"])
def test_a_whole_simulation_leaves_the_global_rng_untouched(algorithm: str, mode: str) -> None:
    spec = TINY_SPEC.updated(
        {
            "fl.algorithm": algorithm,
            "fl.rounds": 1,
            "dsfl.open_size": 160,
            "dsfl.public_size_per_round": 80,
        }
    )
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    simulate(spec, mode=mode, workers=2)  # type: ignore[arg-type]
    assert torch.equal(torch.get_rng_state(), before)
