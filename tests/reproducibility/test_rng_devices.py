"""RNGSuite field names of the original BlazeFL (torch_cpu / torch_cuda) and the CUDA stream.

The CUDA logic (capture under its own key, restore, all-or-nothing) is exercised on CPU by giving
a suite a second CPU generator in the ``torch_cuda`` slot; the tests that need a real GPU skip.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from blazefl.reproducibility import RNGSuite, create_rng_suite

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def suite_with_stand_in_cuda(seed: int = 5) -> RNGSuite:
    """A suite whose `torch_cuda` slot holds a CPU generator (same state format: seed+offset)."""
    suite = create_rng_suite(seed, 1)
    stand_in = torch.Generator()
    stand_in.manual_seed(123)
    suite.torch_cuda = stand_in
    return suite


def test_torch_is_an_alias_of_torch_cpu() -> None:
    suite = create_rng_suite(42, 3)
    assert suite.torch is suite.torch_cpu
    replacement = torch.Generator()
    suite.torch = replacement
    assert suite.torch_cpu is replacement


def test_cpu_suite_has_no_cuda_generator_and_keeps_its_three_keys() -> None:
    for suite in (create_rng_suite(42, 3), create_rng_suite(42, 3, device="cpu")):
        assert suite.torch_cuda is None
        assert sorted(suite.state_tensors()) == ["numpy", "python", "torch"]


def test_cpu_device_gives_the_same_bytes_as_no_device() -> None:
    plain = create_rng_suite(7, 2).state_tensors()
    on_cpu = create_rng_suite(7, 2, device=torch.device("cpu")).state_tensors()
    assert all(torch.equal(plain[key], on_cpu[key]) for key in plain)


def test_original_constructor_keywords_work() -> None:
    suite = RNGSuite(
        python=random.Random(0),
        numpy=np.random.default_rng(0),
        torch_cpu=torch.Generator().manual_seed(0),
    )
    assert suite.torch_cuda is None
    assert torch.equal(
        torch.rand(3, generator=suite.torch_cpu), torch.rand(3, generator=torch.manual_seed(0))
    )


def test_cuda_state_is_captured_under_its_own_key_and_restored() -> None:
    suite = suite_with_stand_in_cuda()
    saved = suite.state_tensors()
    assert sorted(saved) == ["numpy", "python", "torch", "torch_cuda"]
    assert suite.torch_cuda is not None
    first = torch.rand(4, generator=suite.torch_cuda)
    suite.load_state_tensors(saved)
    assert torch.equal(torch.rand(4, generator=suite.torch_cuda), first)


def test_suite_with_cuda_generator_rejects_a_cpu_only_state_untouched() -> None:
    suite = suite_with_stand_in_cuda()
    before = suite.state_tensors()
    with pytest.raises(ValueError, match="torch_cuda"):
        suite.load_state_tensors(create_rng_suite(9, 9).state_tensors())
    after = suite.state_tensors()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_corrupt_cuda_state_raises_value_error() -> None:
    suite = suite_with_stand_in_cuda()
    saved = suite.state_tensors()
    saved["torch_cuda"] = saved["torch_cuda"].to(torch.int32)
    with pytest.raises(ValueError, match="torch_cuda"):
        suite.load_state_tensors(saved)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error path")
def test_cuda_without_a_gpu_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        create_rng_suite(0, 0, device="cuda")
    state = suite_with_stand_in_cuda().state_tensors()
    with pytest.raises(ValueError, match="CUDA is not available"):
        RNGSuite.from_state_tensors(state)


@pytest.mark.parametrize("device", ["meta", "not-a-device", 3.5])
def test_bad_device_is_a_value_error(device: object) -> None:
    with pytest.raises(ValueError, match="device"):
        create_rng_suite(0, 0, device=device)  # type: ignore[arg-type]


@needs_cuda
def test_cuda_suite_reproduces_and_round_trips() -> None:
    a = create_rng_suite(42, 3, device="cuda")
    b = create_rng_suite(42, 3, device="cuda")
    assert a.torch_cuda is not None and b.torch_cuda is not None
    assert a.torch_cuda.device.type == "cuda"
    x = torch.rand(8, device="cuda", generator=a.torch_cuda)
    assert torch.equal(x, torch.rand(8, device="cuda", generator=b.torch_cuda))
    saved = a.state_tensors()
    assert "torch_cuda" in saved
    y = torch.rand(8, device="cuda", generator=a.torch_cuda)
    twin = RNGSuite.from_state_tensors(saved)
    assert twin.torch_cuda is not None
    assert torch.equal(y, torch.rand(8, device="cuda", generator=twin.torch_cuda))
    # the CPU part is the same as a CPU-only suite's
    cpu_only = create_rng_suite(42, 3).state_tensors()
    assert all(torch.equal(cpu_only[key], saved[key]) for key in cpu_only)
