"""RandomStateSnapshot and seed_everything mean what they mean in the original BlazeFL."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from blazefl.reproducibility import RandomStateSnapshot, seed_everything


@pytest.fixture(autouse=True)
def keep_global_state() -> Any:
    snapshot = RandomStateSnapshot.capture()
    env = dict(os.environ)
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    snapshot.restore()
    os.environ.clear()
    os.environ.update(env)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def test_seed_everything_also_sets_the_cudnn_flags() -> None:
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    seed_everything(7)
    assert os.environ["PYTHONHASHSEED"] == "7"
    assert torch.backends.cudnn.deterministic is True
    assert torch.backends.cudnn.benchmark is False


def test_original_field_names_and_restore_spelling() -> None:
    seed_everything(3)
    snapshot = RandomStateSnapshot.capture()
    assert snapshot.environ == "3"
    assert snapshot.torch is snapshot.torch_cpu
    if not torch.cuda.is_available():
        assert snapshot.torch_cuda is None and snapshot.torch_cuda_all == ()
    first = torch.rand(3)
    os.environ["PYTHONHASHSEED"] = "5"
    RandomStateSnapshot.restore(snapshot)  # the original's static spelling
    assert torch.equal(torch.rand(3), first)
    assert os.environ["PYTHONHASHSEED"] == "3"


def test_encoded_snapshot_keeps_its_keys_and_leaves_environ_alone() -> None:
    seed_everything(4)
    tensors = RandomStateSnapshot.capture().to_tensors()
    cuda_keys = [f"cuda.{i}" for i in range(torch.cuda.device_count())]
    assert sorted(tensors) == sorted(["numpy", "python", "torch", *cuda_keys])
    decoded = RandomStateSnapshot.from_tensors(tensors)
    assert decoded.environ is None
    os.environ["PYTHONHASHSEED"] = "11"
    decoded.restore()
    assert os.environ["PYTHONHASHSEED"] == "11"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_is_the_current_devices_state() -> None:
    snapshot = RandomStateSnapshot.capture()
    assert snapshot.torch_cuda is not None
    assert torch.equal(snapshot.torch_cuda, torch.cuda.get_rng_state())
