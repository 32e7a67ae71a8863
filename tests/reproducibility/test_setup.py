"""pin_client_threads / setup_reproducibility set every flag they claim; determinism_flags too."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import torch

from blazefl.reproducibility import determinism_flags, pin_client_threads, setup_reproducibility


@pytest.fixture(autouse=True)
def keep_flags() -> Any:
    """Undo pin_client_threads / setup_reproducibility so other tests see the process as it was."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_deterministic = torch.backends.cudnn.deterministic
    cudnn_benchmark = torch.backends.cudnn.benchmark
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    hash_seed = os.environ.get("PYTHONHASHSEED")
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.deterministic = cudnn_deterministic
    torch.backends.cudnn.benchmark = cudnn_benchmark
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas
    if hash_seed is None:
        os.environ.pop("PYTHONHASHSEED", None)
    else:
        os.environ["PYTHONHASHSEED"] = hash_seed


def reset_to_non_deterministic() -> None:
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = True
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu-only", "cuda"])
@pytest.mark.parametrize("threads", [1, 2])
def test_pin_client_threads_sets_every_flag(
    threads: int, cuda: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    reset_to_non_deterministic()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    pin_client_threads(threads=threads)

    assert torch.get_num_threads() == threads
    # deterministic algorithms change no bits on CPU but cost ~150 MB: enabled with CUDA only
    assert torch.are_deterministic_algorithms_enabled() is cuda
    assert torch.is_deterministic_algorithms_warn_only_enabled() is cuda
    assert torch.backends.cudnn.deterministic is True
    assert torch.backends.cudnn.benchmark is False
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"

    assert determinism_flags() == {
        "num_threads": threads,
        "deterministic_algorithms": cuda,
        "deterministic_algorithms_warn_only": cuda,
        "cudnn_deterministic": True,
        "cudnn_benchmark": False,
        "cublas_workspace_config": ":4096:8",
    }


def test_determinism_flags_reflect_non_deterministic_state() -> None:
    reset_to_non_deterministic()
    flags = determinism_flags()
    assert flags["deterministic_algorithms"] is False
    assert flags["cudnn_deterministic"] is False
    assert flags["cudnn_benchmark"] is True
    assert flags["cublas_workspace_config"] is None


def test_existing_cublas_workspace_config_is_kept() -> None:
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
    pin_client_threads()
    assert determinism_flags()["cublas_workspace_config"] == ":16:8"


def test_determinism_flags_are_json_serialisable() -> None:
    pin_client_threads()
    flags = determinism_flags()
    assert json.loads(json.dumps(flags, sort_keys=True)) == flags


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_invalid_thread_count_raises_value_error(threads: Any) -> None:
    with pytest.raises(ValueError, match="threads"):
        pin_client_threads(threads=threads)


def test_setup_reproducibility_has_the_original_meaning() -> None:
    """Seed -> PYTHONHASHSEED and cuDNN flags; the thread count and global RNG stay as they were."""
    reset_to_non_deterministic()
    threads = torch.get_num_threads()
    rng_before = torch.get_rng_state()
    setup_reproducibility(42)
    assert os.environ["PYTHONHASHSEED"] == "42"
    assert torch.backends.cudnn.deterministic is True
    assert torch.backends.cudnn.benchmark is False
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng_before)
    setup_reproducibility()
    assert os.environ["PYTHONHASHSEED"] == "42"


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True, "42"])
def test_invalid_hash_seed_raises_value_error(seed: Any) -> None:
    with pytest.raises(ValueError, match="seed"):
        setup_reproducibility(seed)
