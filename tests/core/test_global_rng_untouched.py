"""Client work never draws from (or reseeds) the process-global RNGs: threads share them, so a
draw there would race. A round in threads mode, workers built included, leaves torch's,
numpy's legacy and Python's global generators exactly as they were."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from blazefl.core.loop import make_trainer, run_round
from blazefl.experiment import ExperimentSpec, build_experiment


def _global_states() -> tuple[bytes, str, object]:
    legacy = np.random.get_state()
    return (
        torch.get_rng_state().numpy().tobytes(),
        repr((legacy[0], legacy[1].tobytes(), *legacy[2:])),
        random.getstate(),
    )


@pytest.mark.parametrize("model", ["cnn", "tests.core.test_global_rng_untouched:mlp"])
def test_a_threads_round_leaves_the_global_rngs_alone(model: str) -> None:
    spec = ExperimentSpec.from_flat(
        {"data.size": 200, "data.test_size": 40, "data.clients": 4, "fl.clients_per_round": 4,
         "train.augment": True, "model.dropout": 0.5, "model.name": model}
    )  # fmt: skip
    exp = build_experiment(spec)
    server = exp.server()
    before = _global_states()
    with make_trainer("threads", exp.workload(), seed=spec.seed, workers=2) as trainer:
        run_round(server, trainer, 1)  # builds the workers, trains every client
        run_round(server, trainer, 2)
    assert _global_states() == before


def mlp(*, num_classes: int, in_channels: int, image_size: int, dropout: float) -> torch.nn.Module:
    """A user's factory whose default init draws from torch's global RNG (seeded from the
    build's generator and restored by the package)."""
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(in_channels * image_size**2, num_classes)
    )
