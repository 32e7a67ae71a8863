"""Properties of the global-RNG strategy: seed_everything and RandomStateSnapshot."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import pytest
import torch

from blazefl.reproducibility import RandomStateSnapshot, seed_everything


def global_draws() -> list[Any]:
    return (
        [random.random() for _ in range(5)]
        + [random.gauss(0.0, 1.0)]
        + np.random.random_sample(5).tolist()
        + [float(np.random.standard_normal())]
        + torch.rand(5).tolist()
    )


@pytest.fixture(autouse=True)
def keep_global_state() -> Any:
    snapshot = RandomStateSnapshot.capture()
    hash_seed = os.environ.get("PYTHONHASHSEED")
    yield
    snapshot.restore()
    if hash_seed is None:
        os.environ.pop("PYTHONHASHSEED", None)
    else:
        os.environ["PYTHONHASHSEED"] = hash_seed


def test_seed_everything_makes_global_draws_repeat() -> None:
    seed_everything(1234)
    first = global_draws()
    seed_everything(1234)
    assert global_draws() == first
    seed_everything(1235)
    assert global_draws() != first


def test_seed_everything_sets_pythonhashseed() -> None:
    seed_everything(99)
    assert os.environ["PYTHONHASHSEED"] == "99"


@pytest.mark.parametrize("seed", [-1, 2**32, 1.0, True])
def test_seed_everything_rejects_invalid_seed(seed: Any) -> None:
    with pytest.raises(ValueError, match="seed"):
        seed_everything(seed)


def test_capture_restore_repeats_global_draws_including_pending_gaussians() -> None:
    seed_everything(7)
    random.gauss(0.0, 1.0)  # python gauss_next pending
    np.random.standard_normal()  # numpy legacy cached gaussian pending
    snapshot = RandomStateSnapshot.capture()
    assert snapshot.python[2] is not None and snapshot.numpy[3] == 1
    first = global_draws()
    snapshot.restore()
    assert global_draws() == first


def test_to_tensors_round_trip_is_exact() -> None:
    seed_everything(11)
    random.gauss(0.0, 1.0)
    np.random.standard_normal()
    snapshot = RandomStateSnapshot.capture()
    tensors = snapshot.to_tensors()
    assert {"python", "numpy", "torch"} <= set(tensors)
    for tensor in tensors.values():
        assert tensor.dtype == torch.uint8 and tensor.dim() == 1
    first = global_draws()

    decoded = RandomStateSnapshot.from_tensors(tensors)
    again = decoded.to_tensors()
    assert set(again) == set(tensors)
    for key in tensors:
        assert tensors[key].numpy().tobytes() == again[key].numpy().tobytes()
    decoded.restore()
    assert global_draws() == first


def test_equal_global_states_give_equal_bytes() -> None:
    seed_everything(3)
    a = RandomStateSnapshot.capture().to_tensors()
    seed_everything(3)
    b = RandomStateSnapshot.capture().to_tensors()
    assert {k: v.numpy().tobytes() for k, v in a.items()} == {
        k: v.numpy().tobytes() for k, v in b.items()
    }


@pytest.mark.parametrize("key", ["python", "numpy", "torch"])
def test_corrupt_snapshot_tensors_raise_value_error(key: str) -> None:
    tensors = RandomStateSnapshot.capture().to_tensors()
    with pytest.raises(ValueError):
        RandomStateSnapshot.from_tensors({**tensors, key: tensors[key][:-3].clone()})
    with pytest.raises(ValueError):
        RandomStateSnapshot.from_tensors({k: v for k, v in tensors.items() if k != key})


def test_snapshot_cuda_keys_must_be_contiguous() -> None:
    tensors = RandomStateSnapshot.capture().to_tensors()
    tensors = {k: v for k, v in tensors.items() if not k.startswith("cuda.")}
    with pytest.raises(ValueError, match="cuda"):
        RandomStateSnapshot.from_tensors({**tensors, "cuda.1": torch.zeros(16, dtype=torch.uint8)})
